"""The run queue of a selection: one result file per run, finished runs skipped, several worker processes.

A run is ``(SemScaleConfig overrides, seed)``; its id hashes both, so two candidates that train the same way (``ce`` and
``ce_posthoc_la``) share their runs. Each run writes ``<id>.npz`` (its validation / test logits) and then ``<id>.json``
(its record), both atomically: the JSON file is the completeness mark, so a selection killed at any point and started
again re-runs exactly the runs without one. Runs execute in worker processes (``spawn``), each with one torch thread.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from ..atomic import atomic_path
from ..hub.report import write_json_atomic

__all__ = ["Job", "RunStore", "Schedule", "run_jobs", "run_pending", "schedule_fingerprint"]

logger = logging.getLogger(__name__)


class Schedule(Protocol):
    """How one run trains and evaluates (e.g. :class:`~hf_semscale.select.frozen.HeadSchedule`). Picklable."""

    def steps_per_run(self) -> int: ...

    def train(
        self, overrides: dict[str, Any], seed: int, max_steps: int | None = None
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """-> (record with ``validation`` / ``test`` long-tail metrics, ``{split}_logits [N, C]`` arrays)."""
        ...


@dataclass(frozen=True)
class Job:
    """One training run: ``overrides`` (``SemScaleConfig`` fields) at ``seed``."""

    overrides: tuple[tuple[str, Any], ...]
    seed: int

    @classmethod
    def of(cls, overrides: dict[str, Any], seed: int) -> Job:
        return cls(tuple(sorted(overrides.items())), int(seed))

    @property
    def run_id(self) -> str:
        key = json.dumps([list(self.overrides), self.seed], sort_keys=True, default=str)
        return f"{hashlib.sha256(key.encode()).hexdigest()[:16]}-seed{self.seed}"


def schedule_fingerprint(schedule: Schedule) -> str:
    """A short hash of everything that decides a run besides its overrides and seed: the schedule's compared dataclass
    fields (data, epochs, optimiser, base knobs, ...) and, for a recipe schedule, its config file's text. Runs of a
    selection live under it, so a changed schedule never reuses another schedule's finished runs."""
    values = {f.name: getattr(schedule, f.name) for f in dataclasses.fields(schedule) if f.compare}
    config = values.get("config")
    if isinstance(config, str) and Path(config).is_file():
        values["config_text"] = Path(config).read_text(encoding="utf-8")
    key = json.dumps([type(schedule).__name__, values], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class RunStore:
    """A folder of finished runs: ``<run_id>.json`` records and ``<run_id>.npz`` logits."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def record(self, job: Job) -> dict[str, Any] | None:
        """The finished run's record, or None (not run, or interrupted before its record was written)."""
        path = self.folder / f"{job.run_id}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def logits(self, job: Job) -> dict[str, np.ndarray]:
        with np.load(self.folder / f"{job.run_id}.npz") as npz:
            return {k: npz[k] for k in npz.files}

    def save(self, job: Job, record: dict[str, Any], logits: dict[str, np.ndarray]) -> None:
        with atomic_path(self.folder / f"{job.run_id}.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **logits)
        write_json_atomic(
            self.folder / f"{job.run_id}.json", {**record, "overrides": dict(job.overrides), "seed": job.seed}
        )


def _execute(schedule: Schedule, job: Job, folder: str) -> float:
    """Worker: train ``job`` and store it; returns its wall seconds."""
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    record, logits = schedule.train(dict(job.overrides), job.seed)
    RunStore(folder).save(job, {**record, "wall_time_s": time.perf_counter() - start}, logits)
    return time.perf_counter() - start


def run_jobs(
    schedule: Schedule,
    jobs: Sequence[Job],
    store: RunStore,
    workers: int = 1,
    progress: str | None = None,
) -> int:
    """Run the ``jobs`` that have no record in ``store`` (``workers`` processes; 1: in this process), with a progress
    bar of runs done / left labelled ``progress`` (None: no bar). Returns how many runs were executed."""
    unique = list(dict.fromkeys(jobs))
    pending = [j for j in unique if store.record(j) is None]
    execute = functools.partial(_execute, schedule, folder=str(store.folder))
    run_pending(execute, pending, workers, progress, total=len(unique))
    return len(pending)


def run_pending(
    execute: Callable[[Any], Any],
    pending: Sequence[Any],
    workers: int = 1,
    progress: str | None = None,
    total: int | None = None,
) -> list[Any]:
    """``execute(item)`` for every item of ``pending`` (``workers`` spawned processes; 1: in this process; ``execute``
    picklable); returns the results in completion order. A progress bar labelled ``progress`` (None: none) counts
    the runs of the whole queue, ``total``, finished ones included."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    total = len(pending) if total is None else total
    results = []
    with tqdm(total=total, initial=total - len(pending), desc=progress, unit="run", disable=progress is None) as bar:
        if workers == 1 or len(pending) <= 1:
            for item in pending:
                results.append(execute(item))
                bar.update()
            return results
        with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(execute, item) for item in pending]
            for future in as_completed(futures):
                results.append(future.result())  # a failed run raises here, naming its error
                bar.update()
    return results
