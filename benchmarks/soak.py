"""Soak test: a long DSB run with the weights re-measured at EVERY step; memory and step time must stay flat.

The most faithful thing that fits in a few CPU minutes is the real training loop: a tiny
``MLPForClassification`` on synthetic long-tailed data (CIFAR-LT-style counts), ``SemScaleTrainer``
with ``semscale_update_interval=1`` (so every optimizer step runs pool insert -> pool.contents() ->
class_semantic_scales -> semantic_scale_weights -> history line), periodic checkpoints with rotation
(so the save / history / report paths run too), for thousands of steps. Per step it records wall and
CPU time; every ``--sample-every`` steps the process RSS (psutil, else /proc), the Python heap
(tracemalloc; torch tensors live outside it), the pool's tensor bytes and the number and bytes of
live torch tensors (gc). "start" is the first window after re-weighting began, "end" the last window.

    python benchmarks/soak.py                       # ~3000 steps; writes benchmarks/results/soak.{json,md}
    python benchmarks/soak.py --steps 300 --out-dir /tmp/soak   # a quick look
    python benchmarks/soak.py --smoke                 # does it still run? (80 steps, tiny data, a temporary folder)

The machine it ran on is shared (2 cores, other jobs): wall times are noisy, CPU times less so.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.smoke import parse_benchmark_args, write_results
from hf_semscale.data import long_tail_counts
from hf_semscale.environment import machine_description

HARNESS_FILTERS = [tracemalloc.Filter(False, f) for f in {__file__, os.path.abspath(__file__), tracemalloc.__file__}]


def rss_bytes() -> int:
    """Current resident set size (psutil: a dependency of accelerate, so always here)."""
    import psutil

    return psutil.Process().memory_info().rss


def live_tensors() -> tuple[int, int]:
    """Number and bytes of torch tensors reachable by the garbage collector (parameters included)."""
    import warnings

    count = nbytes = 0
    seen = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on deprecated module attributes warns
        objects = gc.get_objects()
        objects = [obj for obj in objects if isinstance(obj, torch.Tensor)]
    for obj in objects:
        try:
            storage = obj.untyped_storage()
        except Exception:
            continue
        count += 1
        if storage.data_ptr() not in seen:  # views share their storage: count its bytes once
            seen.add(storage.data_ptr())
            nbytes += storage.nbytes()
    return count, nbytes


def summarise(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p90": ordered[int(0.9 * (len(ordered) - 1))],
        "mean": statistics.fmean(ordered),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--n-max", type=int, default=500, help="samples of the largest class")
    parser.add_argument("--imbalance", type=float, default=100.0)
    parser.add_argument("--input-dim", type=int, default=32)
    parser.add_argument("--feature-dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--update-interval", type=int, default=1)
    parser.add_argument("--save-steps", type=int, default=500)
    parser.add_argument("--pool-dtype", default="float16")
    parser.add_argument("--window", type=int, default=300, help="steps per start / end window")
    parser.add_argument("--sample-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--no-tracemalloc", action="store_true", help="tracemalloc slows Python code; off: faster steps"
    )
    parser.add_argument("--workdir", default=None, help="output_dir of the run (default: a temporary folder)")
    args = parse_benchmark_args(
        parser,
        argv,
        smoke={
            "steps": 80,
            "classes": 5,
            "n_max": 40,
            "imbalance": 10.0,
            "batch_size": 16,
            "window": 10,
            "sample_every": 20,
            "save_steps": 40,
        },
    )

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import TrainerCallback, set_seed

    from hf_semscale import SemScaleConfig, SemScaleTrainer
    from hf_semscale.modeling import MLPClassifierConfig, MLPForClassification
    from hf_semscale.trainer import HISTORY_FILENAME

    counts = long_tail_counts(args.n_max, args.classes, args.imbalance)
    g = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
    centres = torch.randn(args.classes, args.input_dim, generator=g) * 2.0
    x = centres[labels] + torch.randn(labels.numel(), args.input_dim, generator=g)
    dataset = Dataset.from_dict({"pixel_values": x.tolist(), "labels": labels.tolist()})

    set_seed(0)
    model = MLPForClassification(
        MLPClassifierConfig(input_dim=args.input_dim, hidden_dims=(128, args.feature_dim), num_labels=args.classes)
    )
    tmp = tempfile.TemporaryDirectory(prefix="semscale-soak-") if args.workdir is None else None
    output_dir = args.workdir or tmp.name
    steps_per_epoch = -(-labels.numel() // args.batch_size)
    config = SemScaleConfig(
        output_dir=output_dir,
        use_cpu=True,
        seed=0,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=2,
        logging_steps=100,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        semscale_warmup_steps=20,
        semscale_fill_max_steps=steps_per_epoch,
        semscale_update_interval=args.update_interval,
        semscale_pool_dtype=args.pool_dtype,
    )

    def memory_start(reweight_from: int) -> int:
        """The first step memory is compared from: after the start window and the first checkpoint save, whose
        one-off imports (matplotlib, for the report's plot) are not growth."""
        return max(reweight_from + 20 + args.window, args.save_steps + 1)

    samples: list[dict] = []
    step_wall: list[float] = []
    step_cpu: list[float] = []
    stage_at: list[str] = []
    reweight_step = [-1]
    snapshots: dict = {}

    class Recorder(TrainerCallback):
        def __init__(self):
            self.last_wall = self.last_cpu = None

        def on_step_begin(self, a, state, control, **kw):
            if self.last_wall is None:
                self.last_wall, self.last_cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, a, state, control, **kw):
            now_wall, now_cpu = time.perf_counter(), time.process_time()
            step_wall.append(now_wall - self.last_wall)
            step_cpu.append(now_cpu - self.last_cpu)
            stage_at.append(trainer.stage)
            if trainer.stage == "reweight" and reweight_step[0] < 0:
                reweight_step[0] = len(stage_at) - 1
            step = state.global_step
            if step % args.sample_every == 0 or step == args.steps:
                gc.collect()  # retained memory only: cyclic garbage (closures, frames) is not a leak
                rss = rss_bytes()
                recent = step_cpu[-args.sample_every :]
                sample = {
                    "step": step,
                    "stage": trainer.stage,
                    "step_cpu_ms_median_since_last_sample": 1000 * statistics.median(recent),
                    "step_wall_ms_median_since_last_sample": 1000 * statistics.median(step_wall[-args.sample_every :]),
                    "loadavg_1min": os.getloadavg()[0],
                    "rss_mib": rss / 2**20,
                    "pool_bytes": trainer.pool.nbytes if trainer.pool is not None else 0,
                    "updates": trainer.balancer.num_updates,
                    "log_history_len": len(state.log_history),
                }
                if tracemalloc.is_tracing():
                    sample["tracemalloc_kib"] = tracemalloc.get_traced_memory()[0] / 1024
                    # the same without this script's own per-step records (step_wall, step_cpu, samples, ...)
                    snap = tracemalloc.take_snapshot().filter_traces(HARNESS_FILTERS)
                    sample["tracemalloc_excl_harness_kib"] = sum(t.size for t in snap.traces) / 1024
                sample["live_tensors"], sample["live_tensor_bytes"] = live_tensors()
                samples.append(sample)
                if tracemalloc.is_tracing() and trainer.stage == "reweight" and "start" not in snapshots:
                    if step >= memory_start(reweight_step[0]):
                        snapshots["start"] = (step, snap)
                if tracemalloc.is_tracing() and step == args.steps:
                    snapshots["end"] = (step, snap)
            # the sampling above is not part of the next step's time
            self.last_wall, self.last_cpu = time.perf_counter(), time.process_time()

    trainer = SemScaleTrainer(model=model, args=config, train_dataset=dataset, callbacks=[Recorder()])
    if not args.no_tracemalloc:
        tracemalloc.start()
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    trainer.train()
    total_s = time.perf_counter() - t0
    load_end = os.getloadavg()
    history = Path(output_dir) / HISTORY_FILENAME
    history_bytes = history.stat().st_size if history.exists() else 0
    history_lines = len(history.read_text().splitlines()) if history.exists() else 0

    reweight_from = next((i for i, s in enumerate(stage_at) if s == "reweight"), len(stage_at))
    first = slice(reweight_from + 20, reweight_from + 20 + args.window)  # skip a few steps of settling
    last = slice(len(step_wall) - args.window, len(step_wall))
    if first.stop > last.start:
        raise SystemExit(f"run too short: re-weighting began at step {reweight_from + 1}; use more --steps")
    start_sample = next(s for s in samples if s["step"] >= memory_start(reweight_from))
    end_sample = samples[-1]
    memory_keys = (
        "rss_mib tracemalloc_kib tracemalloc_excl_harness_kib pool_bytes live_tensors live_tensor_bytes".split()
    )
    result = {
        "command": "python benchmarks/soak.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            **machine_description(),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
            "note": "shared machine: other jobs ran at the same time; CPU time per step is the steadier number",
        },
        "config": {
            "steps": args.steps,
            "classes": args.classes,
            "class_counts": counts,
            "feature_dim": args.feature_dim,
            "batch_size": args.batch_size,
            "update_interval": args.update_interval,
            "save_steps": args.save_steps,
            "pool_dtype": args.pool_dtype,
            "pool_rows": int(sum(counts)),
            "tracemalloc": not args.no_tracemalloc,
        },
        "reweight_started_at_step": reweight_from + 1,
        "updates": trainer.balancer.num_updates,
        "total_seconds": total_s,
        "window_steps": args.window,
        "step_time_ms": {
            "start": {
                "steps": [first.start + 1, first.stop],
                "wall": {k: 1000 * v for k, v in summarise(step_wall[first]).items()},
                "cpu": {k: 1000 * v for k, v in summarise(step_cpu[first]).items()},
            },
            "end": {
                "steps": [last.start + 1, last.stop],
                "wall": {k: 1000 * v for k, v in summarise(step_wall[last]).items()},
                "cpu": {k: 1000 * v for k, v in summarise(step_cpu[last]).items()},
            },
        },
        "memory": {
            "rss_source": "psutil",
            "start": {"step": start_sample["step"], **{k: start_sample.get(k) for k in memory_keys}},
            "end": {"step": end_sample["step"], **{k: end_sample.get(k) for k in memory_keys}},
        },
        "files": {
            "history_lines": history_lines,
            "history_bytes": history_bytes,
            "log_history_len": len(trainer.state.log_history),
        },
        "samples": samples,
    }
    if "start" in snapshots and "end" in snapshots:
        (s0, snap0), (s1, snap1) = snapshots["start"], snapshots["end"]
        diff = snap1.compare_to(snap0, "lineno")
        result["heap_growth_sites"] = {
            "between_steps": [s0, s1],
            "top": [
                {
                    "site": f"{st.traceback[0].filename}:{st.traceback[0].lineno}",
                    "size_diff_kib": st.size_diff / 1024,
                    "count_diff": st.count_diff,
                }
                for st in sorted(diff, key=lambda st: -st.size_diff)[:8]
            ],
        }
    st, mem = result["step_time_ms"], result["memory"]
    result["end_over_start"] = {
        "step_cpu_median": st["end"]["cpu"]["median"] / st["start"]["cpu"]["median"],
        "step_wall_median": st["end"]["wall"]["median"] / st["start"]["wall"]["median"],
        "rss": mem["end"]["rss_mib"] / mem["start"]["rss_mib"],
        "tracemalloc": (mem["end"]["tracemalloc_kib"] / mem["start"]["tracemalloc_kib"])
        if mem["start"].get("tracemalloc_kib")
        else None,
        "tracemalloc_excl_harness": (
            mem["end"]["tracemalloc_excl_harness_kib"] / mem["start"]["tracemalloc_excl_harness_kib"]
        )
        if mem["start"].get("tracemalloc_excl_harness_kib")
        else None,
        "live_tensor_bytes": mem["end"]["live_tensor_bytes"] / mem["start"]["live_tensor_bytes"],
    }
    write_results(args.out_dir, "soak", result, render_markdown(result))
    print(render_markdown(result))
    if tmp is not None:
        tmp.cleanup()
    return result


