"""``semantic_scales.json``: the per-class scale report written by the trainer and ``measure``.

Schema (``format_version`` 1)::

    {
      "format_version": 1,
      "library_version": "0.1.0",
      "framework_versions": {...},     # python, hf_semscale, transformers, torch, ... that wrote it
      "source": "trainer" | "measure",
      "space": "feature" | "sample",
      "step": int | null,              # trainer: global step of the report
      "stage": "warmup" | "fill" | "reweight" | null,
      "feature_dim": int,
      "settings": {...},               # alpha, normalize, gamma, weighting, ... (JSON scalars)
      "classes": [{"id": 0, "name": "airplane", "count": 5000, "scale": 5.12, "weight": 1.0, ...}],
      "summary": {...},                # imbalance.imbalance_summary(...)
      "marginal_effect": {...}         # optional
      "metrics": {...}                 # optional evaluation results
    }

``count`` is the number of samples the scale was measured on (pool rows for the trainer).
Files are written atomically (temporary file + rename), so a reader never sees half a report.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_path

SCALES_FILENAME = "semantic_scales.json"
FORMAT_VERSION = 1
REQUIRED_CLASS_KEYS = ("id", "name", "count", "scale")

__all__ = [
    "SCALES_FILENAME",
    "build_scale_report",
    "write_json_atomic",
    "write_report_and_plots",
    "read_scale_report",
    "ReportError",
]


class ReportError(ValueError):
    """A ``semantic_scales.json`` that is missing, malformed, or of an unknown version."""


def _json_scalar(value: Any) -> Any:
    """Python ints, strings and None as they are; other numbers (numpy, torch) as float, NaN/inf as None."""
    if value is None or isinstance(value, (int, str)):
        return value
    if hasattr(value, "__float__"):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def build_scale_report(
    *,
    source: str,
    scales: Sequence[float],
    counts: Sequence[int],
    class_names: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    feature_dim: int | None = None,
    space: str = "feature",
    step: int | None = None,
    stage: str | None = None,
    settings: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
    extra_per_class: dict[str, Sequence[Any]] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """Assemble a report dict; every per-class sequence has length ``C``."""
    from .. import __version__
    from ..environment import framework_versions

    num_classes = len(scales)
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    columns = {"name": names, "count": list(counts), "weight": None if weights is None else list(weights)}
    columns.update(extra_per_class or {})
    for key, col in columns.items():
        if col is not None and len(col) != num_classes:
            raise ValueError(f"per-class '{key}' has {len(col)} entries, expected {num_classes}")
    classes = []
    for c in range(num_classes):
        row: dict[str, Any] = {"id": c, "name": str(names[c]), "count": int(counts[c]), "scale": float(scales[c])}
        for key, col in columns.items():
            if key not in ("name", "count") and col is not None:
                row[key] = _json_scalar(col[c])
        classes.append(row)
    report = {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "framework_versions": framework_versions(),
        "source": source,
        "space": space,
        "step": step,
        "stage": stage,
        "feature_dim": feature_dim,
        "settings": settings or {},
        "classes": classes,
        "summary": summary or {},
    }
    report.update({k: v for k, v in sections.items() if v is not None})
    return report


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any] | list[Any]) -> Path:
    """Write ``payload`` as indented JSON atomically (:func:`~hf_semscale.atomic.atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, allow_nan=False)
        fh.write("\n")
    return path


def write_report_and_plots(
    folder: str | os.PathLike, report: dict[str, Any], *, plots: bool = True, title: str | None = None
) -> list[Path]:
    """``folder/semantic_scales.json`` and, with ``plots``, its PNG plots
    (:func:`hf_semscale.plotting.write_report_plots`, titled ``title``); returns the written paths."""
    paths = [write_json_atomic(Path(folder) / SCALES_FILENAME, report)]
    if plots:
        from ..plotting import write_report_plots

        paths += write_report_plots(folder, report, title=title)
    return paths


def read_scale_report(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a report (a file, or a folder holding ``semantic_scales.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / SCALES_FILENAME
    if not path.is_file():
        raise ReportError(f"{path}: not found. Fix: train with SemScaleTrainer or run `hf-semscale measure` first.")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(report, dict) or report.get("format_version") != FORMAT_VERSION:
        raise ReportError(
            f"{path}: unknown format_version {report.get('format_version') if isinstance(report, dict) else None!r}"
        )
    classes = report.get("classes")
    if not isinstance(classes, list) or not classes:
        raise ReportError(f"{path}: 'classes' must be a non-empty list")
    for row in classes:
        missing = [k for k in REQUIRED_CLASS_KEYS if k not in row]
        if missing:
            raise ReportError(f"{path}: class entry {row.get('id', '?')} lacks {missing}")
    return report
