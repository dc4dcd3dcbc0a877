"""Image classification with semantic-scale-balanced learning (and every long-tail baseline).

    python recipes/train_image.py recipes/configs/cifar10_lt.yaml [--key value ...]
    python recipes/train_image.py recipes/configs/cifar10_lt.yaml --method dsb_ce --semscale_gamma 2

Data: ``--data_dir`` (a shared-style folder such as ../shared/data/cifar10, or a save_to_disk folder)
or ``--dataset_name`` (a datasets Hub id, e.g. ``uoft-cs/cifar100`` with ``--image_column img
--label_column fine_label``). Validation is carved from the TRAIN split (before the long tail); the
long-tailed training subset follows Cao et al. (``--imbalance_factor``); the test split stays as is.

Models: ``cifar_resnet`` (the CIFAR ResNet-(6n+2) of the long-tail literature, ``--depth 32``; a
cosine "normed" head for LDAM) or ``timm`` (any timm architecture through
``TimmWrapperForImageClassification``, trained from scratch with timm's own initialisation).
Augmentation (training only): random crop with 4-pixel zero padding + horizontal flip, then
per-channel normalisation with the training set's mean / std. By default (``--augmentation batched``) the
images stay one uint8 tensor and whole batches are cropped, flipped and normalised at once in the data
collator (:func:`augment_batch`); ``--augmentation per_item`` is the per-image ``set_transform`` it replaced
(same distribution; the baseline of ``benchmarks/augmentation.py``).
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from hf_semscale.data import load_splits  # noqa: E402
from hf_semscale.select.methods import uses_normed_head  # noqa: E402
from recipes.common import (  # noqa: E402
    DataArguments,
    RunArguments,
    apply_threads,
    build_optimizers,
    make_compute_metrics,
    parse_yaml_then_cli,
    setup_logging,
    summary_line,
    train_evaluate_and_record,
)

logger = logging.getLogger("recipes.train_image")


@dataclass
class ImageModelArguments:
    model_type: str = field(
        default="cifar_resnet",
        metadata={"help": "'cifar_resnet' (hf_semscale) or 'timm' (TimmWrapper).", "choices": ["cifar_resnet", "timm"]},
    )
    depth: int = field(default=32, metadata={"help": "CIFAR ResNet depth 6n+2 (8, 14, 20, 32, 44, 56, 110)."})
    widths: list[int] = field(
        default_factory=lambda: [16, 32, 64], metadata={"help": "Channels of the three CIFAR ResNet stages."}
    )
    normed_head: str = field(
        default="auto",
        metadata={
            "help": "Cosine classifier: 'auto' (on for LDAM, as Cao et al.), 'true' or 'false'.",
            "choices": ["auto", "true", "false"],
        },
    )
    timm_architecture: str = field(default="resnet18", metadata={"help": "timm architecture for model_type='timm'."})
    timm_restore_init: bool = field(
        default=True,
        metadata={"help": "Load timm's own initialisation into the wrapper (TimmWrapper's post_init overwrites it)."},
    )
    crop_padding: int = field(default=4, metadata={"help": "Zero padding of the random crop; 0 disables the crop."})
    horizontal_flip: bool = field(default=True, metadata={"help": "Random horizontal flip (training only)."})
    augmentation: str = field(
        default="batched",
        metadata={
            "help": "'batched': images held as one uint8 tensor, crop / flip / normalisation applied to whole batches "
            "in the collator; 'per_item': the per-image set_transform (same distribution, slower).",
            "choices": ["batched", "per_item"],
        },
    )
    images_on_device: bool = field(
        default=False,
        metadata={
            "help": "With --augmentation batched: keep the uint8 images on the training device (a GPU), so batches "
            "are indexed and augmented there. Needs --dataloader_num_workers 0 --dataloader_pin_memory false."
        },
    )


# --------------------------------------------------------------------------- images


def to_uint8_hwc(image: Any) -> np.ndarray:
    """An image as ``[H, W, C]`` uint8 (numpy / nested lists / PIL; grayscale gets ``C = 1``)."""
    if hasattr(image, "mode") and hasattr(image, "size"):  # PIL
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = array.astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {array.shape}")
    return array


def pack_images(dataset: Any, chunk: int = 4096) -> tuple[Any, np.ndarray]:
    """``(dataset with "image" as raw bytes + "label", the images [N, H, W, C] uint8)``.

    Arrow -> Python extraction of nested image arrays is slow (~1.5 s per batch of 128 CIFAR
    images on this CPU); one bytes object per image makes the on-the-fly transform cheap.
    """
    import datasets

    parts = []
    for start in range(0, len(dataset), chunk):
        rows = dataset.with_format("numpy")[start : start + chunk]["image"]
        parts.append(np.stack([to_uint8_hwc(x) for x in rows]))
    images = np.concatenate(parts) if parts else np.zeros((0, 1, 1, 1), np.uint8)
    features = datasets.Features({"image": datasets.Value("binary"), "label": dataset.features["label"]})
    packed = datasets.Dataset.from_dict(
        {"image": [x.tobytes() for x in images], "label": list(dataset.with_format(None)["label"])}, features=features
    )
    return packed, images


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (in [0, 1] units) of ``[N, H, W, C]`` uint8 images."""
    flat = images.reshape(-1, images.shape[-1])
    mean = np.zeros(flat.shape[1])
    sq = np.zeros(flat.shape[1])
    for start in range(0, flat.shape[0], 1 << 20):
        block = flat[start : start + (1 << 20)].astype(np.float64) / 255.0
        mean += block.sum(0)
        sq += (block**2).sum(0)
    mean /= flat.shape[0]
    std = np.sqrt(np.maximum(sq / flat.shape[0] - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


class ImageTransform:
    """``{"image", "label"}`` batch -> ``{"pixel_values" [B, C, H, W] float, "labels" [B]}``, one image at a time (the
    ``set_transform`` of ``--augmentation per_item``)."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        shape: Sequence[int],
        train: bool,
        crop_padding: int = 4,
        flip: bool = True,
    ):
        import torch

        self.shape = tuple(shape)  # [H, W, C] of the packed bytes
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.train, self.crop_padding, self.flip = train, crop_padding, flip

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        images = []
        for raw in batch["image"]:
            array = (
                np.frombuffer(raw, dtype=np.uint8).reshape(self.shape) if isinstance(raw, bytes) else to_uint8_hwc(raw)
            )
            x = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
            if self.train:
                if self.crop_padding:
                    p = self.crop_padding
                    h, w = x.shape[1:]
                    padded = F.pad(x, (p, p, p, p))
                    top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
                    x = padded[:, top : top + h, left : left + w]
                if self.flip and bool(torch.rand(()) < 0.5):
                    x = x.flip(-1)
            images.append((x - self.mean) / self.std)
        return {"pixel_values": torch.stack(images), "labels": torch.as_tensor(batch["label"], dtype=torch.long)}


def augment_batch(
    images: Any,
    mean: Any,
    std: Any,
    crop_padding: int = 4,
    flip: bool = True,
    train: bool = True,
    generator: Any = None,
) -> Any:
    """``images [B, H, W, C]`` uint8 -> ``[B, C, H, W]`` float32: (training) a random crop of the image zero-padded
    by ``crop_padding`` on each side and a horizontal flip with probability 1/2, each drawn per image, then
    ``(x / 255 - mean) / std`` per channel (``mean``, ``std``: ``[C]`` in [0, 1] units). All on ``images.device``."""
    import torch
    import torch.nn.functional as F

    x = images.permute(0, 3, 1, 2)  # still uint8: crop and flip move 4x fewer bytes than floats would
    batch, channels, height, width = x.shape
    device = x.device
    p = crop_padding if train else 0
    if p or (train and flip):
        padded = F.pad(x, (p, p, p, p)) if p else x  # zeros: black, as the per-image path's padding in [0, 1] units
        top, left = torch.randint(0, 2 * p + 1, (2, batch, 1, 1), generator=generator, device=device)
        cols = torch.arange(width, device=device).expand(batch, width)
        if train and flip:
            flipped = torch.rand(batch, generator=generator, device=device) < 0.5
            cols = torch.where(flipped[:, None], cols.flip(-1), cols)  # the crop window read right to left
        rows = torch.arange(height, device=device)[None, :, None]
        index = (top + rows) * (width + 2 * p) + left + cols[:, None, :]  # [B, H, W] into the padded image
        flat = padded.reshape(batch, channels, -1)
        x = flat.gather(2, index.view(batch, 1, -1).expand(-1, channels, -1)).view(batch, channels, height, width)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (x.float() / 255.0 - mean) / std


class UInt8Images:
    """A split as one ``[N, H, W, C]`` uint8 tensor and ``[N]`` labels; items are views that
    :class:`BatchImageCollator` turns into batches (``augment``: apply the training augmentation)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], augment: bool, device: Any = "cpu"):
        import torch

        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long, device=device)
        self.augment = augment

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "labels": self.labels[index], "augment": self.augment}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """A whole batch in one indexing (``torch.utils.data.DataLoader`` calls this when it exists)."""
        import torch

        rows = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        return {"image": self.images[rows], "labels": self.labels[rows], "augment": self.augment}

    def view(self, augment: bool) -> UInt8Images:
        """The same tensors with another ``augment`` (e.g. training images evaluated without augmentation)."""
        other = copy.copy(self)  # shares the tensors
        other.augment = augment
        return other


