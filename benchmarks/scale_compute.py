"""How fast and how exact is ``class_semantic_scales`` against the published reference formula?

The reference is the formula as its authors publish it: per class, in numpy float64,
``0.5 * log2(np.linalg.det(I_d + alpha/m * Zc^T Zc))`` with rows L2-normalised and centred,
one class at a time. It overflows to inf once the determinant passes ~1e308 (large d).

Cases (features: per-class low-rank Gaussian plus isotropic noise, float32; both methods
L2-normalise the rows, alpha = d):
  a) 100 classes, d = 64,   CIFAR-100-LT IF=100 sizes  n_c = int(500 * 100 ** (-c / 99))
  b) 100 classes, d = 512,  the same sizes
  c) 1000 classes, d = 2048, ImageNet-LT-like sizes    n_c = int(1280 * (5 / 1280) ** (c / 999))

Ours is timed over the whole case (best of ``--repeats`` runs); the reference on every class,
or on a seeded sample of ``--ref-sample`` classes whose time is scaled linearly to all classes
(the output says which). Errors are measured on the classes the reference ran on.

    python benchmarks/scale_compute.py                      # all cases, writes benchmarks/results/
    python benchmarks/scale_compute.py --cases a b --no-write
    python benchmarks/scale_compute.py --threads 1     # one core for both methods (busy machine)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.smoke import parse_benchmark_args, write_results
from hf_semscale.core.scale import class_semantic_scales
from hf_semscale.data import long_tail_counts
from hf_semscale.environment import machine_description

CASES = {
    "a": {"num_classes": 100, "dim": 64, "sizes": "cifar100_lt_if100"},
    "b": {"num_classes": 100, "dim": 512, "sizes": "cifar100_lt_if100"},
    "c": {"num_classes": 1000, "dim": 2048, "sizes": "imagenet_lt_like"},
}
TARGET_SPEEDUP = {"a": 4.0, "b": 4.0, "c": 20.0}
TARGET_SECONDS = {"c": 5.0}


def class_sizes(kind: str, num_classes: int) -> list[int]:
    c = np.arange(num_classes)
    if kind == "cifar100_lt_if100":
        return long_tail_counts(500, 100, 100)
    if kind == "imagenet_lt_like":
        return [int(1280 * (5 / 1280) ** (k / 999)) for k in c]
    raise ValueError(kind)


def make_features(sizes: list[int], dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, dim]`` float32 features and ``[N]`` labels, sorted by class.

    Class c: a random mean (N(0, 0.5^2) per dimension), plus a Gaussian of random rank 8..64 and
    per-dimension spread 0.5..1.5, plus isotropic noise of std 0.5..2.0 per dimension.
    """
    gen = torch.Generator().manual_seed(seed)
    features = torch.empty(sum(sizes), dim, dtype=torch.float32)
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    row = 0
    for n in sizes:
        rank = int(torch.randint(8, 65, (1,), generator=gen))
        spread = 0.5 + float(torch.rand((), generator=gen))
        noise = 0.5 + 1.5 * float(torch.rand((), generator=gen))
        mean = 0.5 * torch.randn(dim, generator=gen)
        basis = torch.randn(rank, dim, generator=gen) * (spread / math.sqrt(rank))
        block = features[row : row + n]
        torch.randn(n, dim, generator=gen, out=block)
        block.mul_(noise).add_(mean).addmm_(torch.randn(n, rank, generator=gen), basis)
        row += n
    return features, labels


def minimum_gflop(sizes: list[int], dim: int) -> float:
    """Floating-point work (GFlop) of the exact method: the symmetric half of each class's Gram
    matrix (``min(m, d)^2 * max(m, d)``) plus its Cholesky factor (``min(m, d)^3 / 3``)."""
    return sum(min(m, dim) ** 2 * max(m, dim) + min(m, dim) ** 3 / 3 for m in sizes if m >= 2) / 1e9


def reference_scale(features: np.ndarray, alpha: float | None = None) -> float:
    """The published formula: float64, d x d determinant, one class."""
    z = features.astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    zc = z - z.mean(axis=0)
    m, d = zc.shape
    a = d if alpha is None else alpha
    with np.errstate(over="ignore", invalid="ignore"):
        return float(0.5 * np.log2(np.linalg.det(np.eye(d) + a / m * zc.T @ zc)))


