"""Semantic-scale imbalance: normalised scales, per-class degree, dataset summary, correlations.

- normalised scale ``S'_c = S_c / max_j S_j``;
- per-class degree (ours) ``I_c = max_j S_j / max(S_c, floor * max_j S_j)`` (>= 1, the analogue
  of the imbalance factor ``n_max / n_c``);
- :func:`imbalance_summary`: max/min ratio, coefficient of variation, and, given per-class
  accuracy, Pearson and Spearman correlations of accuracy with scale and with sample count.

This module imports torch and numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .scale import MIN_SAMPLES_FOR_SCALE

__all__ = [
    "normalized_scales",
    "imbalance_degree",
    "imbalance_summary",
    "pearson",
    "spearman",
    "average_ranks",
    "permutation_p_value",
]


def _vector(values: Tensor | Sequence[float], name: str, non_negative: bool = True) -> Tensor:
    """``values`` as a validated 1-D float64 CPU tensor."""
    t = torch.as_tensor(values).detach().to(device="cpu", dtype=torch.float64)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector [C], got shape {tuple(t.shape)}")
    bad = torch.nonzero(~torch.isfinite(t)).flatten().tolist()
    if bad:
        raise ValueError(
            f"{name} holds NaN or inf at classes {bad[:20]}. Fix: measure them again or drop those classes."
        )
    if non_negative and bool((t < 0).any()):
        raise ValueError(f"{name} must be >= 0; negative at classes {torch.nonzero(t < 0).flatten().tolist()[:20]}")
    return t


def normalized_scales(scales: Tensor) -> Tensor:
    """``S'_c = S_c / max_j S_j`` ``[C]`` float64 in ``[0, 1]`` (all zeros if every scale is 0)."""
    s = _vector(scales, "scales")
    top = s.max()
    return s / top if float(top) > 0 else torch.zeros_like(s)


def imbalance_degree(scales: Tensor, floor: float = 0.05) -> Tensor:
    """``I_c = max_j S_j / max(S_c, floor * max_j S_j)`` ``[C]`` float64, in ``[1, 1/floor]``.

    ``floor`` (0 < floor <= 1) keeps a class of zero scale finite; all-zero scales give ones.
    """
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    s = _vector(scales, "scales")
    top = s.max()
    if float(top) <= 0:
        return torch.ones_like(s)
    return top / s.clamp_min(floor * top)


def average_ranks(values: Tensor) -> Tensor:
    """1-based ranks ``[C]`` float64 of ``values`` ``[C]``; tied values share their average rank."""
    v = _vector(values, "values", non_negative=False)
    sorted_values, order = torch.sort(v, stable=True)
    n = v.numel()
    # Runs of equal values in sorted order: every member gets the mean of the run's positions.
    new_run = torch.ones(n, dtype=torch.bool)
    new_run[1:] = sorted_values[1:] != sorted_values[:-1]
    run_id = torch.cumsum(new_run.to(torch.long), 0) - 1
    positions = torch.arange(1, n + 1, dtype=torch.float64)
    run_sum = torch.zeros(int(run_id[-1]) + 1, dtype=torch.float64).index_add_(0, run_id, positions)
    run_len = torch.bincount(run_id).to(torch.float64)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = (run_sum / run_len)[run_id]
    return ranks


def pearson(x: Tensor, y: Tensor) -> tuple[float | None, str | None]:
    """Pearson correlation of two ``[C]`` vectors: ``(r, None)``, or ``(None, reason)`` when undefined."""
    a = _vector(x, "x", non_negative=False)
    b = _vector(y, "y", non_negative=False)
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length, got {a.numel()} and {b.numel()}")
    if a.numel() < 2:
        return None, "fewer than 2 classes"
    # Tested on the values, not the centred values: centring a constant leaves rounding noise.
    if bool((a == a[0]).all()):
        return None, "constant vector (zero variance): x"
    if bool((b == b[0]).all()):
        return None, "constant vector (zero variance): y"
    da, db = a - a.mean(), b - b.mean()
    r = float((da / da.norm()) @ (db / db.norm()))
    return max(-1.0, min(1.0, r)), None


def spearman(x: Tensor, y: Tensor) -> tuple[float | None, str | None]:
    """Spearman rank correlation (average ranks for ties): Pearson of the ranks, or ``(None, reason)``."""
    return pearson(average_ranks(x), average_ranks(y))


def permutation_p_value(
    x: Tensor | Sequence[float], y: Tensor | Sequence[float], rank: bool, permutations: int = 20000, seed: int = 0
) -> float | None:
    """Two-sided permutation p-value of the Pearson (``rank=False``) or Spearman correlation of ``x``, ``y`` ``[C]``.

    The share of ``permutations`` random shuffles of ``y`` (numpy generator seeded with ``seed``) whose correlation is
    at least as large in absolute value as the observed one, counting the observed order: ``(1 + hits) / (1 +
    permutations)``. None when ``x`` or ``y`` is constant (the correlation is undefined).
    """
    a, b = _vector(x, "x", non_negative=False), _vector(y, "y", non_negative=False)
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length, got {a.numel()} and {b.numel()}")
    if bool((a == a[0]).all()) or bool((b == b[0]).all()):
        return None
    a, b = (average_ranks(a), average_ranks(b)) if rank else (a, b)
    a, b = a.numpy(), b.numpy()
    a, b = (a - a.mean()) / np.linalg.norm(a - a.mean()), (b - b.mean()) / np.linalg.norm(b - b.mean())
    observed = abs(a @ b)
    shuffles = np.argsort(np.random.default_rng(seed).random((permutations, a.size)), axis=1)
    null = np.abs(b[shuffles] @ a)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations))


