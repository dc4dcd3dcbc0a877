"""``hf-semscale demo``: DSB against the count-based methods on long-tailed digits, no download.

The data is scikit-learn's bundled digits (1,797 8x8 images, 10 classes), split stratified into
train/test, with the TRAIN split made long-tailed (class c keeps ``n_max * IF^(-c/9)``); the test set
stays balanced. A small MLP is trained with ``SemScaleTrainer`` once per method and seed (``DEMO_METHODS``:
plain CE, class-balanced CE, balanced softmax and DSB-CE; cb_ce's weights start at the step DSB's start, after
its warm-up and one epoch of pool filling, so the two differ only in the weights). Prints the long-tail
metrics (mean ± std over seeds) and the final per-class scales and weights; writes the DSB run's model,
``semantic_scales.json``, plots and ``demo_results.json`` to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

METRICS = ("accuracy", "balanced_accuracy", "many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy")
DEMO_METHODS = {
    "ce": {"semscale_weighting": "none", "semscale_loss": "ce"},
    "cb_ce": {"semscale_weighting": "effective_number", "semscale_loss": "ce"},
    "balanced_softmax": {"semscale_weighting": "none", "semscale_loss": "balanced_softmax"},
    "dsb_ce": {"semscale_weighting": "dsb", "semscale_loss": "ce"},
}
"""The demo's methods: ``SemScaleConfig`` overrides (the names of ``recipes/methods.py``)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="outputs/demo", help="Where the DSB model, JSON and plots go.")
    parser.add_argument("--imbalance-factor", type=float, default=20.0, help="n_max / n_min of the training split.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="One run per method and seed.")
    parser.add_argument("--epochs", type=float, default=30.0, help="Training epochs per run.")
    parser.add_argument("--gamma", type=float, default=1.0, help="DSB strength (semscale_gamma).")
    parser.add_argument("--warmup-ratio", type=float, default=0.3, help="Stage-1 length as a fraction of training.")
    parser.add_argument("--many-threshold", type=int, default=100, help="Many-shot: more training samples than this.")
    parser.add_argument("--few-threshold", type=int, default=20, help="Few-shot: fewer training samples than this.")


def _train_once(method: str, seed: int, args: argparse.Namespace, train, test, output_dir: Path):
    import numpy as np
    import torch

    from ..data import class_counts
    from ..metrics import long_tail_metrics
    from ..modeling import MLPClassifierConfig, MLPForClassification
    from ..trainer.config import SemScaleConfig
    from ..trainer.trainer import SemScaleTrainer

    torch.manual_seed(seed)
    num_labels = train.features["labels"].num_classes
    names = train.features["labels"].names
    model = MLPForClassification(
        MLPClassifierConfig(
            input_dim=64,
            hidden_dims=(128, 64),
            num_labels=num_labels,
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
        )
    )
    config = SemScaleConfig(
        output_dir=str(output_dir),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=32,
        learning_rate=0.05,
        optim="sgd",
        weight_decay=5e-4,
        lr_scheduler_type="cosine",
        seed=seed,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        semscale_gamma=args.gamma,
        # count weights start where DSB's do: after its warm-up and the one-epoch fill of its pool
        semscale_warmup_ratio=args.warmup_ratio + (1.0 / args.epochs if method == "cb_ce" else 0.0),
        **DEMO_METHODS[method],
    )
    counts = class_counts(train, num_labels, "labels")
    trainer = SemScaleTrainer(model=model, args=config, train_dataset=train, class_counts=counts)
    trainer.train()
    logits = trainer.predict(test).predictions
    predictions = np.asarray(logits).argmax(-1)
    metrics = long_tail_metrics(
        predictions,
        test.with_format("numpy", columns=["labels"])[:]["labels"],
        counts,
        many_threshold=args.many_threshold,
        few_threshold=args.few_threshold,
    )
    return trainer, metrics


def _fmt(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "n/a".rjust(13)
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return f"{100 * statistics.mean(present):6.2f} ± {100 * std:4.2f}"


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    from ..data import load_builtin_digits
    from ..hub.report import SCALES_FILENAME, read_scale_report, write_json_atomic
    from ..plotting import write_report_plots

    hf_logging.set_verbosity_error()
    torch.set_num_threads(
        1
    )  # a 64-128-64-10 MLP: extra intra-op threads only add synchronisation (and spin on busy CPUs)
    output_dir = Path(args.output_dir)
    results: dict[str, list[dict]] = {method: [] for method in DEMO_METHODS}
    final_trainer = None
    for seed in args.seeds:
        train, test = load_builtin_digits(imbalance_factor=args.imbalance_factor, seed=seed)
        for method in DEMO_METHODS:
            run_dir = output_dir if method == "dsb_ce" else output_dir / "baselines" / method
            trainer, metrics = _train_once(method, seed, args, train, test, run_dir)
            results[method].append(
                {"seed": seed, **{k: metrics[k] for k in METRICS}, "per_class_accuracy": metrics["per_class_accuracy"]}
            )
            print(
                f"seed {seed} {method:>16}: accuracy {100 * metrics['accuracy']:.2f}  balanced {100 * metrics['balanced_accuracy']:.2f}"
            )
            if method == "dsb_ce":
                final_trainer = trainer

    print(
        f"\nLong-tailed digits (train IF={args.imbalance_factor:g}, balanced test), MLP, {args.epochs:g} epochs, seeds {args.seeds}"
    )
    print(f"{'method':<17}" + "".join(f"{m.replace('_accuracy', ''):>16}" for m in METRICS))
    for method, rows in results.items():
        print(f"{method:<17}" + "".join(f"{_fmt([r[m] for r in rows]):>16}" for m in METRICS))
    best = max(results, key=lambda m: statistics.mean(r["balanced_accuracy"] for r in results[m]))
    print(
        f"Highest mean balanced accuracy here: {best}. The README's 'Which method should I use?' says what the "
        "library measured on larger data."
    )

    final_trainer.save_model(str(output_dir))  # model + semantic_scales.json
    report = read_scale_report(output_dir / SCALES_FILENAME)
    accuracy = results["dsb_ce"][-1]["per_class_accuracy"]
    for row, acc in zip(report["classes"], accuracy):
        row["accuracy"] = acc
    report["metrics"] = {m: results["dsb_ce"][-1][m] for m in METRICS}
    write_json_atomic(output_dir / SCALES_FILENAME, report)
    write_report_plots(output_dir, report)
    write_json_atomic(
        output_dir / "demo_results.json", {"settings": vars(args), "methods": DEMO_METHODS, "results": results}
    )

    print(f"\nFinal DSB state (seed {args.seeds[-1]}, step {report['step']}, stage {report['stage']}):")
    print(f"{'class':>6}{'train n':>9}{'scale (bits)':>14}{'weight':>9}{'test acc':>10}")
    for row in report["classes"]:
        print(
            f"{row['name']:>6}{row['train_count']:>9}{row['scale']:>14.3f}{row['weight']:>9.3f}{100 * row['accuracy']:>9.1f}%"
        )
    print(f"\nWrote {output_dir}/ (model, {SCALES_FILENAME}, scale_count_accuracy.png, demo_results.json)")
    return 0
