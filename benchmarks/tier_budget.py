"""How long a long-tail tier takes on this machine, and which part of it fits a time budget.

    python benchmarks/long_tail.py --tier gpu --dry-run --workers 8           # measure, estimate, run nothing
    python benchmarks/long_tail.py --tier gpu --workers 8 --budget-min 7      # run the part that fits 7 minutes

The cost of one run is measured by the library's :func:`~hf_semscale.select.selection.estimate_seconds` on the
tier's own recipe (:class:`~hf_semscale.select.recipe.RecipeSchedule`: its config, overrides and data, validation
and test evaluated): ``workers`` processes at once each run a warm-up probe (the process's one-off start-up: CUDA
context, kernel choice), then a short and a long one; the slowest worker's fixed and per-step seconds count. A
run costs :meth:`~hf_semscale.select.selection.RunEstimate.seconds` with the pool's re-measurements (the DSB
methods' cost, the dearest). A tier's wall time is the simulated schedule of ``long_tail.run_tier`` (its order, its
waves, ``workers`` at once, finished runs skipped).

A budget is filled by the library's :func:`~hf_semscale.select.selection.fill_budget` in a fixed priority order:
each method at seed 0 (``BUDGET_PRIORITY``: CE, the count baseline, DSB-CE, then the rest) that still fits, then
seeds 1 and 2 of those; finished runs cost nothing, so a later session with the same budget continues where the
last one stopped.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks import tiers as lt
from hf_semscale.select.recipe import RecipeSchedule
from hf_semscale.select.selection import estimate_seconds, fill_budget, wall_seconds
from recipes.common import RESULTS_FILENAME

# The order a budget takes the methods in: the paper's comparison first (CE, class-balanced CE, DSB-CE), then the
# strongest baseline and DSB on top of it, then LDAM, then the rest.
BUDGET_PRIORITY = "ce cb_ce dsb_ce balanced_softmax dsb_balanced_softmax ldam_drw dsb_ldam if_ce focal dsb_focal mix_dsb_cb_ce".split()
PROBE_STEPS = {"cuda": (20, 20, 220), "cpu": (2, 2, 10)}  # warm-up, short and long optimizer steps of the probes


def _finished(out: Path) -> bool:
    return lt.load_result(out / RESULTS_FILENAME) is not None


def planned_runs(
    work_dir: Path, tier: str, setting: dict[str, Any], methods: list[str], seeds: list[int]
) -> list[list[bool]]:
    """``run_tier``'s three waves for ``methods`` x ``seeds`` of one setting, each a list of [already finished?] per
    run: a text setting's first untuned run (it fills the encoder cache the others read); the tuned methods' grids and
    the other untuned runs; the tuned methods' final runs (at the knobs their grids chose)."""
    tuned = [m for m in lt.tuned_methods(setting) if m in methods]
    untuned = [m for m in setting["methods"] if m in methods and m not in tuned]
    untuned_runs = [_finished(lt.run_dir(work_dir, tier, setting, m, s)) for m in untuned for s in seeds]
    warm = untuned_runs[:1] if lt.fills_a_cache(setting) else []
    grids = [
        _finished(lt.run_dir(work_dir, tier, setting, m, 0, "_tune" + lt.grid_tag(p)))
        for m in tuned
        for p in lt.method_grid(setting, m)
    ]
    finals = [_finished(lt.run_dir(work_dir, tier, setting, m, s)) for m in tuned for s in seeds]
    return [warm, grids + untuned_runs[len(warm) :], finals]


def simulate_wall(waves: list[list[bool]], run_s: float, workers: int) -> tuple[float, int]:
    """(wall seconds, runs to do) of ``waves`` (:func:`planned_runs`) on ``workers`` processes, every unfinished run
    taking ``run_s`` and a finished one none (:func:`~hf_semscale.select.selection.wall_seconds`)."""
    todo = [[run_s] * flags.count(False) for flags in waves]
    return wall_seconds(todo, workers), sum(map(len, todo))


