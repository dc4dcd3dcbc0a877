"""The paper's phenomena on our data: marginal-effect curves and scale/count/accuracy correlations.

    python benchmarks/phenomena.py                 # after (or during) `benchmarks/long_tail.py --tier cpu`

1. Marginal effect (METHOD.md): the semantic scale of random class subsets of growing size m, for
   - CIFAR-10 training images in pixel space (the *sample volume*, flattened 32x32x3, L2-normalised rows);
   - BANKING77 frozen all-MiniLM-L6-v2 sentence embeddings (a *feature volume*, d = 384).
2. Correlations (``hf_semscale.imbalance.imbalance_summary``): per-class accuracy against semantic
   scale and against training count,
   - BANKING77: scales of the frozen MiniLM embeddings of each class's training rows, accuracy = the
     benchmark's ``ce`` runs (mean over seeds);
   - CIFAR-10-LT (CPU tier): scales = the final pool scales of each ``dsb_*`` run (features of the model
     that produced the accuracy), accuracy = that run's per-class test accuracy.

Writes ``benchmarks/results/phenomena.json``, ``phenomena.md`` and ``phenomena.png``.
Needs no training: it reads the long-tail benchmark's runs and embedding cache (``--work-dir``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

logger = logging.getLogger("benchmarks.phenomena")

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_WORK_DIR = REPO_ROOT / "benchmarks" / "runs"
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cifar_pixel_curves(data_root: Path, per_class: int, sizes: list[int], draws: int) -> dict[str, Any]:
    import torch

    from hf_semscale.data import limit_per_class, load_local_dataset
    from hf_semscale.scale import marginal_effect_curves

    train = limit_per_class(load_local_dataset(data_root / "cifar10", "train"), per_class, seed=0)
    images = np.asarray(train.with_format("numpy")["image"], dtype=np.float32).reshape(len(train), -1) / 255.0
    labels = torch.as_tensor(np.asarray(train["label"]))
    curves = marginal_effect_curves(torch.from_numpy(images), labels, 10, sizes=sizes, draws=draws, seed=0)
    return {"space": "pixels (sample volume)", "dataset": "CIFAR-10 train", "class_names": train.features["label"].names, **curves.to_dict()}


def banking_embeddings(work_dir: Path, data_root: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[int]] | None:
    """Frozen MiniLM embeddings of the benchmark's BANKING77 training split (from its cache), else None."""
    from hf_semscale.data import load_dataset_any, train_validation_split
    from recipes.train_text import _cache_key, resolve_model_path

    train = load_dataset_any(str(data_root / "banking77"), "train")
    train = train_validation_split(train, 5, seed=0)["train"]  # as in recipes/configs/banking77_frozen.yaml
    path = work_dir / "cpu" / "cache" / "embeddings" / f"{_cache_key(resolve_model_path('minilm'), train, 64)}.npy"
    if not path.is_file():
        logger.warning("no cached BANKING77 embeddings at %s (run the long-tail CPU tier first)", path)
        return None
    labels = np.asarray(train["label"])
    return np.load(path), labels, train.features["label"].names, np.bincount(labels, minlength=77).tolist()


def banking_phenomena(work_dir: Path, data_root: Path, sizes: list[int], draws: int, seeds: list[int]) -> dict[str, Any] | None:
    import torch

    from hf_semscale.imbalance import imbalance_summary
    from hf_semscale.scale import class_semantic_scales, marginal_effect_curves

    loaded = banking_embeddings(work_dir, data_root)
    if loaded is None:
        return None
    embeddings, labels, names, counts = loaded
    feats, labs = torch.from_numpy(embeddings).double(), torch.as_tensor(labels)
    curves = marginal_effect_curves(feats, labs, 77, sizes=[m for m in sizes if m <= max(counts)], draws=draws, seed=0)
    scales = class_semantic_scales(feats, labs, 77)
    accuracies = []
    for seed in seeds:
        result = _load_json(work_dir / "cpu" / "banking77" / "ce" / f"seed{seed}" / "results.json")
        if result and result.get("test"):
            accuracies.append(result["test"]["per_class_accuracy"])
    out = {"space": "frozen all-MiniLM-L6-v2 sentence embeddings (feature volume, d=384)", "dataset": "BANKING77 train",
           "curves": curves.to_dict(), "scales": scales.tolist(), "counts": counts}
    if accuracies:
        acc = np.mean(np.asarray(accuracies, dtype=np.float64), axis=0)
        out["summary"] = imbalance_summary(scales, torch.as_tensor(counts), torch.as_tensor(acc))
        out["accuracy_source"] = f"ce runs, seeds {seeds[: len(accuracies)]}, test per-class accuracy (mean)"
    else:
        out["summary"] = imbalance_summary(scales, torch.as_tensor(counts))
    return out