def render_markdown(r: dict) -> str:
    st, mem, ratio = r["step_time_ms"], r["memory"], r["end_over_start"]
    c, m = r["config"], r["machine"]
    tm = lambda v: "n/a" if v is None else f"{v:.0f} KiB"
    lines = [
        "# Soak test: DSB re-weighting at every step",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs shared with other jobs (load average "
        f"{m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end), torch {m['versions']['torch']} with "
        f"{m['torch_threads']} thread(s), Python {m['versions']['python']}.",
        "",
        f"Run: {c['steps']} optimizer steps of a tiny MLP on {c['classes']} long-tailed classes "
        f"({c['class_counts'][0]}..{c['class_counts'][-1]} samples, {c['pool_rows']} pool rows, d={c['feature_dim']}, "
        f"{c['pool_dtype']}), `semscale_update_interval={c['update_interval']}`: **{r['updates']} weight updates**, "
        f"checkpoints every {c['save_steps']} steps (save_total_limit=2); re-weighting from step "
        f"{r['reweight_started_at_step']}; {r['total_seconds']:.0f} s in all; tracemalloc "
        f"{'on (slows Python code)' if c['tracemalloc'] else 'off'}.",
        "",
        f"| | start (steps {st['start']['steps'][0]}-{st['start']['steps'][1]}) | end (steps {st['end']['steps'][0]}-{st['end']['steps'][1]}) | end / start |",
        "|---|---|---|---|",
        f"| step CPU time, median (p90) | {st['start']['cpu']['median']:.2f} ms ({st['start']['cpu']['p90']:.2f}) | "
        f"{st['end']['cpu']['median']:.2f} ms ({st['end']['cpu']['p90']:.2f}) | {ratio['step_cpu_median']:.2f} |",
        f"| step wall time, median (p90) | {st['start']['wall']['median']:.2f} ms ({st['start']['wall']['p90']:.2f}) | "
        f"{st['end']['wall']['median']:.2f} ms ({st['end']['wall']['p90']:.2f}) | {ratio['step_wall_median']:.2f} |",
        f"| process RSS ({mem['rss_source']}), at step {mem['start']['step']} / {mem['end']['step']} | "
        f"{mem['start']['rss_mib']:.1f} MiB | {mem['end']['rss_mib']:.1f} MiB | {ratio['rss']:.3f} |",
        f"| Python heap (tracemalloc) | {tm(mem['start']['tracemalloc_kib'])} | {tm(mem['end']['tracemalloc_kib'])} | "
        f"{'n/a' if ratio['tracemalloc'] is None else format(ratio['tracemalloc'], '.3f')} |",
        f"| Python heap without the soak script's own per-step records | {tm(mem['start']['tracemalloc_excl_harness_kib'])} | "
        f"{tm(mem['end']['tracemalloc_excl_harness_kib'])} | "
        f"{'n/a' if ratio['tracemalloc_excl_harness'] is None else format(ratio['tracemalloc_excl_harness'], '.3f')} |",
        f"| pool storage (tensor bytes) | {mem['start']['pool_bytes']} B | {mem['end']['pool_bytes']} B | "
        f"{mem['end']['pool_bytes'] / mem['start']['pool_bytes']:.3f} |",
        f"| live torch tensors (count / bytes, gc scan) | {mem['start']['live_tensors']} / {mem['start']['live_tensor_bytes'] / 2**10:.0f} KiB | "
        f"{mem['end']['live_tensors']} / {mem['end']['live_tensor_bytes'] / 2**10:.0f} KiB | {ratio['live_tensor_bytes']:.3f} |",
        "",
        "Memory is compared from the first sample after the first checkpoint save: that save's one-off imports "
        "(matplotlib, for the report's plot) are not growth.",
        "",
        f"Files that grow by design: `semscale_history.jsonl` has one line per update ({r['files']['history_lines']} lines, "
        f"{r['files']['history_bytes'] / 2**10:.0f} KiB); `state.log_history` one entry per logging step "
        f"({r['files']['log_history_len']}).",
        "",
        "Every sample (after `gc.collect()`): step times are medians of the steps since the previous sample; they "
        "follow the machine's load (other jobs), not the step number.",
        "",
        "| step | CPU ms | wall ms | load avg | RSS MiB | heap KiB (excl. script) | live tensors |",
        "|---|---|---|---|---|---|---|",
    ]
    for smp in r["samples"]:
        heap = smp.get("tracemalloc_excl_harness_kib")
        lines.append(
            f"| {smp['step']} | {smp['step_cpu_ms_median_since_last_sample']:.1f} | {smp['step_wall_ms_median_since_last_sample']:.1f} | "
            f"{smp['loadavg_1min']:.1f} | {smp['rss_mib']:.1f} | {'n/a' if heap is None else format(heap, '.0f')} | {smp['live_tensors']} |"
        )
    lines.append("")
    growth = r.get("heap_growth_sites")
    if growth:
        lines += [
            f"Largest Python-heap growth between steps {growth['between_steps'][0]} and {growth['between_steps'][1]} "
            "(tracemalloc after gc.collect(), this script's own records excluded, by allocation site):",
            "",
            "| site | KiB | blocks |",
            "|---|---|---|",
        ]
        for g in growth["top"]:
            site = g["site"].split("site-packages/")[-1].replace(str(Path(__file__).resolve().parents[1]) + "/", "")
            lines.append(f"| `{site}` | {g['size_diff_kib']:+.1f} | {g['count_diff']:+d} |")
        lines += [
            "",
            "Known sites: `numpy/ctypeslib` is safetensors' `save_file` creating one ctypes array type per tensor size "
            "(cached by ctypes; happens at the first checkpoint save, then no more); `transformers/trainer.py` "
            "`state.log_history.append` grows by design (one entry per logging step).",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
