"""Small classifiers of the long-tail literature as ``PreTrainedModel``s (save / load / push like any HF model).

- ``CifarResNetForImageClassification``: the CIFAR ResNet-(6n+2) of He et al. 2016 with option-A
  (zero-padding) shortcuts, as used by Cao et al. 2019 (ResNet-32: ``depth=32``); optional cosine
  ("normed") head for LDAM.
- ``MLPForClassification``: a multilayer perceptron on flat inputs (the built-in digits demo).

Both read ``pixel_values`` and expose the head as ``classifier`` (its input is the feature).
Importing this module registers both with the ``Auto*`` classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

__all__ = [
    "CifarResNetConfig",
    "CifarResNetForImageClassification",
    "MLPClassifierConfig",
    "MLPForClassification",
    "NormedLinear",
]


class NormedLinear(nn.Module):
    """Cosine classifier ``logits = normalize(x) @ normalize(W)``, values in [-1, 1] (LDAM's head)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


class CifarResNetConfig(PretrainedConfig):
    model_type = "semscale_cifar_resnet"

    def __init__(
        self,
        depth: int = 32,
        num_channels: int = 3,
        widths: tuple[int, ...] = (16, 32, 64),
        normed_head: bool = False,
        **kwargs,
    ):
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        self.depth = depth
        self.num_channels = num_channels
        self.widths = list(widths)
        self.normed_head = normed_head
        super().__init__(**kwargs)


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if planes < in_planes:
            raise ValueError(f"CIFAR ResNet widths must not shrink ({in_planes} -> {planes})")
        self.pad = planes - in_planes
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.pad:  # option A: subsample and zero-pad the channels
            shortcut = F.pad(
                x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2)
            )
        return F.relu(out + shortcut)


class CifarResNetForImageClassification(PreTrainedModel):
    """``pixel_values [B, C, H, W]`` float -> ``logits [B, num_labels]``; features ``[B, widths[-1]]``."""

    config_class = CifarResNetConfig
    base_model_prefix = "resnet"
    main_input_name = "pixel_values"

    def __init__(self, config: CifarResNetConfig):
        super().__init__(config)
        n = (config.depth - 2) // 6
        w = config.widths
        self.conv1 = nn.Conv2d(config.num_channels, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        blocks, in_planes = [], w[0]
        for stage, planes in enumerate(w):
            for i in range(n):
                blocks.append(_BasicBlock(in_planes, planes, 2 if (stage > 0 and i == 0) else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.classifier = (
            NormedLinear(w[-1], config.num_labels) if config.normed_head else nn.Linear(w[-1], config.num_labels)
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward_features(self, pixel_values: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(pixel_values)))
        return F.adaptive_avg_pool2d(self.blocks(out), 1).flatten(1)

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None, **kwargs) -> ImageClassifierOutput:
        logits = self.classifier(self.forward_features(pixel_values))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


class MLPClassifierConfig(PretrainedConfig):
    model_type = "semscale_mlp"

    def __init__(self, input_dim: int = 64, hidden_dims: tuple[int, ...] = (128, 64), dropout: float = 0.0, **kwargs):
        self.input_dim = input_dim
        self.hidden_dims = list(hidden_dims)
        self.dropout = dropout
        super().__init__(**kwargs)


class MLPForClassification(PreTrainedModel):
    """``pixel_values [B, input_dim]`` float -> ``logits [B, num_labels]``; features ``[B, hidden_dims[-1]]``."""

    config_class = MLPClassifierConfig
    base_model_prefix = "mlp"
    main_input_name = "pixel_values"

    def __init__(self, config: MLPClassifierConfig):
        super().__init__(config)
        layers, width = [], config.input_dim
        for hidden in config.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(config.dropout)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None, **kwargs) -> ImageClassifierOutput:
        logits = self.classifier(self.body(pixel_values.flatten(1).float()))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(CifarResNetConfig.model_type, CifarResNetConfig, exist_ok=True)
AutoConfig.register(MLPClassifierConfig.model_type, MLPClassifierConfig, exist_ok=True)
AutoModelForImageClassification.register(CifarResNetConfig, CifarResNetForImageClassification, exist_ok=True)
AutoModelForImageClassification.register(MLPClassifierConfig, MLPForClassification, exist_ok=True)


def bake_posthoc_adjustment(model: nn.Module, class_counts: list[int] | Tensor, tau: float) -> str:
    """Fold post-hoc logit adjustment (``logits - tau * log prior``) into ``model``'s classifier bias, in place, and
    record ``tau`` and the counts in ``model.config`` (``posthoc_logit_adjustment``) so a saved or pushed model says
    what it predicts. Returns the head's module name. Heads that are not an ``nn.Linear`` are refused."""
    from .core.posthoc import bake_logit_adjustment
    from .dsb.capture import find_classification_head

    name, head = find_classification_head(model, len(class_counts))
    bake_logit_adjustment(head, class_counts, tau)
    if getattr(model, "config", None) is not None:
        model.config.posthoc_logit_adjustment = {"tau": float(tau), "class_counts": [int(n) for n in class_counts]}
    return name
