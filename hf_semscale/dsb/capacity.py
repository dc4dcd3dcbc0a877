"""What DSB's feature pool and its re-measurements will cost, per process, before anything is allocated.

For a class-count profile, a feature size ``d``, the balancer's settings and ``P`` processes, from the library's own
rules (pool capacities ``min(n_c, K)``, the class-cost split :func:`~hf_semscale.dsb.comm.shard_classes_by_cost`,
the packing of :func:`~hf_semscale.dsb.comm.gather_labelled_features`, a Gram + Cholesky per class volume):

- pool bytes on the busiest process (the whole pool with one process or ``shard_pool=False``);
- bytes each process sends and receives in the per-step feature gather: ``ceil(B / P) * (d + 1) * 4 + 16`` sent;
- float64 flops of one re-measurement on the busiest process, ``sum_c 2 min(m_c, d)^2 max(m_c, d) + min(m_c, d)^3 / 3``,
  and per training step (``/ update_interval``);
- with a :class:`ScaleTimeModel` calibrated on this machine: the seconds of both.

``hf-semscale plan`` prints this for a dataset's class counts; ``benchmarks/capacity.py`` checks it against real
pools, gathers and timings.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..core.scale import chunk_layout, class_semantic_scales
from .comm import shard_classes_by_cost
from .pool import estimate_pool_bytes, pool_capacities
from .settings import BalancerSettings

__all__ = [
    "PoolPlan",
    "ScaleTimeModel",
    "plan_pool",
    "volume_flops",
    "process_shards",
    "timed_class_scales",
    "format_bytes",
    "DEFAULT_GLOBAL_BATCH_SIZE",
]

_GATHER_SIZES_BYTES = 16
"""The ``[1, 2]`` int64 batch sizes gathered before the features."""
DEFAULT_GLOBAL_BATCH_SIZE = 256
"""Samples per optimizer step over all processes, when a plan is not told."""


def volume_flops(rows: int, dim: int) -> float:
    """float64 flops of one class volume of ``[rows, dim]`` features: the Gram on the smaller side and its Cholesky."""
    if rows < 2:
        return 0.0
    small, large = min(rows, dim), max(rows, dim)
    return 2.0 * small * small * large + small**3 / 3.0


def process_shards(capacities: Sequence[int], dim: int, processes: int) -> list[list[int]]:
    """The classes each process measures: the class-cost split with several processes (classes of fewer than 2 rows
    nowhere), every class with one."""
    return shard_classes_by_cost(list(capacities), dim, processes) if processes > 1 else [list(range(len(capacities)))]


def timed_class_scales(counts: Sequence[int], dim: int, repeats: int, device: str | torch.device = "cpu") -> float:
    """Median seconds of :func:`~hf_semscale.core.scale.class_semantic_scales` over ``repeats`` calls (after one
    warm-up) on random unit features: ``counts[c]`` rows of class ``c``, ``dim`` features, on ``device``."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(list(counts)))
    features = torch.nn.functional.normalize(torch.randn(labels.numel(), dim, generator=generator), dim=-1)
    features, labels = features.to(device), labels.to(device)

    def call() -> float:
        start = time.perf_counter()
        class_semantic_scales(features, labels, len(counts))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    call()
    return statistics.median(call() for _ in range(repeats))


