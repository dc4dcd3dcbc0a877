"""Long-tail benchmark: every baseline and every DSB variant in one harness (SemScaleTrainer + the recipes).

    python benchmarks/long_tail.py --tier cpu            # CPU tier (2 workers, short stated schedule)
    python benchmarks/long_tail.py --tier gpu --workers 8  # paper-scale CIFAR-10-LT schedule (Cao et al. 2019)
    python benchmarks/long_tail.py --tier gpu --dry-run    # time the recipe here; the tier's wall time and budget
    bash benchmarks/gpu_session.sh                         # on a lent GPU: the part of the tier one session fits
    python benchmarks/long_tail.py --tier text           # the regime study: MiniLM on CLINC150(-LT), BANKING77-LT
    python benchmarks/long_tail.py --tier cifar_balanced # the regime study: sample-balanced CIFAR-10
    python benchmarks/long_tail.py --report-only         # rebuild the tables from finished runs

Each run is ``recipes/train_image.py`` / ``recipes/train_text.py`` with a method of
``hf_semscale/select/methods.py``; its ``results.json`` lands in ``<work_dir>/<tier>/<dataset>/<method>/seed<k>/``
and finished runs are skipped when the benchmark is restarted. DSB's own knobs (``semscale_gamma``,
``semscale_warmup_ratio``) are chosen for each ``dsb_*`` method separately, on the VALIDATION split
(carved from training data, seed 0) from a small grid; the test split is never used for choices. A
finished DSB run whose knobs differ from the chosen ones is run again.

The study tiers (``text``, ``cifar_balanced``) give every re-weighting method the same validation grid
over the START of re-weighting (the fraction of training after which class weights apply; a pool method's
warm-up ends one epoch, its fill stage, earlier), besides its own knobs (gamma; p of ``pow_ce_tuned``;
for ``dsb_ce`` also the authors' volume constants alpha = 1 without L2 normalisation), and run ablations
of the pool size and update interval. Their report adds the regime analysis (``benchmarks/study_report.py``).

Outputs: ``benchmarks/results/long_tail.json`` (a list of records: ``method``, ``dataset``,
``imbalance_factor``, ``schedule``, ``seeds``, ``<metric>_mean`` / ``<metric>_std``, wall time) and
``benchmarks/results/long_tail.md`` for the CPU and GPU tiers; ``long_tail_<tier>.json`` / ``.md`` for the
study tiers.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.smoke import parse_benchmark_args, write_results  # noqa: E402
from benchmarks.tiers import (  # noqa: E402
    DEFAULT_DATA_ROOT,
    DEFAULT_SEEDS,
    DEFAULT_WORK_DIR,
    ESTIMATE_FILENAME,
    GPU_BUDGET_S,
    GPU_COMMAND,
    PUBLISHED,
    RESULTS_FILENAME,
    STUDY_TIERS,
    _pct,
    ablation_tag,
    choose_knobs,
    chosen_knobs,
    data_args_for,
    fills_a_cache,
    grid_tag,
    load_result,
    method_grid,
    recipe_run,
    run_dir,
    seeds_on_disk,
    tier_settings,
    tuned_methods,
    write_tiny_image_dataset,
)
from hf_semscale.hub.report import write_json_atomic  # noqa: E402
from hf_semscale.select.methods import BASELINES, DSB_COUNTERPART, METHODS, TUNED_METHODS, describe  # noqa: E402
from hf_semscale.select.recipe import RecipeRun, run_recipes  # noqa: E402
from hf_semscale.select.recipe import settings_match as knobs_match  # noqa: E402
from hf_semscale.select.selection import mean_std as _mean_std  # noqa: E402
from recipes.common import METRIC_KEYS  # noqa: E402

logger = logging.getLogger("benchmarks.long_tail")


# --------------------------------------------------------------------------- tiers
# A "setting" is one dataset + schedule: the recipe, its config, the CLI overrides, the methods, the grid.


# --------------------------------------------------------------------------- data preparation


# --------------------------------------------------------------------------- running


def setting_jobs(
    work_dir: Path,
    tier: str,
    setting: dict[str, Any],
    data_args: list[str],
    seeds: list[int],
    knobs: dict[str, dict[str, float]],
    methods: list[str],
) -> list[RecipeRun]:
    """The final (all-seed, test-evaluated) runs of ``methods``; ``knobs``: the chosen knobs of each dsb method."""
    jobs = []
    for method in methods:
        method_knobs = knobs.get(method)
        for seed in seeds:
            out = run_dir(work_dir, tier, setting, method, seed)
            jobs.append(recipe_run(setting, method, seed, out, data_args, method_knobs, ["--eval_validation", "true"]))
    return jobs


def tuning_jobs(
    work_dir: Path, tier: str, setting: dict[str, Any], data_args: list[str], method: str
) -> list[RecipeRun]:
    """Seed-0 runs of ``method`` at every grid point, evaluated on the validation split only."""
    jobs = []
    for point in method_grid(setting, method):
        out = run_dir(work_dir, tier, setting, method, 0, "_tune" + grid_tag(point))
        jobs.append(recipe_run(setting, method, 0, out, data_args, point, ["--eval_test", "false"]))
    return jobs


def ablation_jobs(
    work_dir: Path,
    tier: str,
    setting: dict[str, Any],
    data_args: list[str],
    seeds: list[int],
    knobs: dict[str, dict[str, float]],
) -> list[RecipeRun]:
    """The setting's ablation runs: its ablated method at its chosen knobs with one setting changed, every seed."""
    spec = setting.get("ablations")
    if not spec or spec["method"] not in setting["methods"]:
        return []
    method, jobs = spec["method"], []
    for variant in spec["variants"]:
        point = {**knobs.get(method, {}), **variant}
        for seed in seeds:
            out = run_dir(work_dir, tier, setting, method, seed, ablation_tag(variant))
            jobs.append(recipe_run(setting, method, seed, out, data_args, point, ["--eval_validation", "true"]))
    return jobs


