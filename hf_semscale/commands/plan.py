"""``hf-semscale plan``: what DSB's pool and re-measurements will cost per process, before training.

    hf-semscale plan --dataset ../shared/data/banking77 --feature-dim 384
    hf-semscale plan --class-counts 5000 2997 1796 1077 645 387 232 139 83 50 --feature-dim 2048 --processes 1 8 --time

Class counts come from a dataset's training split or are given; ``--feature-dim`` is the size of the classification
head's input (``hidden_size`` for most text models). Prints, per process count: pool rows and memory on the busiest
process, bytes of the per-step feature gather, and the float64 work of one re-measurement and per training step; with
``--time``, seconds on this machine (a short calibration first). See :func:`hf_semscale.dsb.capacity.plan_pool`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from ..dsb.capacity import DEFAULT_GLOBAL_BATCH_SIZE, PoolPlan, ScaleTimeModel, format_bytes, plan_pool
from ..dsb.settings import POOL_DTYPES, BalancerSettings

_DEFAULTS = {f.name: f.default for f in fields(BalancerSettings)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    counts = parser.add_mutually_exclusive_group(required=True)
    counts.add_argument("--dataset", help="A local data folder or a datasets Hub id: its training split's counts.")
    counts.add_argument("--class-counts", type=int, nargs="+", help="Training samples per class.")
    parser.add_argument("--split", default="train", help="The split counted with --dataset (default: train).")
    parser.add_argument("--label-column", help="Label column of --dataset (default: label / labels).")
    parser.add_argument("--feature-dim", type=int, required=True, help="d: the input size of the classification head.")
    parser.add_argument("--processes", type=int, nargs="+", default=[1], help="Process counts to plan for.")
    parser.add_argument(
        "--global-batch-size",
        type=int,
        default=DEFAULT_GLOBAL_BATCH_SIZE,
        help="Samples per optimizer step over all processes.",
    )
    parser.add_argument(
        "--pool-capacity", type=int, default=_DEFAULTS["pool_capacity"], help="K: pool rows per class min(n_c, K)."
    )
    parser.add_argument("--pool-dtype", choices=POOL_DTYPES, default=_DEFAULTS["pool_dtype"], help="Pool storage.")
    parser.add_argument(
        "--update-interval", type=int, default=_DEFAULTS["update_interval"], help="Steps between re-measurements."
    )
    parser.add_argument("--no-shard-pool", action="store_true", help="Every process holds the whole pool.")
    parser.add_argument("--time", action="store_true", help="Also predict seconds on this machine (calibrates first).")
    parser.add_argument("--device", default="cpu", help="Where --time measures: cpu, cuda, cuda:1, ...")
    parser.add_argument("--json", action="store_true", help="Print the plans as JSON instead of a table.")


def _class_counts(args: argparse.Namespace) -> list[int]:
    if args.class_counts is not None:
        if args.split != "train" or args.label_column is not None:
            raise ValueError(
                "--split and --label-column choose what --dataset counts. Fix: drop them, or use --dataset"
            )
        return args.class_counts
    from ..data import class_counts, load_dataset_any

    return class_counts(load_dataset_any(args.dataset, args.split, label_column=args.label_column))


def _calibration_sides(counts: list[int], settings: BalancerSettings, dim: int) -> list[int]:
    """The calibrated matrix sides that matter here: up to the first at or above the largest ``min(m_c, d)``."""
    from ..dsb.pool import pool_capacities

    largest = min(int(pool_capacities(counts, settings.pool_capacity).max()), dim)
    sides = [s for s in ScaleTimeModel.SIDES if s < largest]
    return sides + [next((s for s in ScaleTimeModel.SIDES if s >= largest), ScaleTimeModel.SIDES[-1])]


def run(args: argparse.Namespace) -> int:
    import torch

    def plans(model: ScaleTimeModel | None = None) -> dict[int, PoolPlan]:
        return {
            p: plan_pool(counts, args.feature_dim, settings, p, args.global_batch_size, model) for p in args.processes
        }

    try:  # settings, counts and sizes are checked here, before any calibration
        settings = BalancerSettings(
            pool_capacity=args.pool_capacity,
            pool_dtype=args.pool_dtype,
            update_interval=args.update_interval,
            shard_pool=not args.no_shard_pool,
        )
        counts = _class_counts(args)
        planned = plans()
    except ValueError as err:
        raise SystemExit(f"hf-semscale plan: {err}") from None
    if args.device != "cpu" and not args.time:
        raise SystemExit(
            f"hf-semscale plan: --device {args.device} is where --time measures. Fix: add --time, or drop --device"
        )
    model = None
    if args.time:
        if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(
                f"hf-semscale plan: --device {args.device}, but torch sees no CUDA device here. Fix: --device cpu"
            )
        print("calibrating the float64 volume rate on this machine ...", file=sys.stderr, flush=True)
        sides = _calibration_sides(counts, settings, args.feature_dim)
        model = ScaleTimeModel(repeats=3, sides=sides, device=args.device)
        planned = plans(model)
    if args.json:
        print(json.dumps({str(p): plan.to_dict() for p, plan in planned.items()}, indent=2))
        return 0
    first = next(iter(planned.values()))
    print(
        f"{first.classes} classes, {first.samples:,} samples, d={args.feature_dim}; pool capacity "
        f"{'n_c' if settings.pool_capacity <= 0 else f'min(n_c, {settings.pool_capacity})'}, {settings.pool_dtype}, "
        f"{'class-sharded' if settings.shard_pool else 'whole'} pool per process, re-measured every "
        f"{settings.update_interval} steps, {args.global_batch_size} samples per step"
    )
    print("processes | pool memory / process | gather received / step | re-measurement (busiest) | per step")
    for p, plan in planned.items():
        update = f"{plan.flops_per_update_busiest / 1e9:,.2f} GFLOP"
        step = f"{plan.flops_per_step_busiest / 1e9:,.3f} GFLOP"
        if plan.seconds_per_update_busiest is not None:
            update += f" ({plan.seconds_per_update_busiest:,.3f} s)"
            step += f" ({plan.seconds_per_step_busiest * 1e3:,.1f} ms)"
        print(
            f"{p:>9} | {format_bytes(plan.pool_bytes_per_process):>21} | {format_bytes(plan.gather_bytes_received_per_step):>22} | "
            f"{update:>24} | {step}"
        )
    if model is not None:
        print(f"seconds: {args.device}, {torch.get_num_threads()} torch threads, calibrated here")
    return 0