def cifar_lt_correlations(work_dir: Path, seeds: list[int]) -> list[dict[str, Any]]:
    import torch

    from hf_semscale.imbalance import imbalance_summary

    rows = []
    for method_dir in sorted((work_dir / "cpu" / "cifar10_lt").glob("dsb_*")):
        if "_tune" in method_dir.name:
            continue
        for seed in seeds:
            result = _load_json(method_dir / f"seed{seed}" / "results.json")
            if not result or not result.get("test") or not any(result["final_semantic_scales"]):
                continue
            summary = imbalance_summary(torch.as_tensor(result["final_semantic_scales"]), torch.as_tensor(result["train_class_counts"]),
                                        torch.as_tensor(result["test"]["per_class_accuracy"]))
            rows.append({"method": method_dir.name, "seed": seed, **{k: summary.get(k) for k in (
                "pearson_scale_accuracy", "spearman_scale_accuracy", "pearson_count_accuracy", "spearman_count_accuracy",
                "scale_min", "scale_max", "max_min_ratio")}})
    return rows


def plot(curve_sets: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curve_sets), figsize=(6 * len(curve_sets), 4), squeeze=False)
    for ax, curves in zip(axes[0], curve_sets):
        sizes = curves["sizes"]
        for c, row in enumerate(curves["mean"][:10]):
            xs = [m for m, v in zip(sizes, row) if v is not None]
            ys = [v for v in row if v is not None]
            ax.plot(xs, ys, marker=".", lw=1, label=str(c))
        ax.set_xscale("log")
        ax.set_xlabel("samples in the subset (m)")
        ax.set_ylabel("semantic scale (bits)")
        ax.set_title(curves["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x: Any) -> str:
    return "—" if x is None else f"{x:.3f}"


def write(out_dir: Path, report: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "phenomena.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = ["# Phenomena of semantic scale on our data", "", "Generated by `python benchmarks/phenomena.py`.", ""]
    lines += ["## Marginal effect", "", "Mean scale (bits) of random class subsets of size m (several draws), first classes shown; "
              "plot: `phenomena.png`.", ""]
    for key in ("cifar10_pixels", "banking77_features"):
        curves = report.get(key)
        if not curves:
            continue
        c = curves if "sizes" in curves else curves["curves"]
        lines += [f"### {curves.get('dataset')} — {curves.get('space')}", "", "| class | " + " | ".join(f"m={m}" for m in c["sizes"]) + " |",
                  "|---|" + "---|" * len(c["sizes"])]
        for cls, row in list(enumerate(c["mean"]))[:5]:
            lines.append(f"| {cls} | " + " | ".join("—" if v is None else f"{v:.2f}" for v in row) + " |")
        lines.append("")
    bank = report.get("banking77_features")
    if bank and bank.get("summary"):
        s = bank["summary"]
        lines += ["## BANKING77: does scale track accuracy better than count?", "",
                  f"Accuracy: {bank.get('accuracy_source', 'not available')}. Scales: frozen MiniLM embeddings of all of each class's "
                  "training rows (n_c = 30..182 < d = 384, where the marginal-effect curves above are still rising, so part of "
                  "each scale is a count effect).", "",
                  "| | Pearson | Spearman |", "|---|---|---|",
                  f"| scale vs accuracy | {_fmt(s.get('pearson_scale_accuracy'))} | {_fmt(s.get('spearman_scale_accuracy'))} |",
                  f"| count vs accuracy | {_fmt(s.get('pearson_count_accuracy'))} | {_fmt(s.get('spearman_count_accuracy'))} |", "",
                  f"Scales {s['scale_min']:.2f}..{s['scale_max']:.2f} bits (max/min {_fmt(s.get('max_min_ratio'))}); counts "
                  f"{s['count_min']}..{s['count_max']}.", ""]
    rows = report.get("cifar10_lt_correlations") or []
    if rows:
        lines += ["## CIFAR-10-LT (CPU tier): final pool scales of the dsb_* runs vs per-class test accuracy", "",
                  "| method | seed | Pearson scale | Spearman scale | Pearson count | Spearman count | scale range (bits) |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['method']} | {r['seed']} | {_fmt(r['pearson_scale_accuracy'])} | {_fmt(r['spearman_scale_accuracy'])} | "
                         f"{_fmt(r['pearson_count_accuracy'])} | {_fmt(r['spearman_count_accuracy'])} | {r['scale_min']:.2f}..{r['scale_max']:.2f} |")
        lines.append("")
    (out_dir / "phenomena.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("HF_SEMSCALE_DATA_DIR", DEFAULT_DATA_ROOT)))
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--cifar-per-class", type=int, default=1000, help="CIFAR-10 images per class for the pixel curves")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-cifar", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report: dict[str, Any] = {}
    sizes = [2, 5, 10, 20, 50, 100, 200, 500, 1000]
    curve_sets = []
    if not args.skip_cifar:
        report["cifar10_pixels"] = cifar_pixel_curves(args.data_root, args.cifar_per_class, [m for m in sizes if m <= args.cifar_per_class], args.draws)
        curve_sets.append({**report["cifar10_pixels"], "title": "CIFAR-10 train, pixels (sample volume)"})
    bank = banking_phenomena(args.work_dir, args.data_root, sizes, args.draws, args.seeds)
    if bank is not None:
        report["banking77_features"] = bank
        curve_sets.append({**bank["curves"], "title": "BANKING77, frozen MiniLM features (first 10 classes)"})
    report["cifar10_lt_correlations"] = cifar_lt_correlations(args.work_dir, args.seeds)
    if curve_sets:
        plot(curve_sets, args.out_dir / "phenomena.png")
    write(args.out_dir, report)
    logger.info("wrote %s", args.out_dir / "phenomena.md")


if __name__ == "__main__":
    main()
