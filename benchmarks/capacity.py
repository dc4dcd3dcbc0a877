"""Capacity model of DSB: what the pool and its re-measurements cost per process, at any scale (issue 13, item 2).

For a class-count profile, feature size d, pool dtype and number of processes P it predicts, from the library's
own rules (the pool capacities ``min(n_c, K)``, the class-cost split ``shard_classes_by_cost`` of the class-sharded
pool, the packing of the per-step gather, the Gram + Cholesky of each class volume):

- pool memory per process (the largest shard), bytes;
- bytes each process receives from the per-step feature gather (``P * ceil(B / P) * (d + 1) * 4``) and sends;
- float64 work per re-measurement on the busiest process: ``sum_c 2 min(m_c, d)^2 max(m_c, d) + min(m_c, d)^3 / 3``
  flops over its classes;
- the update's cost per training step: that work / ``update_interval``; in seconds on this machine by
  :class:`TimeModel`: the library's own chunk plan (classes of similar size batched and padded), each chunk's flops
  at the float64 rate measured for its smaller matrix side, plus a fixed cost per chunk (the calibration).

Then it checks the predictions against measurements at small sizes: the bytes of real (sharded) ``FeaturePool``
objects, the bytes ``gather_labelled_features`` really sends (through a counting communicator), and the measured
time of ``class_semantic_scales`` on long-tailed pools unlike the calibration's (target: within 10 %).

Profiles (synthetic, with the real datasets' class count, total, largest and smallest class):
CIFAR-100-LT (IF 100, d = 64), ImageNet-LT (1,000 classes, 115,846 images, 1,280..5, d = 2048), iNaturalist 2018
(8,142 classes, 437,513 images, 1,000..2, d = 2048) and a 10,000-class, 1,000,000-sample decoder classifier
(IF 100, d = 4,096).

    python benchmarks/capacity.py                      # the table and the checks; writes benchmarks/results/capacity.*
    python benchmarks/capacity.py --processes 1 8 64 --capacity 0 --dtype float16
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.smoke import parse_benchmark_args, write_results  # noqa: E402
from hf_semscale.core.scale import _chunk_elements, _plan_chunks, class_semantic_scales  # noqa: E402
from hf_semscale.data import long_tail_counts  # noqa: E402
from hf_semscale.dsb.comm import class_owners, gather_labelled_features, shard_classes_by_cost  # noqa: E402
from hf_semscale.dsb.pool import FeaturePool, estimate_pool_bytes, pool_capacities  # noqa: E402

ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def fitted_profile(num_classes: int, total: int, largest: int, smallest: int) -> list[int]:
    """Counts from ``largest`` down to ``smallest`` along ``n(x) = smallest + (largest - smallest) x^p``
    (x from 1 to 0), the exponent ``p`` bisected so that they sum to ``total`` (within rounding)."""
    xs = [1 - c / (num_classes - 1) for c in range(num_classes)]

    def counts(p: float) -> list[int]:
        return [round(smallest + (largest - smallest) * x**p) for x in xs]

    lo, hi = 0.01, 100.0
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if sum(counts(mid)) > total else (lo, mid)
    return counts(math.sqrt(lo * hi))


def decoder_profile() -> list[int]:
    """10,000 classes, IF 100, ``n_max`` chosen so that they sum to ~1,000,000."""
    n_max = 100
    while sum(long_tail_counts(n_max + 1, 10_000, 100)) <= 1_000_000:
        n_max += 1
    return long_tail_counts(n_max, 10_000, 100)


PROFILES = {
    "CIFAR-100-LT": {"counts": lambda: long_tail_counts(500, 100, 100), "dim": 64, "global_batch": 128},
    "ImageNet-LT": {"counts": lambda: fitted_profile(1000, 115_846, 1280, 5), "dim": 2048, "global_batch": 256},
    "iNaturalist 2018": {"counts": lambda: fitted_profile(8142, 437_513, 1000, 2), "dim": 2048, "global_batch": 256},
    "decoder 10k x 1M": {"counts": decoder_profile, "dim": 4096, "global_batch": 256},
}


def volume_flops(rows: int, dim: int) -> float:
    """float64 flops of one class volume: the Gram of its ``[m, d]`` features on the smaller side and the Cholesky."""
    if rows < 2:
        return 0.0
    small, large = min(rows, dim), max(rows, dim)
    return 2.0 * small * small * large + small**3 / 3.0


def padded_work(counts: list[int], dim: int) -> list[tuple[int, int]]:
    """``(classes, padded rows)`` of each batched chunk ``class_semantic_scales`` computes for classes of ``counts``
    rows: the library's own plan (classes of similar size batched, padded to the largest of their chunk)."""
    sets = [(c, n) for c, n in enumerate(counts) if n >= 2]
    return [(len(ch.classes), ch.width) for ch in _plan_chunks(sets, dim, _chunk_elements(torch.device("cpu")))]


