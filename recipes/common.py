"""Shared parts of the recipes: YAML-then-CLI parsing, data preparation, metrics, optimizer, results.

Parsing follows trl's ``TrlParser``: the YAML file's values become the argparse defaults of the
``HfArgumentParser`` and the command line is parsed on top, so ``--key value`` overrides the file.
A ``method`` (see ``hf_semscale/select/methods.py``) sits between the two: YAML < method < command line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make ``recipes`` importable
    sys.path.insert(0, str(REPO_ROOT))

from hf_semscale.atomic import atomic_path  # noqa: E402
from hf_semscale.data import DataArguments  # noqa: E402
from hf_semscale.hub.report import write_json_atomic  # noqa: E402
from hf_semscale.select.methods import method_overrides  # noqa: E402

logger = logging.getLogger("recipes")

RESULTS_FILENAME = "results.json"
METRIC_KEYS = ("accuracy", "balanced_accuracy", "many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy")


# --------------------------------------------------------------------------- arguments


@dataclass
class RunArguments:
    """Method, optimisation schedule and outputs shared by the recipes."""

    method: str | None = field(
        default=None,
        metadata={"help": "A method of hf_semscale/select/methods.py (sets semscale_weighting / semscale_loss / ...)."},
    )
    optimizer: str = field(
        default="sgd",
        metadata={
            "help": "'sgd' (momentum, weight decay on all parameters, as Cao et al.) or 'trainer' (TrainingArguments.optim).",
            "choices": ["sgd", "trainer"],
        },
    )
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    lr_schedule: str = field(
        default="cosine",
        metadata={
            "help": "'cosine', 'step' (x lr_decay at each of lr_milestones epochs) or 'trainer' (TrainingArguments' scheduler).",
            "choices": ["cosine", "step", "trainer"],
        },
    )
    warmup_epochs: float = field(
        default=0.0, metadata={"help": "Linear learning-rate warm-up, in epochs (recipe schedules)."}
    )
    lr_milestones: list[float] = field(
        default_factory=lambda: [160.0, 180.0], metadata={"help": "Epochs of the step decays."}
    )
    lr_decay: float = field(default=0.01, metadata={"help": "Factor of each step decay."})
    eval_validation: bool = field(default=True, metadata={"help": "Evaluate on the validation split after training."})
    eval_test: bool = field(
        default=True, metadata={"help": "Evaluate on the test split after training (off for tuning runs)."}
    )
    eval_train: bool = field(
        default=False, metadata={"help": "Evaluate on the training split after training (how converged a run is)."}
    )
    num_threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads (CPU runs)."})
    save_final_model: bool = field(
        default=True, metadata={"help": "Save the trained model (and semantic_scales.json) to output_dir."}
    )
    save_logits: bool = field(
        default=False,
        metadata={
            "help": "Save each evaluated split's logits [N, C] float32 as logits_<split>.npy in output_dir (post-hoc "
            "logit adjustment of a finished run, e.g. hf-semscale select's ce_posthoc_la)."
        },
    )


def split_yaml_argv(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    argv = list(argv)
    if argv and argv[0].endswith((".yaml", ".yml")):
        return argv[0], argv[1:]
    return None, argv


def parse_yaml_then_cli(parser: HfArgumentParser, argv: Sequence[str] | None = None) -> tuple:  # noqa: F821
    """``[config.yaml] [--key value ...]`` -> the parser's dataclasses.

    The YAML's keys (and a method's overrides) become argparse defaults; the command line overrides them.
    Unknown YAML keys raise (as ``parse_yaml_file`` does).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    yaml_file, cli = split_yaml_argv(argv)
    config: dict[str, Any] = {}
    if yaml_file is not None:
        loaded = yaml.safe_load(Path(yaml_file).read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{yaml_file}: expected a mapping of argument names to values")
        config = dict(loaded or {})
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default=None)
    known, _ = pre.parse_known_args(cli)
    method = known.method or config.get("method")
    defaults = {**config, **(method_overrides(method) if method else {})}
    dests = {action.dest for action in parser._actions}
    unknown = sorted(set(defaults) - dests)
    if unknown:
        raise ValueError(
            f"{yaml_file}: unknown keys {unknown}; every key must be a field of {[d.__name__ for d in parser.dataclass_types]}"
        )
    for action in parser._actions:
        if action.dest in defaults:
            action.default = defaults[action.dest]
            action.required = False
    return parser.parse_args_into_dataclasses(args=cli)