class ScaleTimeModel:
    """Seconds of a re-measurement on this machine: per chunk of :func:`~hf_semscale.core.scale.chunk_layout`, its
    flops at the float64 rate measured for matrices of its shape (smaller side, aspect ratio, and whether rows or
    features are the smaller side; interpolated in log space between calibration shapes, since small and thin
    matrices run far below peak), plus a fixed cost per chunk.

    ``sides``: the smaller matrix sides calibrated (larger ones are predicted at the largest side's rate). Calibrating
    the default sides takes about a minute on one CPU thread; the model times at the process's torch thread count.
    """

    SIDES = (4, 16, 64, 256, 1024)
    ASPECTS = (1, 4, 16)

    def __init__(self, repeats: int = 5, sides: Sequence[int] = SIDES, device: str | torch.device = "cpu"):
        if len(sides) < 1 or min(sides) < 2:
            raise ValueError(f"calibration sides must be rows / features of at least 2, got {list(sides)}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.sides, self.device = tuple(sorted(set(sides))), torch.device(device)
        self.rate: dict[tuple[bool, int, int], float] = {}
        for rows_smaller in (True, False):
            for side in self.sides:
                for aspect in self.ASPECTS:
                    large = min(side * aspect, 8192)
                    rows, dim = (side, large) if rows_smaller else (large, side)
                    n = max(2, min(64, int(2e6 // (rows * dim))))
                    # the marginal rate: n more classes of this shape (the call's fixed cost cancels out)
                    extra = self._timed([rows] * (2 * n), dim, repeats) - self._timed([rows] * n, dim, repeats)
                    self.rate[(rows_smaller, side, aspect)] = n * volume_flops(rows, dim) / max(extra, 1e-7)
        tiny = list(range(2, 402, 2))  # many chunks of little work: the fixed cost per chunk
        chunks = chunk_layout(tiny, 8, self.device)
        self.overhead = max(self._timed(tiny, 8, repeats) - self._flops_seconds(chunks, 8), 0.0) / len(chunks)

    def _timed(self, counts: list[int], dim: int, repeats: int) -> float:
        return timed_class_scales(counts, dim, repeats, self.device)

    @staticmethod
    def _bracket(grid: tuple[int, ...], value: float) -> tuple[int, int, float]:
        value = min(max(value, grid[0]), grid[-1])
        hi = next(i for i, g in enumerate(grid) if g >= value)
        lo = max(hi - 1, 0)
        t = 0.0 if grid[hi] == grid[lo] else (math.log(value) - math.log(grid[lo])) / math.log(grid[hi] / grid[lo])
        return grid[lo], grid[hi], t

    def _rate(self, rows: int, dim: int) -> float:
        small, large = min(rows, dim), max(rows, dim)
        s0, s1, ts = self._bracket(self.sides, small)
        a0, a1, ta = self._bracket(self.ASPECTS, large / small)
        key = rows <= dim
        corners = ((s0, a0, (1 - ts) * (1 - ta)), (s1, a0, ts * (1 - ta)), (s0, a1, (1 - ts) * ta), (s1, a1, ts * ta))
        return math.exp(sum(w * math.log(self.rate[(key, s, a)]) for s, a, w in corners))

    def _flops_seconds(self, chunks: list[tuple[int, int]], dim: int) -> float:
        return sum(n * volume_flops(width, dim) / self._rate(width, dim) for n, width in chunks)

    def seconds(self, counts: Sequence[int], dim: int) -> float:
        """Predicted seconds of one :func:`~hf_semscale.core.scale.class_semantic_scales` call on classes of
        ``counts`` rows of ``dim`` features."""
        chunks = chunk_layout(counts, dim, self.device)
        return self._flops_seconds(chunks, dim) + len(chunks) * self.overhead


@dataclass(frozen=True)
class PoolPlan:
    """DSB's cost on the busiest of ``processes`` processes. Bytes; float64 flops; seconds only with a time model."""

    classes: int
    samples: int
    pool_rows: int
    pool_bytes_per_process: int
    pool_bytes_one_process: int
    gather_bytes_sent_per_step: int
    gather_bytes_received_per_step: int
    flops_per_update_busiest: float
    flops_per_step_busiest: float
    seconds_per_update_busiest: float | None = None
    seconds_per_step_busiest: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def plan_pool(
    class_counts: Sequence[int],
    feature_dim: int,
    settings: BalancerSettings | None = None,
    processes: int = 1,
    global_batch_size: int = DEFAULT_GLOBAL_BATCH_SIZE,
    time_model: ScaleTimeModel | None = None,
) -> PoolPlan:
    """DSB's pool memory, gather traffic and re-measurement work for ``class_counts`` (training samples per class)
    and ``feature_dim`` (d, the head's input size) under ``settings`` (``pool_capacity``, ``pool_dtype``,
    ``shard_pool``, ``update_interval``; default :class:`BalancerSettings`) on ``processes`` processes with
    ``global_batch_size`` samples per optimizer step across them. ``time_model`` adds seconds."""
    s = settings if settings is not None else BalancerSettings()
    if not class_counts or min(class_counts) < 0:
        raise ValueError(f"class_counts must be a non-empty list of counts >= 0, got {list(class_counts)[:10]}")
    for name, value in (
        ("feature_dim", feature_dim),
        ("processes", processes),
        ("global_batch_size", global_batch_size),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    caps = pool_capacities(list(class_counts), s.pool_capacity).tolist()
    shards = process_shards(caps, feature_dim, processes)
    rows_busiest = max(sum(caps[c] for c in shard) for shard in shards) if processes > 1 and s.shard_pool else sum(caps)
    work = max(sum(volume_flops(caps[c], feature_dim) for c in shard) for shard in shards)
    sent = (
        math.ceil(global_batch_size / processes) * (feature_dim + 1) * 4 + _GATHER_SIZES_BYTES if processes > 1 else 0
    )
    seconds = None
    if time_model is not None:
        seconds = max(time_model.seconds([caps[c] for c in shard], feature_dim) for shard in shards)
    return PoolPlan(
        classes=len(caps),
        samples=int(sum(class_counts)),
        pool_rows=int(sum(caps)),
        pool_bytes_per_process=estimate_pool_bytes(torch.tensor([rows_busiest]), feature_dim, s.pool_dtype),
        pool_bytes_one_process=estimate_pool_bytes(torch.tensor(caps), feature_dim, s.pool_dtype),
        gather_bytes_sent_per_step=sent,
        gather_bytes_received_per_step=processes * sent,
        flops_per_update_busiest=work,
        flops_per_step_busiest=work / s.update_interval,
        seconds_per_update_busiest=seconds,
        seconds_per_step_busiest=None if seconds is None else seconds / s.update_interval,
    )


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units up to GiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} B"
