"""Per-class loss weights: semantic-scale-balanced (SSB) and the count-based baselines.

Every function returns a ``[C]`` float64 tensor of finite, positive weights, normalised by
:func:`normalize_weights`:

- ``"mean"`` (default): the mean per-sample weight under the training distribution is 1,
  ``sum_c n_c w_c / sum_c n_c = 1``, so the effective learning rate is unchanged;
- ``"sum"``: ``sum_c w_c = C``, as in the class-balanced loss (Cui et al., CVPR 2019);
- ``"none"``: raw weights.

This module imports torch only.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Normalization",
    "normalize_weights",
    "semantic_scale_weights",
    "inverse_frequency_weights",
    "effective_number_weights",
]

Normalization = Literal["mean", "sum", "none"]


def _as_float64(values: Tensor | list[float], name: str) -> Tensor:
    t = torch.as_tensor(values).to(torch.float64)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector [C], got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or inf at classes {torch.nonzero(~torch.isfinite(t)).flatten().tolist()}")
    return t


def normalize_weights(weights: Tensor, class_counts: Tensor | None = None, normalization: Normalization = "mean") -> Tensor:
    """Rescale positive ``weights`` ``[C]``; ``"mean"`` needs ``class_counts`` ``[C]`` (uniform if None)."""
    weights = _as_float64(weights, "weights")
    if normalization == "none":
        return weights
    if normalization == "sum":
        return weights * (weights.numel() / weights.sum())
    if normalization == "mean":
        if class_counts is None:
            counts = torch.ones_like(weights)
        else:
            counts = _as_float64(class_counts, "class_counts").to(weights.device)
            if counts.shape != weights.shape:
                raise ValueError(f"class_counts has shape {tuple(counts.shape)}, weights {tuple(weights.shape)}")
            if bool((counts < 0).any()) or float(counts.sum()) <= 0:
                raise ValueError("class_counts must be non-negative with a positive total")
        return weights * (counts.sum() / (counts * weights).sum())
    raise ValueError(f"normalization must be 'mean', 'sum' or 'none', got {normalization!r}")


def semantic_scale_weights(
    scales: Tensor,
    gamma: float = 1.0,
    class_counts: Tensor | None = None,
    normalization: Normalization = "mean",
    floor: float = 0.05,
) -> Tensor:
    """SSB weights ``w_c ∝ (max_j S_j / max(S_c, floor * max_j S_j)) ** gamma``.

    Args:
        scales: ``[C]`` semantic scales in bits (>= 0).
        gamma: strength; 0 gives uniform weights.
        class_counts: ``[C]`` training counts, for ``normalization="mean"``.
        normalization: see the module docstring.
        floor: a scale is clamped to at least ``floor * max(S)`` (0 < floor <= 1), so a class of
            zero scale gets the finite weight ``floor ** -gamma`` (before normalisation).

    Returns:
        ``[C]`` float64, finite and positive. All-zero scales give uniform weights.
    """
    scales = _as_float64(scales, "scales")
    if bool((scales < 0).any()):
        raise ValueError("semantic scales must be >= 0 bits")
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    top = scales.max()
    if float(top) <= 0.0:
        raw = torch.ones_like(scales)
    else:
        raw = (top / scales.clamp_min(floor * top)) ** gamma
    return normalize_weights(raw, class_counts, normalization)


def inverse_frequency_weights(class_counts: Tensor, normalization: Normalization = "mean") -> Tensor:
    """``w_c ∝ 1 / n_c``; a class with no samples gets the weight of a class with one."""
    counts = _as_float64(class_counts, "class_counts")
    raw = 1.0 / counts.clamp_min(1.0)
    return normalize_weights(raw, counts, normalization)


def effective_number_weights(class_counts: Tensor, beta: float = 0.9999, normalization: Normalization = "mean") -> Tensor:
    """Class-balanced weights ``w_c ∝ (1 - beta) / (1 - beta ** n_c)`` (Cui et al., CVPR 2019)."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = _as_float64(class_counts, "class_counts")
    raw = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts.clamp_min(1.0)))
    if beta == 0.0:
        raw = torch.ones_like(counts)
    return normalize_weights(raw, counts, normalization)
