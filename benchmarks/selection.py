"""Does ``hf-semscale select`` pick well? Its default candidates and grids on the regime study's long-tailed text settings.

    python benchmarks/selection.py                       # CLINC150-LT IF=10 / IF=50, BANKING77-LT (frozen MiniLM)
    python benchmarks/selection.py --only banking77_lt_frozen --work-dir /tmp/sel --out-dir /tmp/sel/results
    python benchmarks/selection.py --smoke --out-dir /tmp/x   # a tiny run of the same path (CI)

Each setting is one ``select_text`` call with the study's recipe config (same data, splits, encoder and schedule as
``benchmarks/results/long_tail_text.md``), so the chosen method's TEST balanced accuracy (mean ± std over the 3 seeds,
never used for the choice) compares with the study's best test mean of that setting (the oracle: every method,
post-hoc adjustment included). The selection's own ``ce`` runs are the study's ``ce`` runs re-made in the same harness,
and its ``ce_posthoc_la`` row is the study's post-hoc row. Writes ``selection.json`` / ``selection.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.smoke import RESULTS_DIR, parse_benchmark_args, write_results  # noqa: E402
from hf_semscale.data import DataArguments  # noqa: E402
from hf_semscale.select.candidates import knob_text  # noqa: E402
from hf_semscale.select.pipeline import select_text  # noqa: E402
from hf_semscale.select.selection import SelectionSettings  # noqa: E402

STUDY_FILE = RESULTS_DIR / "long_tail_text.json"
SETTINGS = {
    "clinc150_lt_if10_frozen": ("clinc150", "clinc150_lt", 10, {"validation_split": "validation"}),
    "clinc150_lt_if50_frozen": ("clinc150", "clinc150_lt", 50, {"validation_split": "validation"}),
    "banking77_lt_frozen": (
        "banking77",
        "banking77_lt",
        20,
        {"validation_per_class": 10, "long_tail_n_max": 100, "long_tail_order": "count"},
    ),
    "clinc150_frozen": ("clinc150", "clinc150", None, {"validation_split": "validation"}),
}
"""name -> (data folder, the study's dataset name, imbalance factor, the study config's data fields)."""


def oracle(study: dict[str, Any], dataset: str, imbalance_factor: float, extra: dict[str, Any]) -> tuple[str, float]:
    """The best test mean of the study's frozen table for the setting (its rows, plus the post-hoc row ``extra``)."""
    rows = [
        r
        for r in study["records"]
        if r["dataset"] == dataset
        and r.get("imbalance_factor") == imbalance_factor
        and r["schedule"].startswith("frozen_cached")
        and r.get("balanced_accuracy_mean") is not None
    ]
    candidates = [(r["method"], r["balanced_accuracy_mean"]) for r in rows] + list(extra.items())
    return max(candidates, key=lambda item: item[1])


def run_setting(name: str, data_root: Path, work_dir: Path, settings: SelectionSettings, smoke: bool) -> dict:
    folder, dataset, imf, fields = SETTINGS[name]
    data = DataArguments(data_dir=str(data_root / folder), imbalance_factor=imf or 1, subset_seed=0, **fields)
    if smoke:
        data.max_train_samples_per_class, data.max_eval_samples_per_class = 12, 4
    start = time.time()
    result = select_text(
        work_dir / name,
        data,
        settings=settings,
        schedule={"epochs": 1.0} if smoke else {},
        cache_dir=work_dir / "embedding_cache",
        log=lambda line: print(f"[{name}] {line}", flush=True),
    )
    result["wall_time_s_total"] = time.time() - start
    return result


