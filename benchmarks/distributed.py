"""Multi-process DSB: bytes each training step communicates, and the class-volume recompute time, by process count.

Every training step ``SemScaleTrainer`` gathers each process's head-input features and labels
(:func:`hf_semscale.dsb.comm.gather_labelled_features`: one gather of the per-rank sizes, one of the
padded ``[B_max, d + 1]`` float32 batch); every ``semscale_update_interval`` steps it recomputes the
class volumes with the classes split across processes (:func:`~hf_semscale.dsb.comm.sharded_class_scales`:
each process its share, then one gather of ``[C]`` float64). This benchmark runs those two calls as the
trainer does, on a fixed synthetic pool and batch, under 1 process (plain ``python``) and N processes
(``torchrun --nproc_per_node N``; gloo on the CPU, NCCL with ``--device cuda``), and prints the numbers
side by side. Bytes are counted at ``accelerator.gather`` (what each process sends; it receives N times that).

Cases (sizes as in ``benchmarks/scale_compute.py``; global batch split evenly over the processes):
  a) CIFAR-100-LT IF=100 pool (10,847 rows), d = 64  (ResNet-32), global batch 128
  b) the same pool,                         d = 512 (ResNet-50 / ViT-sized head input), global batch 256

    python benchmarks/distributed.py                                # 1 and 2 CPU processes; writes results
    python benchmarks/distributed.py --processes 1 2 4 8 --device cuda --no-write    # on a GPU machine

Each process runs with ``OMP_NUM_THREADS=1`` (``--threads``), so N processes use N cores: on a
machine with fewer free cores than processes the recompute cannot speed up.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.smoke import parse_benchmark_args, write_results
from hf_semscale.data import long_tail_counts
from hf_semscale.environment import machine_description, machine_text

CIFAR100_LT_IF100 = long_tail_counts(500, 100, 100)
CASES = {
    "a": {"dim": 64, "global_batch": 128, "sizes": CIFAR100_LT_IF100},
    "b": {"dim": 512, "global_batch": 256, "sizes": CIFAR100_LT_IF100},
}


# ---------------------------------------------------------------------------------------- worker


def _worker(args: argparse.Namespace) -> None:
    import torch
    from accelerate import Accelerator

    from hf_semscale.core.scale import class_semantic_scales
    from hf_semscale.dsb.comm import gather_labelled_features, sharded_class_scales

    torch.set_num_threads(args.threads)
    acc = Accelerator(cpu=args.device == "cpu")
    P, rank, device = acc.num_processes, acc.process_index, acc.device
    sent = {"bytes": 0, "calls": 0}
    real_gather = acc.gather

    def counting_gather(tensor):
        sent["bytes"] += tensor.numel() * tensor.element_size()
        sent["calls"] += 1
        return real_gather(tensor)

    acc.gather = counting_gather

    def barrier() -> None:
        if P > 1:
            acc.wait_for_everyone()
        if device.type == "cuda":
            torch.cuda.synchronize()

    out: dict = {"num_processes": P, "device": str(device), "backend": str(acc.state.backend), "cases": {}}
    for name in args.cases:
        case = CASES[name]
        d, sizes = case["dim"], case["sizes"]
        gen = torch.Generator().manual_seed(0)  # the same pool on every process, as in training
        labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        pool = torch.nn.functional.normalize(torch.randn(labels.numel(), d, generator=gen), dim=-1).to(device)
        labels = labels.to(device)
        b = case["global_batch"] // P
        batch_gen = torch.Generator().manual_seed(1 + rank)
        feats = torch.nn.functional.normalize(torch.randn(b, d, generator=batch_gen), dim=-1).to(device)
        batch_labels = torch.randint(0, len(sizes), (b,), generator=batch_gen).to(device)

        # --- per-step gather (as in SemanticScaleBalancer.observe)
        for _ in range(3):
            gather_labelled_features(acc, feats, batch_labels)
        sent.update(bytes=0, calls=0)
        times = []
        for step in range(args.steps):
            barrier()
            t0 = time.perf_counter()
            g_feats, g_labels = gather_labelled_features(acc, feats, batch_labels, step=step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        gather_bytes, gather_calls = sent["bytes"] / args.steps, sent["calls"] / args.steps
        assert g_feats.shape == (case["global_batch"], d), g_feats.shape

        # --- recompute (as in SemanticScaleBalancer.begin_step's weight update), whole call and compute-only share
        reference = class_semantic_scales(pool, labels, len(sizes)).cpu() if rank == 0 else None
        sharded_class_scales(acc, pool, labels, len(sizes))  # warm-up
        sent.update(bytes=0, calls=0)
        recompute, scales = [], None
        for _ in range(args.repeats):
            barrier()
            t0 = time.perf_counter()
            scales = sharded_class_scales(acc, pool, labels, len(sizes))
            if device.type == "cuda":
                torch.cuda.synchronize()
            recompute.append(time.perf_counter() - t0)
        recompute_bytes = sent["bytes"] / args.repeats
        from hf_semscale.dsb.comm import shard_classes_by_cost

        shard = shard_classes_by_cost(sizes, d, P)[rank]
        mine = torch.zeros(len(sizes), dtype=torch.bool, device=device)
        mine[shard] = True
        rows = mine[labels]
        own = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            class_semantic_scales(pool[rows], labels[rows], len(sizes), classes=shard)
            if device.type == "cuda":
                torch.cuda.synchronize()
            own.append(time.perf_counter() - t0)
        own_all = acc.gather(torch.tensor([statistics.median(own)], dtype=torch.float64, device=device)).cpu().tolist()
        rec_all = (
            acc.gather(torch.tensor([statistics.median(recompute)], dtype=torch.float64, device=device)).cpu().tolist()
        )
        gat_all = (
            acc.gather(torch.tensor([statistics.median(times)], dtype=torch.float64, device=device)).cpu().tolist()
        )
        # --- the pool a SemanticScaleBalancer allocates on this process (class-sharded by default), float16
        from hf_semscale import BalancerSettings, FeaturePool, SemanticScaleBalancer

        balancer = SemanticScaleBalancer(sizes, BalancerSettings(pool_dtype="float16"), comm=acc)
        # this process's classes in a class-sharded pool (None: one process holds the whole pool)
        stored = balancer.class_owner(d) == acc.process_index if balancer.shards_pool else None
        pool_bytes = FeaturePool(balancer.capacities, d, "float16", stored=stored).nbytes
        bytes_all = acc.gather(torch.tensor([pool_bytes], dtype=torch.long, device=device)).cpu().tolist()
        if rank == 0:
            out["cases"][name] = {
                "dim": d,
                "num_classes": len(sizes),
                "pool_rows": int(labels.numel()),
                "global_batch": case["global_batch"],
                "per_process_batch": b,
                "gather_calls_per_step": gather_calls,
                "gather_bytes_sent_per_process_per_step": gather_bytes,
                "gather_bytes_received_per_process_per_step": gather_bytes * P,
                "gather_ms_median": 1e3 * max(gat_all),
                "recompute_ms_median": 1e3 * max(rec_all),
                "recompute_compute_only_ms_per_process": [1e3 * t for t in own_all],
                "recompute_bytes_sent_per_process": recompute_bytes,
                "max_abs_diff_vs_one_process_bits": float((scales.cpu() - reference).abs().max()),
                "pool_bytes_per_process": bytes_all,
            }
    if rank == 0:
        Path(args.worker_out).write_text(json.dumps(out, indent=2), encoding="utf-8")
    if P > 1:  # leave the process group before exit (one run aborted at exit without this)
        acc.wait_for_everyone()
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------- driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(processes: int, args: argparse.Namespace, tmp: Path) -> dict:
    out = tmp / f"p{processes}.json"
    flags = f"--worker --device {args.device} --steps {args.steps} --repeats {args.repeats} --threads {args.threads}"
    worker = [str(Path(__file__).resolve()), *flags.split(), "--worker-out", str(out), "--cases", *args.cases]
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port())]  # fmt: skip
    cmd = [sys.executable, *(launcher if processes > 1 else []), *worker]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, start_new_session=True)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(
            f"{processes}-process run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return json.loads(out.read_text())


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def _table(results: dict[int, dict], case: str) -> list[str]:
    procs = sorted(results)
    rows = [
        ("per-process batch", lambda r: str(r["per_process_batch"])),
        ("gathers per step", lambda r: f"{r['gather_calls_per_step']:.0f}"),
        ("bytes sent per process per step", lambda r: _kib(r["gather_bytes_sent_per_process_per_step"])),
        ("bytes received per process per step", lambda r: _kib(r["gather_bytes_received_per_process_per_step"])),
        ("gather time per step (median, slowest process)", lambda r: f"{r['gather_ms_median']:.2f} ms"),
        ("recompute time per update (median, slowest process)", lambda r: f"{r['recompute_ms_median']:.1f} ms"),
        (
            "  of which own share of classes, per process",
            lambda r: " / ".join(f"{t:.1f}" for t in r["recompute_compute_only_ms_per_process"]) + " ms",
        ),
        ("bytes sent per process per update", lambda r: f"{r['recompute_bytes_sent_per_process']:.0f} B"),
        ("max abs diff of the scales vs 1 process", lambda r: f"{r['max_abs_diff_vs_one_process_bits']:.1e} bits"),
        (
            "pool memory per process (float16, class-sharded)",
            lambda r: " / ".join(_kib(b) for b in r["pool_bytes_per_process"]),
        ),
    ]
    first = results[procs[0]]["cases"][case]
    lines = [
        f"### Case {case}: {first['num_classes']} classes, pool {first['pool_rows']} rows, d = {first['dim']}, "
        f"global batch {first['global_batch']}",
        "",
        "| | " + " | ".join(f"{p} process{'es' if p > 1 else ''}" for p in procs) + " |",
        "|---|" + "---|" * len(procs),
    ]
    for label, fmt in rows:
        lines.append(
            f"| {label} | "
            + " | ".join(
                "0 (no communication)" if p == 1 and "bytes" in label else fmt(results[p]["cases"][case]) for p in procs
            )
            + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--steps", type=int, default=50, help="timed gathers per case")
    parser.add_argument("--repeats", type=int, default=5, help="timed recomputes per case")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parse_benchmark_args(parser, argv, smoke={"cases": ["a"], "steps": 3, "repeats": 1})
    if args.worker:
        _worker(args)
        return
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        results = {p: _launch(p, args, Path(tmp)) for p in args.processes}
    machine = {
        **machine_description(),
        "device": args.device,
        "threads_per_process": args.threads,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "backend": {p: r["backend"] for p, r in results.items()},
    }
    lines = [
        "# Multi-process DSB: communication per step and recompute time",
        "",
        f"`python benchmarks/distributed.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"Machine: {machine_text(machine)}; device {args.device}, {args.threads} thread(s) per "
        f"process; load average {machine['load_average_before']} before, {machine['load_average_after']} after "
        "(a shared machine: the times are noisy, the byte counts exact).",
        "",
    ]
    for case in args.cases:
        lines += _table(results, case) + [""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_results(args.out_dir, "distributed", {"machine": machine, "results": results}, text + "\n")


if __name__ == "__main__":
    main()
