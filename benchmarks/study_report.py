"""Report of the regime study (``benchmarks/long_tail.py --tier text`` / ``--tier cifar_balanced``).

Writes ``benchmarks/results/long_tail_<tier>.json`` (the method records, the targets, the ablations and the
regime analysis) and ``long_tail_<tier>.md``; the text tier also draws ``regimes_scale_vs_count.png`` (final
DSB-CE scales against class counts, beside the CPU tier's CIFAR-10-LT of ``long_tail.json``).

Regime analysis, per setting, from the final ``dsb_ce`` runs: the feature dimension d, the fraction of classes
whose pool holds fewer rows than d, Spearman(final scale, training count), the widest weight ratio DSB applied
(max / min weight over every update in ``semscale_history.jsonl``), and Spearman of per-class test accuracy with
the scale and with the count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from benchmarks.smoke import RESULTS_DIR, write_results
from benchmarks.tiers import _pct, ablation_tag, choose_knobs, load_result, run_dir, tier_settings, tuned_methods
from hf_semscale.core.imbalance import spearman
from hf_semscale.select.methods import COUNT_TUNED_METHODS, SCALE_METHODS
from hf_semscale.select.selection import mean_std as _mean_std
from hf_semscale.trainer import HISTORY_FILENAME
from recipes.common import RESULTS_FILENAME

SCALE_DERIVED = tuple(m for m in SCALE_METHODS if m != "reverse_dsb_ce")  # reverse is a control, not a candidate
BASES = {"ce": "dsb_ce", "focal": "dsb_focal", "balanced_softmax": "dsb_balanced_softmax"}


# --------------------------------------------------------------------------- per-setting analyses


def _spearman(x: list[float], y: list[float]) -> float | None:
    return spearman(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))[0]


def _finished(
    work_dir: Path, tier: str, setting: dict[str, Any], method: str, seeds: list[int], tag: str = ""
) -> list[dict[str, Any]]:
    results = [load_result(run_dir(work_dir, tier, setting, method, s, tag) / RESULTS_FILENAME) for s in seeds]
    return [r for r in results if r and r.get("test")]


def _weight_ratios(run: Path) -> list[float]:
    """max / min class weight of every update in the run's history file."""
    ratios = []
    try:
        lines = (run / HISTORY_FILENAME).read_text(encoding="utf-8").splitlines()
    except OSError:
        return ratios
    for line in lines:
        weights = json.loads(line)["weights"]
        ratios.append(max(weights) / min(weights))
    return ratios


def regime_analysis(
    work_dir: Path, tier: str, setting: dict[str, Any], seeds: list[int], method: str = "dsb_ce"
) -> dict[str, Any] | None:
    """The regime statistics of ``method``'s final runs (see the module docstring), or None before any finished."""
    rows = []
    for seed in seeds:
        run = run_dir(work_dir, tier, setting, method, seed)
        r = load_result(run / RESULTS_FILENAME)
        if not r or not r.get("test") or not r.get("feature_dim"):
            continue
        counts, scales, d = r["train_class_counts"], r["final_semantic_scales"], r["feature_dim"]
        capacity = (r.get("semscale") or {}).get("semscale_pool_capacity") or 0
        rows_per_class = [min(n, capacity) if capacity else n for n in counts]
        accuracy = r["test"]["per_class_accuracy"]
        keep = [c for c, a in enumerate(accuracy) if a is not None]
        ratios = _weight_ratios(run)
        rows.append(
            {
                "seed": seed,
                "feature_dim": d,
                "fraction_m_below_d": sum(m < d for m in rows_per_class) / len(rows_per_class),
                "spearman_scale_count": _spearman(scales, counts) if len(set(counts)) > 1 else None,
                "weight_ratio_final": max(r["final_class_weights"]) / min(r["final_class_weights"]),
                "weight_ratio_max": max(ratios) if ratios else None,
                "count_ratio": max(counts) / max(min(counts), 1),
                "spearman_accuracy_scale": _spearman([accuracy[c] for c in keep], [scales[c] for c in keep]),
                "spearman_accuracy_count": _spearman([accuracy[c] for c in keep], [counts[c] for c in keep])
                if len(set(counts)) > 1
                else None,
                "scale_range_bits": [min(scales), max(scales)],
                "scales": scales,
                "counts": counts,
            }
        )
    if not rows:
        return None
    summary = {
        "method": method,
        "seeds": [r["seed"] for r in rows],
        "feature_dim": rows[0]["feature_dim"],
        "fraction_m_below_d": rows[0]["fraction_m_below_d"],
        "count_ratio": rows[0]["count_ratio"],
        "per_seed": rows,
    }
    for key in (
        "spearman_scale_count",
        "weight_ratio_final",
        "weight_ratio_max",
        "spearman_accuracy_scale",
        "spearman_accuracy_count",
    ):
        summary[f"{key}_mean"], summary[f"{key}_std"] = _mean_std([r[key] for r in rows])
    return summary