def run_case(name: str, ref_sample: int | None, repeats: int, seed: int) -> dict:
    spec = CASES[name]
    sizes = class_sizes(spec["sizes"], spec["num_classes"])
    features, labels = make_features(sizes, spec["dim"], seed)
    num_classes = spec["num_classes"]

    ours_times, ours_cpu_times = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        ours = class_semantic_scales(features, labels, num_classes)
        ours_times.append(time.perf_counter() - start)
        ours_cpu_times.append(time.process_time() - start_cpu)
    ours_seconds = min(ours_times)

    sampled = ref_sample is not None and ref_sample < num_classes
    if sampled:
        rng = np.random.default_rng(seed)
        ref_classes = sorted(rng.choice(num_classes, size=ref_sample, replace=False).tolist())
    else:
        ref_classes = list(range(num_classes))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    features_np = features.numpy()
    reference = {}
    start, start_cpu = time.perf_counter(), time.process_time()
    for c in ref_classes:
        reference[c] = reference_scale(features_np[starts[c] : starts[c + 1]])
    ref_measured = time.perf_counter() - start
    ref_cpu = (time.process_time() - start_cpu) * num_classes / len(ref_classes)
    ref_seconds = ref_measured * num_classes / len(ref_classes)

    ours_list = ours.tolist()
    finite = [c for c in ref_classes if math.isfinite(reference[c])]
    rel_errors = [abs(ours_list[c] - reference[c]) / abs(reference[c]) for c in finite if reference[c] != 0]
    return {
        "case": name,
        "num_classes": num_classes,
        "dim": spec["dim"],
        "class_sizes": spec["sizes"],
        "samples": int(sum(sizes)),
        "ours_seconds": ours_seconds,
        "ours_seconds_all_repeats": ours_times,
        "ours_cpu_seconds": ours_cpu_times[ours_times.index(ours_seconds)],
        "reference_cpu_seconds": ref_cpu,
        "reference_seconds": ref_seconds,
        "reference_classes_run": len(ref_classes),
        "reference_seconds_measured": ref_measured,
        "reference_time_scaled_from_sample": sampled,
        "speedup": ref_seconds / ours_seconds,
        "target_speedup": TARGET_SPEEDUP[name],
        "target_seconds": TARGET_SECONDS.get(name),
        "max_relative_error": max(rel_errors) if rel_errors else None,
        "reference_finite_classes": len(finite),
        "reference_nonfinite_classes": len(ref_classes) - len(finite),
        "ours_all_finite": bool(torch.isfinite(ours).all()),
        "ours_scale_range_bits": [min(ours_list), max(ours_list)],
    }


def _numpy_blas_threads() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=None)


