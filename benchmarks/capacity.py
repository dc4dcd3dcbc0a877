"""Capacity model of DSB: what the pool and its re-measurements cost per process, at any scale (issue 13, item 2).

The model is the library's :func:`hf_semscale.dsb.capacity.plan_pool` (pool memory, gather bytes and float64 work
of the busiest process, from the library's own rules) with a :class:`~hf_semscale.dsb.capacity.ScaleTimeModel`
calibrated here for seconds; ``hf-semscale plan`` prints the same for a user's dataset. This benchmark applies it to
large profiles and checks its time model against the measured time of ``class_semantic_scales`` on long-tailed pools
unlike the calibration's (target: within 10 %). Its byte counts are exact: ``tests/dsb/test_capacity.py`` asserts them
against real (sharded) ``FeaturePool`` objects and the bytes ``gather_labelled_features`` sends.

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
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.smoke import parse_benchmark_args, write_results  # noqa: E402
from hf_semscale.data import long_tail_counts  # noqa: E402
from hf_semscale.dsb.capacity import ScaleTimeModel, format_bytes, plan_pool, timed_class_scales  # noqa: E402
from hf_semscale.dsb.settings import POOL_DTYPES, BalancerSettings  # noqa: E402
from hf_semscale.environment import machine_description, machine_text  # noqa: E402


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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--dtype", choices=POOL_DTYPES, default="float16")
    parser.add_argument("--capacity", type=int, default=0, help="K: pool rows per class min(n_c, K); 0: n_c")
    parser.add_argument("--update-interval", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--calibration-sides",
        type=int,
        nargs="+",
        default=list(ScaleTimeModel.SIDES),
        help="smaller matrix sides whose float64 rate is measured (larger ones are predicted at the largest's rate)",
    )
    args = parse_benchmark_args(
        parser, argv, smoke={"processes": [1, 2], "repeats": 1, "calibration_sides": [4, 16, 64]}
    )
    torch.set_num_threads(1)
    settings = BalancerSettings(
        pool_dtype=args.dtype, pool_capacity=args.capacity, update_interval=args.update_interval
    )

    check_cases = [
        (long_tail_counts(500, 100, 100), 64),
        (long_tail_counts(300, 50, 20), 128),
        (long_tail_counts(800, 20, 10), 256),
    ]
    model = ScaleTimeModel(args.repeats, args.calibration_sides)
    rate, overhead = model.rate, model.overhead

    checks = []
    for counts, dim in check_cases:
        predicted, measured = model.seconds(counts, dim), timed_class_scales(counts, dim, args.repeats)
        checks.append({"what": f"re-measurement seconds, {len(counts)} classes, d={dim}", "predicted": predicted,
                       "measured": measured, "ratio": measured / predicted,
                       "within_10_percent": abs(measured / predicted - 1) <= 0.10})  # fmt: skip

    table = []
    for name, profile in PROFILES.items():
        counts = profile["counts"]()
        for p in args.processes:
            row = plan_pool(counts, profile["dim"], settings, p, profile["global_batch"], model).to_dict()
            row.update(profile=name, dim=profile["dim"], processes=p, global_batch=profile["global_batch"])
            table.append(row)

    result = {
        "benchmark": "capacity",
        "machine": machine_description(),
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
        f"{machine_text(result['machine'])}. Command: `{result['command']}`.",
        "",
        "| profile | d | P | pool rows | pool memory / process | gather received / step | re-measurement work "
        "(busiest) | per training step |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in table:
        lines.append(
            f"| {r['profile']} ({r['classes']:,} classes, {r['samples']:,} samples) | {r['dim']} | {r['processes']} | "
            f"{r['pool_rows']:,} | {format_bytes(r['pool_bytes_per_process'])} | {format_bytes(r['gather_bytes_received_per_step'])} | "
            f"{r['flops_per_update_busiest'] / 1e9:,.1f} GFLOP ({r['seconds_per_update_busiest']:,.2f} s) | "
            f"{r['seconds_per_step_busiest'] * 1e3:,.1f} ms |"
        )
    lines += ["", "The time model checked against measurements on pools unlike its calibration's (the byte counts are "
              "exact: `tests/dsb/test_capacity.py` asserts them against real pools and gathers):", "",
              "| quantity | predicted | measured | measured / predicted |", "|---|--:|--:|--:|"]  # fmt: skip
    for c in checks:
        lines.append(
            f"| {c['what']} | {c['predicted'] * 1e3:.1f} ms | {c['measured'] * 1e3:.1f} ms | {c['ratio']:.3f} |"
        )
    lines.append("")
    write_results(args.out_dir, "capacity", result, "\n".join(lines))
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