class TimeModel:
    """Seconds of a re-measurement: per chunk, its flops at the float64 rate measured for matrices of its shape
    (smaller side, aspect ratio, and whether the rows or the features are the smaller side; interpolated in log
    space between calibration shapes: small and thin matrices run far below peak), plus a fixed cost per chunk.
    ``sides``: the smaller matrix sides calibrated; larger ones are predicted at the largest side's rate."""

    SIDES = (4, 16, 64, 256, 1024)
    ASPECTS = (1, 4, 16)

    def __init__(self, repeats: int, sides: tuple[int, ...] = SIDES):
        self.sides = tuple(sorted(sides))
        self.rate: dict[tuple[bool, int, int], float] = {}
        for rows_smaller in (True, False):
            for side in self.sides:
                for aspect in self.ASPECTS:
                    large = min(side * aspect, 8192)
                    rows, dim = (side, large) if rows_smaller else (large, side)
                    n = max(2, min(64, int(2e6 // (rows * dim))))
                    # the marginal rate: n more classes of this shape (the call's fixed cost cancels out)
                    extra = timed_scales([rows] * (2 * n), dim, repeats) - timed_scales([rows] * n, dim, repeats)
                    self.rate[(rows_smaller, side, aspect)] = n * volume_flops(rows, dim) / max(extra, 1e-7)
        tiny = list(range(2, 402, 2))  # many chunks of little work: the fixed cost per chunk
        chunks = padded_work(tiny, 8)
        self.overhead = max(timed_scales(tiny, 8, repeats) - self._flops_seconds(chunks, 8), 0.0) / len(chunks)

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
        log_rate = sum(
            w * math.log(self.rate[(key, s, a)])
            for s, a, w in (
                (s0, a0, (1 - ts) * (1 - ta)),
                (s1, a0, ts * (1 - ta)),
                (s0, a1, (1 - ts) * ta),
                (s1, a1, ts * ta),
            )
        )
        return math.exp(log_rate)

    def _flops_seconds(self, chunks: list[tuple[int, int]], dim: int) -> float:
        return sum(n * volume_flops(width, dim) / self._rate(width, dim) for n, width in chunks)

    def seconds(self, counts: list[int], dim: int) -> float:
        chunks = padded_work(counts, dim)
        return self._flops_seconds(chunks, dim) + len(chunks) * self.overhead


def process_shards(capacities: list[int], dim: int, processes: int) -> list[list[int]]:
    """The classes each process stores: the class-cost split with several processes (classes of fewer than 2 rows
    nowhere), every class with one (an unsharded pool)."""
    return shard_classes_by_cost(capacities, dim, processes) if processes > 1 else [list(range(len(capacities)))]


def predict(counts: list[int], dim: int, dtype: str, processes: int, capacity: int, global_batch: int,
            update_interval: int) -> dict:  # fmt: skip
    """The model's numbers for one configuration (memory and work of the busiest process)."""
    caps = pool_capacities(torch.tensor(counts), capacity).tolist()
    shards = process_shards(caps, dim, processes)
    rows = [sum(caps[c] for c in shard) for shard in shards]
    work = [sum(volume_flops(caps[c], dim) for c in shard) for shard in shards]
    per_rank_batch = math.ceil(global_batch / processes)
    packed = per_rank_batch * (dim + 1) * 4  # the float32 [B_max, d + 1] of gather_labelled_features
    return {
        "classes": len(counts),
        "samples": sum(counts),
        "pool_rows": sum(caps),
        "pool_bytes_per_process": max(rows) * dim * ITEMSIZE[dtype],
        "pool_bytes_one_process": sum(caps) * dim * ITEMSIZE[dtype],
        "gather_bytes_sent_per_step": packed + 16 if processes > 1 else 0,  # + the [1, 2] int64 sizes
        "gather_bytes_received_per_step": processes * (packed + 16) if processes > 1 else 0,
        "flops_per_update_busiest": max(work),
        "flops_per_step_busiest": max(work) / update_interval,
    }


# ------------------------------------------------------------------ checks at small sizes


class CountingComm:
    """A stand-in for ``P`` processes seen from rank 0: ``gather`` returns P copies and counts the bytes sent."""

    def __init__(self, processes: int):
        self.num_processes, self.process_index, self.device, self.sent = processes, 0, torch.device("cpu"), 0

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        self.sent += tensor.numel() * tensor.element_size()
        return torch.cat([tensor] * self.num_processes)


def check_memory(counts: list[int], dim: int, dtype: str, processes: int, capacity: int) -> dict:
    caps = pool_capacities(torch.tensor(counts), capacity)
    owner = class_owners(caps.tolist(), dim, processes)
    measured = max(
        FeaturePool(caps, dim, dtype, stored=(owner == r) if processes > 1 else None).nbytes for r in range(processes)
    )
    predicted = predict(counts, dim, dtype, processes, capacity, 128, 1)["pool_bytes_per_process"]
    assert (
        estimate_pool_bytes(caps, dim, dtype)
        == predict(counts, dim, dtype, 1, capacity, 128, 1)["pool_bytes_one_process"]
    )
    return {"what": f"pool bytes per process, P={processes}", "predicted": predicted, "measured": measured}


def check_gather(dim: int, processes: int, global_batch: int) -> dict:
    comm = CountingComm(processes)
    b = math.ceil(global_batch / processes)
    gather_labelled_features(comm, torch.randn(b, dim), torch.randint(0, 10, (b,)))
    predicted = predict([10] * 10, dim, "float16", processes, 0, global_batch, 1)["gather_bytes_sent_per_step"]
    return {
        "what": f"gather bytes sent per step, d={dim}, P={processes}",
        "predicted": predicted,
        "measured": comm.sent,
    }


def timed_scales(counts: list[int], dim: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    features = torch.nn.functional.normalize(torch.randn(labels.numel(), dim, generator=g), dim=-1)
    class_semantic_scales(features, labels, len(counts))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        class_semantic_scales(features, labels, len(counts))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--dtype", choices=sorted(ITEMSIZE), default="float16")
    parser.add_argument("--capacity", type=int, default=0, help="K: pool rows per class min(n_c, K); 0: n_c")
    parser.add_argument("--update-interval", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--calibration-sides",
        type=int,
        nargs="+",
        default=list(TimeModel.SIDES),
        help="smaller matrix sides whose float64 rate is measured (larger ones are predicted at the largest's rate)",
    )
    args = parse_benchmark_args(
        parser, argv, smoke={"processes": [1, 2], "repeats": 1, "calibration_sides": [4, 16, 64]}
    )
    if min(args.calibration_sides) < 2:
        parser.error(f"--calibration-sides must all be >= 2 (rows / features of a class), got {args.calibration_sides}")
    torch.set_num_threads(1)

    # calibration: the float64 rate at each d on 4 classes of 400 rows (flops dominate), the per-class overhead
    # on 400 classes of 3 rows (bookkeeping dominates)
    check_cases = [
        (long_tail_counts(500, 100, 100), 64),
        (long_tail_counts(300, 50, 20), 128),
        (long_tail_counts(800, 20, 10), 256),
    ]
    model = TimeModel(args.repeats, args.calibration_sides)
    seconds = model.seconds
    rate, overhead = model.rate, model.overhead

    checks = [check_memory(long_tail_counts(500, 100, 100), 64, args.dtype, p, args.capacity) for p in (1, 2, 8)] + [
        check_gather(d, p, 128) for d, p in ((64, 2), (512, 8))
    ]
    for counts, dim in check_cases:
        predicted = seconds(counts, dim)
        checks.append(
            {"what": f"re-measurement seconds, {len(counts)} classes, d={dim}", "predicted": predicted,
             "measured": timed_scales(counts, dim, args.repeats)}
        )  # fmt: skip
    for check in checks:
        check["ratio"] = check["measured"] / check["predicted"] if check["predicted"] else None
        check["within_10_percent"] = check["ratio"] is not None and abs(check["ratio"] - 1) <= 0.10

    table = []
    for name, profile in PROFILES.items():
        counts = profile["counts"]()
        caps = pool_capacities(torch.tensor(counts), args.capacity).tolist()
        for p in args.processes:
            row = predict(
                counts, profile["dim"], args.dtype, p, args.capacity, profile["global_batch"], args.update_interval
            )
            row.update(profile=name, dim=profile["dim"], processes=p, global_batch=profile["global_batch"])
            shards = process_shards(caps, profile["dim"], p)
            row["seconds_per_update_busiest"] = max(seconds([caps[c] for c in s], profile["dim"]) for s in shards)
            row["seconds_per_step_busiest"] = row["seconds_per_update_busiest"] / args.update_interval
            table.append(row)

    result = {
        "benchmark": "capacity",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU; 1 torch thread",
        "load_average": os.getloadavg(),
        "float64_volume_rate_gflops": {
            f"{'rows' if k[0] else 'features'} smaller, side {k[1]}, aspect {k[2]}": r / 1e9 for k, r in rate.items()
        },
        "per_chunk_overhead_us": overhead * 1e6,
        "settings": {"dtype": args.dtype, "capacity": args.capacity, "update_interval": args.update_interval},
        "checks": checks,
        "table": table,
        "command": "python benchmarks/capacity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    lines = [
        "# Capacity model: pool memory, communication and re-measurement work per process",
        "",
        f"Pool dtype {args.dtype}, capacity {'n_c' if args.capacity <= 0 else f'min(n_c, {args.capacity})'}, "
        f"update every {args.update_interval} steps, class-sharded pool. Seconds on 1 CPU thread of this machine "
        f"(float64 volume rate {min(rate.values()) / 1e9:.2f}-{max(rate.values()) / 1e9:.1f} GFLOP/s over the "
        f"calibration shapes; {overhead * 1e6:.0f} us per batched chunk of classes; a GPU is 100-1000x faster). "
        f"{result['machine']}. Command: `{result['command']}`.",
        "",
        "| profile | d | P | pool rows | pool memory / process | gather received / step | re-measurement work "
        "(busiest) | per training step |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in table:
        lines.append(
            f"| {r['profile']} ({r['classes']:,} classes, {r['samples']:,} samples) | {r['dim']} | {r['processes']} | "
            f"{r['pool_rows']:,} | {_size(r['pool_bytes_per_process'])} | {_size(r['gather_bytes_received_per_step'])} | "
            f"{r['flops_per_update_busiest'] / 1e9:,.1f} GFLOP ({r['seconds_per_update_busiest']:,.2f} s) | "
            f"{r['seconds_per_step_busiest'] * 1e3:,.1f} ms |"
        )
    lines += ["", "Predictions checked against measurements at small sizes:", "",
              "| quantity | predicted | measured | measured / predicted |", "|---|--:|--:|--:|"]  # fmt: skip
    for c in checks:
        fmt = (lambda v: f"{v * 1e3:.1f} ms") if "seconds" in c["what"] else (lambda v: f"{int(v):,} B")
        lines.append(f"| {c['what']} | {fmt(c['predicted'])} | {fmt(c['measured'])} | {c['ratio']:.3f} |")
    lines.append("")
    write_results(args.out_dir, "capacity", result, "\n".join(lines))
    print("\n".join(lines))
    return result


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} B"


if __name__ == "__main__":
    main()