def table(rows: list[dict]) -> str:
    head = (
        "| case | C | d | N | ours (s) | reference (s) | speed-up (target) | CPU s ours / ref | max rel. error (finite ref) "
        "| ref inf/NaN | ours finite | load (1 min) before/after |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        ref = f"{r['reference_seconds']:.2f}"
        if r["reference_time_scaled_from_sample"]:
            ref += f" (est. from {r['reference_classes_run']})"
        err = "n/a" if r["max_relative_error"] is None else f"{r['max_relative_error']:.1e}"
        lines.append(
            f"| {r['case']} | {r['num_classes']} | {r['dim']} | {r['samples']} | {r['ours_seconds']:.3f} | {ref} "
            f"| {r['speedup']:.1f}x ({r['target_speedup']:.0f}x) "
            f"| {r['ours_cpu_seconds']:.2f} / {r['reference_cpu_seconds']:.2f} | {err} "
            f"| {r['reference_nonfinite_classes']}/{r['reference_classes_run']} | {r['ours_all_finite']} "
            f"| {'/'.join(f'{x:.1f}' for x in r.get('load_average_1min_before_after', []))} |"
        )
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--ref-sample", type=int, default=50, help="reference classes timed in case c (0: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="threads for torch and numpy's BLAS (default: as found)"
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the stored .json")
    args = parse_benchmark_args(parser, argv, smoke={"cases": ["a"], "repeats": 1})
    json_path = args.out_dir / "scale_compute.json"
    if args.render:
        report = {"machine": machine_description(), "runs": json.loads(json_path.read_text())["runs"]}
        write_results(args.out_dir, "scale_compute", report, markdown(report))
        return
    if args.threads is not None:
        from threadpoolctl import threadpool_limits  # ships with scikit-learn

        torch.set_num_threads(args.threads)
        threadpool_limits(limits=args.threads)

    settings = run_settings(args.threads)
    load_before = os.getloadavg()
    rows = []
    for name in args.cases:
        sample = args.ref_sample if (name == "c" and args.ref_sample > 0) else None
        load = os.getloadavg()[0]
        rows.append(run_case(name, sample, args.repeats, args.seed))
        rows[-1]["load_average_1min_before_after"] = [load, os.getloadavg()[0]]
        print(table(rows[-1:]), flush=True)
    load_after = os.getloadavg()
    run = {
        "settings": settings,
        "command": command_line(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cases": rows,
    }
    print()
    print(f"{settings}")
    print(table(rows))
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    if not args.no_write:
        runs = json.loads(json_path.read_text())["runs"] if json_path.exists() else []
        runs = [r for r in runs if r["settings"] != settings] + [run]  # one run per setting, latest kept
        report = {"machine": machine_description(), "runs": runs}
        write_results(args.out_dir, "scale_compute", report, markdown(report))
        print(f"wrote {args.out_dir / 'scale_compute.md'} and .json")


def run_settings(threads: int | None) -> str:
    """How the threads were set: torch's and numpy's BLAS counts and the OpenMP wait policy."""
    blas = _numpy_blas_threads()
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    return f"torch threads {torch.get_num_threads()}, numpy BLAS threads {blas}, OMP_WAIT_POLICY={policy}"


def command_line() -> str:
    prefix = f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} " if "OMP_WAIT_POLICY" in os.environ else ""
    return prefix + "python " + " ".join(["benchmarks/scale_compute.py", *sys.argv[1:]])


def markdown(report: dict) -> str:
    m = report["machine"]
    parts = [
        "# Semantic scale: batched torch vs the published numpy formula\n\n"
        f"Machine: {m['processor']}, {m['cpu_count']} CPU cores, {m['platform']}; torch {m['versions']['torch']}, "
        f"numpy {m['versions']['numpy']}. The machine is shared with other engineers' jobs (see the load averages).\n\n"
        "Ours: `class_semantic_scales` on the whole case, best of the repeats, features in float32, "
        "computed in float64. Reference: numpy float64 `0.5*log2(det(I + d/m Zc^T Zc))`, one class at "
        "a time; its inf/NaN classes are the ones where det overflows. Errors: max |ours - ref| / |ref| "
        'over the classes where the reference is finite. Times are wall-clock; "CPU s" is the process '
        "CPU time (all threads), which other jobs on the machine disturb less.\n\n"
        "When the machine runs more threads than it has cores, a multi-threaded library spends its time "
        "waiting for its own threads to be scheduled (OpenMP and OpenBLAS threads spin at every "
        "parallel region), so a 2-thread run then measures the load rather than the method; the "
        "1-thread run compares the two methods' work on equal terms.\n"
    ]
    for run in report["runs"]:
        rows = run["cases"]
        parts.append(
            f"\n## {run['settings']}\n\nCommand: `{run['command']}`. Load average (1, 5, 15 min) before "
            f"{tuple(round(x, 2) for x in run['load_average_before'])}, "
            f"after {tuple(round(x, 2) for x in run['load_average_after'])}.\n\n" + table(rows) + "\n\n"
        )
        for r in rows:
            spec = CASES[r["case"]]
            work = minimum_gflop(class_sizes(spec["sizes"], spec["num_classes"]), spec["dim"])
            parts.append(
                f"- Case {r['case']}: ours needs {work:.3g} GFlop (symmetric Gram half + Cholesky): "
                f"{work / r['ours_cpu_seconds']:.1f} GFlop per CPU second.\n"
            )
            if r["reference_time_scaled_from_sample"]:
                parts.append(
                    f"- Case {r['case']}: the reference ran on a seeded sample of {r['reference_classes_run']} "
                    f"classes ({r['reference_seconds_measured']:.1f} s) and its time is scaled linearly to all "
                    f"{r['num_classes']}; errors and inf counts are over those classes.\n"
                )
            if r["target_seconds"] is not None:
                verdict = "met" if r["ours_seconds"] <= r["target_seconds"] else "missed"
                parts.append(
                    f"- Case {r['case']}: recompute {r['ours_seconds']:.2f} s against a target of "
                    f"{r['target_seconds']:.0f} s ({verdict}).\n"
                )
    return "".join(parts)


if __name__ == "__main__":
    main()
