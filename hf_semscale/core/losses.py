"""Per-sample base losses and their class-weighted reduction.

A base loss maps ``logits [B, C]`` and ``labels [B]`` (``-100`` = ignore) to a per-sample loss
``[B]`` (0 at ignored positions). :func:`weighted_reduce` then computes
``sum_i w_{y_i} l_i / normaliser`` with the normaliser the number of labelled samples (or the
``num_items_in_batch`` the Trainer passes under gradient accumulation), never the sum of weights.

Losses: cross-entropy; focal (Lin et al. 2017); LDAM (Cao et al., NeurIPS 2019); balanced
softmax / logit adjustment (Ren et al. 2020; Menon et al. 2021). Label smoothing applies to all.
This module imports torch only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "BASE_LOSSES",
    "DEFAULT_LOSS_SETTINGS",
    "BaseLossName",
    "BaseLoss",
    "build_base_loss",
    "check_class_labels",
    "weighted_reduce",
]

IGNORE_INDEX = -100
"""The label of a sample that no loss, pool or count sees (the ``ignore_index`` of ``F.cross_entropy``)."""
BaseLossName = Literal["ce", "focal", "ldam", "balanced_softmax"]
BASE_LOSSES = ("ce", "focal", "ldam", "balanced_softmax")
DEFAULT_LOSS_SETTINGS = {"focal_gamma": 2.0, "ldam_max_margin": 0.5, "ldam_scale": 1.0, "logit_adjust_tau": 1.0}
"""The base losses' defaults (also :class:`~hf_semscale.dsb.settings.BalancerSettings`'). LDAM's scale 1 suits a
plain linear head; Cao et al.'s 30 goes with a cosine classifier."""


