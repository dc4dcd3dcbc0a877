"""``hf-semscale measure``: per-class semantic scales of a dataset under a model.

Loads the data (shared-style folder, ``save_to_disk`` folder or Hub id) and the model (folder, Hub id
or timm architecture), extracts the input of the classification head for every sample, and writes
``semantic_scales.json`` (per class: id, name, count, scale, normalized_scale, degree, and
sample_scale / accuracy when asked), ``scale_count_accuracy.png``, ``marginal_effect.png`` (with
``--marginal-effect``) and prints a table.

Accuracy is reported only with ``--with-accuracy``, and only for a model whose head was trained for
this label set: its head weights come from the checkpoint, it has one output per class, and its
``id2label`` names (unless generic ``LABEL_i``) equal the dataset's class names; and, for images, the
pixel preprocessing it was trained on is saved with it (an image processor, or ``image_mean`` /
``image_std`` in ``config.json`` as ``recipes/train_image.py`` saves them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


class MeasureError(ValueError):
    """Options that do not fit the model or the data."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .push import add_push_arguments

    add_push_arguments(parser, repo_option="--push", required=False)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset", required=True, help="Folder (e.g. ../shared/data/cifar10), save_to_disk folder, or Hub id."
    )
    data.add_argument("--split", default="train", help="Split to measure (default: train).")
    data.add_argument("--text-column", default=None, help="Text column (default: text / sentence / content).")
    data.add_argument("--image-column", default=None, help="Image column (default: image / img).")
    data.add_argument("--label-column", default=None, help="Label column (default: label / labels).")
    data.add_argument("--max-samples-per-class", type=int, default=None, help="Seeded random cap per class.")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", required=True, help="Model folder, Hub id, or timm architecture name (random weights)."
    )
    model.add_argument(
        "--pooling",
        choices=["head", "mean", "cls"],
        default="head",
        help="The feature: 'head' (the classification head's input; BERT: its pooler output), 'mean' (mean of the "
        "last hidden states over tokens, how sentence-transformers encoders such as MiniLM are trained) or 'cls'.",
    )
    model.add_argument("--batch-size", type=int, default=32, help="Samples per forward pass.")
    model.add_argument("--max-length", type=int, default=128, help="Tokenizer truncation for text, in tokens.")
    model.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    model.add_argument(
        "--with-accuracy",
        action="store_true",
        help="Also report per-class accuracy; the model's head must be trained on this label set.",
    )
    scale = parser.add_argument_group("semantic scale")
    scale.add_argument("--alpha", type=float, default=None, help="Distortion alpha (default: the feature dimension d).")
    scale.add_argument("--no-normalize", action="store_true", help="Do not L2-normalise feature rows.")
    scale.add_argument(
        "--sample-space", action="store_true", help="Also measure flattened inputs: pixels / mean token embeddings."
    )
    scale.add_argument("--marginal-effect", action="store_true", help="Also draw scale vs subset size per class.")
    scale.add_argument("--draws", type=int, default=5, help="Random subsets per class and size for --marginal-effect.")
    scale.add_argument("--seed", type=int, default=0, help="Seed of the per-class cap and the marginal-effect draws.")
    parser.add_argument("--output-dir", default="outputs/measure", help="Where semantic_scales.json and the plots go.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")


