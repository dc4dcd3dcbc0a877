"""The paper's phenomena on our data: marginal-effect curves and scale/count/accuracy correlations.

    python benchmarks/phenomena.py                 # after (or during) `benchmarks/long_tail.py --tier cpu`

1. Marginal effect (docs/method.md): the semantic scale of random class subsets of growing size m, for
   - CIFAR-10 training images in pixel space (the *sample volume*, flattened 32x32x3, L2-normalised rows);
   - BANKING77 frozen all-MiniLM-L6-v2 sentence embeddings (a *feature volume*, d = 384).
2. Correlations (``hf_semscale.core.imbalance.imbalance_summary``): per-class accuracy against semantic
   scale and against training count,
   - BANKING77: scales of the frozen MiniLM embeddings of each class's training rows, accuracy = the
     benchmark's ``ce`` runs (mean over seeds);
   - CIFAR-10-LT (CPU tier): scales = the final pool scales of each ``dsb_*`` run (features of the model
     that produced the accuracy), accuracy = that run's per-class test accuracy.
3. ``--balanced-cifar``: a CIFAR ResNet trained with ``recipes/train_image.py`` (plain CE) on a BALANCED
   CIFAR-10 subset (the same ``--cifar-per-class`` images per class as the pixel curves);
   ``--train-balanced-cifar`` trains the missing seeds first (``--bc-seeds``, ``--bc-depth``,
   ``--bc-epochs``; models and logs under ``<work-dir>/balanced_cifar/``, git-ignored). For each trained
   model: marginal-effect curves and per-class scales of its TRAINING features (the classifier's input,
   ``hf_semscale.features.extract_features``), per-class accuracy on the balanced test set, and the
   correlation of scale (trained features; pixels) with accuracy. Count is constant, so its
   correlation is undefined and reported as such.

Writes ``benchmarks/results/phenomena.json``, ``phenomena.md`` and ``phenomena.png`` (and, with
``--balanced-cifar``, ``phenomena_cifar10_trained_marginal.png`` and ``phenomena_cifar10_balanced.png``).
Without ``--train-balanced-cifar`` it trains nothing: it reads the long-tail benchmark's runs and
embedding cache and the balanced-CIFAR runs (``--work-dir``).

    python benchmarks/phenomena.py --balanced-cifar --train-balanced-cifar   # ~25 min on a shared 2-core CPU
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.smoke import parse_benchmark_args, write_results  # noqa: E402
from benchmarks.tiers import DEFAULT_DATA_ROOT, DEFAULT_WORK_DIR, load_result  # noqa: E402

logger = logging.getLogger("benchmarks.phenomena")


def cifar_pixel_curves(data_root: Path, per_class: int, sizes: list[int], draws: int) -> dict[str, Any]:
    import torch

    from hf_semscale.core.scale import marginal_effect_curves
    from hf_semscale.data import limit_per_class, load_local_dataset

    train = limit_per_class(load_local_dataset(data_root / "cifar10", "train"), per_class, seed=0)
    images = np.asarray(train.with_format("numpy")["image"], dtype=np.float32).reshape(len(train), -1) / 255.0
    labels = torch.as_tensor(np.asarray(train["label"]))
    curves = marginal_effect_curves(torch.from_numpy(images), labels, 10, sizes=sizes, draws=draws, seed=0)
    return {
        "space": "pixels (sample volume)",
        "dataset": "CIFAR-10 train",
        "class_names": train.features["label"].names,
        **curves.to_dict(),
    }


def banking_train_split(data_root: Path) -> Any:
    """The BANKING77 training rows the long-tail benchmark trains on (``datasets.Dataset`` of text, label)."""
    from hf_semscale.data import load_dataset_any, train_validation_split

    train = load_dataset_any(str(data_root / "banking77"), "train")
    return train_validation_split(train, 5, seed=0)["train"]  # as in recipes/configs/banking77_frozen.yaml


def banking_cache_file(work_dir: Path, train: Any) -> Path:
    """Where the long-tail CPU tier cached the frozen MiniLM embeddings ``[N, 384]`` of ``train`` (``.npy``)."""
    from recipes.common import text_cache_file
    from recipes.train_text import TextModelArguments, resolve_model_path

    cache_dir = work_dir / "cpu" / "cache" / "embeddings"  # the long-tail benchmark's --embedding_cache_dir
    model = resolve_model_path("minilm")
    return text_cache_file(str(cache_dir), model, list(train["text"]), TextModelArguments.max_length)


def banking_embeddings(work_dir: Path, data_root: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[int]] | None:
    """Frozen MiniLM embeddings of the benchmark's BANKING77 training split (from its cache), else None."""
    train = banking_train_split(data_root)
    path = banking_cache_file(work_dir, train)
    if not path.is_file():
        logger.warning("no cached BANKING77 embeddings at %s (run the long-tail CPU tier first)", path)
        return None
    labels = np.asarray(train["label"])
    return np.load(path), labels, train.features["label"].names, np.bincount(labels, minlength=77).tolist()


