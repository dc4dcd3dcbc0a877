"""How long a long-tail tier takes on this machine, and which part of it fits a time budget.

    python benchmarks/long_tail.py --tier gpu --dry-run --workers 8           # measure, estimate, run nothing
    python benchmarks/long_tail.py --tier gpu --workers 8 --budget-min 7      # run the part that fits 7 minutes

The cost of one run is measured, not modelled: ``workers`` processes at once each run the tier's own recipe
(``dsb_ce``, the tier's overrides and data, validation and test evaluated) three times, for ``short``, ``short``
and ``long`` optimizer steps. The first run pays the process's one-off start-up (CUDA context, kernel choice); the
other two give the marginal seconds per step under that concurrency, from their training loops' own times,
``(T_long - T_short) / (long - short)``, and the fixed seconds per run (model, data, evaluation) from the short
run's whole time, ``W_short - short * step``; a timing that gives no positive step time stops the plan. A tier's
wall time is then the simulated schedule of ``long_tail.run_tier`` (its order, its dependencies, ``workers`` at
once, finished runs skipped) with every run costing ``fixed + steps * step``.

A budget is filled in a fixed priority order: each method at seed 0 (``BUDGET_PRIORITY``: CE, the count
baseline, DSB-CE, then the rest) that still fits, then seeds 1 and 2 of those; finished runs cost nothing, so a
later session with the same budget continues where the last one stopped.
"""

from __future__ import annotations

import heapq
import math
import multiprocessing as mp
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks import tiers as lt
from recipes.common import RESULTS_FILENAME

# The order a budget takes the methods in: the paper's comparison first (CE, class-balanced CE, DSB-CE), then the
# strongest baseline and DSB on top of it, then LDAM, then the rest.
BUDGET_PRIORITY = [
    "ce",
    "cb_ce",
    "dsb_ce",
    "balanced_softmax",
    "dsb_balanced_softmax",
    "ldam_drw",
    "dsb_ldam",
    "if_ce",
    "focal",
    "dsb_focal",
    "mix_dsb_cb_ce",
]
TIMED_METHOD = "dsb_ce"  # the timing runs: pool capture and re-measurements included
TIMED_STEPS = {"cuda": (20, 220), "cpu": (2, 10)}  # (short, long) optimizer steps of the timing runs


def steps_per_run(setting: dict[str, Any], data_args: list[str], train_images: int) -> int:
    """Optimizer steps of one full run of ``setting`` on ``train_images`` training images: its argv parsed by the
    image recipe, steps counted by the recipe's own rule (``recipes.common.steps_per_epoch``)."""
    from recipes.common import parse_yaml_then_cli, steps_per_epoch
    from recipes.train_image import make_parser

    argv = list(lt.recipe_run(setting, TIMED_METHOD, 0, Path("unused"), data_args, None, []).argv)
    args = parse_yaml_then_cli(make_parser(), argv)[-1]
    if args.max_steps and args.max_steps > 0:
        return args.max_steps
    return int(math.ceil(args.num_train_epochs * steps_per_epoch(train_images, args)))


