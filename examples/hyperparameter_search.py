"""The selection's candidates as a ``Trainer.hyperparameter_search`` (optuna, grid sampler), for your own Trainer code.

    pip install "hf_semscale[text,search]"
    python examples/hyperparameter_search.py --output_dir runs/hp_search
    python examples/hyperparameter_search.py --output_dir runs/hp_search --candidates ce dsb_ce --starts 0.4 --gammas 1 4

The data are the demo's (bundled, offline): 30 long-tailed CLINC150 intents, embedded once with the offline
all-MiniLM-L6-v2; the model is an MLP head trained by ``SemScaleTrainer`` with ``model_init`` (a fresh model per
trial). Each trial is one (candidate, grid point) of ``hf-semscale select``; the objective is the validation balanced
accuracy. One seed per trial: ``hf-semscale select`` adds seeds and its tie rule.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/hp_search")
    parser.add_argument("--candidates", nargs="+", default=None, help="Methods (default: select's candidates).")
    parser.add_argument("--starts", type=float, nargs="+", default=[0.1, 0.4, 0.8])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.5, 1.0, 4.0])
    parser.add_argument("--powers", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0])
    parser.add_argument("--epochs", type=float, default=10.0)
    parser.add_argument("--max_train_per_class", type=int, default=None, help="Cap per class of train (quick runs).")
    parser.add_argument("--max_eval_per_class", type=int, default=None, help="Cap per class of validation / test.")
    args = parser.parse_args(argv)

    from datasets import Dataset

    from hf_semscale import SemScaleConfig, SemScaleTrainer
    from hf_semscale.data import DataArguments, load_splits
    from hf_semscale.demo_data.build import DEMO_DIR
    from hf_semscale.metrics import long_tail_metrics
    from hf_semscale.modeling import MLPClassifierConfig, MLPForClassification
    from hf_semscale.select.candidates import DEFAULT_CANDIDATES, GridSpec
    from hf_semscale.select.frozen import embed_splits
    from hf_semscale.select.pipeline import resolve_encoder
    from hf_semscale.select.search import trainer_search_space

    data = DataArguments(
        data_dir=str(DEMO_DIR),
        validation_split="validation",
        max_train_samples_per_class=args.max_train_per_class,
        max_eval_samples_per_class=args.max_eval_per_class,
    )
    splits = load_splits(data, "text")
    arrays = np.load(embed_splits(splits, resolve_encoder("minilm"), Path(args.output_dir) / "cache"))
    train = Dataset.from_dict({"pixel_values": arrays["train_x"], "labels": arrays["train_y"]}).with_format("torch")
    validation = Dataset.from_dict({"pixel_values": arrays["validation_x"], "labels": arrays["validation_y"]})
    names, counts = splits["class_names"], splits["train_class_counts"]

    def model_init(trial=None):
        return MLPForClassification(
            MLPClassifierConfig(
                input_dim=arrays["train_x"].shape[1],
                hidden_dims=(256,),
                dropout=0.1,
                num_labels=len(names),
                id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)},
            )
        )

    def compute_metrics(prediction):
        metrics = long_tail_metrics(prediction.predictions.argmax(-1), prediction.label_ids, counts)
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    config = SemScaleConfig(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=32,
        learning_rate=1e-3,
        weight_decay=1e-4,
        lr_scheduler_type="cosine",
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = SemScaleTrainer(
        model_init=model_init,
        args=config,
        train_dataset=train,
        eval_dataset=validation.with_format("torch"),
        class_counts=counts,
        compute_metrics=compute_metrics,
    )
    grid = GridSpec(tuple(args.starts), tuple(args.gammas), tuple(args.powers))
    space = trainer_search_space(config, args.candidates or DEFAULT_CANDIDATES, grid)
    best = trainer.hyperparameter_search(
        hp_space=space.hp_space,
        backend="optuna",
        n_trials=len(space),
        direction="maximize",
        sampler=space.sampler(),
        compute_objective=lambda metrics: metrics["eval_balanced_accuracy"],
    )
    overrides = {k: v for k, v in space.overrides(best.hyperparameters).items() if v is not None}
    print(f"best trial: {best.hyperparameters} (validation balanced accuracy {100 * best.objective:.2f} %)")
    print(f"train with: SemScaleConfig(..., **{overrides})")
    return {"best": best, "overrides": overrides, "trials": len(space)}


if __name__ == "__main__":
    main()