def run_tier(
    tier: str,
    work_dir: Path,
    data_root: Path,
    seeds: list[int],
    workers: int,
    only: list[str] | None,
    source: str | None,
    methods: list[str] | None = None,
) -> None:
    """Run (or finish) a tier; ``only`` / ``methods`` restrict it to some settings / methods (the report lists them all).

    Three waves of the library's run queue (:func:`hf_semscale.select.recipe.run_recipes`: finished runs skipped,
    ``workers`` processes): each text setting's first untuned run (it fills the embedding cache the others then read;
    an image setting's data is prepared before any run); every tuning run and the other untuned runs; the tuned
    methods' final runs at their chosen knobs and the ablations. ``benchmarks/tier_budget.py`` simulates this order
    to estimate a tier's wall time."""
    settings = [s for s in tier_settings(tier) if not only or s["name"] in only]
    if methods:
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {sorted(METHODS)}")
        settings = [{**s, "methods": [m for m in s["methods"] if m in methods]} for s in settings]
    cache_root = work_dir / tier / "cache"
    os.environ["OMP_NUM_THREADS"] = "1"
    prepared = [(s, data_args_for(s, data_root, cache_root, source)) for s in settings]
    untuned = {
        s["name"]: setting_jobs(work_dir, tier, s, a, seeds, {}, [m for m in s["methods"] if m not in tuned_methods(s)])
        for s, a in prepared
    }
    warmers = [jobs[0] for s, _ in prepared if fills_a_cache(s) and (jobs := untuned[s["name"]])]
    run_recipes(warmers, workers)
    tuning = [
        job for s, a in prepared for method in tuned_methods(s) for job in tuning_jobs(work_dir, tier, s, a, method)
    ]
    run_recipes(tuning + [job for jobs in untuned.values() for job in jobs if job not in warmers], workers)
    finals = []
    for setting, data_args in prepared:
        knobs = chosen_knobs(work_dir, tier, setting)
        finals += setting_jobs(work_dir, tier, setting, data_args, seeds, knobs, tuned_methods(setting))
        finals += ablation_jobs(work_dir, tier, setting, data_args, seeds, knobs)
    run_recipes(finals, workers)


# --------------------------------------------------------------------------- report