def ablation_rows(
    work_dir: Path, tier: str, setting: dict[str, Any], seeds: list[int], records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Test balanced accuracy of the ablated method at its chosen knobs (default pool / interval) and each variant."""
    spec = setting.get("ablations")
    if not spec:
        return []
    base = next((r for r in records if r["method"] == spec["method"] and r["schedule"] == setting["schedule"]), None)
    rows = [
        {
            "variant": "chosen knobs (pool: every sample's latest feature, update every 20 steps)",
            "seeds": base["seeds"] if base else [],
            "balanced_accuracy_mean": base["balanced_accuracy_mean"] if base else None,
            "balanced_accuracy_std": base["balanced_accuracy_std"] if base else None,
        }
    ]
    for variant in spec["variants"]:
        done = _finished(work_dir, tier, setting, spec["method"], seeds, ablation_tag(variant))
        mean, std = _mean_std([r["test"]["balanced_accuracy"] for r in done])
        rows.append(
            {
                "variant": ", ".join(f"{k} = {v:g}" for k, v in variant.items()),
                "seeds": [r["seed"] for r in done],
                "balanced_accuracy_mean": mean,
                "balanced_accuracy_std": std,
            }
        )
    return rows


# --------------------------------------------------------------------------- targets


def _bal(by: dict[str, dict[str, Any]], method: str) -> tuple[float | None, float | None]:
    r = by.get(method)
    return (
        (r["balanced_accuracy_mean"], r["balanced_accuracy_std"])
        if r and r["balanced_accuracy_mean"] is not None
        else (None, None)
    )


def _versus(by: dict[str, dict[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    """``a`` against ``b``: means, stds, the difference and whether it exceeds the larger seed std."""
    (am, asd), (bm, bsd) = _bal(by, a), _bal(by, b)
    if am is None or bm is None:
        return None
    margin, needed = am - bm, max(asd, bsd)
    return {
        "a": a,
        "b": b,
        "a_mean": am,
        "a_std": asd,
        "b_mean": bm,
        "b_std": bsd,
        "difference": margin,
        "needed": needed,
        "beats": margin > needed,
        "level": margin >= -needed,
    }


def _line(v: dict[str, Any]) -> str:
    return (
        f"{v['a']} {_pct(v['a_mean'], v['a_std'])} vs {v['b']} {_pct(v['b_mean'], v['b_std'])}: "
        f"{100 * v['difference']:+.2f} points (seed std {100 * v['needed']:.2f})"
    )


def targets(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The four targets of the study, each ``{"status": met | missed | not measured, "lines": [...]}``."""
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        if r["status"] != "not yet run":
            groups.setdefault(r["setting"], {})[r["method"]] = r
    out: dict[str, Any] = {}

    # 1. dsb_ce beats ce on CLINC150-LT IF=50 and BANKING77-LT (finetune)
    lines, oks = [], []
    for name in ("clinc150_lt_if50_finetune", "banking77_lt_finetune"):
        v = _versus(groups.get(name, {}), "dsb_ce", "ce")
        lines.append(f"{name}: " + (_line(v) if v else "not measured"))
        oks.append(None if v is None else v["beats"])
    out["dsb_ce_beats_ce_finetune"] = {"status": _status(oks, all), "lines": lines}

    # 2. a scale-derived method against the best tuned count re-weighting, per long-tailed setting
    lines, level, beats = [], [], []
    for name, by in groups.items():
        counts = [(m, _bal(by, m)[0]) for m in COUNT_TUNED_METHODS if _bal(by, m)[0] is not None]
        scaled = [(m, _bal(by, m)[0]) for m in SCALE_DERIVED if _bal(by, m)[0] is not None]
        if not counts or not scaled:
            continue
        best_count = max(counts, key=lambda x: x[1])[0]
        best_scale = max(scaled, key=lambda x: x[1])[0]
        v = _versus(by, best_scale, best_count)
        lines.append(f"{name}: best scale-derived {_line(v)}")
        level.append(v["level"])
        beats.append(v["beats"])
    out["scale_vs_best_tuned_count"] = {
        "status": "not measured" if not level else ("met" if any(level) and any(beats) else "missed"),
        "lines": lines
        + (
            [f"level on {sum(level)} of {len(level)} settings, ahead by more than the seed std on {sum(beats)}"]
            if level
            else []
        ),
    }

    # 3. DSB on top of the strongest base loss (ce / focal / balanced softmax) of each long-tailed setting
    lines, no_loss, beats = [], [], []
    for name, by in groups.items():
        bases = [(b, _bal(by, b)[0]) for b in BASES if _bal(by, b)[0] is not None and _bal(by, BASES[b])[0] is not None]
        if not bases or by.get("ce", {}).get("imbalance_factor") is None:
            continue
        strongest = max(bases, key=lambda x: x[1])[0]
        v = _versus(by, BASES[strongest], strongest)
        lines.append(f"{name}: {_line(v)}")
        no_loss.append(v["level"])
        beats.append(v["beats"])
    out["dsb_on_strongest_base"] = {
        "status": "not measured" if not no_loss else ("met" if all(no_loss) and any(beats) else "missed"),
        "lines": lines,
    }

    # 4. sample-balanced data: does any scale-derived weighting beat ce?
    lines, oks = [], []
    for name, by in groups.items():
        if by.get("ce", {}).get("imbalance_factor", 0) is not None:
            continue
        for m in ("dsb_ce", "dsb_focal", "scalecount_cb_ce", "reverse_dsb_ce"):
            v = _versus(by, m, "ce")
            if v:
                lines.append(
                    f"{name}: {_line(v)}"
                    + (" (a control: weights grow with the scale)" if m == "reverse_dsb_ce" else "")
                )
                if m != "reverse_dsb_ce":
                    oks.append(v["beats"])
    out["balanced_scale_beats_ce"] = {
        "status": "not measured" if not oks else ("yes" if any(oks) else "no"),
        "lines": lines,
    }
    return out


def _status(oks: list[bool | None], combine) -> str:
    """``met`` / ``missed`` over the measured checks; ``not measured`` until every check is."""
    if any(ok is None for ok in oks):
        return "not measured"
    return "met" if combine(oks) else "missed"


# --------------------------------------------------------------------------- figure


def plot_scale_vs_count(panels: list[tuple[str, list[int], list[float]]], path: Path) -> None:
    """One panel per (title, counts, final scales): scale against count on a log count axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, counts, scales) in zip(axes[0], panels):
        ax.scatter(counts, scales, s=12, alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel("training samples of the class (pool rows)")
        ax.set_ylabel("final semantic scale (bits)")
        rho = _spearman(scales, counts)
        ax.set_title(f"{title}\nSpearman {rho:+.2f}" if rho is not None else title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cifar_lt_dsb_record(results_dir: Path) -> dict[str, Any] | None:
    """The CPU tier's CIFAR-10-LT dsb_ce record of the committed ``long_tail.json`` (seed 0's scales), or None."""
    records = load_result(results_dir / "long_tail.json") or []
    return next(
        (
            r
            for r in records
            if r.get("tier") == "cpu"
            and r["dataset"] == "CIFAR-10-LT"
            and r["method"] == "dsb_ce"
            and r.get("final_semantic_scales_seed0")
        ),
        None,
    )


def cifar_lt_regime(results_dir: Path) -> dict[str, Any] | None:
    """The CPU tier's CIFAR-10-LT dsb_ce (seed 0, ``long_tail.json``) in the regime table's terms."""
    r = _cifar_lt_dsb_record(results_dir)
    if r is None:
        return None
    counts, scales, weights = r["train_class_counts"], r["final_semantic_scales_seed0"], r["final_class_weights_seed0"]
    d = 32  # ResNet-8 at half width (8, 16, 32): the classifier reads 32 features
    return {
        "feature_dim": d,
        "fraction_m_below_d": sum(n < d for n in counts) / len(counts),
        "count_ratio": max(counts) / min(counts),
        "spearman_scale_count_mean": _spearman(scales, counts),
        "weight_ratio_final_mean": max(weights) / min(weights),
        "weight_ratio_max_mean": None,
        "spearman_accuracy_scale_mean": None,
        "spearman_accuracy_count_mean": None,
        "seeds": [0],
    }


def regime_table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = [
        "| setting | d | classes with m < d | count ratio | Spearman(scale, count) | widest weight ratio applied (final) | "
        "Spearman(accuracy, scale) | Spearman(accuracy, count) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, a in rows:
        lines.append(
            f"| {name} | {a['feature_dim']} | {100 * a['fraction_m_below_d']:.0f} % | {a['count_ratio']:.0f}x | "
            f"{_num(a['spearman_scale_count_mean'])} | {_times(a['weight_ratio_max_mean'])} ({_times(a['weight_ratio_final_mean'])}) | "
            f"{_num(a['spearman_accuracy_scale_mean'])} | {_num(a['spearman_accuracy_count_mean'])} |"
        )
    return lines


def cifar_lt_panel(results_dir: Path) -> tuple[str, list[int], list[float]] | None:
    """The CPU tier's CIFAR-10-LT dsb_ce seed 0 (from the committed ``long_tail.json``)."""
    r = _cifar_lt_dsb_record(results_dir)
    if r is None:
        return None
    return "CIFAR-10-LT IF=100, ResNet-8/2 (d = 32)", r["train_class_counts"], r["final_semantic_scales_seed0"]