def _check_accuracy_possible(fm: Any, names: list[str]) -> list[str]:
    """Raise :class:`MeasureError` unless the model's head is trained for ``names``; returns notes."""
    if not fm.head_is_trained:
        raise MeasureError(
            f"--with-accuracy: the head {fm.head_name!r} of {fm.name!r} is not from a checkpoint (random weights), "
            "so its predictions mean nothing. Fix: pass a model fine-tuned on this dataset, or drop --with-accuracy."
        )
    if fm.num_labels != len(names):
        raise MeasureError(
            f"--with-accuracy: {fm.name!r} predicts {fm.num_labels} classes but the dataset has {len(names)}. "
            "Fix: pass a model fine-tuned on this label set, or drop --with-accuracy."
        )
    if not fm.preprocessing_saved:
        raise MeasureError(
            f"--with-accuracy: {fm.name!r} saves no image preprocessing (no preprocessor_config.json, no image_mean / "
            "image_std in config.json), so the pixel normalisation it was trained on is unknown, and a model trained "
            "on normalised pixels predicts near chance on [0, 1] pixels. Fix: save the training normalisation with "
            "the model (per channel, in [0, 1] units; mean 0 and std 1 for plain [0, 1] pixels): "
            "model.config.image_mean = [...]; model.config.image_std = [...]; model.save_pretrained(folder), or save "
            "its image processor into the folder (image_processor.save_pretrained(folder)); or drop --with-accuracy."
        )
    if fm.label_names is None:
        return ["model labels are generic (LABEL_i): class ids assumed to follow the dataset's order"]
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(fm.label_names, names)) if a != b]
    if differ:
        i, a, b = differ[0]
        raise MeasureError(
            f"--with-accuracy: the model's label {i} is {a!r} but the dataset's class {i} is {b!r} "
            f"({len(differ)} of {len(names)} differ). Fix: pass a model fine-tuned on this label set."
        )
    return []


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Load, extract, measure; returns the ``semantic_scales.json`` report (nothing written)."""
    import torch

    from ..core.imbalance import imbalance_degree, imbalance_summary, normalized_scales
    from ..core.scale import class_semantic_scales, marginal_effect_curves
    from ..data import class_counts, class_names, limit_per_class, load_dataset_any
    from ..features import POOLINGS, extract_features, extract_sample_vectors, load_model_for_features
    from ..hub.report import build_scale_report
    from ..metrics import long_tail_metrics
    from ..select.regime import diagnose_regime

    dataset = load_dataset_any(args.dataset, args.split, args.text_column, args.image_column, args.label_column)
    if args.max_samples_per_class is not None:
        dataset = limit_per_class(dataset, args.max_samples_per_class, seed=args.seed)
    names = class_names(dataset)
    counts = class_counts(dataset, len(names))
    if len(dataset) == 0:
        raise MeasureError(f"split {args.split!r} of {args.dataset} is empty")

    fm = load_model_for_features(args.model)
    notes = list(fm.notes)
    if args.with_accuracy:
        notes += _check_accuracy_possible(fm, names)
    show = not args.quiet
    features, labels, predictions = extract_features(
        fm,
        dataset,
        args.batch_size,
        device=args.device,
        with_predictions=args.with_accuracy,
        max_length=args.max_length,
        show_progress=show,
        pooling=args.pooling,
    )
    normalize = not args.no_normalize
    feats, labs = torch.from_numpy(features), torch.from_numpy(labels)
    scales = class_semantic_scales(feats, labs, len(names), normalize=normalize, alpha=args.alpha)

    per_class: dict[str, list[Any]] = {
        "normalized_scale": normalized_scales(scales).tolist(),
        "degree": imbalance_degree(scales).tolist(),
    }
    metrics = None
    accuracy_tensor = None
    if predictions is not None:
        lt = long_tail_metrics(predictions, labels, counts)
        per_class["accuracy"] = lt["per_class_accuracy"]
        metrics = {"accuracy": lt["accuracy"], "balanced_accuracy": lt["balanced_accuracy"]}
        if all(a is not None for a in lt["per_class_accuracy"]):
            accuracy_tensor = torch.tensor(lt["per_class_accuracy"], dtype=torch.float64)
        else:
            notes.append("some classes have no samples in this split: correlations with accuracy left out")
    summary = imbalance_summary(scales, torch.tensor(counts), accuracy_tensor)

    sample_space = None
    if args.sample_space:
        samples = torch.from_numpy(
            extract_sample_vectors(dataset, fm=fm, device=args.device, max_length=args.max_length, show_progress=show)
        )
        sample_scales = class_semantic_scales(samples, labs, len(names), normalize=normalize, alpha=args.alpha)
        per_class["sample_scale"] = sample_scales.tolist()
        sample_space = {
            "dim": int(samples.shape[1]),
            "alpha": float(samples.shape[1] if args.alpha is None else args.alpha),
            "summary": imbalance_summary(sample_scales, torch.tensor(counts), accuracy_tensor),
        }

    curves = None
    if args.marginal_effect:
        curves = marginal_effect_curves(
            feats, labs, len(names), draws=args.draws, seed=args.seed, normalize=normalize, alpha=args.alpha
        ).to_dict()

    settings = {
        "model": str(args.model),
        "dataset": str(args.dataset),
        "split": args.split,
        "alpha": float(features.shape[1] if args.alpha is None else args.alpha),
        "normalize": normalize,
        "max_samples_per_class": args.max_samples_per_class,
        "seed": args.seed,
        "head_is_trained": fm.head_is_trained,
        "pooling": args.pooling,
        "feature": f"{POOLINGS[args.pooling]}{f' ({fm.head_name!r})' if args.pooling == 'head' else ''}",
        "notes": notes,
    }
    report = build_scale_report(
        source="measure",
        scales=scales.tolist(),
        counts=counts,
        class_names=names,
        feature_dim=int(features.shape[1]),
        space="feature",
        settings=settings,
        summary=summary,
        extra_per_class=per_class,
        metrics=metrics,
        sample_space=sample_space,
        marginal_effect=curves,
    )
    try:
        report["regime"] = diagnose_regime(counts, int(features.shape[1]), scales)
    except ValueError as err:  # fewer than 2 classes with samples: no regime to speak of
        report["regime"] = {"name": None, "reason": str(err)}
    return report


def _plot_title(report: dict[str, Any]) -> str:
    s = report["settings"]
    from ..plotting import short_model_name

    return (
        f"{short_model_name(s['model'])} on {Path(s['dataset']).name} ({s['split']}), {len(report['classes'])} classes"
    )


def write_outputs(report: dict[str, Any], output_dir: Path) -> list[Path]:
    """``semantic_scales.json`` and the PNG plots; returns the written paths."""
    from ..hub.report import write_report_and_plots

    return write_report_and_plots(output_dir, report, title=_plot_title(report))


def _cell(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def format_table(report: dict[str, Any]) -> str:
    """Per-class table plus the summary lines, as printed by ``measure``."""
    rows = report["classes"]
    extra = [key for key in ("sample_scale", "accuracy") if key in rows[0]]
    width = max(4, min(32, max(len(r["name"]) for r in rows)))
    header = f"{'id':>4}  {'name':<{width}} {'count':>7} {'scale':>8} {'norm':>6} {'degree':>7}"
    header += "".join(f" {('sample' if k == 'sample_scale' else 'acc %'):>8}" for k in extra)
    lines = [header]
    for r in rows:
        line = f"{r['id']:>4}  {r['name'][:width]:<{width}} {r['count']:>7} {r['scale']:>8.3f} {r['normalized_scale']:>6.3f} {r['degree']:>7.2f}"
        for key in extra:
            value = r[key] if key == "sample_scale" or r[key] is None else 100 * r[key]
            line += f" {_cell(value, '8.3f' if key == 'sample_scale' else '8.1f')}"
        lines.append(line)
    s = report["summary"]
    lines.append(
        f"\nscale (bits): min {_cell(s['scale_min'], '.3f')}, max {_cell(s['scale_max'], '.3f')}, max/min {_cell(s['max_min_ratio'], '.2f')}, "
        f"CV {_cell(s['coefficient_of_variation'], '.3f')}; counts max/min {_cell(s['count_max_min_ratio'], '.2f')}"
    )
    if "pearson_scale_accuracy" in s:
        lines.append(
            f"accuracy vs scale: Pearson {_cell(s['pearson_scale_accuracy'], '+.3f')}, Spearman {_cell(s['spearman_scale_accuracy'], '+.3f')}"
            f"   vs count: Pearson {_cell(s['pearson_count_accuracy'], '+.3f')}, Spearman {_cell(s['spearman_count_accuracy'], '+.3f')}"
        )
    if report.get("metrics"):
        m = report["metrics"]
        lines.append(f"accuracy {100 * m['accuracy']:.2f} %, balanced accuracy {100 * m['balanced_accuracy']:.2f} %")
    lines.append(f"feature: {report['settings'].get('feature')}, d = {report['feature_dim']}")
    regime = report.get("regime") or {}
    if regime.get("name"):
        lines.append(
            f"regime: {regime['name']} — {regime['summary']}: {100 * regime['fraction_classes_below_dim']:.0f} % of "
            f"classes have fewer samples than d = {regime['feature_dim']}, counts {regime['count_min']}-"
            f"{regime['count_max']} (ratio {regime['count_ratio']:.1f}), Spearman(scale, count) "
            f"{_cell(regime['spearman_scale_count'], '+.2f')}\n  evidence-based start: "
            f"{regime['recommendation']['config']} ({regime['recommendation']['evidence']}); measure the choice on your "
            "data with hf-semscale select"
        )
    lines += [f"note: {note}" for note in report["settings"].get("notes", [])]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..data import DatasetLoadError
    from ..features import ModelLoadError

    try:
        report = measure(args)
    except (DatasetLoadError, ModelLoadError, MeasureError) as err:
        print(f"hf-semscale measure: error: {err}", file=sys.stderr)
        return 2
    paths = write_outputs(report, Path(args.output_dir))
    print(format_table(report))
    print("\nwrote " + ", ".join(str(p) for p in paths))
    if args.repo_id:
        from ..hub.publish import PushError, push_analysis
        from .push import push_kwargs

        try:
            url = push_analysis(
                args.output_dir, args.repo_id, model_id=args.model, dataset_name=args.dataset, **push_kwargs(args)
            )
        except (PushError, ValueError) as err:
            print(f"hf-semscale measure: error: {err}", file=sys.stderr)
            return 1
        print(f"published the analysis: {url}")
    return 0