def collect(work_dir: Path, tier: str, seeds: list[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records of every method of the tier: all finished seeds on disk; status ``done`` when all of ``seeds`` are."""
    records, tuning = [], {}
    for setting in tier_settings(tier):
        knobs = {}
        for method in tuned_methods(setting):
            knobs[method], grid_rows = choose_knobs(work_dir, tier, setting, method)
            if any(r["validation_balanced_accuracy"] is not None for r in grid_rows):
                tuning.setdefault(setting["name"], {})[method] = {"chosen": knobs[method], "grid": grid_rows, "seed": 0}
        for method in setting["methods"]:
            all_seeds = sorted(set(seeds) | set(seeds_on_disk(work_dir, tier, setting, method)))
            results = [load_result(run_dir(work_dir, tier, setting, method, s) / RESULTS_FILENAME) for s in all_seeds]
            done = [
                (s, r) for s, r in zip(all_seeds, results) if r and r.get("test") and knobs_match(r, knobs.get(method))
            ]
            record: dict[str, Any] = {
                "method": method,
                "dataset": setting["dataset"],
                "imbalance_factor": setting["imbalance_factor"],
                "schedule": setting["schedule"],
                "tier": tier,
                "seeds": [s for s, _ in done],
                "status": "done" if set(seeds) <= {s for s, _ in done} else ("partial" if done else "not yet run"),
                "description": describe(method),
            }
            for key in METRIC_KEYS:
                mean, std = _mean_std([r["test"].get(key) for _, r in done])
                record[f"{key}_mean"], record[f"{key}_std"] = mean, std
                vmean, _ = _mean_std([(r.get("validation") or {}).get(key) for _, r in done])
                record[f"validation_{key}_mean"] = vmean
            wall = [r["wall_time_s"] for _, r in done]
            record["wall_time_s_mean"], _ = _mean_std(wall)
            record["wall_time_s_total"] = sum(wall) if wall else None
            train_acc = [(r.get("train") or {}).get("accuracy") for _, r in done]
            record["train_accuracy_mean"], record["train_accuracy_std"] = _mean_std(train_acc)
            if method in TUNED_METHODS:
                record["knobs"] = knobs.get(method)
                weights = [r["final_class_weights"] for _, r in done]
                scales = [r["final_semantic_scales"] for _, r in done]
                record["final_class_weights_seed0"] = weights[0] if weights else None
                record["final_semantic_scales_seed0"] = scales[0] if scales else None
            if done:
                record["train_class_counts"] = done[0][1]["train_class_counts"]
            records.append(record)
    return records, tuning


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def target_checks(records: list[dict[str, Any]], dataset: str = "CIFAR-10-LT") -> list[str]:
    by = {r["method"]: r for r in records if r["dataset"] == dataset and r["status"] != "not yet run"}
    lines = []

    def bal(name):
        r = by.get(name)
        return (
            (r["balanced_accuracy_mean"], r["balanced_accuracy_std"])
            if r and r["balanced_accuracy_mean"] is not None
            else (None, None)
        )

    d_m, d_s = bal("dsb_ce")
    for base in ("ce", "cb_ce"):
        b_m, b_s = bal(base)
        if d_m is None or b_m is None:
            lines.append(f"- dsb_ce vs {base}: not measured")
            continue
        margin = d_m - b_m
        needed = max(d_s, b_s)
        ok = margin > needed
        lines.append(
            f"- dsb_ce vs {base} (balanced accuracy): {_pct(d_m, d_s)} vs {_pct(b_m, b_s)}, difference {100 * margin:+.2f} "
            f"points; target '> the larger seed std ({100 * needed:.2f})': **{'met' if ok else 'MISSED'}**"
        )
    baselines = [(m, bal(m)) for m in BASELINES if bal(m)[0] is not None]
    if baselines:
        strongest, (s_m, s_s) = max(baselines, key=lambda x: x[1][0])
        dsb_on = {v: k for k, v in DSB_COUNTERPART.items()}.get(strongest)
        if dsb_on is None:
            lines.append(f"- strongest baseline {strongest} ({_pct(s_m, s_s)}) has no DSB variant in the table")
        else:
            o_m, o_s = bal(dsb_on)
            if o_m is None:
                lines.append(f"- {dsb_on} on the strongest baseline {strongest}: not measured")
            else:
                ok = o_m >= s_m - max(o_s, s_s)
                lines.append(
                    f"- {dsb_on} vs the strongest baseline {strongest}: {_pct(o_m, o_s)} vs {_pct(s_m, s_s)} "
                    f"({100 * (o_m - s_m):+.2f} points); target 'does not lose (within one seed std)': **{'met' if ok else 'MISSED'}**"
                )
    return lines


def _warmup_of(method: str, knobs: dict[str, Any]) -> float:
    return knobs.get("semscale_warmup_ratio", METHODS[method].get("semscale_warmup_ratio"))


def tuning_table(tier: str, name: str, per_method: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown: one row per tuned method (and warm-up ratio), one column per gamma; the chosen cell in bold."""
    gammas = sorted({row["semscale_gamma"] for info in per_method.values() for row in info["grid"]})
    lines = [
        f"### DSB tuning grid ({tier} tier, {name}; seed 0, validation balanced accuracy %, chosen in bold)",
        "",
        "| method | warm-up ratio | " + " | ".join(f"gamma {g:g}" for g in gammas) + " |",
        "|---|---|" + "---|" * len(gammas),
    ]
    for method, info in per_method.items():
        for w in sorted({_warmup_of(method, row) for row in info["grid"]}):
            cells = []
            for g in gammas:
                row = next((r for r in info["grid"] if r["semscale_gamma"] == g and _warmup_of(method, r) == w), None)
                cell = "—" if row is None else _pct(row["validation_balanced_accuracy"])
                chosen = (
                    row is not None
                    and row["validation_balanced_accuracy"] is not None
                    and info["chosen"] == {k: row[k] for k in info["chosen"]}
                )
                cells.append(f"**{cell}**" if chosen else cell)
            lines.append(f"| {method} | {w:g} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_report(
    out_dir: Path, tiers: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]], notes: list[str]
) -> None:
    all_records = [r for records, _ in tiers.values() for r in records]
    lines = [
        "# Long-tail benchmark: DSB against the published baselines",
        "",
        "Generated by `python benchmarks/long_tail.py` (tables: `--report-only`). Test sets are balanced and never "
        "used for choices; each tuned method's gamma (DSB's knob) is chosen on a validation split carved from TRAIN data. "
        "Accuracies in %, mean ± sample std over seeds. `balanced` = mean per-class accuracy; many / medium / few: "
        "classes with > 100 / 20-100 / < 20 training samples (— = no class in that group).",
        "",
    ]
    lines += notes
    for tier, (records, tuning) in tiers.items():
        datasets = []
        for r in records:
            if (r["dataset"], r["schedule"]) not in datasets:
                datasets.append((r["dataset"], r["schedule"]))
        for dataset, schedule in datasets:
            rows = [r for r in records if r["dataset"] == dataset and r["schedule"] == schedule]
            imf = rows[0]["imbalance_factor"]
            lines += [
                f"## {tier.upper()} tier — {dataset}" + (f" IF={imf}" if imf else ""),
                "",
                f"Schedule: {schedule}.",
                "",
            ]
            if all(r["status"] == "not yet run" for r in rows):
                if tier == "gpu":
                    lines += [
                        f"**not yet run** (no GPU was lent to the sessions so far). Command: `{GPU_COMMAND}` on the "
                        "GPU machine (after `python benchmarks/gpu_kit.py pack` here; it runs the part of the tier "
                        "that fits one device session). `python benchmarks/long_tail.py --tier gpu --dry-run` times "
                        "the tier's recipe where it runs and prints the estimate.",
                        "",
                    ]
                    estimate = load_result(out_dir / ESTIMATE_FILENAME.format(tier=tier))
                    if estimate:
                        lines += [
                            f"Last estimate (`{estimate['command']}`, {estimate['machine']}): {estimate['text']}",
                            "",
                        ]
                else:
                    lines += [f"**not yet run**. Command: `python benchmarks/long_tail.py --tier {tier}`.", ""]
                continue
            lines += [
                "| method | seeds | balanced | accuracy | many | medium | few | wall s/run | what |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for r in rows:
                lines.append(
                    f"| {r['method']} | {len(r['seeds'])} | {_pct(r['balanced_accuracy_mean'], r['balanced_accuracy_std'])} | "
                    f"{_pct(r['accuracy_mean'], r['accuracy_std'])} | {_pct(r['many_shot_accuracy_mean'], r['many_shot_accuracy_std'])} | "
                    f"{_pct(r['medium_shot_accuracy_mean'], r['medium_shot_accuracy_std'])} | "
                    f"{_pct(r['few_shot_accuracy_mean'], r['few_shot_accuracy_std'])} | "
                    f"{_seconds(r['wall_time_s_mean'])} | {r['description']} |"
                )
            counts = next((r.get("train_class_counts") for r in rows if r.get("train_class_counts")), None)
            if counts:
                lines += ["", f"Training class counts: {counts}."]
            dsb = next((r for r in rows if r["method"] == "dsb_ce" and r.get("final_semantic_scales_seed0")), None)
            if dsb:
                lines += [
                    f"dsb_ce seed 0, final semantic scales (bits): {[round(x, 2) for x in dsb['final_semantic_scales_seed0']]}; "
                    f"final weights: {[round(x, 2) for x in dsb['final_class_weights_seed0']]}."
                ]
            if dataset == "CIFAR-10-LT":
                lines += ["", "Targets:"] + target_checks(rows, dataset)
            lines.append("")
        for name, per_method in tuning.items():
            lines += tuning_table(tier, name, per_method)
    lines += [
        "## Published reference",
        "",
        "CIFAR-10-LT IF=100, ResNet-32, 200 epochs (Cao et al. 2019, Table 2), top-1 %: "
        + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items())
        + ". Our CIFAR-10 copy was decoded from JPEG (../shared/data/cifar10/SOURCE.md): compare methods inside this "
        "harness, not absolute numbers against the paper.",
        "",
    ]
    write_results(out_dir, "long_tail", all_records, "\n".join(lines))


