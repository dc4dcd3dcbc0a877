"""Which regime a dataset is in, for semantic-scale weighting, and what the project's measurements say to use there.

The volume ``1/2 log2 det(I + alpha/m Zc^T Zc)`` of a class of ``m`` feature rows in ``d`` dimensions grows with ``m``
while ``m < d`` and saturates once ``m >> d`` (docs/method.md, "The regime question"). So where tail classes have fewer
samples than the feature dimension the scale carries the count (and DSB acts as a count weight with a data-chosen
exponent); where every class has many more samples than ``d`` it does not. The thresholds below and the recommended
configurations come from the regime study (docs/results.md); ``hf-semscale select`` measures the choice on the user's
own data instead of trusting them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.imbalance import spearman

__all__ = ["REGIMES", "BALANCED_MAX_RATIO", "MILD_MAX_RATIO", "diagnose_regime"]

BALANCED_MAX_RATIO = 1.5
"""Count ratio (largest / smallest class) up to which a dataset counts as sample-balanced."""
MILD_MAX_RATIO = 8.0
"""Count ratio below which the imbalance is mild (BANKING77 as shipped: 30-182 per class, ratio 6.1)."""

REGIMES: dict[str, dict[str, Any]] = {
    "balanced": {
        "summary": "sample-balanced: every class has about the same number of samples",
        "config": {"semscale_loss": "ce", "semscale_weighting": "none"},
        "evidence": "no scale-derived weighting beat CE on sample-balanced CLINC150 (frozen MiniLM) or CIFAR-10 "
        "(ResNet-8): docs/results.md, 'Which method should I use?'",
    },
    "mild_imbalance": {
        "summary": "mildly imbalanced (count ratio below 8)",
        "config": {"semscale_loss": "ce", "semscale_weighting": "none"},
        "evidence": "BANKING77 as shipped (30-182 per class): every method within 0.4 points of CE "
        "(docs/results.md, CPU tier)",
    },
    "long_tail_below_dim": {
        "summary": "long-tailed, tail classes with fewer samples than the feature dimension: the scale follows the count",
        "config": {
            "semscale_loss": "ce",
            "semscale_weighting": "count_power",
            "semscale_count_power": 1.0,
            "semscale_reweight_start": 0.1,
        },
        "evidence": "hf-semscale select on CLINC150-LT IF=10 / IF=50 and BANKING77-LT with frozen MiniLM (d = 256) chose "
        "tuned count weights from 10 % of training every time (CE + p 1 twice, balanced softmax + p 0.5 once), within "
        "0.31 points of the best method of the regime study; DSB on balanced softmax is within 0.4 points of them "
        "(docs/results.md). Validate the base loss, exponent and start on your data",
    },
    "long_tail_above_dim": {
        "summary": "long-tailed, every class has at least as many samples as the feature dimension: the scale "
        "does not carry the count",
        "config": {"semscale_loss": "balanced_softmax", "semscale_weighting": "none"},
        "evidence": "CIFAR-10-LT IF=100 (d = 32, >= 49 per class): balanced softmax 45.37, DSB on top 45.47 (no "
        "gain), dsb_ce 9 points behind class-balanced CE (docs/results.md, CPU tier)",
    },
}
"""Regime name -> its one-line summary, the ``SemScaleConfig`` fields the evidence supports, and where that is."""


def diagnose_regime(
    class_counts: Sequence[int] | Tensor, feature_dim: int, scales: Sequence[float] | Tensor | None = None
) -> dict[str, Any]:
    """The regime of a training set (``class_counts [C]``) for features of ``feature_dim`` dimensions.

    ``scales [C]`` (bits, optional) adds the rank correlation of scale and count over the classes with a measured
    volume (scale > 0). Classes without training samples are left out. Returns a JSON-ready dict: ``feature_dim``,
    ``num_classes``, ``fraction_classes_below_dim`` (share of classes with fewer samples than ``d``),
    ``count_min`` / ``count_max``, ``count_ratio``, ``spearman_scale_count`` (None with ``spearman_reason`` when
    undefined), ``name``, ``summary`` and ``recommendation`` (``config``: ``SemScaleConfig`` fields; ``evidence``).
    """
    counts = torch.as_tensor(class_counts).flatten()
    if counts.is_floating_point() or counts.numel() < 2 or bool((counts < 0).any()):
        raise ValueError(f"class_counts must be >= 2 integer counts >= 0, got {counts.tolist()}")
    if not isinstance(feature_dim, int) or feature_dim < 1:
        raise ValueError(f"feature_dim must be a positive integer, got {feature_dim!r}")
    present = counts > 0
    if int(present.sum()) < 2:
        raise ValueError(
            f"only {int(present.sum())} class has training samples (counts {counts.tolist()}); a regime needs at least "
            "2. Fix: check the label column of the training split."
        )
    kept = counts[present].to(torch.float64)
    ratio = float(kept.max() / kept.min())
    below = float((kept < feature_dim).to(torch.float64).mean())
    correlation, reason = None, "no scales given"
    if scales is not None:
        s = torch.as_tensor(scales, dtype=torch.float64).flatten()
        if s.shape != counts.shape:
            raise ValueError(f"scales has {s.numel()} entries but class_counts {counts.numel()}")
        measured = present & (s > 0)
        correlation, reason = (
            spearman(s[measured], counts[measured].to(torch.float64))
            if int(measured.sum()) >= 2
            else (None, "fewer than 2 classes with a measured volume")
        )
    if ratio <= BALANCED_MAX_RATIO:
        name = "balanced"
    elif ratio < MILD_MAX_RATIO:
        name = "mild_imbalance"
    elif float(kept.min()) < feature_dim:
        name = "long_tail_below_dim"
    else:
        name = "long_tail_above_dim"
    regime = REGIMES[name]
    return {
        "name": name,
        "summary": regime["summary"],
        "feature_dim": feature_dim,
        "num_classes": int(counts.numel()),
        "num_classes_without_samples": int((~present).sum()),
        "fraction_classes_below_dim": below,
        "count_min": int(kept.min()),
        "count_max": int(kept.max()),
        "count_ratio": ratio,
        "spearman_scale_count": correlation,
        "spearman_reason": reason,
        "recommendation": {"config": dict(regime["config"]), "evidence": regime["evidence"]},
    }