def banking_phenomena(
    work_dir: Path, data_root: Path, sizes: list[int], draws: int, seeds: list[int]
) -> dict[str, Any] | None:
    import torch

    from hf_semscale.core.imbalance import imbalance_summary
    from hf_semscale.core.scale import class_semantic_scales, marginal_effect_curves

    loaded = banking_embeddings(work_dir, data_root)
    if loaded is None:
        return None
    embeddings, labels, names, counts = loaded
    feats, labs = torch.from_numpy(embeddings).double(), torch.as_tensor(labels)
    curves = marginal_effect_curves(feats, labs, 77, sizes=[m for m in sizes if m <= max(counts)], draws=draws, seed=0)
    scales = class_semantic_scales(feats, labs, 77)
    accuracies = []
    for seed in seeds:
        result = load_result(work_dir / "cpu" / "banking77" / "ce" / f"seed{seed}" / "results.json")
        if result and result.get("test"):
            accuracies.append(result["test"]["per_class_accuracy"])
    out = {
        "space": "frozen all-MiniLM-L6-v2 sentence embeddings (feature volume, d=384)",
        "dataset": "BANKING77 train",
        "curves": curves.to_dict(),
        "scales": scales.tolist(),
        "counts": counts,
    }
    if accuracies:
        acc = np.mean(np.asarray(accuracies, dtype=np.float64), axis=0)
        out["summary"] = imbalance_summary(scales, torch.as_tensor(counts), torch.as_tensor(acc))
        out["accuracy_source"] = f"ce runs, seeds {seeds[: len(accuracies)]}, test per-class accuracy (mean)"
    else:
        out["summary"] = imbalance_summary(scales, torch.as_tensor(counts))
    return out


def cifar_lt_correlations(work_dir: Path, seeds: list[int]) -> list[dict[str, Any]]:
    import torch

    from benchmarks.tiers import tier_settings
    from hf_semscale.core.imbalance import imbalance_summary, spearman

    rows = []
    cifar_lt = next(s for s in tier_settings("cpu") if s["dataset"] == "CIFAR-10-LT")
    for method_dir in sorted((work_dir / "cpu" / cifar_lt["name"]).glob("dsb_*")):
        if "_tune" in method_dir.name:
            continue
        for seed in seeds:
            result = load_result(method_dir / f"seed{seed}" / "results.json")
            if not result or not result.get("test") or not any(result["final_semantic_scales"]):
                continue
            summary = imbalance_summary(
                torch.as_tensor(result["final_semantic_scales"]),
                torch.as_tensor(result["train_class_counts"]),
                torch.as_tensor(result["test"]["per_class_accuracy"]),
            )
            scale_count, _ = spearman(
                torch.as_tensor(result["final_semantic_scales"]), torch.as_tensor(result["train_class_counts"])
            )
            rows.append(
                {
                    "method": method_dir.name,
                    "seed": seed,
                    "scales": result["final_semantic_scales"],
                    "spearman_scale_count": scale_count,
                    **{
                        k: summary.get(k)
                        for k in (
                            "pearson_scale_accuracy",
                            "spearman_scale_accuracy",
                            "pearson_count_accuracy",
                            "spearman_count_accuracy",
                            "scale_min",
                            "scale_max",
                            "max_min_ratio",
                        )
                    },
                }
            )
    return rows


def rank_against_balanced(lt_rows: list[dict[str, Any]], balanced: dict[str, Any]) -> None:
    """Add to each CIFAR-10-LT row the Spearman correlation of its final scales with the balanced-CIFAR-10
    train-feature scales (mean over seeds): is a class's scale a property of the class, whatever its count?"""
    import torch

    from hf_semscale.core.imbalance import spearman

    reference = torch.as_tensor(np.mean([run["train_feature_scales"] for run in balanced["runs"]], axis=0))
    for row in lt_rows:
        row["spearman_scale_vs_balanced_scale"], _ = spearman(torch.as_tensor(row["scales"]), reference)