def read_run_info(path: Path) -> list[dict[str, Any]]:
    """The recorded invocations of a tier (older files hold one record, not a list)."""
    info = load_result(path)
    return info if isinstance(info, list) else ([info] if info else [])


def append_run_info(path: Path, entry: dict[str, Any]) -> None:
    write_json_atomic(path, [*read_run_info(path), entry])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", choices=["cpu", "gpu", *STUDY_TIERS, "tiny"], default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=f"default {DEFAULT_SEEDS}")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs (one thread each on CPU)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument(
        "--data-root", type=Path, default=Path(os.environ.get("HF_SEMSCALE_DATA_DIR", DEFAULT_DATA_ROOT))
    )
    parser.add_argument(
        "--source", default=None, help="override the data source of every setting (tests: a tiny folder)"
    )
    parser.add_argument(
        "--only", nargs="+", default=None, help="setting names to run (e.g. cifar10_lt_if100 banking77)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="methods to run (default: all of each setting), e.g. a GPU-tier subset: --seeds 0 --methods ce cb_ce dsb_ce",
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="time the tier's recipe here with --workers runs at once, print the whole tier's wall time and what fits "
        "--budget-min (default 10); run nothing (benchmarks/tier_budget.py)",
    )
    parser.add_argument(
        "--budget-min",
        type=float,
        default=None,
        help="time the recipe as --dry-run does, then run only the methods and seeds that fit this many minutes of "
        "wall time (each method at seed 0 that still fits, in benchmarks/tier_budget.py's priority order, then more "
        "seeds; finished runs are skipped)",
    )
    parser.add_argument(
        "--machine",
        default="a 2-core x86-64 CPU (no GPU), single-threaded runs",
        help="The machine, as stated in the report (name the GPU for --tier gpu)",
    )
    args = parse_benchmark_args(
        parser, argv, smoke={"tier": "tiny", "seeds": [0], "workers": 1, "methods": ["dsb_ce"], "work_dir": None}
    )
    if args.smoke and args.work_dir is None:
        args.work_dir = args.out_dir / "runs"
    if args.smoke and args.tier == "tiny" and args.source is None:
        args.source = str(write_tiny_image_dataset(args.work_dir / "tiny_source"))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.dry_run or args.budget_min is not None:
        if args.tier not in ("cpu", "gpu", "tiny"):
            parser.error("--dry-run and --budget-min time the CIFAR-10-LT tiers: --tier cpu or --tier gpu")
        if args.budget_min is not None and (args.methods or args.seeds or args.only):
            parser.error("--budget-min chooses the methods and seeds itself: drop --methods, --seeds and --only")
        if args.budget_min is not None and args.budget_min <= 0:
            parser.error(f"--budget-min must be positive, got {args.budget_min}")
        from benchmarks.tier_budget import plan

        budget_s = 60 * args.budget_min if args.budget_min is not None else GPU_BUDGET_S
        setting, fit = plan(args.tier, args.work_dir, args.data_root, args.source, args.workers, budget_s)
        if args.dry_run:
            command = shlex.join(["python", "benchmarks/long_tail.py", *(argv if argv is not None else sys.argv[1:])])
            estimate = {"command": command, "machine": args.machine, "text": fit["text"]}
            write_json_atomic(args.out_dir / ESTIMATE_FILENAME.format(tier=args.tier), estimate)
            return
        if not fit["methods"]:
            print("nothing runs: not one run fits the budget")
            return
        args.only, args.methods, args.seeds = [setting["name"]], fit["methods"], fit["seeds"]
        budget_note = f"budget {args.budget_min:g} min: {fit['text']}"
    args.seeds = args.seeds or DEFAULT_SEEDS
    start, load_at_start = time.time(), os.getloadavg()
    if not args.report_only:
        run_tier(
            args.tier, args.work_dir, args.data_root, args.seeds, args.workers, args.only, args.source, args.methods
        )
    if not args.report_only:
        append_run_info(
            args.work_dir / args.tier / "run_info.json",
            {
                "wall_time_s": time.time() - start,
                "workers": args.workers,
                "seeds": args.seeds,
                "only": args.only,
                "methods": args.methods,
                "load_average_1min": [load_at_start[0], os.getloadavg()[0]],
                "machine": args.machine,
                **({"note": budget_note} if args.budget_min is not None else {}),
            },
        )
    # The CPU and GPU tiers share one report, whichever was run: running one never drops the other's tables.
    report_tiers = ["cpu", "gpu"] if args.tier in ("cpu", "gpu") else [args.tier]
    tiers = {
        tier: collect(args.work_dir, tier, args.seeds if tier == args.tier else DEFAULT_SEEDS) for tier in report_tiers
    }
    notes = invocation_notes(args.work_dir, report_tiers, args.machine)
    if args.tier in STUDY_TIERS:
        from benchmarks.study_report import write_study_report

        write_study_report(args.out_dir, args.tier, tiers[args.tier], notes, args.work_dir, args.seeds)
        logger.info("wrote %s", args.out_dir / f"long_tail_{args.tier}.md")
        return
    if "cpu" in tiers:
        ce = next(
            (
                r
                for r in tiers["cpu"][0]
                if r["method"] == "ce" and r["dataset"] == "CIFAR-10-LT" and r["accuracy_mean"] is not None
            ),
            None,
        )
        reached = f"plain CE reaches {100 * ce['accuracy_mean']:.1f} %" if ce else "plain CE is not yet measured"
        notes += [
            "",
            f"The CPU tier is a short, small-model schedule far from convergence ({reached} on CIFAR-10-LT here "
            f"vs {PUBLISHED['ce']} % published for ResNet-32 / 200 epochs): it checks that every method runs in one "
            "harness and shows the trends of a short schedule; it is not evidence for or against the paper's numbers. "
            "Those need the GPU tier.",
        ]
    notes.append("")
    write_report(args.out_dir, tiers, notes)
    logger.info("wrote %s", args.out_dir / "long_tail.md")


def invocation_notes(work_dir: Path, tiers: list[str], machine: str) -> list[str]:
    """One line per recorded invocation of each of ``tiers`` (what it ran, its wall time, machine and load)."""
    notes = []
    for tier in tiers:
        for info in read_run_info(work_dir / tier / "run_info.json"):
            load = info.get("load_average_1min")
            notes.append(
                f"- `--tier {tier}` "
                + (f"`--only {' '.join(info['only'])}` " if info.get("only") else "")
                + (f"`--methods {' '.join(info['methods'])}`" if info.get("methods") else "(all methods)")
                + f" took {info['wall_time_s'] / 60:.1f} min wall ({info['workers']} runs in parallel, seeds {info['seeds']}) "
                f"on {info.get('machine', machine)}"
                + (f"; 1-minute load average {load[0]:.1f} at its start, {load[1]:.1f} at its end" if load else "")
                + (f" ({info['note']})." if info.get("note") else ".")
            )
    return (
        ["Invocations that produced these runs (finished runs are skipped, so each timed only what it ran):", *notes]
        if notes
        else []
    )


if __name__ == "__main__":
    main()
