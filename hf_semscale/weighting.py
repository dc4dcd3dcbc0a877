"""Per-class loss weights: semantic-scale-balanced (SSB) and the count-based baselines.

Every weight function returns a ``[C]`` float64 tensor of finite, positive weights, normalised
by :func:`normalize_weights`:

- ``"mean"`` (default): the mean per-sample weight under the training distribution is 1,
  ``sum_c n_c w_c / sum_c n_c = 1``, so the effective learning rate is unchanged;
- ``"sum"``: ``sum_c w_c = C``, as in the class-balanced loss (Cui et al., CVPR 2019);
- ``"none"``: raw weights.

This module imports torch only.
"""

from __future__ import annotations

import math
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
    t = torch.as_tensor(values).detach().to(torch.float64)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector [C], got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or inf at classes {torch.nonzero(~torch.isfinite(t)).flatten().tolist()}")
    if bool((t < 0).any()):
        raise ValueError(f"{name} must be >= 0; negative at classes {torch.nonzero(t < 0).flatten().tolist()}")
    return t


def normalize_weights(weights: Tensor, class_counts: Tensor | None = None, normalization: Normalization = "mean") -> Tensor:
    """Rescale non-negative ``weights`` ``[C]`` float64.

    ``"mean"``: ``sum_c n_c w_c / sum_c n_c = 1`` with ``class_counts`` ``[C]`` (uniform if None);
    ``"sum"``: ``sum_c w_c = C``; ``"none"``: unchanged.
    """
    weights = _as_float64(weights, "weights")
    if normalization == "none":
        return weights
    if normalization == "sum":
        total = weights.sum() / weights.numel()
    elif normalization == "mean":
        if class_counts is None:
            counts = torch.ones_like(weights)
        else:
            counts = _as_float64(class_counts, "class_counts").to(weights.device)
            if counts.shape != weights.shape:
                raise ValueError(f"class_counts has shape {tuple(counts.shape)}, weights {tuple(weights.shape)}")
            if float(counts.sum()) <= 0:
                raise ValueError("class_counts must have a positive total. Fix: pass the training counts per class.")
        total = (counts * weights).sum() / counts.sum()
    else:
        raise ValueError(f"normalization must be 'mean', 'sum' or 'none', got {normalization!r}")
    if not float(total) > 0:
        raise ValueError(
            f"weights sum to 0 under {normalization!r} normalisation. "
            "Fix: give at least one class that has samples a positive weight."
        )
    return weights / total


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
        gamma: strength (finite, >= 0); 0 gives uniform weights.
        class_counts: ``[C]`` training counts, for ``normalization="mean"``.
        normalization: see the module docstring; with ``"none"`` the class of largest scale has
            weight 1.
        floor: a scale is clamped to at least ``floor * max(S)`` (0 < floor <= 1), so a class of
            zero scale gets the finite relative weight ``floor ** -gamma``.

    Returns:
        ``[C]`` float64, finite and positive, non-increasing in the scale. All-zero scales give
        uniform weights.
    """
    scales = _as_float64(scales, "scales")
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be finite and >= 0, got {gamma}")
    top = scales.max()
    if float(top) <= 0.0:
        return normalize_weights(torch.ones_like(scales), class_counts, normalization)
    raw = (top / scales.clamp_min(floor * top)) ** gamma  # >= 1; inf only for an absurd gamma
    weights = normalize_weights(raw, class_counts, normalization) if bool(torch.isfinite(raw).all()) else raw
    if not bool((torch.isfinite(weights) & (weights > 0)).all()):
        raise ValueError(
            f"gamma={gamma} with floor={floor} makes the weights span more than float64 can hold. "
            "Fix: use a smaller gamma or a larger floor."
        )
    return weights


def inverse_frequency_weights(class_counts: Tensor, normalization: Normalization = "mean") -> Tensor:
    """``w_c ∝ 1 / n_c``; a class with no samples gets the weight of a class with one."""
    counts = _as_float64(class_counts, "class_counts")
    raw = 1.0 / counts.clamp_min(1.0)
    return normalize_weights(raw, counts, normalization)


def effective_number_weights(class_counts: Tensor, beta: float = 0.9999, normalization: Normalization = "mean") -> Tensor:
    """Class-balanced weights ``w_c ∝ (1 - beta) / (1 - beta ** n_c)`` (Cui et al., CVPR 2019).

    ``beta = 0`` gives uniform weights; ``beta -> 1`` approaches inverse frequency. A class with no
    samples gets the weight of a class with one. ``1 - beta ** n`` is computed as
    ``-expm1(n * log1p(-(1 - beta)))`` so it stays exact for beta close to 1.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = _as_float64(class_counts, "class_counts")
    one_minus_beta = torch.tensor(1.0 - beta, dtype=torch.float64, device=counts.device)
    effective_number = -torch.expm1(counts.clamp_min(1.0) * torch.log1p(-one_minus_beta)) / one_minus_beta
    return normalize_weights(1.0 / effective_number, counts, normalization)
