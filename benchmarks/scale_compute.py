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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from hf_semscale.scale import class_semantic_scales

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
        return [int(500 * 100 ** (-k / 99)) for k in c]
    if kind == "imagenet_lt_like":
        return [int(1280 * (5 / 1280) ** (k / 999)) for k in c]
    raise ValueError(kind)


def make_features(sizes: list[int], dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, dim]`` float32 features and ``[N]`` labels: class c = mean + rank-r Gaussian + noise."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.empty(sum(sizes), dim, dtype=torch.float32)
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    row = 0
    for n in sizes:
        rank = int(torch.randint(4, 33, (1,), generator=gen))
        spread = 0.5 + float(torch.rand((), generator=gen))
        noise = 0.05 + 0.25 * float(torch.rand((), generator=gen))
        mean = torch.randn(dim, generator=gen)
        basis = torch.randn(rank, dim, generator=gen) * (spread / math.sqrt(rank))
        block = features[row : row + n]
        torch.randn(n, dim, generator=gen, out=block)
        block.mul_(noise).add_(mean).addmm_(torch.randn(n, rank, generator=gen), basis)
        row += n
    return features, labels


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

    ours_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ours = class_semantic_scales(features, labels, num_classes)
        ours_times.append(time.perf_counter() - start)
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
    start = time.perf_counter()
    for c in ref_classes:
        reference[c] = reference_scale(features_np[starts[c] : starts[c + 1]])
    ref_measured = time.perf_counter() - start
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


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(rows: list[dict]) -> str:
    head = (
        "| case | C | d | N | ours (s) | reference (s) | speed-up (target) | max rel. error (finite ref) "
        "| ref inf/NaN | ours finite |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        ref = f"{r['reference_seconds']:.2f}" + (f" (est. from {r['reference_classes_run']})" if r["reference_time_scaled_from_sample"] else "")
        err = "n/a" if r["max_relative_error"] is None else f"{r['max_relative_error']:.1e}"
        lines.append(
            f"| {r['case']} | {r['num_classes']} | {r['dim']} | {r['samples']} | {r['ours_seconds']:.3f} | {ref} "
            f"| {r['speedup']:.1f}x ({r['target_speedup']:.0f}x) | {err} "
            f"| {r['reference_nonfinite_classes']}/{r['reference_classes_run']} | {r['ours_all_finite']} |"
        )
    return head + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--ref-sample", type=int, default=50, help="reference classes timed in case c (0: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    load_before = os.getloadavg()
    rows = []
    for name in args.cases:
        sample = args.ref_sample if (name == "c" and args.ref_sample > 0) else None
        rows.append(run_case(name, sample, args.repeats, args.seed))
        print(table(rows[-1:]), flush=True)
    load_after = os.getloadavg()
    report = {"machine": machine(), "load_average_before": load_before, "load_average_after": load_after, "cases": rows}
    print()
    print(table(rows))
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scale_compute.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "scale_compute.md").write_text(markdown(report))
        print(f"wrote {args.out / 'scale_compute.md'} and .json")


def markdown(report: dict) -> str:
    m = report["machine"]
    rows = report["cases"]
    notes = []
    for r in rows:
        if r["reference_time_scaled_from_sample"]:
            notes.append(
                f"- Case {r['case']}: the reference ran on a seeded sample of {r['reference_classes_run']} classes "
                f"({r['reference_seconds_measured']:.1f} s) and its time is scaled linearly to all {r['num_classes']}; "
                "errors are over those classes."
            )
        if r["target_seconds"] is not None:
            verdict = "met" if r["ours_seconds"] <= r["target_seconds"] else "missed"
            notes.append(f"- Case {r['case']}: recompute {r['ours_seconds']:.2f} s against a target of {r['target_seconds']:.0f} s ({verdict}).")
    return (
        "# Semantic scale: batched torch vs the published numpy formula\n\n"
        "Command: `python benchmarks/scale_compute.py`\n\n"
        f"Machine: {m['processor']}, {m['cpu_count']} CPU cores, {m['platform']}; torch {m['torch']} "
        f"({m['torch_threads']} threads), numpy {m['numpy']}. The machine is shared: load average "
        f"before {tuple(round(x, 2) for x in report['load_average_before'])}, "
        f"after {tuple(round(x, 2) for x in report['load_average_after'])}.\n\n"
        + table(rows)
        + "\n\nOurs: best of the repeats, whole case, features in float32, computed in float64. Reference: numpy float64 "
        "`0.5*log2(det(I + d/m Zc^T Zc))`, one class at a time; its inf/NaN classes are the ones where det overflows.\n"
        + ("\n".join(notes) + "\n" if notes else "")
    )


if __name__ == "__main__":
    main()
