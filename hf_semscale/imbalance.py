"""Semantic-scale imbalance: normalised scales, per-class degree, dataset summary, correlations.

Owned by the math work (issue 2); this stub fixes the public signatures.
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalized_scales(scales: Tensor) -> Tensor:
    """``S'_c = S_c / max_j S_j`` ``[C]`` float64 (all zeros if every scale is 0)."""
    raise NotImplementedError


def imbalance_degree(scales: Tensor, floor: float = 0.05) -> Tensor:
    """``I_c = max_j S_j / max(S_c, floor * max_j S_j)`` ``[C]`` float64, >= 1."""
    raise NotImplementedError


def imbalance_summary(scales: Tensor, counts: Tensor, per_class_accuracy: Tensor | None = None) -> dict:
    """JSON-ready dataset summary (see issue 2)."""
    raise NotImplementedError