# --------------------------------------------------------------------------- report


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}x"


def _knobs(knobs: dict[str, Any] | None, method: str, epochs: int) -> str:
    """The knobs as text; the warm-up ratio as the start of re-weighting (a pool method's fill epoch added)."""
    if not knobs:
        return ""
    shown = dict(knobs)
    if "semscale_warmup_ratio" in shown:
        shown["start"] = round(
            shown.pop("semscale_warmup_ratio") + (1.0 / epochs if method in SCALE_METHODS else 0.0), 3
        )
    names = {
        "semscale_gamma": "gamma",
        "semscale_count_power": "p",
        "semscale_alpha": "alpha",
        "semscale_normalize_features": "L2-norm",
    }
    return ", ".join(
        f"{names.get(k, k)} {str(v).lower() if isinstance(v, bool) else f'{v:g}'}" for k, v in sorted(shown.items())
    )


def write_study_report(
    out_dir: Path,
    tier: str,
    collected: tuple[list[dict[str, Any]], dict[str, Any]],
    notes: list[str],
    work_dir: Path,
    seeds: list[int],
) -> dict[str, Any]:
    records, _ = collected
    settings = tier_settings(tier)
    by_schedule = {s["schedule"]: s for s in settings}
    for r in records:
        r["setting"] = by_schedule[r["schedule"]]["name"]
    sections, analyses, ablations, tuning = [], {}, {}, {}
    for setting in settings:
        name = setting["name"]
        rows = [r for r in records if r["setting"] == name]
        analyses[name] = regime_analysis(work_dir, tier, setting, seeds)
        ablations[name] = ablation_rows(work_dir, tier, setting, seeds, records)
        tuning[name] = {
            m: dict(zip(("chosen", "grid"), choose_knobs(work_dir, tier, setting, m))) for m in tuned_methods(setting)
        }
        sections.append((setting, rows))
    checks = targets(records)
    payload = {
        "tier": tier,
        "records": records,
        "targets": checks,
        "regimes": analyses,
        "ablations": ablations,
        "tuning": tuning,
    }

    lines = [
        f"# Regime study (`--tier {tier}`): where does the semantic scale help?",
        "",
        f"Generated by `python benchmarks/long_tail.py --tier {tier}` (tables: add `--report-only`). Balanced accuracy "
        "(mean per-class test accuracy, %), mean ± sample std over seeds; `train` = final accuracy on the training split "
        "(how converged a run is). Every knob was chosen on a validation split (tuning: seed 0), never on test. The start "
        "of re-weighting is tuned on the same grid for every re-weighting method (a pool method's warm-up ends one epoch, "
        "its fill stage, earlier); `if_ce` / `cb_ce` keep the literature's deferral at 80 %.",
        "",
        *notes,
        "",
    ]
    regime_rows = [(name, a) for name, a in analyses.items() if a]
    cifar = cifar_lt_regime(RESULTS_DIR) if tier == "text" else None
    if cifar:
        regime_rows.insert(0, ("CIFAR-10-LT IF=100, CPU tier (seed 0, long_tail.json)", cifar))
    if regime_rows:
        lines += [
            "## Regimes",
            "",
            "From the final dsb_ce runs (mean over seeds): the feature dimension d DSB measures in, the share "
            "of classes whose pool holds fewer rows m than d (there the scale still grows with m), how closely the final "
            "scales follow the counts, the widest max/min class-weight ratio over all updates (and at the end), and how "
            "per-class test accuracy follows the scale and the count.",
            "",
            *regime_table(regime_rows),
            "",
        ]
    lines += ["## Targets", ""]
    for key, check in checks.items():
        lines.append(f"- **{key}: {check['status']}**")
        lines += [f"  - {line}" for line in check["lines"]]
    lines.append("")
    for setting, rows in sections:
        name = setting["name"]
        lines += [
            f"## {name} ({setting['dataset']}"
            + (f", IF={setting['imbalance_factor']}" if setting["imbalance_factor"] else "")
            + ")",
            "",
            f"Schedule: {setting['schedule']}.",
            "",
        ]
        if all(r["status"] == "not yet run" for r in rows):
            lines += ["**not yet run**.", ""]
            continue
        epochs = setting["grid_spec"]["epochs"]
        lines += [
            "| method | seeds | balanced | few | medium | train | knobs (validation; start = of re-weighting) | what |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['method']} | {len(r['seeds'])} | {_pct(r['balanced_accuracy_mean'], r['balanced_accuracy_std'])} | "
                f"{_pct(r['few_shot_accuracy_mean'], r['few_shot_accuracy_std'])} | "
                f"{_pct(r['medium_shot_accuracy_mean'], r['medium_shot_accuracy_std'])} | {_pct(r['train_accuracy_mean'])} | "
                f"{_knobs(r.get('knobs') if r['status'] != 'not yet run' else None, r['method'], epochs)} | {r['description']} |"
            )
        a = analyses[name]
        if a:
            lines += [
                "",
                f"Regime (dsb_ce, seeds {a['seeds']}): d = {a['feature_dim']}; {100 * a['fraction_m_below_d']:.0f} % of classes "
                f"have fewer pool rows than d; count ratio {a['count_ratio']:.0f}x; Spearman(final scale, count) "
                f"{_num(a['spearman_scale_count_mean'])} ± {_num(a['spearman_scale_count_std'])}; widest weight ratio applied "
                f"{_times(a['weight_ratio_max_mean'])} (final {_times(a['weight_ratio_final_mean'])}); per-class test accuracy "
                f"vs scale {_num(a['spearman_accuracy_scale_mean'])}, vs count {_num(a['spearman_accuracy_count_mean'])} (Spearman).",
            ]
        if ablations[name]:
            lines += [
                "",
                "Ablation of the pool size K (rows per class: min(n_c, K)) and the update interval, dsb_ce at its chosen knobs:",
                "",
                "| variant | seeds | balanced |",
                "|---|---|---|",
            ]
            lines += [
                f"| {row['variant']} | {len(row['seeds'])} | {_pct(row['balanced_accuracy_mean'], row['balanced_accuracy_std'])} |"
                for row in ablations[name]
            ]
        lines += [
            "",
            f"<details><summary>Validation grid ({name}, seed 0)</summary>",
            "",
            "| method | knobs (start = of re-weighting) | validation balanced |",
            "|---|---|---|",
        ]
        for method, info in tuning[name].items():
            for point in info["grid"]:
                knobs = {k: v for k, v in point.items() if k.startswith("semscale_")}
                cell = _pct(point["validation_balanced_accuracy"])
                lines.append(
                    f"| {method} | {_knobs(knobs, method, epochs)} | {'**' + cell + '**' if knobs == info['chosen'] else cell} |"
                )
        lines += ["", "</details>", ""]
    if tier == "text":
        panels = [p for p in [cifar_lt_panel(RESULTS_DIR)] if p]
        for name, title in (
            ("clinc150_lt_if50_frozen", "CLINC150-LT IF=50, frozen MiniLM + MLP (d = 256)"),
            ("clinc150_lt_if50_finetune", "CLINC150-LT IF=50, MiniLM top layer (d = 384)"),
            ("banking77_lt_finetune", "BANKING77-LT IF=20, MiniLM top layer (d = 384)"),
        ):
            a = analyses.get(name)
            if a:
                panels.append((title, a["per_seed"][0]["counts"], a["per_seed"][0]["scales"]))
        if panels:
            plot_scale_vs_count(panels, out_dir / "regimes_scale_vs_count.png")
            lines += [
                "## Scale against count",
                "",
                "![final dsb_ce scales against class counts](regimes_scale_vs_count.png)",
                "",
                "Final dsb_ce semantic scales (seed 0) against the class's training count, CPU-tier CIFAR-10-LT beside the text tiers.",
                "",
            ]
    write_results(out_dir, f"long_tail_{tier}", payload, "\n".join(lines), indent=1)
    return payload
