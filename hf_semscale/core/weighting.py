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
    "count_power_weights",
    "scale_equivalent_counts",
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


def normalize_weights(
    weights: Tensor, class_counts: Tensor | None = None, normalization: Normalization = "mean"
) -> Tensor:
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
    reverse: bool = False,
) -> Tensor:
    """SSB weights ``w_c ∝ (max_j S_j / max(S_c, floor * max_j S_j)) ** gamma``.

    ``reverse=True`` gives the opposite direction, ``w_c ∝ (max(S_c, floor * max_j S_j) / max_j S_j) ** gamma``:
    weights grow with the scale (towards the diverse classes). Not the paper's method; a control.

    Args:
        scales: ``[C]`` semantic scales in bits (>= 0).
        gamma: strength (finite, >= 0); 0 gives uniform weights.
        class_counts: ``[C]`` training counts, for ``normalization="mean"``.
        normalization: see the module docstring; with ``"none"`` the class of largest scale has
            weight 1.
        floor: a scale is clamped to at least ``floor * max(S)`` (0 < floor <= 1), so a class of
            zero scale gets the finite relative weight ``floor ** -gamma`` (``floor ** gamma`` reversed).
        reverse: weights non-decreasing (instead of non-increasing) in the scale.

    Returns:
        ``[C]`` float64, finite and positive, non-increasing in the scale (non-decreasing with
        ``reverse``). All-zero scales give uniform weights.
    """
    scales = _as_float64(scales, "scales")
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be finite and >= 0, got {gamma}")
    top = scales.max()
    if float(top) <= 0.0:
        return normalize_weights(torch.ones_like(scales), class_counts, normalization)
    ratio = top / scales.clamp_min(floor * top)  # >= 1
    raw = (1.0 / ratio if reverse else ratio) ** gamma  # inf (or 0) only for an absurd gamma
    weights = normalize_weights(raw, class_counts, normalization) if bool(torch.isfinite(raw).all()) else raw
    if not bool((torch.isfinite(weights) & (weights > 0)).all()) or not bool((raw > 0).all()):
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


def effective_number_weights(
    class_counts: Tensor, beta: float = 0.9999, normalization: Normalization = "mean"
) -> Tensor:
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


def count_power_weights(class_counts: Tensor, power: float = 1.0, normalization: Normalization = "mean") -> Tensor:
    """``w_c ∝ n_c ** -power``: inverse frequency with a tunable exponent (``power = 1``: inverse frequency,
    ``0``: uniform). A class with no samples gets the weight of a class with one."""
    if not (math.isfinite(power) and power >= 0):
        raise ValueError(f"power must be finite and >= 0, got {power}")
    counts = _as_float64(class_counts, "class_counts")
    return normalize_weights(counts.clamp_min(1.0) ** -power, counts, normalization)


def scale_equivalent_counts(scales: Tensor, curve_sizes: Tensor | list[int], curve_scales: Tensor) -> Tensor:
    """The sample count at which a reference marginal-effect curve reaches each class's scale.

    The curve ``(m_k, S_ref(m_k))`` (sizes ascending, e.g. the mean curve of the head classes) is made
    non-decreasing, starts at ``(1, 0)`` (one sample has no volume) and is interpolated linearly in
    ``log m``. A scale above the curve's end is extrapolated with the last segment's slope, at most to
    ``10 * m_last``; a flat curve end gives ``m_last``.

    Args:
        scales: ``[C]`` bits. curve_sizes: ``[K]`` subset sizes >= 2, ascending. curve_scales: ``[K]`` bits.

    Returns:
        ``[C]`` float64 counts >= 1 ("scale-equivalent counts"), for count-based weights.
    """
    scales = _as_float64(scales, "scales")
    sizes = _as_float64(curve_sizes, "curve_sizes")
    values = _as_float64(curve_scales, "curve_scales")
    if sizes.shape != values.shape or bool((sizes[1:] <= sizes[:-1]).any()) or float(sizes[0]) < 2:
        raise ValueError("curve_sizes must be ascending sizes >= 2, one per entry of curve_scales")
    log_m = torch.cat([torch.zeros(1, dtype=torch.float64), sizes.log()])
    curve = torch.cummax(torch.cat([torch.zeros(1, dtype=torch.float64), values]), dim=0).values
    out = torch.empty_like(scales)
    last_log, top = float(log_m[-1]), float(curve[-1])
    rise = top - float(curve[-2])
    slope = rise / (last_log - float(log_m[-2])) if rise > 0 else 0.0
    for c, s in enumerate(scales.tolist()):
        if s >= top:
            extra = (s - top) / slope if slope > 0 else 0.0
            out[c] = math.exp(min(last_log + extra, last_log + math.log(10.0)))
            continue
        k = int(
            torch.searchsorted(curve, torch.tensor(s, dtype=torch.float64), right=True)
        )  # curve[k-1] <= s < curve[k]
        lo, hi = float(curve[k - 1]), float(curve[k])
        frac = (s - lo) / (hi - lo) if hi > lo else 0.0
        out[c] = math.exp(float(log_m[k - 1]) + frac * float(log_m[k] - log_m[k - 1]))
    return out