class BatchImageCollator:
    """A batch from :meth:`UInt8Images.__getitems__` (or a list of its items) -> ``{"pixel_values" [B, C, H, W],
    "labels" [B]}`` (:func:`augment_batch`)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], crop_padding: int = 4, flip: bool = True):
        self.mean, self.std, self.crop_padding, self.flip = list(mean), list(std), crop_padding, flip

    def __call__(self, items: dict[str, Any] | Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not isinstance(items, dict):
            items = {
                "image": torch.stack([item["image"] for item in items]),
                "labels": torch.stack([item["labels"] for item in items]),
                "augment": items[0]["augment"],
            }
        pixel_values = augment_batch(
            items["image"], self.mean, self.std, self.crop_padding, self.flip, train=bool(items["augment"])
        )
        return {"pixel_values": pixel_values, "labels": items["labels"]}


# --------------------------------------------------------------------------- models


def restore_timm_init(model: Any, architecture: str, num_labels: int, model_args: dict[str, Any] | None = None) -> None:
    """Load timm's own initialisation (e.g. zero-init last BN of residual blocks) into ``model.timm_model``.

    ``TimmWrapperForImageClassification.post_init`` re-initialises every weight with the transformers
    defaults; a fresh ``timm.create_model(..., pretrained=False)`` has timm's.
    """
    import timm

    reference = timm.create_model(architecture, pretrained=False, num_classes=num_labels, **(model_args or {}))
    model.timm_model.load_state_dict(reference.state_dict())


def build_model(
    margs: ImageModelArguments, args: Any, num_labels: int, num_channels: int, class_names: list[str]
) -> Any:
    id2label = {i: n for i, n in enumerate(class_names)}
    label2id = {n: i for i, n in id2label.items()}
    normed = {"auto": uses_normed_head(args.semscale_loss), "true": True, "false": False}[margs.normed_head]
    if margs.model_type == "cifar_resnet":
        from hf_semscale.modeling import CifarResNetConfig, CifarResNetForImageClassification

        config = CifarResNetConfig(
            depth=margs.depth,
            num_channels=num_channels,
            widths=tuple(margs.widths),
            normed_head=normed,
            num_labels=num_labels,
            id2label=id2label,
            label2id=label2id,
        )
        return CifarResNetForImageClassification(config)
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    if normed:
        logger.warning(
            "model_type='timm' has a linear head: the cosine (normed) head is not available; LDAM's scale "
            "semscale_ldam_scale=%s applies to unnormalised logits.",
            args.semscale_ldam_scale,
        )
    model_args = {"in_chans": num_channels} if num_channels != 3 else None
    config = TimmWrapperConfig(
        architecture=margs.timm_architecture,
        num_labels=num_labels,
        model_args=model_args,
        id2label=id2label,
        label2id=label2id,
    )
    model = TimmWrapperForImageClassification(config)
    if margs.timm_restore_init:
        restore_timm_init(model, margs.timm_architecture, num_labels, model_args)
    return model


# --------------------------------------------------------------------------- main


def make_parser():
    from transformers import HfArgumentParser

    from hf_semscale.trainer.config import SemScaleConfig

    return HfArgumentParser((DataArguments, ImageModelArguments, RunArguments, SemScaleConfig))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    wall_start = time.time()
    data, margs, run, args = parse_yaml_then_cli(make_parser(), argv)
    setup_logging(args)
    apply_threads(run)
    if args.remove_unused_columns:  # the transform needs the raw image / label columns
        args.remove_unused_columns = False

    from transformers import set_seed

    from hf_semscale.trainer import SemScaleTrainer

    splits = load_splits(data, "image")
    images = {}
    for name in ("train", "validation", "test"):
        if splits[name] is not None:
            splits[name], images[name] = pack_images(splits[name])
    train = splits["train"]
    shapes = {name: array.shape[1:] for name, array in images.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"image shapes differ between splits: {shapes}")
    shape = shapes["train"]
    num_labels = len(splits["class_names"])
    mean, std = channel_stats(images["train"])
    num_channels = len(mean)
    logger.info(
        "train %d rows, counts %s; validation %s; test %d; channels %d",
        len(train),
        splits["train_class_counts"],
        None if splits["validation"] is None else len(splits["validation"]),
        len(splits["test"]),
        num_channels,
    )
    collator = None
    if margs.augmentation == "batched":
        device = args.device if margs.images_on_device else "cpu"
        if margs.images_on_device and (args.dataloader_num_workers or args.dataloader_pin_memory):
            raise ValueError(
                "--images_on_device keeps the images on the training device, where DataLoader workers and pinned "
                "memory cannot read them. Fix: add --dataloader_num_workers 0 --dataloader_pin_memory false."
            )
        labels = {name: splits[name].with_format(None)["label"] for name in images}
        for name in images:
            splits[name] = UInt8Images(images[name], labels[name], augment=name == "train", device=device)
        train = splits["train"]
        splits["train_eval"] = train.view(augment=False)  # training accuracy without augmentation
        collator = BatchImageCollator(mean, std, margs.crop_padding, margs.horizontal_flip)
    else:
        train.set_transform(
            ImageTransform(mean, std, shape, train=True, crop_padding=margs.crop_padding, flip=margs.horizontal_flip)
        )
        for name in ("validation", "test"):
            if splits[name] is not None:
                splits[name].set_transform(ImageTransform(mean, std, shape, train=False))
    del images

    set_seed(args.seed)
    model = build_model(margs, args, num_labels, num_channels, splits["class_names"])
    # Saved in config.json, so `hf-semscale measure` feeds a trained model the pixels it was trained on.
    model.config.image_mean = [float(v) for v in mean]
    model.config.image_std = [float(v) for v in std]
    store: dict[str, Any] = {}
    trainer = SemScaleTrainer(
        model=model,
        args=args,
        train_dataset=train,
        class_counts=splits["train_class_counts"],
        class_names=splits["class_names"],
        feature_module="classifier" if margs.model_type == "cifar_resnet" else None,
        compute_metrics=make_compute_metrics(splits["train_class_counts"], store),
        optimizers=build_optimizers(model, args, run, len(train)),
        data_collator=collator,
    )
    record = train_evaluate_and_record(
        trainer,
        args,
        data,
        run,
        splits,
        store,
        wall_start,
        extra={
            "model": margs.model_type,
            "depth": margs.depth if margs.model_type == "cifar_resnet" else margs.timm_architecture,
            "channel_mean": mean,
            "channel_std": std,
        },
    )
    logger.info(summary_line(record))
    return record


if __name__ == "__main__":
    main()
