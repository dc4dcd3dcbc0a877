"""Long-tail classification metrics, as a pure-Python function and as an ``evaluate`` module.

``evaluate.load(LONG_TAIL_METRIC_PATH, train_class_counts=[...])`` loads the module offline;
both call :func:`long_tail_metrics`. This package imports numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LONG_TAIL_METRIC_PATH", "long_tail_metrics"]

LONG_TAIL_METRIC_PATH = str(Path(__file__).resolve().parent / "long_tail")
"""Folder of the ``evaluate`` module (``long_tail/long_tail.py``): pass it to ``evaluate.load``."""


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def long_tail_metrics(
    predictions: Sequence[int],
    references: Sequence[int],
    train_class_counts: Sequence[int],
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> dict[str, Any]:
    """Overall, balanced and many / medium / few-shot accuracy (Liu et al. 2019; Cao et al. 2019).

    A class is many-shot if it has more than ``many_threshold`` training samples, few-shot if it has
    fewer than ``few_threshold``, medium-shot otherwise. Group accuracies and ``balanced_accuracy``
    are means of per-class accuracies over the classes present in ``references``.

    Args:
        predictions, references: ``[N]`` class ids in ``[0, C)``.
        train_class_counts: ``[C]`` training samples per class (defines ``C`` and the groups).

    Returns:
        JSON-safe dict: ``accuracy``, ``balanced_accuracy``, ``many_shot_accuracy``,
        ``medium_shot_accuracy``, ``few_shot_accuracy`` (floats in [0, 1]; ``None`` for a group with no
        evaluated class) and ``per_class_accuracy`` (``[C]``, ``None`` for a class absent from ``references``).
    """
    preds = np.asarray(predictions, dtype=np.int64).reshape(-1)
    refs = np.asarray(references, dtype=np.int64).reshape(-1)
    counts = np.asarray(train_class_counts, dtype=np.int64).reshape(-1)
    num_classes = counts.size
    if preds.size != refs.size:
        raise ValueError(f"{preds.size} predictions but {refs.size} references")
    if refs.size == 0:
        raise ValueError("no references: nothing to evaluate")
    if num_classes == 0 or (counts < 0).any():
        raise ValueError("train_class_counts must be a non-empty list of non-negative counts, one per class")
    for name, values in (("predictions", preds), ("references", refs)):
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(
                f"{name} span [{values.min()}, {values.max()}] but train_class_counts has {num_classes} classes. "
                "Fix: pass one training count per class."
            )
    if few_threshold > many_threshold:
        raise ValueError(f"few_threshold ({few_threshold}) must not exceed many_threshold ({many_threshold})")

    correct = preds == refs
    evaluated = np.bincount(refs, minlength=num_classes)
    hits = np.bincount(refs, weights=correct, minlength=num_classes)
    per_class = [float(hits[c] / evaluated[c]) if evaluated[c] else None for c in range(num_classes)]

    def group_mean(in_group: np.ndarray) -> float | None:
        return _mean_or_none([per_class[c] for c in np.flatnonzero(in_group) if per_class[c] is not None])

    return {
        "accuracy": float(correct.mean()),
        "balanced_accuracy": _mean_or_none([a for a in per_class if a is not None]),
        "many_shot_accuracy": group_mean(counts > many_threshold),
        "medium_shot_accuracy": group_mean((counts >= few_threshold) & (counts <= many_threshold)),
        "few_shot_accuracy": group_mean(counts < few_threshold),
        "per_class_accuracy": per_class,
    }