# --------------------------------------------------------------------------- balanced CIFAR-10, trained model


def _bc_run_dir(work_dir: Path, depth: int, per_class: int, seed: int) -> Path:
    return work_dir / "balanced_cifar" / f"resnet{depth}_n{per_class}_seed{seed}"


def train_balanced_cifar(
    run_dir: Path, data_root: Path, depth: int, per_class: int, epochs: int, seed: int, threads: int
) -> None:
    """Plain-CE CIFAR ResNet on a balanced subset, through the recipe (a subprocess, so its memory is freed)."""
    import subprocess
    import time

    run_dir.mkdir(parents=True, exist_ok=True)
    recipe, config = REPO_ROOT / "recipes" / "train_image.py", REPO_ROOT / "recipes" / "configs" / "cifar10.yaml"
    cmd = [sys.executable, str(recipe), str(config), "--method", "ce", "--data_dir", str(data_root / "cifar10")]
    cmd += f"--depth {depth} --max_train_samples_per_class {per_class} --validation_per_class 0".split()
    cmd += f"--num_train_epochs {epochs} --lr_schedule cosine --warmup_epochs 0 --num_threads {threads}".split()
    cmd += ["--seed", str(seed), "--output_dir", str(run_dir), "--logging_steps", "100"]
    logger.info("training: %s", " ".join(cmd))
    start = time.time()
    with open(run_dir.with_suffix(".log"), "w", encoding="utf-8") as log:
        subprocess.run(
            cmd,
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    logger.info("trained %s in %.0f s", run_dir.name, time.time() - start)


def _correlations(scales: np.ndarray, counts: list[int], accuracy: np.ndarray) -> dict[str, Any]:
    import torch

    from hf_semscale.core.imbalance import imbalance_summary, permutation_p_value

    summary = imbalance_summary(torch.as_tensor(scales), torch.as_tensor(counts), torch.as_tensor(accuracy))
    summary["p_pearson_scale_accuracy"] = permutation_p_value(scales, accuracy, rank=False)
    summary["p_spearman_scale_accuracy"] = permutation_p_value(scales, accuracy, rank=True)
    return summary


def balanced_cifar_phenomena(
    run_dir: Path, data_root: Path, per_class: int, sizes: list[int], draws: int
) -> dict[str, Any] | None:
    """Scales, curves and correlations of one trained balanced-CIFAR model (``run_dir``: the recipe's output_dir)."""
    import torch

    from hf_semscale.core.scale import class_semantic_scales, marginal_effect_curves
    from hf_semscale.data import DataArguments, load_splits
    from hf_semscale.features import extract_features, extract_sample_vectors, load_model_for_features

    result = load_result(run_dir / "results.json")
    if not result or not (run_dir / "config.json").is_file():
        logger.warning("no trained model / results.json in %s (train it with --train-balanced-cifar)", run_dir)
        return None
    splits = load_splits(
        DataArguments(
            data_dir=str(data_root / "cifar10"),
            max_train_samples_per_class=per_class,
            validation_per_class=0,
            subset_seed=result.get("subset_seed", 0),
        ),
        "image",
    )
    counts = splits["train_class_counts"]
    if counts != result["train_class_counts"]:
        raise ValueError(
            f"{run_dir}: trained on class counts {result['train_class_counts']}, rebuilt subset has {counts}"
        )
    fm = load_model_for_features(str(run_dir))
    # Package gap, quantified: as loaded, the model gets raw [0, 1] pixels (no image processor saved).
    from hf_semscale.data import limit_per_class

    probe = limit_per_class(splits["test"], 200, seed=0)
    _, probe_labels, probe_pred = extract_features(
        fm, probe, 500, device="cpu", with_predictions=True, show_progress=False
    )
    unnormalised_accuracy = float(np.mean(probe_pred == probe_labels))
    # The recipe normalises pixels with the training set's channel mean / std but saves no image
    # processor, so load_model_for_features would feed raw [0, 1] pixels: pass the recipe's statistics.
    fm.image_mean, fm.image_std = tuple(result["channel_mean"]), tuple(result["channel_std"])
    train_feats, train_labels, _ = extract_features(fm, splits["train"], 500, device="cpu", show_progress=False)
    test_feats, test_labels, test_pred = extract_features(
        fm, splits["test"], 500, device="cpu", with_predictions=True, show_progress=False
    )
    num_classes = len(splits["class_names"])
    accuracy = np.array([float(np.mean(test_pred[test_labels == c] == c)) for c in range(num_classes)])
    recipe_acc = np.asarray(result["test"]["per_class_accuracy"], dtype=np.float64)
    feats, labels = torch.from_numpy(train_feats).double(), torch.from_numpy(train_labels)
    scales = class_semantic_scales(feats, labels, num_classes).numpy()
    test_scales = class_semantic_scales(
        torch.from_numpy(test_feats).double(), torch.from_numpy(test_labels), num_classes
    ).numpy()
    curves = marginal_effect_curves(
        feats, labels, num_classes, sizes=[m for m in sizes if m <= min(counts)], draws=draws, seed=0
    )
    out: dict[str, Any] = {
        "run": str(run_dir.relative_to(REPO_ROOT)) if run_dir.is_relative_to(REPO_ROOT) else str(run_dir),
        "seed": result["seed"],
        "depth": result.get("depth"),
        "epochs": result.get("epochs"),
        "num_train": result["num_train"],
        "train_runtime_s": result.get("train_runtime_s"),
        "wall_time_s": result.get("wall_time_s"),
        "test_accuracy": float(np.mean(test_pred == test_labels)),
        "recipe_test_accuracy": result["test"]["accuracy"],
        "test_accuracy_without_channel_normalisation_2000": unnormalised_accuracy,
        "max_abs_diff_vs_recipe_per_class_accuracy": float(np.max(np.abs(accuracy - recipe_acc))),
        "feature_dim": int(train_feats.shape[1]),
        "class_names": splits["class_names"],
        "counts": counts,
        "per_class_accuracy": accuracy.tolist(),
        "train_feature_scales": scales.tolist(),
        "test_feature_scales": test_scales.tolist(),
        "space": f"trained CIFAR ResNet-{result.get('depth')} features (classifier input, d={train_feats.shape[1]}), seed {result['seed']}",
        "dataset": f"CIFAR-10 train, balanced {per_class}/class",
        "curves": curves.to_dict(),
        "summary_train_features": _correlations(scales, counts, accuracy),
        "summary_test_features": _correlations(
            test_scales, [int(np.sum(test_labels == c)) for c in range(num_classes)], accuracy
        ),
    }
    pixels = torch.from_numpy(extract_sample_vectors(splits["train"], show_progress=False))
    pixel_scales = class_semantic_scales(pixels, labels, num_classes).numpy()
    out["train_pixel_scales"] = pixel_scales.tolist()
    out["summary_pixels"] = _correlations(pixel_scales, counts, accuracy)
    return out


def balanced_cifar_across_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-class accuracy and scales averaged over seeds, and their correlations."""
    acc = np.mean([r["per_class_accuracy"] for r in runs], axis=0)
    scales = np.mean([r["train_feature_scales"] for r in runs], axis=0)
    out = {
        "seeds": [r["seed"] for r in runs],
        "per_class_accuracy": acc.tolist(),
        "train_feature_scales": scales.tolist(),
        "summary_train_features": _correlations(scales, runs[0]["counts"], acc),
        "test_feature_scales": np.mean([r["test_feature_scales"] for r in runs], axis=0).tolist(),
        "summary_pixels": _correlations(np.asarray(runs[0]["train_pixel_scales"]), runs[0]["counts"], acc),
    }
    out["summary_test_features"] = _correlations(np.asarray(out["test_feature_scales"]), [1000] * len(acc), acc)
    if len(runs) > 1:
        out["accuracy_std_over_seeds"] = np.std([r["per_class_accuracy"] for r in runs], axis=0).tolist()
        out["scale_std_over_seeds"] = np.std([r["train_feature_scales"] for r in runs], axis=0).tolist()
    return out


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
    lines = ["# Phenomena of semantic scale on our data", "", "Generated by `python benchmarks/phenomena.py`.", ""]
    lines += [
        "## Marginal effect",
        "",
        "Mean scale (bits) of random class subsets of size m (several draws), first classes shown; "
        "plot: `phenomena.png`.",
        "",
    ]
    for key in ("cifar10_pixels", "banking77_features"):
        curves = report.get(key)
        if not curves:
            continue
        c = curves if "sizes" in curves else curves["curves"]
        lines += [
            f"### {curves.get('dataset')} — {curves.get('space')}",
            "",
            "| class | " + " | ".join(f"m={m}" for m in c["sizes"]) + " |",
            "|---|" + "---|" * len(c["sizes"]),
        ]
        for cls, row in list(enumerate(c["mean"]))[:5]:
            lines.append(f"| {cls} | " + " | ".join("—" if v is None else f"{v:.2f}" for v in row) + " |")
        lines.append("")
    bank = report.get("banking77_features")
    if bank and bank.get("summary"):
        s = bank["summary"]
        lines += [
            "## BANKING77: does scale track accuracy better than count?",
            "",
            f"Accuracy: {bank.get('accuracy_source', 'not available')}. Scales: frozen MiniLM embeddings of all of each class's "
            "training rows (n_c = 30..182 < d = 384, where the marginal-effect curves above are still rising, so part of "
            "each scale is a count effect).",
            "",
            "| | Pearson | Spearman |",
            "|---|---|---|",
            f"| scale vs accuracy | {_fmt(s.get('pearson_scale_accuracy'))} | {_fmt(s.get('spearman_scale_accuracy'))} |",
            f"| count vs accuracy | {_fmt(s.get('pearson_count_accuracy'))} | {_fmt(s.get('spearman_count_accuracy'))} |",
            "",
            f"Scales {s['scale_min']:.2f}..{s['scale_max']:.2f} bits (max/min {_fmt(s.get('max_min_ratio'))}); counts "
            f"{s['count_min']}..{s['count_max']}.",
            "",
        ]
    rows = report.get("cifar10_lt_correlations") or []
    if rows:
        lines += [
            "## CIFAR-10-LT (CPU tier): final pool scales of the dsb_* runs vs per-class test accuracy",
            "",
            "Pearson / Spearman: correlation with per-class test accuracy. `scale vs count`: Spearman correlation of the "
            "final scales with the classes' training counts; `scale vs balanced`: with the train-feature scales of the "
            "ResNet-8 trained on BALANCED CIFAR-10 (section below; — when it was not run).",
            "",
            "| method | seed | Pearson scale | Spearman scale | Pearson count | Spearman count | scale vs count | scale vs balanced | scale range (bits) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['method']} | {r['seed']} | {_fmt(r['pearson_scale_accuracy'])} | {_fmt(r['spearman_scale_accuracy'])} | "
                f"{_fmt(r['pearson_count_accuracy'])} | {_fmt(r['spearman_count_accuracy'])} | {_fmt(r.get('spearman_scale_count'))} | "
                f"{_fmt(r.get('spearman_scale_vs_balanced_scale'))} | "
                f"{r['scale_min']:.2f}..{r['scale_max']:.2f} |"
            )
        lines.append("")
    lines += balanced_cifar_lines(report)
    write_results(out_dir, "phenomena", report, "\n".join(lines))


def _fmt_p(value: Any, p: Any) -> str:
    return "undefined" if value is None else f"{value:+.3f}" + ("" if p is None else f" (p={p:.3f})")


def _corr_row(name: str, s: dict[str, Any], what: str) -> str:
    p_key = "p_pearson_scale_accuracy" if what == "scale" else None
    return (
        f"| {name} | {_fmt_p(s.get(f'pearson_{what}_accuracy'), s.get(p_key) if p_key else None)} | "
        f"{_fmt_p(s.get(f'spearman_{what}_accuracy'), s.get('p_spearman_scale_accuracy') if what == 'scale' else None)} |"
    )


def _reading(name: str, s: dict[str, Any]) -> str:
    r, p = s.get("spearman_scale_accuracy"), s.get("p_spearman_scale_accuracy")
    if r is None:
        return f"{name}: correlation undefined."
    direction = "higher scale goes with higher accuracy" if r > 0 else "higher scale goes with LOWER accuracy"
    strength = "significant at 5 %" if p is not None and p < 0.05 else "not significant at 5 % (10 classes)"
    return f"{name}: Spearman {r:+.2f}, permutation p = {p:.3f}: {direction}; {strength}."


def balanced_cifar_lines(report: dict[str, Any]) -> list[str]:
    bc = report.get("cifar10_balanced")
    if not bc or not bc.get("runs"):
        return []
    setup, runs, agg = bc["setup"], bc["runs"], bc["across_seeds"]
    first = runs[0]
    names = first["class_names"]
    lines = [
        "## Balanced CIFAR-10, trained model: does semantic scale track per-class accuracy?",
        "",
        f"Setup: {setup['description']}",
        "",
        "Per-class test accuracy comes from `hf_semscale.features.extract_features(..., with_predictions=True)` on the "
        "full balanced test set (1000 images per class); it matches the recipe's own evaluation "
        f"(largest per-class difference {max(r['max_abs_diff_vs_recipe_per_class_accuracy'] for r in runs):.4f}). "
        "Scales: `class_semantic_scales` (rows L2-normalised, alpha = d) of the classifier-input features of each "
        "class's training images (no augmentation), of its test images, and of its raw training pixels (d = 3072).",
        "",
    ]
    lines += [
        "| seed | epochs | train time (s) | test top-1 | train-feature scale range (bits) | Spearman train-feature scale vs acc (p) "
        "| Pearson (p) | Spearman test-feature scale vs acc (p) | Spearman pixel scale vs acc (p) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s = r["summary_train_features"]
        lines.append(
            f"| {r['seed']} | {r['epochs']:g} | {r['train_runtime_s']:.0f} | {100 * r['test_accuracy']:.2f} % | "
            f"{s['scale_min']:.2f}..{s['scale_max']:.2f} | {_fmt_p(s['spearman_scale_accuracy'], s['p_spearman_scale_accuracy'])} | "
            f"{_fmt_p(s['pearson_scale_accuracy'], s['p_pearson_scale_accuracy'])} | "
            f"{_fmt_p(r['summary_test_features']['spearman_scale_accuracy'], r['summary_test_features']['p_spearman_scale_accuracy'])} | "
            f"{_fmt_p(r['summary_pixels']['spearman_scale_accuracy'], r['summary_pixels']['p_spearman_scale_accuracy'])} |"
        )
    lines.append("")
    multi = len(runs) > 1
    lines += [
        f"Per class ({'mean over seeds ' + str(agg['seeds']) if multi else 'seed ' + str(first['seed'])}; pixel scale and count "
        "do not depend on the seed):",
        "",
        "| class | count | test accuracy | scale, train features | scale, test features | scale, pixels |",
        "|---|---|---|---|---|---|",
    ]
    test_scales = agg["test_feature_scales"]
    for c, name in enumerate(names):
        acc = f"{100 * agg['per_class_accuracy'][c]:.1f} %" + (
            f" ± {100 * agg['accuracy_std_over_seeds'][c]:.1f}" if multi else ""
        )
        sc = f"{agg['train_feature_scales'][c]:.2f}" + (f" ± {agg['scale_std_over_seeds'][c]:.2f}" if multi else "")
        lines.append(
            f"| {name} | {first['counts'][c]} | {acc} | {sc} | {test_scales[c]:.2f} | {first['train_pixel_scales'][c]:.1f} |"
        )
    s_feat, s_pix = agg["summary_train_features"], agg["summary_pixels"]
    s_test = agg["summary_test_features"]
    lines += [
        "",
        f"Correlation with per-class test accuracy ({'per-seed means' if multi else 'one seed'}; two-sided permutation "
        "p-values, 20,000 permutations, 10 classes):",
        "",
        "| per-class quantity | Pearson (p) | Spearman (p) |",
        "|---|---|---|",
        _corr_row("semantic scale, trained features of the training images", s_feat, "scale"),
    ]
    lines.append(_corr_row("semantic scale, trained features of the test images", s_test, "scale"))
    lines += [
        _corr_row("semantic scale, raw pixels of the training images (sample volume)", s_pix, "scale"),
        _corr_row("training count", s_feat, "count"),
        "",
        f"Count: every class has {first['counts'][0]} training images, so its correlation with accuracy is undefined "
        f'(`imbalance_summary` note: "{s_feat["notes"].get("pearson_count_accuracy", "")}"): on sample-balanced data '
        "the count cannot explain any of the spread in accuracy "
        f"({100 * min(agg['per_class_accuracy']):.1f} %..{100 * max(agg['per_class_accuracy']):.1f} %).",
        "",
        "Reading (generated from the numbers above):",
        "",
        "- " + _reading("Trained features of the training images", s_feat),
        "- " + _reading("Trained features of the test images", s_test),
        "- " + _reading("Raw pixels", s_pix),
        "- The paper's claim for sample-balanced data is that classes of larger semantic scale are recognised better. "
        + (
            "Here the trained-feature scale of the training images supports it (positive and significant)."
            if (s_feat.get("spearman_scale_accuracy") or 0) > 0
            and (s_feat.get("p_spearman_scale_accuracy") or 1) < 0.05
            else "Here the trained-feature scale of the training images does NOT support it (not a positive, significant "
            "correlation)."
        ),
        "",
        "Package gap met on the way: the recipe normalises pixels with the training set's channel mean / std but saves no "
        "image processor, so `load_model_for_features` (and `hf-semscale measure --with-accuracy`) on its output feeds raw "
        "[0, 1] pixels; this script passes the recipe's `channel_mean` / `channel_std` (from `results.json`). As loaded, "
        "without them, the same model scores "
        + ", ".join(f"{100 * r['test_accuracy_without_channel_normalisation_2000']:.1f} %" for r in runs)
        + " on 2,000 test images (seeds "
        + ", ".join(str(r["seed"]) for r in runs)
        + ").",
        "",
    ]
    # marginal effect, trained features next to pixels
    curves, pix = first["curves"], report.get("cifar10_pixels")
    lines += [
        f"### Marginal effect in the trained feature space (seed {first['seed']}, d = {first['feature_dim']}) next to pixel space",
        "",
        "Mean scale (bits) of random class subsets of size m (3 draws); plots: `phenomena_cifar10_trained_marginal.png` "
        "(this model) and the middle panel of `phenomena.png`.",
        "",
        "| class | " + " | ".join(f"m={m}" for m in curves["sizes"]) + " |",
        "|---|" + "---|" * len(curves["sizes"]),
    ]
    for c, row in enumerate(curves["mean"]):
        lines.append(f"| {names[c]} | " + " | ".join("—" if v is None else f"{v:.2f}" for v in row) + " |")
    if pix and pix.get("sizes") == curves["sizes"]:
        lines += [
            "",
            "Share of the scale at the largest m already reached at size m (mean over classes):",
            "",
            "| space | " + " | ".join(f"m={m}" for m in curves["sizes"]) + " |",
            "|---|" + "---|" * len(curves["sizes"]),
        ]
        for label, c in (("pixels (d = 3072)", pix), (f"trained features (d = {first['feature_dim']})", curves)):
            mean = np.asarray(c["mean"], dtype=np.float64)
            share = np.mean(mean / mean[:, -1:], axis=0)
            lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in share) + " |")
    lines.append("")
    return lines


def balanced_cifar(args: argparse.Namespace, sizes: list[int]) -> dict[str, Any] | None:
    from hf_semscale.plotting import plot_marginal_effect, plot_scale_count_accuracy

    runs = []
    for seed in args.bc_seeds:
        run_dir = _bc_run_dir(args.work_dir, args.bc_depth, args.cifar_per_class, seed)
        if args.train_balanced_cifar and not (run_dir / "results.json").is_file():
            train_balanced_cifar(
                run_dir, args.data_root, args.bc_depth, args.cifar_per_class, args.bc_epochs, seed, args.bc_threads
            )
        result = balanced_cifar_phenomena(run_dir, args.data_root, args.cifar_per_class, sizes, args.draws)
        if result is not None:
            runs.append(result)
    if not runs:
        return None
    epochs = sorted({r["epochs"] for r in runs})
    setup = {
        "machine": args.machine,
        "depth": args.bc_depth,
        "per_class": args.cifar_per_class,
        "seeds": [r["seed"] for r in runs],
        "description": (
            f"CIFAR ResNet-{args.bc_depth} (widths 16/32/64, linear head, d = {runs[0]['feature_dim']}), plain cross-entropy, trained "
            f"with `recipes/train_image.py recipes/configs/cifar10.yaml --method ce --depth {args.bc_depth} "
            f"--max_train_samples_per_class {args.cifar_per_class} --validation_per_class 0 --num_train_epochs "
            f"{'/'.join(f'{e:g}' for e in epochs)} --lr_schedule cosine --warmup_epochs 0` on a BALANCED subset of CIFAR-10 "
            f"({args.cifar_per_class} training images per class, {10 * args.cifar_per_class} in all, the same images as the pixel "
            "curves above): SGD lr 0.1, momentum 0.9, weight decay 2e-4, batch 128, cosine schedule without warm-up, random crop "
            f"(4-pixel padding) + horizontal flip. Seeds {[r['seed'] for r in runs]} "
            f"({'one seed only' if len(runs) == 1 else f'{len(runs)} seeds; per-class numbers below are means over them'}). "
            f"Machine: {args.machine}. This is a short schedule (the paper trains for hundreds of epochs): the models are "
            "far from converged, so this measures the phenomenon on an under-trained network."
        ),
    }
    out = {"setup": setup, "runs": runs, "across_seeds": balanced_cifar_across_seeds(runs)}
    first = runs[0]
    plot_marginal_effect(
        first["curves"],
        args.out_dir / "phenomena_cifar10_trained_marginal.png",
        class_names=first["class_names"],
        title=f"Marginal effect, balanced CIFAR-10, trained ResNet-{first['depth']} features (seed {first['seed']})",
    )
    agg = out["across_seeds"]
    rows = [
        {"count": n, "scale": s, "accuracy": a}
        for n, s, a in zip(first["counts"], agg["train_feature_scales"], agg["per_class_accuracy"])
    ]
    plot_scale_count_accuracy(
        rows,
        args.out_dir / "phenomena_cifar10_balanced.png",
        title=f"Balanced CIFAR-10, ResNet-{first['depth']} training features, seeds {agg['seeds']}",
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument(
        "--data-root", type=Path, default=Path(os.environ.get("HF_SEMSCALE_DATA_DIR", DEFAULT_DATA_ROOT))
    )
    parser.add_argument(
        "--cifar-per-class", type=int, default=1000, help="CIFAR-10 images per class for the pixel curves"
    )
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-cifar", action="store_true")
    parser.add_argument(
        "--balanced-cifar",
        action="store_true",
        help="Add the trained-model section: balanced CIFAR-10 runs under <work-dir>/balanced_cifar/",
    )
    parser.add_argument(
        "--train-balanced-cifar",
        action="store_true",
        help="Train the missing --bc-seeds first (implies --balanced-cifar)",
    )
    parser.add_argument("--bc-depth", type=int, default=8, help="CIFAR ResNet depth (widths 16/32/64)")
    parser.add_argument("--bc-epochs", type=int, default=8)
    parser.add_argument("--bc-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--bc-threads", type=int, default=2)
    parser.add_argument(
        "--machine", default="a 2-core CPU shared with other jobs (no GPU)", help="Stated in the report"
    )
    args = parse_benchmark_args(parser, argv, smoke={"cifar_per_class": 20, "draws": 1, "seeds": [0]})
    args.balanced_cifar = args.balanced_cifar or args.train_balanced_cifar
    args.out_dir.mkdir(parents=True, exist_ok=True)  # the plots go there before the report
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report: dict[str, Any] = {}
    sizes = [2, 5, 10, 20, 50, 100, 200, 500, 1000]
    curve_sets = []
    if not args.skip_cifar:
        report["cifar10_pixels"] = cifar_pixel_curves(
            args.data_root, args.cifar_per_class, [m for m in sizes if m <= args.cifar_per_class], args.draws
        )
        curve_sets.append({**report["cifar10_pixels"], "title": "CIFAR-10 train, pixels (sample volume)"})
    bank = banking_phenomena(args.work_dir, args.data_root, sizes, args.draws, args.seeds)
    if bank is not None:
        report["banking77_features"] = bank
        curve_sets.append({**bank["curves"], "title": "BANKING77, frozen MiniLM features (first 10 classes)"})
    report["cifar10_lt_correlations"] = cifar_lt_correlations(args.work_dir, args.seeds)
    if args.balanced_cifar:
        bc = balanced_cifar(args, sizes)
        if bc is not None:
            report["cifar10_balanced"] = bc
            rank_against_balanced(report["cifar10_lt_correlations"], bc)
            first = bc["runs"][0]
            curve_sets.insert(
                1,
                {
                    **first["curves"],
                    "title": f"CIFAR-10 train, trained ResNet-{first['depth']} features "
                    f"(d={first['feature_dim']}, seed {first['seed']})",
                },
            )
    if curve_sets:
        plot(curve_sets, args.out_dir / "phenomena.png")
    write(args.out_dir, report)
    logger.info("wrote %s", args.out_dir / "phenomena.md")


if __name__ == "__main__":
    main()
