"""PNG plots of semantic scales: marginal-effect curves, and scale against count and accuracy.

matplotlib is imported lazily; figures are drawn on ``matplotlib.figure.Figure`` objects rendered by
the Agg canvas, so no display is needed and pyplot's global state (and backend) is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["plot_marginal_effect", "plot_scale_count_accuracy"]

_MAX_LEGEND_ENTRIES = 20


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


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
    """Per-class mean ± std scale (bits) against subset size ``m`` (log x axis); returns ``path``.

    Args:
        curves: ``MarginalEffect.to_dict()``: ``sizes [S]``, ``mean [C][S]``, ``std [C][S]`` with
            ``None`` where ``m > n_c``.
        class_names: ``C`` legend labels (default: class ids); the legend is left out above 20 classes.
    """
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
    colors = colormaps["viridis"](np.linspace(0, 1, max(mean.shape[0], 2)))
    for c in range(mean.shape[0]):
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
    if mean.shape[0] <= _MAX_LEGEND_ENTRIES:
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    return _save(fig, path)


def plot_scale_count_accuracy(
    classes: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Per class: scale vs count, and (when rows carry ``accuracy``) scale vs accuracy and count vs accuracy.

    Args:
        classes: the ``classes`` rows of ``semantic_scales.json`` (``count``, ``scale`` and optionally
            ``accuracy`` in [0, 1] or None); correlations appear in the panel titles.
    """
    if not classes:
        raise ValueError("no classes to plot")
    counts = [float(row["count"]) for row in classes]
    scales = [float(row["scale"]) for row in classes]
    rated = [row for row in classes if row.get("accuracy") is not None]
    count_axis, scale_axis, acc_axis = ("count", "samples per class"), ("scale", "semantic scale (bits)"), ("accuracy", "accuracy (%)")
    panels = [(counts, scales, count_axis, scale_axis)]
    if rated:
        acc = [100.0 * float(row["accuracy"]) for row in rated]
        panels.append(([float(row["scale"]) for row in rated], acc, scale_axis, acc_axis))
        panels.append(([float(row["count"]) for row in rated], acc, count_axis, acc_axis))
    fig = _figure(4.5 * len(panels), 4)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (x, y, (x_name, x_label), (y_name, y_label)) in zip(axes[0], panels):
        ax.scatter(x, y, s=14, alpha=0.8)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.set_title(_fmt_corr(x, y, x_name, y_name), fontsize=9)
        ax.grid(True, alpha=0.3)
        if x_name == "count" and min(x) > 0 and max(x) / min(x) > 20:
            ax.set_xscale("log")
    fig.suptitle(title or f"{len(classes)} classes: semantic scale, sample count" + (", accuracy" if rated else ""))
    return _save(fig, path)
