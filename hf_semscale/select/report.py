"""A selection's outputs: ``selection.json``, ``selection.md``, ``recommended.yaml`` and ``selection.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..atomic import atomic_path
from ..environment import machine_text
from ..hub.report import write_json_atomic
from .candidates import knob_text

__all__ = ["write_selection", "format_table", "config_kwargs", "summary_lines"]

_SHOWN = (
    ("validation_balanced_accuracy", "val balanced"),
    ("test_balanced_accuracy", "test balanced"),
    ("test_many_shot_accuracy", "many"),
    ("test_medium_shot_accuracy", "medium"),
    ("test_few_shot_accuracy", "few"),
)


def _cell(row: dict[str, Any], key: str) -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    return "—" if mean is None else f"{100 * mean:.2f} ± {100 * (std or 0):.2f}"


def format_table(result: dict[str, Any]) -> str:
    """The candidates as a markdown table (mean ± seed std, %), the chosen one in bold."""
    lines = [
        "| method | pool | knobs chosen on validation | " + " | ".join(label for _, label in _SHOWN) + " |",
        "|---|---|---|" + "---|" * len(_SHOWN),
    ]
    for row in result["candidates"]:
        name = f"**{row['method']}**" if row["method"] == result["chosen"] else row["method"]
        cells = [_cell(row, key) for key, _ in _SHOWN]
        lines.append(
            f"| {name} | {'yes' if row['uses_pool'] else 'no'} | {knob_text(row['knobs']) or '—'} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def config_kwargs(result: dict[str, Any]) -> dict[str, Any]:
    """The chosen candidate's ``SemScaleConfig`` keyword arguments (post-hoc tau apart: it is not a training knob)."""
    row = next(r for r in result["candidates"] if r["method"] == result["chosen"])
    return {k: v for k, v in row["config"].items() if k.startswith("semscale_")}


def summary_lines(result: dict[str, Any], output_dir: str | Path) -> list[str]:
    """What ``select`` and ``demo`` print at the end: the table, the choice and its rule, the configuration."""
    return [
        "",
        format_table(result),
        f"\nChosen: {result['chosen']} — {result['rule']}",
        f"Train with: SemScaleConfig(..., **{config_kwargs(result)})",
        f"Wrote {output_dir}/selection.md, selection.json, recommended.yaml, selection.png "
        f"({result['runs_executed']} runs executed, {result['runs_total']} in all)",
    ]


def _recommended_yaml(result: dict[str, Any], recipe: dict[str, Any]) -> str:
    row = next(r for r in result["candidates"] if r["method"] == result["chosen"])
    config = {k: v for k, v in recipe.items() if not k.startswith("semscale_") and k != "method"}
    config.update(config_kwargs(result))
    header = [
        f"# Chosen by hf-semscale select: {result['chosen']} ({result['rule']}).",
        "# Train it: python recipes/train_text.py recommended.yaml  (or SemScaleConfig(**<the semscale_* keys>)).",
    ]
    tau = row["config"].get("posthoc_logit_adjustment_tau")
    if tau is not None:
        header.append(
            f"# Then adjust the trained model post hoc with tau={tau:g}: "
            f"hf_semscale.modeling.bake_posthoc_adjustment(model, train_class_counts, {tau:g}); model.save_pretrained(...)"
        )
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False)


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["candidates"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows)), 3.8))
    xs = range(len(rows))
    for offset, (key, label, color) in enumerate(
        (("validation_balanced_accuracy", "validation", "#4c72b0"), ("test_balanced_accuracy", "test", "#dd8452"))
    ):
        means = [100 * (r.get(f"{key}_mean") or 0) for r in rows]
        stds = [100 * (r.get(f"{key}_std") or 0) for r in rows]
        ax.bar([x + (offset - 0.5) * 0.38 for x in xs], means, 0.38, yerr=stds, label=label, color=color, capsize=3)
    chosen = next(i for i, r in enumerate(rows) if r["method"] == result["chosen"])
    ax.set_xticks(
        list(xs), [r["method"] + (" (pool)" if r["uses_pool"] else "") for r in rows], rotation=25, ha="right"
    )
    ax.get_xticklabels()[chosen].set_fontweight("bold")
    lows = [100 * (r.get("validation_balanced_accuracy_mean") or 0) for r in rows]
    ax.set_ylim(max(0.0, min(lows) - 10), 100)
    ax.set_ylabel("balanced accuracy (%)")
    ax.set_title(f"chosen: {result['chosen']} (bold); mean ± std over seeds {result['seeds']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_selection(output_dir: str | Path, result: dict[str, Any], recipe: dict[str, Any]) -> list[Path]:
    """Write the four outputs into ``output_dir``; ``recipe`` is the recipe config the recommendation extends."""
    out = Path(output_dir)
    paths = [out / "selection.json", out / "selection.md", out / "recommended.yaml", out / "selection.png"]
    write_json_atomic(paths[0], result)
    regime = result.get("regime") or {}
    text = [
        "# Method selection",
        "",
        f"Regime: **{regime.get('name')}** — {regime.get('summary')} (d = {regime.get('feature_dim')}, "
        f"{100 * (regime.get('fraction_classes_below_dim') or 0):.0f} % of classes with fewer samples than d, "
        f"count ratio {regime.get('count_ratio', 0):.1f}, Spearman(scale, count) {regime.get('spearman_scale_count')}).",
        "",
        f"Chosen: **{result['chosen']}** — {result['rule']}.",
        "",
        "Balanced accuracy (%), mean ± std over seeds; knobs chosen on the validation split at the first seed; test is "
        "reported, never used for a choice.",
        "",
        format_table(result),
        "",
        f"`SemScaleConfig` keyword arguments: `{config_kwargs(result)}`",
        "",
    ]
    if result.get("validation_note"):
        text += [result["validation_note"], ""]
    reused = result["runs_total"] - result["runs_executed"]
    text += [
        f"{result['runs_executed']} of {result['runs_total']} runs trained by this call in "
        f"{result['wall_time_s'] / 60:.1f} min on {machine_text(result['machine'])}"
        + (f"; {reused} were on disk." if reused else "."),
        "",
    ]
    if result.get("skipped_for_budget"):
        text += [f"Skipped for the time budget: {', '.join(result['skipped_for_budget'])}.", ""]
    with atomic_path(paths[1]) as tmp:
        tmp.write_text("\n".join(text), encoding="utf-8")
    with atomic_path(paths[2]) as tmp:
        tmp.write_text(_recommended_yaml(result, recipe), encoding="utf-8")
    _plot(result, paths[3])
    return paths
