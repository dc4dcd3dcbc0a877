"""Choose a method for the user's data: tune each candidate on validation, compare over seeds, pick by a stated rule.

    schedule = HeadSchedule(features_file, class_names)          # or any Schedule
    result = select_method(schedule, "out/selection", SelectionSettings())

1. Tuning: every candidate's grid points at the first seed; each keeps the point with the best VALIDATION balanced
   accuracy (ties: the first in grid order). ``ce_posthoc_la`` tunes tau on the ``ce`` run's validation logits.
2. Finals: the chosen point at the other seeds.
3. The rule: the best mean validation balanced accuracy over seeds wins, except that every candidate within one seed
   std of it (the best's std) counts as tied, and a tie goes to the simpler candidate (no feature pool before a pool,
   then fewer tuned knobs; :attr:`Candidate.complexity`). Test metrics, where a test split exists, are reported and
   never used for a choice.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..core.posthoc import DEFAULT_TAUS, adjust_logits, choose_tau
from ..environment import machine_description
from .candidates import DEFAULT_CANDIDATES, Candidate, GridSpec, build_candidates
from .runs import Job, RunStore, Schedule, run_jobs, run_pending, schedule_fingerprint

__all__ = [
    "SelectionSettings",
    "SelectionError",
    "select_method",
    "check_class_counts",
    "estimate_seconds",
    "fill_budget",
    "wall_seconds",
    "RunEstimate",
    "METRICS",
    "mean_std",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

METRICS = ("balanced_accuracy", "accuracy", "many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy")


class SelectionError(ValueError):
    """A selection that cannot run as asked (bad input, a budget nothing fits in)."""


@dataclass
class SelectionSettings:
    """What a selection compares and how long it may take."""

    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    seeds: tuple[int, ...] = (0, 1, 2)
    grid: GridSpec = field(default_factory=GridSpec)
    workers: int = 2
    budget_min: float | None = None
    taus: tuple[float, ...] = DEFAULT_TAUS

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise SelectionError(f"seeds must be distinct and non-empty, got {list(self.seeds)}")
        if self.workers < 1:
            raise SelectionError(f"workers must be >= 1, got {self.workers}")
        if self.budget_min is not None and not self.budget_min > 0:
            raise SelectionError(f"budget_min must be positive minutes, got {self.budget_min}")

    @property
    def parallel_runs(self) -> int:
        """Runs that really proceed at once: the workers, at most one per CPU core."""
        return min(self.workers, os.cpu_count() or 1)


@dataclass(frozen=True)
class RunEstimate:
    """Seconds of one run: ``fixed_s + step_s * steps``, plus ``measure_s`` per scale re-measurement for pool runs."""

    fixed_s: float
    step_s: float
    measure_s: float

    def seconds(self, steps: int, uses_pool: bool, start: float = 0.4, update_interval: int = 20) -> float:
        measurements = math.ceil(steps * (1.0 - start) / update_interval) if uses_pool else 0
        return self.fixed_s + self.step_s * steps + self.measure_s * measurements


def _probe_seconds(schedule: Schedule, probe_steps: tuple[int, ...]) -> tuple[list[float], float]:
    """Worker: (wall seconds of a short unweighted run of each of ``probe_steps``, seconds of one re-measurement of
    every class's scale on a pool of the training set's size), with one torch thread."""
    import torch

    from ..core.scale import class_semantic_scales

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for steps in probe_steps:
            start = time.perf_counter()
            schedule.train({"semscale_weighting": "none"}, seed=0, max_steps=steps)
            times.append(time.perf_counter() - start)
        counts = schedule.class_counts()
        labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        start = time.perf_counter()
        class_semantic_scales(torch.randn(labels.numel(), schedule.feature_dim), labels, len(counts))
        return times, time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def estimate_seconds(schedule: Schedule, probe_steps: tuple[int, ...] = (4, 24), workers: int = 1) -> RunEstimate:
    """Time short unweighted runs of ``probe_steps`` optimizer steps for the fixed and per-step seconds, and one
    re-measurement of every class's scale on a pool of the training set's size for the pool candidates' extra.

    The last two probes give the estimate; earlier ones only warm up (a process's one-off start-up: a CUDA context).
    ``workers`` > 1: each of ``workers`` processes probes at once (the concurrency the runs will have), and the
    slowest worker's figures count."""
    if len(probe_steps) < 2 or not 0 < probe_steps[-2] < probe_steps[-1]:
        raise SelectionError(f"probe_steps must end in two step counts 0 < short < long, got {list(probe_steps)}")
    (short, long), estimates = probe_steps[-2:], []
    for times, measure_s in run_pending(functools.partial(_probe_seconds, schedule), [probe_steps] * workers, workers):
        step_s = (times[-1] - times[-2]) / (long - short)
        if not step_s > 0:
            step_s = times[-1] / long  # the machine's noise swamped the difference: an upper bound
        estimates.append(RunEstimate(max(times[-2] - step_s * short, 0.0), step_s, measure_s))
    return RunEstimate(*(max(getattr(e, f.name) for e in estimates) for f in fields(RunEstimate)))


def fill_budget(options: Sequence[T], seconds: Callable[[list[T]], float], budget_s: float) -> tuple[list[T], list[T]]:
    """Fill ``budget_s`` in order: each option is kept when ``seconds(kept + [option])`` still fits, else skipped.
    Returns (kept, skipped)."""
    kept, skipped = [], []
    for option in options:
        (kept if seconds([*kept, option]) <= budget_s else skipped).append(option)
    return kept, skipped


def check_class_counts(counts: list[int], names: list[str]) -> None:
    """Refuse training counts ``[C]`` on which no method can be validated (fewer than 2 classes, one sample each)."""
    present = [c for c, n in enumerate(counts) if n > 0]
    if len(present) < 2:
        raise SelectionError(
            f"the training split has samples of {len(present)} class(es) only ({names[present[0]] if present else 'none'}): "
            "there is nothing to balance. Fix: check the label column, or use a dataset with at least 2 classes."
        )
    if all(counts[c] <= 1 for c in present):
        raise SelectionError(
            "every class has at most one training sample: no method can be validated on such data. Fix: collect more "
            "samples per class (a handful each at least)."
        )


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that are not None ((None, None) without any; std 0 of one)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def wall_seconds(waves: Sequence[Sequence[float]], workers: int) -> float:
    """Wall seconds of ``waves`` of runs (seconds each) on ``workers`` processes: a wave starts once the one before has
    finished, and each of its runs, in order, goes to the first process to be free."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    wall = 0.0
    for runs in waves:
        free = [wall] * workers  # a heap of the times the processes are next free
        for seconds in runs:
            heapq.heapreplace(free, free[0] + seconds)
        wall = max(free)
    return wall


def _training_runs(
    candidates: list[Candidate], seeds: tuple[int, ...], epochs: float, grid: GridSpec
) -> tuple[dict[str, Candidate], dict[str, list[Job]]]:
    """The methods that train (each candidate, or the method a post-hoc one reuses) and their tuning runs."""
    trained: dict[str, Candidate] = {}
    for cand in candidates:
        source = cand.trains_as or cand.name
        if source not in trained:
            trained[source] = cand if cand.trains_as is None else build_candidates([source], epochs, grid)[0]
    return trained, {name: [Job.of(p, seeds[0]) for p in cand.points] for name, cand in trained.items()}


def _unfinished_waves(
    candidates: list[Candidate],
    seeds: tuple[int, ...],
    epochs: float,
    grid: GridSpec,
    store: RunStore,
    run_s: Callable[[Candidate], float],
) -> list[list[float]]:
    """Seconds of each run of ``candidates`` not yet in ``store``: [tuning runs, final runs]. A method's finals are
    known once its grid is done; before, all ``len(seeds) - 1`` count as to do."""
    trained, tuning = _training_runs(candidates, seeds, epochs, grid)
    todo: dict[Job, float] = {}
    finals = []
    for name, cand in trained.items():
        missing = [j for j in tuning[name] if store.record(j) is None]
        todo.update(dict.fromkeys(missing, run_s(cand)))
        if missing:
            finals += [run_s(cand)] * (len(seeds) - 1)
        else:
            point = _choose_point(cand, tuning[name], store)[0]
            finals += [run_s(cand) for s in seeds[1:] if store.record(Job.of(point, s)) is None]
    return [list(todo.values()), finals]


def _plan(
    candidates: list[Candidate],
    wall_s: Callable[[list[Candidate]], float],
    run_s: Callable[[Candidate], float],
    seeds: tuple[int, ...],
    settings: SelectionSettings,
) -> tuple[list[Candidate], list[str]]:
    """The candidates whose unfinished runs fit ``budget_min`` of wall time ``wall_s(kept)`` (in order; a candidate
    fits whole or not at all) and the skipped; ``run_s``: estimated seconds of one run of a candidate."""
    if settings.budget_min is None:
        return candidates, []
    kept, skipped = fill_budget(candidates, wall_s, settings.budget_min * 60.0)
    if not kept:
        raise SelectionError(
            f"nothing fits in --budget-min {settings.budget_min:g}: one run takes about "
            f"{min(map(run_s, candidates)):.0f} s and the first candidate ({candidates[0].name}) needs "
            f"{len(candidates[0].points) + len(seeds) - 1} runs. Fix: raise the budget, or use fewer seeds / candidates."
        )
    return kept, [c.name for c in skipped]


def select_method(
    schedule: Schedule,
    output_dir: str | Path,
    settings: SelectionSettings | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run (or resume) a selection with its runs in ``output_dir/runs/<schedule fingerprint>``; returns the result
    (candidate rows, the chosen method and the rule; :func:`~hf_semscale.select.report.write_selection` writes it out).

    ``schedule`` trains one run (:class:`~hf_semscale.select.frozen.HeadSchedule`); ``log`` prints progress lines."""
    settings = settings or SelectionSettings()
    counts = schedule.class_counts()
    check_class_counts(counts, list(getattr(schedule, "class_names", [str(c) for c in range(len(counts))])))
    epochs = getattr(schedule, "epochs", 1.0)
    candidates = build_candidates(settings.candidates, epochs, settings.grid)
    store = RunStore(Path(output_dir) / "runs" / schedule_fingerprint(schedule))
    seeds = tuple(settings.seeds)

    estimate = estimate_seconds(schedule)
    steps, start = schedule.steps_per_run(), statistics.mean(settings.grid.starts)

    def wall_s(kept: list[Candidate]) -> float:
        return wall_seconds(_unfinished_waves(kept, seeds, epochs, settings.grid, store, run_s), settings.parallel_runs)

    def run_s(cand: Candidate) -> float:
        return estimate.seconds(steps, cand.uses_pool, start)

    candidates, skipped = _plan(candidates, wall_s, run_s, seeds, settings)
    trained, tuning = _training_runs(candidates, seeds, epochs, settings.grid)
    tuning_jobs = list(dict.fromkeys(j for jobs in tuning.values() for j in jobs))
    finals_count = len(trained) * (len(seeds) - 1)
    log(
        f"{len(tuning_jobs) + finals_count} runs ({len(tuning_jobs)} tuning at seed {seeds[0]}, {finals_count} finals); "
        f"a run takes about {estimate.fixed_s:.1f} s + {estimate.step_s * 1000:.1f} ms x {steps} steps (+ "
        f"{estimate.measure_s:.2f} s per scale re-measurement with a pool), so about {math.ceil(wall_s(candidates) / 60)}"
        f" min with {settings.workers} worker(s) for the runs not yet finished"
        + (f"; skipped for the budget: {', '.join(skipped)}" if skipped else "")
    )
    started = time.perf_counter()
    executed = run_jobs(schedule, tuning_jobs, store, settings.workers, progress="runs (tuning)")
    chosen = {name: _choose_point(cand, tuning[name], store) for name, cand in trained.items()}
    finals = {name: [Job.of(chosen[name][0], s) for s in seeds] for name in trained}
    executed += run_jobs(
        schedule, [j for jobs in finals.values() for j in jobs], store, settings.workers, progress="runs (finals)"
    )

    rows = []
    for cand in candidates:
        if cand.trains_as is None:
            point, grid_rows = chosen[cand.name]
            rows.append(_row(cand, point, [store.record(j) for j in finals[cand.name]], grid_rows))
        else:
            rows.append(_posthoc_row(cand, schedule, store, finals[cand.trains_as], counts, settings.taus))
    winner, rule = choose_winner(rows, {c.name: c for c in candidates})
    return {
        "candidates": rows,
        "chosen": winner,
        "rule": rule,
        "skipped_for_budget": skipped,
        "seeds": list(seeds),
        "grid": asdict(settings.grid),
        "runs_total": len(tuning_jobs) + finals_count,
        "runs_executed": executed,
        "estimate": {**asdict(estimate), "run_s": {c.name: run_s(c) for c in candidates}},
        "wall_time_s": time.perf_counter() - started,
        "machine": machine_description(),
    }


def _validation_score(record: dict[str, Any] | None) -> float | None:
    return None if record is None or not record.get("validation") else record["validation"]["balanced_accuracy"]


def _choose_point(cand: Candidate, jobs: list[Job], store: RunStore) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The grid point with the best validation balanced accuracy at the first seed (ties: first in grid order)."""
    rows, best, best_score = [], cand.points[0], -math.inf
    for point, job in zip(cand.points, jobs):
        score = _validation_score(store.record(job))
        rows.append({"knobs": cand.knobs_of(point), "validation_balanced_accuracy": score})
        if score is not None and score > best_score:
            best, best_score = point, score
    return dict(best), rows


def _summary(metrics_per_seed: dict[str, list[dict[str, Any] | None]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split, per_seed in metrics_per_seed.items():
        for metric in METRICS:
            mean, std = mean_std([m[metric] if m else None for m in per_seed])
            out[f"{split}_{metric}_mean"], out[f"{split}_{metric}_std"] = mean, std
    return out


def _row(cand: Candidate, point: dict[str, Any], records: list[dict[str, Any]], grid_rows: list) -> dict[str, Any]:
    return {
        "method": cand.name,
        "uses_pool": cand.uses_pool,
        "knobs": cand.knobs_of(point),
        "config": dict(point),
        **_summary({"validation": [r.get("validation") for r in records], "test": [r.get("test") for r in records]}),
        "final_class_weights": records[0].get("final_class_weights"),
        "final_semantic_scales": records[0].get("final_semantic_scales"),
        "grid": grid_rows,
    }


def _posthoc_row(
    cand: Candidate,
    schedule: Any,
    store: RunStore,
    source_jobs: list[Job],
    counts: list[int],
    taus: tuple[float, ...],
) -> dict[str, Any]:
    """``ce_posthoc_la``: tau chosen on the first seed's validation logits, then applied to every seed."""
    arrays = schedule.arrays()
    first = store.logits(source_jobs[0])
    tau, scores = choose_tau(first["validation_logits"], arrays["validation_y"], counts, taus)
    per_split: dict[str, list[dict[str, Any] | None]] = {"validation": [], "test": []}
    for job in source_jobs:
        logits = store.logits(job)
        for split in per_split:
            key = f"{split}_logits"
            if key not in logits:
                per_split[split].append(None)
                continue
            adjusted = adjust_logits(_tensor(logits[key]), counts, tau).numpy()
            per_split[split].append(schedule.metrics(adjusted, arrays[f"{split}_y"]))
    return {
        "method": cand.name,
        "uses_pool": False,
        "knobs": {"tau": tau},
        "config": {**cand.points[0], "posthoc_logit_adjustment_tau": tau},
        **_summary(per_split),
        "grid": [{"knobs": {"tau": t}, "validation_balanced_accuracy": s} for t, s in zip(taus, scores)],
    }


def _tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(np.asarray(array))


def choose_winner(rows: list[dict[str, Any]], candidates: dict[str, Candidate]) -> tuple[str, str]:
    """The rule of the module docstring: ``(method name, the rule in words with its numbers)``."""
    scored = [r for r in rows if r["validation_balanced_accuracy_mean"] is not None]
    if not scored:
        raise SelectionError("no candidate has a validation score (no validation rows?)")
    best = max(scored, key=lambda r: r["validation_balanced_accuracy_mean"])
    margin = best["validation_balanced_accuracy_std"] or 0.0
    tied = [
        r
        for r in scored
        if r["validation_balanced_accuracy_mean"] >= best["validation_balanced_accuracy_mean"] - margin
    ]
    pick = min(tied, key=lambda r: (candidates[r["method"]].complexity, -r["validation_balanced_accuracy_mean"]))
    rule = (
        f"best mean validation balanced accuracy: {best['method']} {100 * best['validation_balanced_accuracy_mean']:.2f}"
        f" (seed std {100 * margin:.2f}); within one std of it: {', '.join(r['method'] for r in tied)}"
    )
    if pick is not best:
        rule += (
            f"; the simplest of those wins (no feature pool before a pool, then fewer tuned knobs): {pick['method']} "
            f"{100 * pick['validation_balanced_accuracy_mean']:.2f}"
        )
    return pick["method"], rule