def _timed_runs(setting: dict[str, Any], data_args: list[str], out: str, steps: list[int], queue: Any) -> None:
    """One worker: the recipe for each of ``steps`` optimizer steps in turn; puts (device, [(whole run s, training
    loop s)]) on ``queue``."""
    import torch

    from recipes.train_image import main

    seconds = []
    for i, n in enumerate(steps):
        extra = ["--max_steps", str(n), "--eval_test", "true"]
        argv = list(lt.recipe_run(setting, TIMED_METHOD, 0, Path(out) / f"run{i}", data_args, None, extra).argv)
        start = time.perf_counter()
        record = main(argv)
        seconds.append((time.perf_counter() - start, record["train_runtime_s"]))
    queue.put((torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", seconds))


def measure_run_cost(
    setting: dict[str, Any], data_args: list[str], scratch: Path, workers: int, steps: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Seconds per optimizer step and fixed seconds per run of ``setting``'s recipe, ``workers`` runs at once.

    Returns ``{"device", "workers", "short_steps", "long_steps", "step_s", "fixed_s"}``; the slowest worker's
    figures (a conservative estimate). ``scratch`` holds the timing runs and is removed afterwards."""
    import torch

    if setting["recipe"] != "train_image":
        raise ValueError(f"only image settings are timed, not {setting['name']!r} ({setting['recipe']})")
    short, long = steps or TIMED_STEPS["cuda" if torch.cuda.is_available() else "cpu"]
    if not 0 < short < long:
        raise ValueError(f"timing steps must satisfy 0 < short < long, got {short}, {long}")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_timed_runs, args=(setting, data_args, str(scratch / f"w{w}"), [short, short, long], queue))
        for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    try:
        spans = [queue.get(timeout=3600) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=60)
        queue.close()
        queue.join_thread()
        shutil.rmtree(scratch, ignore_errors=True)
    return {"device": spans[0][0], "workers": workers, **run_cost([s for _, s in spans], short, long)}


def run_cost(timings: list[list[tuple[float, float]]], short: int, long: int) -> dict[str, Any]:
    """``{"short_steps", "long_steps", "step_s", "fixed_s"}`` from each worker's (whole run s, training loop s) of
    its start-up, ``short``- and ``long``-step runs: the slowest worker's step time from the training loops (the
    evaluation and loading jitter left out) and its fixed time from the short run's whole time."""
    step_s = max((t[2][1] - t[1][1]) / (long - short) for t in timings)
    if not step_s > 0:
        raise RuntimeError(
            f"the {long}-step timing runs trained no longer than the {short}-step ones ({timings}): the timing is "
            "noise on this machine; run again on a quieter machine"
        )
    fixed_s = max(max(0.0, t[1][0] - short * step_s) for t in timings)
    return {"short_steps": short, "long_steps": long, "step_s": step_s, "fixed_s": fixed_s}


def _finished(out: Path) -> bool:
    return lt.load_result(out / RESULTS_FILENAME) is not None


def planned_runs(
    work_dir: Path, tier: str, setting: dict[str, Any], methods: list[str], seeds: list[int]
) -> list[tuple[str, list[bool]]]:
    """``run_tier``'s submission groups for ``methods`` x ``seeds`` of one setting, in its order, each a
    (kind, [already finished? per run]) with kind ``"warm"`` (runs alone first), ``"tune:<method>"`` (the method's
    grid) and ``"queue"`` (both submitted at once after it), or ``"after:<method>"`` (submitted once ``<method>``'s
    grid and the grids before it are done)."""
    tuned = [m for m in lt.tuned_methods(setting) if m in methods]
    untuned = [m for m in setting["methods"] if m in methods and m not in tuned]
    untuned_runs = [_finished(lt.run_dir(work_dir, tier, setting, m, s)) for m in untuned for s in seeds]
    groups: list[tuple[str, list[bool]]] = []
    if lt.fills_a_cache(setting) and untuned_runs:
        groups.append(("warm", untuned_runs[:1]))
        untuned_runs = untuned_runs[1:]
    for method in tuned:
        points = lt.method_grid(setting, method)
        tags = ["_tune" + lt.grid_tag(p) for p in points]
        groups.append((f"tune:{method}", [_finished(lt.run_dir(work_dir, tier, setting, method, 0, t)) for t in tags]))
    groups.append(("queue", untuned_runs))
    for method in tuned:
        groups.append((f"after:{method}", [_finished(lt.run_dir(work_dir, tier, setting, method, s)) for s in seeds]))
    return groups


def simulate_wall(groups: list[tuple[str, list[bool]]], run_s: float, workers: int) -> tuple[float, int]:
    """(wall seconds, runs to do) of ``run_tier``'s first-in-first-out pool of ``workers`` processes over
    ``groups`` (:func:`planned_runs`), every unfinished run taking ``run_s`` and a finished one none."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    free = [0.0] * workers  # when each worker is next free
    tune_done: dict[str, float] = {}
    start_at, latest_tuning, wall, todo = 0.0, 0.0, 0.0, 0

    def run(submitted: float, finished: bool) -> float:
        nonlocal wall, todo
        begin = max(submitted, heapq.heappop(free))
        end = begin + (0.0 if finished else run_s)
        todo += not finished
        heapq.heappush(free, end)
        wall = max(wall, end)
        return end

    for kind, runs in groups:
        if kind == "warm":
            start_at = max([run(0.0, f) for f in runs], default=0.0)
            free = [start_at] * workers
        elif kind.startswith("tune:"):
            tune_done[kind[5:]] = max([run(start_at, f) for f in runs], default=start_at)
        elif kind == "queue":
            for f in runs:
                run(start_at, f)
        else:  # after:<method>: run_tier waits for the grids in order, so each waits for every earlier one too
            latest_tuning = max(latest_tuning, tune_done[kind[6:]])
            for f in runs:
                run(latest_tuning, f)
    return wall, todo


def fit_budget(
    work_dir: Path, tier: str, setting: dict[str, Any], run_s: float, workers: int, budget_s: float
) -> dict[str, Any]:
    """The runs a budget takes: each method of ``BUDGET_PRIORITY`` in turn at seed 0, kept when the selection so far
    with it still fits ``budget_s`` of simulated wall time, skipped when not (a tuned method needs two rounds: its
    grid, then its final runs); then seeds 1 and 2 of the kept methods, while they fit. Returns
    ``{"methods", "seeds", "wall_s", "runs"}``; methods empty when not one run fits."""

    def simulate(methods: list[str], seeds: list[int]) -> tuple[float, int]:
        return simulate_wall(planned_runs(work_dir, tier, setting, methods, seeds), run_s, workers)

    best = {"methods": [], "seeds": [], "wall_s": 0.0, "runs": 0}
    order = [m for m in BUDGET_PRIORITY if m in setting["methods"]]
    for method in order + [m for m in setting["methods"] if m not in order]:
        methods = [*best["methods"], method]
        wall, todo = simulate(methods, [0])
        if wall <= budget_s:
            best = {"methods": methods, "seeds": [0], "wall_s": wall, "runs": todo}
    for k in range(2, len(lt.DEFAULT_SEEDS) + 1):
        if not best["methods"]:
            break
        wall, todo = simulate(best["methods"], lt.DEFAULT_SEEDS[:k])
        if wall > budget_s:
            break
        best = {**best, "seeds": lt.DEFAULT_SEEDS[:k], "wall_s": wall, "runs": todo}
    return best


def estimate_text(
    work_dir: Path, tier: str, setting: dict[str, Any], cost: dict[str, Any], steps: int, budget_s: float
) -> tuple[str, dict[str, Any]]:
    """The printed estimate of the whole tier (runs of ``steps`` optimizer steps) and of what fits ``budget_s``, and
    that fitting selection."""
    run_s = cost["fixed_s"] + steps * cost["step_s"]
    everything = planned_runs(work_dir, tier, setting, setting["methods"], lt.DEFAULT_SEEDS)
    wall, todo = simulate_wall(everything, run_s, cost["workers"])
    fit = fit_budget(work_dir, tier, setting, run_s, cost["workers"], budget_s)
    if fit["methods"]:
        fits = (
            f"{budget_s / 60:.1f} min fit {fit['runs']} runs (seeds {fit['seeds']} of {' '.join(fit['methods'])}; "
            f"{fit['wall_s'] / 60:.1f} min)"
        )
    else:
        fits = f"{budget_s / 60:.1f} min fit no run"
    text = (
        f"{tier} tier, {setting['name']}: {todo} runs to do x {steps:,} optimizer steps. Measured on "
        f"{cost['device']} with {cost['workers']} runs at once ({cost['short_steps']}- and {cost['long_steps']}-step "
        f"timing runs of {TIMED_METHOD}): {1000 * cost['step_s']:.1f} ms per step per run "
        f"({cost['workers'] / cost['step_s']:.1f} steps/s together) + {cost['fixed_s']:.1f} s per run, so "
        f"{run_s:,.0f} s per run. The whole tier: {wall / 60:.1f} min of wall time "
        f"({'fits' if wall <= budget_s else 'does NOT fit'} {budget_s / 60:.1f} min); {fits}."
    )
    return text, fit


def plan(
    tier: str, work_dir: Path, data_root: Path, source: str | None, workers: int, budget_s: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Prepare the tier's first (image) setting, time its recipe here, print the estimate; returns the setting and
    :func:`fit_budget`'s selection, with the printed estimate under ``"text"``."""
    import datasets

    setting = lt.tier_settings(tier)[0]
    data_args = lt.data_args_for(setting, data_root, work_dir / tier / "cache", source)
    train_images = len(datasets.load_from_disk(data_args[data_args.index("--data_dir") + 1])["train"])
    cost = measure_run_cost(setting, data_args, work_dir / tier / "_timing", workers)
    steps = steps_per_run(setting, data_args, train_images)
    text, fit = estimate_text(work_dir, tier, setting, cost, steps, budget_s)
    print(text, flush=True)
    return setting, {**fit, "text": text}