def record_for(name: str, result: dict[str, Any], study: dict[str, Any] | None) -> dict[str, Any]:
    _, dataset, imf, _ = SETTINGS[name]
    rows = {r["method"]: r for r in result["candidates"]}
    chosen = rows[result["chosen"]]
    record = {
        "setting": name,
        "dataset": dataset,
        "imbalance_factor": imf,
        "method": result["chosen"],
        "knobs": chosen["knobs"],
        "rule": result["rule"],
        "balanced_accuracy_mean": chosen["test_balanced_accuracy_mean"],
        "balanced_accuracy_std": chosen["test_balanced_accuracy_std"],
        "validation_balanced_accuracy_mean": chosen["validation_balanced_accuracy_mean"],
        "ce_balanced_accuracy_mean": rows["ce"]["test_balanced_accuracy_mean"] if "ce" in rows else None,
        "regime": result["regime"]["name"],
        "runs": result["runs_total"],
        "wall_time_s": result["wall_time_s_total"],
        "candidates": {
            m: {
                k: r[k]
                for k in (
                    "knobs",
                    "validation_balanced_accuracy_mean",
                    "test_balanced_accuracy_mean",
                    "test_balanced_accuracy_std",
                )
            }  # fmt: skip
            for m, r in rows.items()
        },
    }
    if study is not None:
        posthoc = rows.get("ce_posthoc_la")
        extra = {"ce_posthoc_la": posthoc["test_balanced_accuracy_mean"]} if posthoc else {}
        record["oracle_method"], record["oracle_balanced_accuracy_mean"] = oracle(study, dataset, imf, extra)
        gap = record["oracle_balanced_accuracy_mean"] - record["balanced_accuracy_mean"]
        record["target_within_oracle"] = gap <= max(0.005, record["balanced_accuracy_std"] or 0.0)
        if record["ce_balanced_accuracy_mean"] is not None and record["method"] != "ce":
            ahead = record["balanced_accuracy_mean"] - record["ce_balanced_accuracy_mean"]
            record["target_ahead_of_ce"] = ahead > (record["balanced_accuracy_std"] or 0.0)
    return record


def write_report(records: list[dict[str, Any]], out_dir: Path, machine: str) -> None:
    pct = lambda v: "—" if v is None else f"{100 * v:.2f}"
    lines = [
        "# Does selection pick well?",
        "",
        f"`python benchmarks/selection.py` on {machine}. Default candidates and grids of `hf-semscale select`, 3 seeds, "
        "frozen MiniLM + MLP head (the study's frozen schedule). Test balanced accuracy (%) of the chosen method, mean "
        "± std over seeds; the oracle is the best test mean of the study's table for that setting (every method, "
        "post-hoc adjustment included).",
        "",
        "| setting | regime | chosen (knobs) | test balanced | ce | oracle | within max(0.5, std) of oracle | ahead of ce by > std | runs | wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        knobs = knob_text(r["knobs"])
        lines.append(
            f"| {r['setting']} | {r['regime']} | {r['method']} ({knobs or '—'}) | {pct(r['balanced_accuracy_mean'])} ± "
            f"{pct(r['balanced_accuracy_std'])} | {pct(r['ce_balanced_accuracy_mean'])} | "
            f"{r.get('oracle_method')} {pct(r.get('oracle_balanced_accuracy_mean'))} | {r.get('target_within_oracle')} | "
            f"{r.get('target_ahead_of_ce')} | {r['runs']} | {r['wall_time_s'] / 60:.1f} min |"
        )
    lines += ["", "Per candidate (validation / test balanced accuracy, %):", ""]
    for r in records:
        lines.append(f"- {r['setting']}: " + "; ".join(
            f"{m} {pct(c['validation_balanced_accuracy_mean'])} / {pct(c['test_balanced_accuracy_mean'])}"
            for m, c in r["candidates"].items()
        ))  # fmt: skip
    write_results(out_dir, "selection", {"machine": machine, "records": records}, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), default=list(SETTINGS)[:3])
    parser.add_argument("--candidates", nargs="+", default=None, help="Default: hf-semscale select's.")
    parser.add_argument("--data-root", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--work-dir", default=str(REPO_ROOT / "benchmarks" / "runs" / "selection"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--machine", default="a 2-core x86-64 CPU, no GPU")
    # --smoke: CLINC150-LT IF=10 at 12 training / 4 evaluation texts per class, 1 epoch, 1 seed, a 1-point grid
    args = parse_benchmark_args(parser, argv, smoke={"only": ["clinc150_lt_if10_frozen"]})
    settings = SelectionSettings(workers=args.workers)
    if args.candidates:
        settings = SelectionSettings(candidates=tuple(args.candidates), workers=args.workers)
    if args.smoke:
        from hf_semscale.select.candidates import GridSpec

        settings = SelectionSettings(seeds=(0,), grid=GridSpec((0.4,), (1.0,), (1.0,)), workers=1)
    study = json.loads(STUDY_FILE.read_text(encoding="utf-8")) if STUDY_FILE.is_file() else None
    out_file = Path(args.out_dir) / "selection.json"
    kept = json.loads(out_file.read_text())["records"] if out_file.is_file() and not args.smoke else []
    records = [r for r in kept if r["setting"] not in args.only]  # other settings' records stay
    for name in args.only:
        result = run_setting(name, Path(args.data_root), Path(args.work_dir), settings, args.smoke)
        records.append(record_for(name, result, study))
        write_report(records, Path(args.out_dir), args.machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