def _ratio(values: Tensor, what: str) -> tuple[float | None, str | None]:
    low, high = float(values.min()), float(values.max())
    if low <= 0:
        return None, f"the smallest {what} is 0, so max/min is unbounded"
    return high / low, None


def _coefficient_of_variation(values: Tensor, what: str) -> tuple[float | None, str | None]:
    mean = float(values.mean())
    if mean <= 0:
        return None, f"every {what} is 0, so std/mean is undefined"
    return float(values.std(correction=0)) / mean, None


def imbalance_summary(scales: Tensor, counts: Tensor, per_class_accuracy: Tensor | None = None) -> dict:
    """JSON-ready summary of semantic-scale imbalance, beside the sample-count imbalance.

    Args:
        scales: ``[C]`` semantic scales in bits (>= 0).
        counts: ``[C]`` samples per class the scales were measured on (>= 0).
        per_class_accuracy: ``[C]`` optional accuracy per class (any unit, e.g. 0..1).

    Returns:
        dict of plain floats, ints, lists, strings and ``None`` (never NaN or inf):

        - ``num_classes``; ``num_classes_with_volume``: classes with at least 2 samples and a non-zero scale;
        - over the classes with volume only (a scale of 0 there means "not measured", not "no diversity";
          the trainer's logged ``semscale/scale_*`` use the same rule): ``scale_min``, ``scale_max``,
          ``scale_mean``, ``scale_std``, ``max_min_ratio`` (``max S / min S``), ``coefficient_of_variation``
          (population std / mean), and the scale-accuracy correlations; ``None`` when no class has volume;
        - ``classes_without_volume``: ids with fewer than 2 samples or scale exactly 0;
        - ``count_min``, ``count_max``, ``count_max_min_ratio`` (``None`` when a class has 0 samples),
          ``count_coefficient_of_variation``;
        - with accuracy: ``pearson_scale_accuracy``, ``spearman_scale_accuracy``,
          ``pearson_count_accuracy``, ``spearman_count_accuracy`` (Spearman with average ranks for
          ties); ``None`` when undefined (a constant vector, fewer than 2 classes);
        - ``notes``: for every ``None`` above, its key and the reason.
    """
    s = _vector(scales, "scales")
    n = _vector(counts, "counts")
    if n.shape != s.shape:
        raise ValueError(f"counts has {n.numel()} classes, scales {s.numel()}. Fix: pass one count per class.")
    notes: dict[str, str] = {}

    def keep(key: str, result: tuple[float | None, str | None]) -> float | None:
        value, reason = result
        if reason is not None:
            notes[key] = reason
        return value

    measured = (n >= MIN_SAMPLES_FOR_SCALE) & (s > 0)
    no_volume = torch.nonzero(~measured).flatten().tolist()
    m = s[measured]
    no_volume_reason = "no class has a measured volume (>= 2 samples and a non-zero scale)"
    summary: dict = {"num_classes": int(s.numel()), "num_classes_with_volume": int(measured.sum())}
    if m.numel():
        summary.update(
            {
                "scale_min": float(m.min()),
                "scale_max": float(m.max()),
                "scale_mean": float(m.mean()),
                "scale_std": float(m.std(correction=0)),
                "max_min_ratio": keep("max_min_ratio", _ratio(m, "scale")),
                "coefficient_of_variation": keep("coefficient_of_variation", _coefficient_of_variation(m, "scale")),
            }
        )
    else:
        for key in ("scale_min", "scale_max", "scale_mean", "scale_std", "max_min_ratio", "coefficient_of_variation"):
            summary[key] = keep(key, (None, no_volume_reason))
    summary.update(
        {
            "classes_without_volume": no_volume,
            "count_min": _as_number(n.min()),
            "count_max": _as_number(n.max()),
            "count_max_min_ratio": keep("count_max_min_ratio", _ratio(n, "count")),
            "count_coefficient_of_variation": keep(
                "count_coefficient_of_variation", _coefficient_of_variation(n, "count")
            ),
        }
    )
    if per_class_accuracy is not None:
        acc = _vector(per_class_accuracy, "per_class_accuracy", non_negative=False)
        if acc.shape != s.shape:
            raise ValueError(f"per_class_accuracy has {acc.numel()} classes, scales {s.numel()}")
        for name, values, accuracy in (("scale", m, acc[measured]), ("count", n, acc)):
            for kind, correlation in (("pearson", pearson), ("spearman", spearman)):
                key = f"{kind}_{name}_accuracy"
                if values.numel():
                    summary[key] = keep(key, _named(correlation(values, accuracy), name))
                else:  # the scale correlations when no class has volume
                    summary[key] = keep(key, (None, no_volume_reason))
    summary["notes"] = notes
    return summary


def _named(result: tuple[float | None, str | None], name: str) -> tuple[float | None, str | None]:
    """Replace the generic ``x``/``y`` in a correlation's reason by what they are."""
    value, reason = result
    if reason is not None:
        reason = reason.replace(": x", f": {name}").replace(": y", ": accuracy")
    return value, reason


def _as_number(value: Tensor) -> int | float:
    v = float(value)
    return int(v) if v.is_integer() else v