# --------------------------------------------------------------------------- data


def text_cache_file(
    cache_dir: str | None,
    model_path: str,
    texts: Sequence[str],
    max_length: int,
    prefix: str = "",
    suffix: str = ".npy",
    extra: Sequence[Any] = (),
) -> Path | None:
    """Where a split's cached encoder outputs live, keyed by the model, the texts, ``max_length`` and ``extra``;
    None without a ``cache_dir``."""
    if not cache_dir:
        return None
    texts_hash = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
    model = str(Path(model_path).resolve()) if Path(model_path).exists() else model_path
    key = hashlib.sha256(json.dumps([model, texts_hash, max_length, *extra]).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{prefix}{key}{suffix}"


def save_cache_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path``
    (:func:`hf_semscale.atomic.atomic_path`): concurrent runs sharing a cache never read half a file."""
    with atomic_path(path) as tmp:
        write(tmp)


# --------------------------------------------------------------------------- metrics


def make_compute_metrics(train_class_counts: Sequence[int], store: dict[str, Any]) -> Callable:
    """``compute_metrics`` over the long-tail metrics; the full result (per-class too) goes to ``store["last"]``.

    Only float entries go back to the Trainer's logs (groups without classes are ``None`` and dropped there).
    """
    from hf_semscale.metrics import long_tail_metrics

    counts = list(train_class_counts)

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        references = eval_pred.label_ids
        metrics = long_tail_metrics(np.asarray(logits).argmax(-1), references, counts)
        store["last"], store["logits"] = metrics, np.asarray(logits, dtype=np.float32)
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    return compute_metrics


# --------------------------------------------------------------------------- optimisation


def steps_per_epoch(num_train: int, args: Any) -> int:
    world = max(int(getattr(args, "world_size", 1) or 1), 1)
    batches = math.ceil(num_train / (args.per_device_train_batch_size * world))
    return max(batches // max(args.gradient_accumulation_steps, 1), 1)


def lr_lambda_for(run: RunArguments, spe: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step ``step``: linear warm-up, then cosine or step decay."""
    warm = int(round(run.warmup_epochs * spe))
    milestones = sorted(int(round(m * spe)) for m in run.lr_milestones)

    def fn(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if run.lr_schedule == "step":
            return run.lr_decay ** sum(step >= m for m in milestones)
        progress = (step - warm) / max(total_steps - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return fn


def build_optimizers(model: Any, args: Any, run: RunArguments, num_train: int) -> tuple:
    """``(optimizer, scheduler)`` for ``Trainer(optimizers=...)``; ``(None, None)`` leaves both to the Trainer."""
    import torch

    if run.optimizer == "trainer" and run.lr_schedule == "trainer":
        return None, None
    if run.optimizer == "trainer" or run.lr_schedule == "trainer":
        raise ValueError(
            "optimizer and lr_schedule must both be 'trainer' or both be recipe-built ('sgd' with 'cosine'/'step')."
        )
    spe = steps_per_epoch(num_train, args)
    total = args.max_steps if args.max_steps and args.max_steps > 0 else int(math.ceil(args.num_train_epochs * spe))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.learning_rate, momentum=run.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda_for(run, spe, total))
    return optimizer, scheduler


# --------------------------------------------------------------------------- running


def setup_logging(args: Any) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if getattr(args, "should_log", True):
        import transformers

        transformers.utils.logging.set_verbosity_warning()


def apply_threads(run: RunArguments) -> None:
    if run.num_threads:
        import torch

        torch.set_num_threads(run.num_threads)


def logits_file(output_dir: str | Path, split: str) -> Path:
    """Where ``save_logits`` puts ``split``'s logits [N, C] float32."""
    return Path(output_dir) / f"logits_{split}.npy"


def evaluate_split(
    trainer: Any, dataset: Any, prefix: str, store: dict[str, Any], logits_path: Path | None = None
) -> dict[str, Any]:
    """``trainer.evaluate`` on ``dataset``; returns the full long-tail metrics (per-class included) and writes the
    logits [N, C] to ``logits_path`` (atomically) when given."""
    store.pop("last", None)
    logged = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
    if logits_path is not None:
        save_cache_atomic(logits_path, lambda tmp: np.save(tmp, store["logits"]))
    full = dict(store.get("last", {}))
    full["loss"] = logged.get(f"{prefix}_loss")
    full["num_samples"] = len(dataset)
    return full


def classifier_input_dim(model: Any) -> int | None:
    """The size of the classifier's input (the features DSB would measure), None where it has no plain Linear head."""
    from hf_semscale.dsb.capture import find_classification_head

    try:
        return int(find_classification_head(model)[1].in_features)
    except ValueError:
        return None


def write_results(
    trainer: Any,
    args: Any,
    data: DataArguments,
    run: RunArguments,
    splits: dict[str, Any],
    evaluations: dict[str, Any],
    wall_start: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``results.json`` (the record the benchmark reads) to ``output_dir``; returns it."""
    train_runtime = next(
        (h["train_runtime"] for h in reversed(trainer.state.log_history) if "train_runtime" in h), None
    )
    record = {
        "method": run.method,
        "dataset": data.source,
        "imbalance_factor": data.imbalance_factor,
        "seed": args.seed,
        "subset_seed": data.subset_seed,
        "num_train": len(splits["train"]),
        "train_class_counts": splits["train_class_counts"],
        "class_names": splits["class_names"],
        "dropped_classes": splits.get("dropped_classes", []),
        "semscale": args.semscale_settings(),
        "epochs": args.num_train_epochs,
        "max_steps": trainer.state.max_steps,
        "train_runtime_s": train_runtime,
        "wall_time_s": time.time() - wall_start,
        "final_stage": trainer.stage,
        "feature_dim": trainer.pool.feature_dim if trainer.pool is not None else classifier_input_dim(trainer.model),
        "final_class_weights": trainer.class_weights.tolist(),
        "final_semantic_scales": trainer.semantic_scales.tolist(),
        **evaluations,
        **(extra or {}),
    }
    if args.should_save:
        write_json_atomic(Path(args.output_dir) / RESULTS_FILENAME, record)
    return record


def train_evaluate_and_record(
    trainer: Any,
    args: Any,
    data: DataArguments,
    run: RunArguments,
    splits: dict[str, Any],
    store: dict[str, Any],
    wall_start: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Train, save the model (``run.save_final_model``), evaluate validation / test as ``run`` asks and write
    ``results.json``; returns the record. ``store`` is the one given to ``make_compute_metrics``."""
    trainer.train()
    if run.save_final_model:
        trainer.save_model()
    evaluations = {}

    def saved_logits(split: str) -> Path | None:
        return logits_file(args.output_dir, split) if run.save_logits and args.should_save else None

    if run.eval_validation and splits["validation"] is not None:
        evaluations["validation"] = evaluate_split(
            trainer, splits["validation"], "eval", store, saved_logits("validation")
        )
    if run.eval_test:
        evaluations["test"] = evaluate_split(trainer, splits["test"], "test", store, saved_logits("test"))
    if run.eval_train:
        # without augmentation where the recipe provides such a view ("train_eval")
        evaluations["train"] = evaluate_split(trainer, splits.get("train_eval", splits["train"]), "train", store)
    return write_results(trainer, args, data, run, splits, evaluations, wall_start, extra=extra)


def summary_line(record: dict[str, Any]) -> str:
    parts = [f"method={record.get('method')}", f"seed={record.get('seed')}"]
    for split in ("validation", "test"):
        metrics = record.get(split)
        if metrics:
            parts.append(f"{split}: acc={metrics['accuracy']:.4f} bal={metrics['balanced_accuracy']:.4f}")
    parts.append(f"wall={record['wall_time_s']:.0f}s")
    return " | ".join(parts)