def check_class_labels(labels: Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` unless ``labels`` is a ``[B]`` integer tensor of ids in ``[0, num_classes)`` or
    :data:`IGNORE_INDEX`; the message names the offending values and the fix. One host sync."""
    if labels.ndim != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be integer class ids of shape [batch]; got {labels.dtype} of shape {tuple(labels.shape)}. "
            "Single-label classification only; use transformers.Trainer for multi-label or regression."
        )
    invalid = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))
    if bool(invalid.any()):  # the offending values are only gathered on error
        raise ValueError(
            f"labels {sorted(set(labels[invalid].tolist()))[:10]} are outside [0, {num_classes}) and not {IGNORE_INDEX} "
            f"(num_labels={num_classes}). "
            "Fix: remap the labels to 0..num_labels-1, or load the model with the right num_labels."
        )


@dataclass
class BaseLoss:
    """A per-sample classification loss.

    Attributes:
        name: ``"ce"``, ``"focal"``, ``"ldam"`` or ``"balanced_softmax"``.
        label_smoothing: in ``[0, 1)``, as in ``F.cross_entropy``.
        focal_gamma: focusing parameter of the focal loss.
        logit_offsets: ``[C]`` added to the logits before the softmax: ``tau * log(prior)`` for
            balanced softmax, ``None`` otherwise.
        margins: ``[C]`` LDAM margins subtracted from the true-class logit, ``None`` otherwise.
        logit_scale: LDAM's ``s`` multiplying the margin-adjusted logits.
    """

    name: BaseLossName = "ce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    logit_offsets: Tensor | None = None
    margins: Tensor | None = None
    logit_scale: float = 1.0

    def __call__(self, logits: Tensor, labels: Tensor, labels_checked: bool = False) -> Tensor:
        """``logits [B, C]`` (any float dtype), ``labels [B]`` -> per-sample loss ``[B]`` float32.
        ``labels_checked``: the caller validated ``labels`` (:func:`check_class_labels`) already."""
        if logits.ndim != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(
                f"expected logits [B, C] and labels [B]; got {tuple(logits.shape)} and {tuple(labels.shape)}"
            )
        num_classes = logits.shape[1]
        for name, per_class in (("logit_offsets", self.logit_offsets), ("margins", self.margins)):
            if per_class is not None and per_class.shape != (num_classes,):
                raise ValueError(
                    f"{self.name} loss has {name} for {per_class.numel()} classes but the logits have {num_classes}. "
                    "Fix: build the loss with class_counts of length num_labels."
                )
        if not labels_checked:
            check_class_labels(labels, num_classes)
        valid = labels != IGNORE_INDEX
        logits = logits.float()
        safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
        if self.logit_offsets is not None:
            logits = logits + self.logit_offsets.to(logits)
        if self.margins is not None:
            margin = self.margins.to(logits)[safe_labels]
            logits = logits - F.one_hot(safe_labels, logits.shape[1]).to(logits) * margin[:, None]
            logits = logits * self.logit_scale
        ce = F.cross_entropy(logits, safe_labels, reduction="none", label_smoothing=self.label_smoothing)
        if self.name == "focal":
            p_true = torch.softmax(logits, dim=-1).gather(1, safe_labels[:, None]).squeeze(1)
            ce = (1.0 - p_true).clamp_min(0.0).pow(self.focal_gamma) * ce
        return torch.where(valid, ce, torch.zeros_like(ce))


def build_base_loss(
    name: BaseLossName,
    class_counts: Tensor | None = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = DEFAULT_LOSS_SETTINGS["focal_gamma"],
    ldam_max_margin: float = DEFAULT_LOSS_SETTINGS["ldam_max_margin"],
    ldam_scale: float = DEFAULT_LOSS_SETTINGS["ldam_scale"],
    logit_adjust_tau: float = DEFAULT_LOSS_SETTINGS["logit_adjust_tau"],
) -> BaseLoss:
    """Build a base loss; ``ldam`` and ``balanced_softmax`` need the training ``class_counts [C]``.

    LDAM margins are ``m_c ∝ n_c ** -1/4`` with ``max_c m_c = ldam_max_margin``; balanced softmax adds
    ``logit_adjust_tau * log(n_c / N)`` to the logits (``tau = 1`` is balanced softmax).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if name not in BASE_LOSSES:
        raise ValueError(f"unknown base loss {name!r}; choose 'ce', 'focal', 'ldam' or 'balanced_softmax'")
    if focal_gamma < 0:
        raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
    loss = BaseLoss(name=name, label_smoothing=label_smoothing, focal_gamma=focal_gamma)
    if name in ("ldam", "balanced_softmax"):
        if class_counts is None:
            raise ValueError(f"base loss {name!r} needs the training class counts: pass class_counts=[n_0, ..., n_C-1]")
        counts = torch.as_tensor(class_counts, dtype=torch.float32)
        if (
            counts.ndim != 1
            or counts.numel() == 0
            or not bool(torch.isfinite(counts).all())
            or bool((counts < 0).any())
        ):
            raise ValueError(f"class_counts must be a non-empty [C] vector of counts >= 0; got {class_counts!r}")
        if name == "ldam" and (ldam_max_margin <= 0 or ldam_scale <= 0):
            raise ValueError(f"ldam_max_margin and ldam_scale must be > 0; got {ldam_max_margin} and {ldam_scale}")
        counts = counts.clamp_min(1.0)  # a class without samples is treated as having one
        if name == "ldam":
            margins = counts.pow(-0.25)
            loss.margins = margins * (ldam_max_margin / margins.max())
            loss.logit_scale = ldam_scale
        else:
            loss.logit_offsets = logit_adjust_tau * torch.log(counts / counts.sum())
    return loss


def weighted_reduce(
    per_sample: Tensor,
    labels: Tensor,
    class_weights: Tensor | None = None,
    num_items_in_batch: int | Tensor | None = None,
) -> Tensor:
    """``sum_i w_{y_i} l_i / normaliser`` over labelled samples.

    Args:
        per_sample: ``[B]`` losses (0 where ``labels == -100``).
        labels: ``[B]`` int.
        class_weights: ``[C]`` or None (all ones).
        num_items_in_batch: the normaliser when given (labelled samples across the accumulated
            micro-batches, and across processes if the Trainer averages across devices); else the
            number of labelled samples in this batch. Clamped to at least 1.
    """
    if per_sample.shape != labels.shape or per_sample.ndim != 1:
        raise ValueError(
            f"expected per_sample [B] and labels [B]; got {tuple(per_sample.shape)} and {tuple(labels.shape)}"
        )
    valid = labels != IGNORE_INDEX
    per_sample = torch.where(valid, per_sample, torch.zeros_like(per_sample))  # not a product: NaN * 0 is NaN
    if class_weights is not None:
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        per_sample = per_sample * class_weights.to(per_sample)[safe]
    if num_items_in_batch is None:
        denom = valid.sum().clamp_min(1).to(per_sample)
    else:  # 0 when no micro-batch has a label: the loss is then 0, not NaN
        denom = torch.as_tensor(num_items_in_batch, device=per_sample.device).to(per_sample).clamp_min(1)
    return per_sample.sum() / denom