def fit_budget(
    work_dir: Path, tier: str, setting: dict[str, Any], run_s: float, workers: int, budget_s: float
) -> dict[str, Any]:
    """The runs a budget takes: each method of ``BUDGET_PRIORITY`` in turn at seed 0, kept when the selection so far
    with it still fits ``budget_s`` of simulated wall time, skipped when not (a tuned method needs two rounds: its
    grid, then its final runs); then seeds 1 and 2 of the kept methods, while they fit. Returns
    ``{"methods", "seeds", "wall_s", "runs"}``; methods empty when not one run fits."""

    def simulate(methods: list[str], seeds: list[int]) -> tuple[float, int]:
        return simulate_wall(planned_runs(work_dir, tier, setting, methods, seeds), run_s, workers)

    order = [m for m in BUDGET_PRIORITY if m in setting["methods"]]
    order += [m for m in setting["methods"] if m not in order]
    methods = fill_budget(order, lambda kept: simulate(kept, lt.DEFAULT_SEEDS[:1])[0], budget_s)[0]
    if not methods:
        return {"methods": [], "seeds": [], "wall_s": 0.0, "runs": 0}
    first, more = lt.DEFAULT_SEEDS[:1], lt.DEFAULT_SEEDS[1:]
    seeds = first + fill_budget(more, lambda kept: simulate(methods, first + kept)[0], budget_s)[0]
    wall, todo = simulate(methods, seeds)
    return {"methods": methods, "seeds": seeds, "wall_s": wall, "runs": todo}


def estimate_text(
    work_dir: Path, tier: str, setting: dict[str, Any], measured: dict[str, Any], steps: int, budget_s: float
) -> tuple[str, dict[str, Any]]:
    """The printed estimate of the whole tier (runs of ``steps`` optimizer steps) and of what fits ``budget_s``, and
    that fitting selection. ``measured``: ``{"estimate": RunEstimate, "device", "workers", "probe_steps"}``."""
    estimate, workers = measured["estimate"], measured["workers"]
    run_s = estimate.seconds(steps, uses_pool=True)
    everything = planned_runs(work_dir, tier, setting, setting["methods"], lt.DEFAULT_SEEDS)
    wall, todo = simulate_wall(everything, run_s, workers)
    fit = fit_budget(work_dir, tier, setting, run_s, workers, budget_s)
    if fit["methods"]:
        fits = (
            f"{budget_s / 60:.1f} min fit {fit['runs']} runs (seeds {fit['seeds']} of {' '.join(fit['methods'])}; "
            f"{fit['wall_s'] / 60:.1f} min)"
        )
    else:
        fits = f"{budget_s / 60:.1f} min fit no run"
    short, long = measured["probe_steps"][-2:]
    text = (
        f"{tier} tier, {setting['name']}: {todo} runs to do x {steps:,} optimizer steps. Measured on "
        f"{measured['device']} with {workers} runs at once ({short}- and {long}-step timing runs): "
        f"{1000 * estimate.step_s:.1f} ms per step per run ({workers / estimate.step_s:.1f} steps/s together) + "
        f"{estimate.fixed_s:.1f} s per run + {estimate.measure_s:.2f} s per scale re-measurement, so {run_s:,.0f} s "
        f"per run. The whole tier: {wall / 60:.1f} min of wall time ({'fits' if wall <= budget_s else 'does NOT fit'} "
        f"{budget_s / 60:.1f} min); {fits}."
    )
    return text, fit


def measure(setting: dict[str, Any], data_args: list[str], workers: int) -> tuple[dict[str, Any], int]:
    """Time ``setting``'s recipe (:data:`PROBE_STEPS`, ``workers`` at once); returns ``estimate_text``'s
    ``measured`` and the optimizer steps of one full run."""
    import torch

    if setting["recipe"] != "train_image":
        raise ValueError(f"only image settings are timed, not {setting['name']!r} ({setting['recipe']})")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    probe_steps = PROBE_STEPS["cpu" if device == "cpu" else "cuda"]
    with tempfile.TemporaryDirectory(prefix="semscale-timing-") as scratch:
        argv = (*data_args, *setting["overrides"])
        schedule = RecipeSchedule.from_config(lt.REPO_ROOT / setting["config"], scratch, "image", argv)
        estimate = estimate_seconds(schedule, probe_steps, workers)
    measured = {"estimate": estimate, "device": device, "workers": workers, "probe_steps": probe_steps}
    return measured, schedule.steps_per_run()


def plan(
    tier: str, work_dir: Path, data_root: Path, source: str | None, workers: int, budget_s: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Prepare the tier's first (image) setting, time its recipe here, print the estimate; returns the setting and
    :func:`fit_budget`'s selection, with the printed estimate under ``"text"``."""
    setting = lt.tier_settings(tier)[0]
    data_args = lt.data_args_for(setting, data_root, work_dir / tier / "cache", source)
    measured, steps = measure(setting, data_args, workers)
    text, fit = estimate_text(work_dir, tier, setting, measured, steps, budget_s)
    print(text, flush=True)
    return setting, {**fit, "text": text}
