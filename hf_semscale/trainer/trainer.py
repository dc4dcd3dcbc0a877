"""``SemScaleTrainer``: dynamic semantic-scale-balanced (DSB) learning inside ``transformers.Trainer``.

A thin adapter around :class:`~hf_semscale.dsb.balancer.SemanticScaleBalancer` (which holds the method: stages,
pool, weights): the head's input is captured by a hook (:class:`~hf_semscale.dsb.capture.HeadInputCapture`),
:class:`SemScaleCallback` advances the balancer at each optimizer step and merges its summaries into the
logs, ``compute_loss`` feeds it the batch and takes its weighted loss, and the checkpoint hooks save and
restore its state (``checkpoints.py``) beside the Trainer's own files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length

from ..core.imbalance import imbalance_summary
from ..core.losses import IGNORE_INDEX, check_class_labels
from ..dsb.balancer import SemanticScaleBalancer, UpdateRecord, classes_with_volume, json_weights
from ..dsb.capture import HeadInputCapture
from ..dsb.comm import MAX_GATHERED_LABEL, apply_process_group_timeout, assert_same_on_all_processes
from ..dsb.pool import PoolFileError
from ..hub.report import build_scale_report, write_report_and_plots
from .checkpoints import (
    HISTORY_FILENAME,
    STATE_FILENAME,
    append_history,
    checkpoint_problem,
    latest_complete_checkpoint,
    read_state_file,
    remove_incomplete_checkpoints_after,
    save_state_file,
    step_of,
    truncate_history,
)
from .config import WEIGHTING_MODES, SemScaleConfig

__all__ = [
    "SemScaleTrainer",
    "SemScaleCallback",
    "STATE_FILENAME",
    "HISTORY_FILENAME",
    "latest_complete_checkpoint",
    "checkpoint_problem",
]

logger = logging.getLogger(__name__)


def _label_column_counts(dataset: Any, num_labels: int) -> list[int]:
    """Per-class counts of a map-style ``datasets.Dataset``'s label column (no transforms run).

    Raises ``ValueError`` naming ``class_counts=`` for a training set whose labels cannot be counted without
    reading it (streaming / ``IterableDataset``, a torch dataset without columns, no label column)."""
    fix = "Fix: pass class_counts=[n_0, ..., n_{C-1}] (training samples per class) to SemScaleTrainer."
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            f"The training set is a {type(dataset).__name__} (streamed: its length and labels are unknown until it is "
            f"read), so SemScaleTrainer cannot count the samples per class. {fix}"
        )
    names = getattr(dataset, "column_names", None)
    if not names:
        raise ValueError(f"The training set ({type(dataset).__name__}) has no columns to count labels from. {fix}")
    column = next((c for c in ("labels", "label") if c in names), None)
    if column is None:
        raise ValueError(f"The training set has no 'labels' or 'label' column (columns: {names}). {fix}")
    values = torch.as_tensor(dataset.with_format("numpy", columns=[column])[:][column])
    if values.ndim != 1 or values.is_floating_point():
        raise ValueError(
            f"The training set's '{column}' column is not a 1-D integer class id (shape {tuple(values.shape)}, "
            f"{values.dtype}). SemScaleTrainer handles single-label classification only."
        )
    try:
        check_class_labels(values, num_labels)
    except ValueError as err:
        raise ValueError(f"The training set's '{column}' column: {err}") from None
    values = values[values != IGNORE_INDEX]
    return torch.bincount(values.to(torch.long), minlength=num_labels).tolist()


class SemScaleCallback(TrainerCallback):
    """Advances the trainer's balancer at the start of every optimizer step (stage changes, weight updates);
    ``SemScaleTrainer`` adds it itself."""

    def __init__(self, trainer: SemScaleTrainer):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer._begin_step(state.global_step)


class SemScaleTrainer(Trainer):
    """A drop-in ``transformers.Trainer`` for single-label classification with DSB re-weighting.

    Args (beyond ``Trainer``'s):
        class_counts: ``[C]`` training samples per class; read from the training set's
            ``labels``/``label`` column when omitted (required for streamed data).
        class_names: ``[C]`` names for reports; default ``model.config.id2label``.
        feature_module: the module whose input is the feature (name or module); overrides
            ``args.semscale_feature_module``; default: the classification head, found automatically.
        feature_pool_fn: ``(head_input, batch_inputs) -> [B, d]`` for heads whose input needs custom pooling.

    Attributes:
        balancer: the :class:`~hf_semscale.dsb.balancer.SemanticScaleBalancer` doing the method's work.
        class_weights, semantic_scales, stage, pool: the balancer's (``[C]`` float64 weights, NaN for classes
            without training samples; ``[C]`` float64 bits; ``"warmup"``/``"fill"``/``"reweight"``; the feature
            pool or None).
    """

    # compute_loss normalises by num_items_in_batch, counted over the accumulated micro-batches.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: nn.Module | None = None,
        args: SemScaleConfig | None = None,
        *trainer_args: Any,
        class_counts: list[int] | Tensor | None = None,
        class_names: list[str] | None = None,
        feature_module: str | nn.Module | None = None,
        feature_pool_fn: Callable[[Tensor, Mapping[str, Any]], Tensor] | None = None,
        **trainer_kwargs: Any,
    ):
        if args is None:
            args = SemScaleConfig(output_dir="tmp_trainer")
        if not isinstance(args, SemScaleConfig):
            raise TypeError(
                f"SemScaleTrainer needs args of type SemScaleConfig, got {type(args).__name__}. "
                "Fix: build SemScaleConfig(...) with the same arguments (it subclasses TrainingArguments)."
            )
        if trainer_kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "SemScaleTrainer computes its own weighted loss; compute_loss_func is not supported. "
                "Fix: choose the base loss with SemScaleConfig.semscale_loss."
            )
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        # Makes the Trainer count the labelled samples of all accumulated micro-batches (and, with
        # average_tokens_across_devices, of all processes) and pass them as num_items_in_batch.
        self.model_accepts_loss_kwargs = True
        self.num_labels = _single_label_num_labels(self.model)
        counts = class_counts
        if counts is None and self.train_dataset is not None:
            counts = _label_column_counts(self.train_dataset, self.num_labels)
        counts = torch.as_tensor(counts if counts is not None else [1] * self.num_labels, dtype=torch.long)
        if counts.shape != (self.num_labels,):
            raise ValueError(f"class_counts has {counts.numel()} entries but num_labels={self.num_labels}")
        absent = [c for c, n in enumerate(counts.tolist()) if n == 0]
        if absent:
            logger.warning(
                "Classes %s have no training samples: they get no pool rows, no measured scale and no weight (NaN in "
                "class_weights, null in the report and history, left out of semscale/weight_*); the report lists "
                "them in classes_without_volume.",
                absent,
            )
        self.class_counts = counts
        self.class_names = (
            list(class_names) if class_names is not None else _class_names_from_config(self.model, self.num_labels)
        )
        self.balancer = SemanticScaleBalancer(
            counts,
            self.args.balancer_settings(),
            comm=self.accelerator,
            class_names=self.class_names,
            device=self.args.device,
            knob_prefix="semscale_",
        )
        self._feature_module = feature_module if feature_module is not None else self.args.semscale_feature_module
        self._feature_pool_fn = feature_pool_fn
        self._capture: HeadInputCapture | None = None
        self._captured_model: nn.Module | None = None
        self._pending_logs: dict[str, float] = {}
        self._resuming = False
        self.add_callback(SemScaleCallback(self))
        # Fail at construction, not at the first step, when the head cannot be found or the pool
        # would not fit (the hook is re-installed if model_init later replaces the model).
        self._install_capture()

    # ------------------------------------------------------------------ the balancer's state

    @property
    def class_weights(self) -> Tensor:
        return self.balancer.class_weights

    @property
    def semantic_scales(self) -> Tensor:
        return self.balancer.semantic_scales

    @property
    def stage(self) -> str:
        return self.balancer.stage

    @property
    def pool(self):
        return self.balancer.pool

    @property
    def uses_pool(self) -> bool:
        return self.balancer.uses_pool

    # ------------------------------------------------------------------ setup

    def _install_capture(self) -> None:
        if not self.uses_pool or (self._capture is not None and self._captured_model is self.model):
            return
        if self._capture is not None:
            self._capture.remove()
        self._capture = HeadInputCapture(
            self.model, num_labels=self.num_labels, module=self._feature_module, pool_fn=self._feature_pool_fn
        )
        self._captured_model = self.model
        feature_dim = self._head_feature_dim()
        if feature_dim is not None:
            self.balancer.check_pool_budget(feature_dim)

    def _head_feature_dim(self) -> int | None:
        """``in_features`` of the captured module (nn.Linear, NormedLinear, ...), None if it has none."""
        in_features = getattr(self.model.get_submodule(self._capture.head_name), "in_features", None)
        return in_features if isinstance(in_features, int) else None

    def set_initial_training_values(self, args: Any, dataloader: Any) -> tuple:
        """``Trainer``'s step arithmetic; starts the balancer with this run's optimizer steps (per epoch: None for
        data of unknown length, where the fill stage is one pass over ``sum(class_counts)`` samples)."""
        values = super().set_initial_training_values(args, dataloader)
        max_steps, steps_per_epoch, global_batch_size = (
            values[-1],
            values[1] if has_length(dataloader) else None,
            values[4],
        )
        self.balancer.start(max_steps, steps_per_epoch, global_batch_size, reset=not self._resuming)
        return values

    # ------------------------------------------------------------------ steps and loss

    def _begin_step(self, step: int) -> None:
        """The balancer's decisions for optimizer step ``step`` (idempotent); its summaries go to the next log
        and each weight re-measurement to ``semscale_history.jsonl``."""
        if not self.balancer.started:  # compute_loss called in training mode outside train()
            self.balancer.start(
                max(self.state.max_steps, 1), global_batch_size=self.get_total_train_batch_size(self.args)
            )
        record: UpdateRecord | None = self.balancer.begin_step(step)
        if record is None:
            return
        self._pending_logs.update(record.logs)
        if record.measured and self.args.should_save:
            append_history(Path(self.args.output_dir) / HISTORY_FILENAME, record.history_line())

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ):
        """Weighted base loss ``sum_i w_{y_i} l_i / num_items_in_batch``; captures features in training."""
        if "labels" not in inputs:
            raise ValueError("SemScaleTrainer needs a 'labels' entry in every batch (integer class ids).")
        labels = inputs["labels"]
        check_class_labels(labels, self.num_labels)
        if labels.dtype != torch.long:
            labels = labels.long()  # int32 / uint8 ids from custom collators: the losses index with int64
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        training = model.training
        if training:
            self._begin_step(self.state.global_step)  # done by SemScaleCallback unless called outside its step
            self._install_capture()
        capturing = training and self.balancer.capturing
        if capturing:
            self._capture.arm()
        outputs = model(**model_inputs)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        if capturing:
            features = self._capture.take(model_inputs)
            if features is None:
                raise RuntimeError(
                    f"The feature module {self._capture.head_name!r} was not called in this forward pass. "
                    "Fix: set SemScaleConfig.semscale_feature_module to the module whose input is the feature."
                )
            self.balancer.observe(features, labels)
        loss = self.balancer.loss(logits, labels, num_items_in_batch, weighted=training)
        if num_items_in_batch is not None:
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        elif training:
            # set by the training loop; absent when compute_loss is called directly before train()
            loss = loss / getattr(self, "current_gradient_accumulation_steps", 1)
        if return_outputs and not isinstance(outputs, Mapping):
            # prediction_step drops element 0 of a tuple output as the loss; the model ran without labels.
            outputs = (loss, *outputs)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Merge the stage / scale / weight summaries gathered since the last log into training logs."""
        if self._pending_logs and "loss" in logs:
            logs = {**logs, **self._pending_logs}
            self._pending_logs = {}
        super().log(logs, start_time)

    # ------------------------------------------------------------------ persistence

    def _save_semscale_state(self, checkpoint_dir: str) -> None:
        """Every process calls this (a class-sharded pool is gathered first); the main process writes the file."""
        tensors = self.balancer.state_dict()
        if not self.args.should_save:
            return
        pool = self.balancer.pool
        save_state_file(
            tensors,
            checkpoint_dir,
            self.num_labels,
            pool.feature_dim if pool is not None else 0,
            self.state.global_step,
        )

    def _load_semscale_state(self, checkpoint_dir: str) -> None:
        tensors, metadata = read_state_file(checkpoint_dir, self.num_labels)
        feature_dim = int(metadata.get("feature_dim", 0))
        if feature_dim and self.uses_pool:
            self._install_capture()
            head_dim = self._head_feature_dim()
            if head_dim is not None and head_dim != feature_dim:
                raise PoolFileError(
                    f"{Path(checkpoint_dir) / STATE_FILENAME}: pool features have size {feature_dim} but this model's "
                    f"head takes {head_dim}. Fix: resume with the same model architecture."
                )
        self.balancer.load_state_dict(tensors, source=str(Path(checkpoint_dir) / STATE_FILENAME))
        if self.args.should_save:
            truncate_history(Path(self.args.output_dir) / HISTORY_FILENAME, int(metadata.get("global_step", 0)))

    def scale_report(self) -> dict[str, Any]:
        """The current ``semantic_scales.json`` content.

        ``summary`` covers the classes with a measured volume (as the logged ``semscale/scale_*``); classes
        without training samples report ``weight: null`` (NaN in ``class_weights``: they have no weight)."""
        b = self.balancer
        pool_counts = b.pool.filled if b.pool is not None else torch.zeros(self.num_labels, dtype=torch.long)
        summary = imbalance_summary(b.semantic_scales, pool_counts) if b.num_updates else {}
        return build_scale_report(
            source="trainer",
            scales=b.semantic_scales.tolist(),
            counts=pool_counts.tolist(),
            class_names=self.class_names,
            weights=json_weights(b.class_weights),
            feature_dim=b.pool.feature_dim if b.pool is not None else None,
            step=self.state.global_step,
            stage=b.stage,
            settings=self.args.semscale_settings(),
            summary=summary,
            extra_per_class={
                "train_count": self.class_counts.tolist(),
                "has_volume": classes_with_volume(b.semantic_scales, pool_counts).tolist(),
            },
            num_updates=b.num_updates,
            training=_training_hyperparameters(self.args, self.state.max_steps),
        )

    def _write_scale_report(self, output_dir: str | None = None, plots: bool = True) -> None:
        """``semantic_scales.json`` and (``plots``) its PNG plots in ``output_dir`` (default ``args.output_dir``)."""
        if self.args.should_save:
            write_report_and_plots(output_dir or self.args.output_dir, self.scale_report(), plots=plots)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        self._write_scale_report(output_dir, plots=not _internal_call)  # internal: checkpoints, push_to_hub

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        checkpoint_dir = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self._save_semscale_state(str(checkpoint_dir))
        super()._save_checkpoint(model, trial)  # writes trainer_state.json last: the completeness mark
        self._write_scale_report()

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        **card_kwargs: Any,
    ) -> None:
        """Write ``output_dir/README.md``: the hf_semscale card (:func:`hf_semscale.hub.build_model_card`) in place of
        the Trainer's draft. ``Trainer.push_to_hub`` calls it, so ``trainer.push_to_hub(dataset_name=...,
        task_type=...)`` publishes it with the model and ``semantic_scales.json``.

        The Trainer's arguments map onto the card's: ``finetuned_from`` -> ``base_model`` (a Hub id),
        ``dataset`` -> ``dataset_name``, ``tasks`` -> ``task_type``; ``dataset_tags`` and ``dataset_args`` are not
        used. ``card_kwargs`` go to ``build_model_card``; ``metrics`` default to the last evaluation in
        ``state.log_history``, else to those saved in ``output_dir``.
        """
        if not self.is_world_process_zero():
            return
        from ..hub.publish import CARD_FILENAME, build_model_card, last_evaluation

        first = lambda value: value[0] if isinstance(value, list) and value else value
        card_kwargs.setdefault("base_model", finetuned_from)
        card_kwargs.setdefault("dataset_name", first(dataset))
        card_kwargs.setdefault("task_type", first(tasks))
        card_kwargs.setdefault("metrics", last_evaluation(self.state.log_history))
        self._write_scale_report()
        card = build_model_card(
            self.args.output_dir,
            repo_id=self.hub_model_id or self.args.hub_model_id or model_name,
            language=language,
            license=license,
            tags=tags,
            **card_kwargs,
        )
        card.save(str(Path(self.args.output_dir) / CARD_FILENAME))

    def train(
        self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, ignore_keys_for_eval=None, **kwargs
    ):
        """``Trainer.train``; ``resume_from_checkpoint=True`` picks the latest COMPLETE checkpoint and the
        pool, weights and stage are restored from it. A fresh run starts the balancer from warm-up."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint found in output_dir {self.args.output_dir!r} to resume from.")
        elif resume_from_checkpoint is False:
            resume_from_checkpoint = None
        _check_processes_agree(self, resume_from_checkpoint)
        start_step: int | None = 0
        if resume_from_checkpoint is not None:
            problem = checkpoint_problem(resume_from_checkpoint)
            if problem is not None:
                raise ValueError(f"Cannot resume from {resume_from_checkpoint}: {problem}")
            self._load_semscale_state(str(resume_from_checkpoint))
            start_step = step_of(resume_from_checkpoint)
        else:
            self.balancer.reset()  # a fresh run (another train(), a hyper-parameter trial) starts from warm-up
            if self.args.should_save:  # and drops the history lines of an earlier (e.g. killed) run
                truncate_history(Path(self.args.output_dir) / HISTORY_FILENAME, 0)
        if start_step is not None and self.args.should_save:
            remove_incomplete_checkpoints_after(self.args.output_dir, start_step)
        self._pending_logs = {}
        self._resuming = resume_from_checkpoint is not None
        try:
            output = super().train(
                resume_from_checkpoint=resume_from_checkpoint,
                trial=trial,
                ignore_keys_for_eval=ignore_keys_for_eval,
                **kwargs,
            )
        finally:
            self._resuming = False
        self._write_scale_report()  # also without any save (save_strategy="no")
        return output


def _single_label_num_labels(model: nn.Module) -> int:
    """``model.config.num_labels`` of a single-label classifier; a clear error for any other task."""
    config = getattr(model, "config", None)
    num_labels = getattr(config, "num_labels", None)
    problem_type = getattr(config, "problem_type", None)
    if problem_type not in (None, "single_label_classification"):
        raise ValueError(
            f"model.config.problem_type={problem_type!r}: SemScaleTrainer handles single-label classification "
            "only (semantic scales are per class). Fix: use transformers.Trainer for multi-label or regression."
        )
    if not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(
            f"model.config.num_labels={num_labels!r}: SemScaleTrainer needs a classifier with >= 2 labels "
            "(num_labels=1 is regression). Fix: load the model with num_labels=<number of classes>."
        )
    return num_labels


def _class_names_from_config(model: nn.Module, num_labels: int) -> list[str]:
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    return [str(id2label.get(c, id2label.get(str(c), c))) for c in range(num_labels)]


def _training_hyperparameters(args: Any, max_steps: int) -> dict[str, Any]:
    """The ``TrainingArguments`` that shape a run, for the report and the model card."""
    a = args
    names = (
        "learning_rate",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "num_train_epochs",
        "weight_decay",
        "optim",
        "lr_scheduler_type",
        "warmup_steps",
        "max_grad_norm",
        "label_smoothing_factor",
        "seed",
    )
    values = {name: getattr(a, name) for name in names}
    values["optim"] = str(getattr(a.optim, "value", a.optim))
    values["lr_scheduler_type"] = str(getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type))
    values["total_train_batch_size"] = a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size
    values["max_steps"] = max_steps or a.max_steps
    return values


def _check_processes_agree(trainer: SemScaleTrainer, resume_from_checkpoint: str | None) -> None:
    """At train start, on every process: the same model / label set / DSB settings, or one clear error
    everywhere (instead of a hang or silently different weights later). Also gives gloo process
    groups ``ddp_timeout`` (transformers skips it with ``use_cpu``) and refuses DSB under DataParallel."""
    a = trainer.args
    if trainer.uses_pool and a.n_gpu > 1:
        raise ValueError(
            f"SemScaleTrainer with semscale_weighting={a.semscale_weighting!r} runs one process per device, but this process drives "
            f"{a.n_gpu} GPUs through torch.nn.DataParallel (the script was started with plain `python` on a "
            "multi-GPU machine), whose per-GPU replicas the feature capture cannot follow. Fix: launch with "
            "`accelerate launch` or `torchrun --nproc_per_node <gpus>`, or set CUDA_VISIBLE_DEVICES to one GPU."
        )
    if trainer.accelerator.num_processes == 1:
        return
    apply_process_group_timeout(trainer.accelerator, a.ddp_timeout)
    feature_dim = -1
    if trainer.uses_pool:
        trainer._install_capture()
        feature_dim = trainer._head_feature_dim() or -1
    digest = hashlib.sha256(json.dumps(trainer.class_counts.tolist()).encode()).digest()
    resume_step = -1
    if resume_from_checkpoint is not None:
        resume_step = step_of(resume_from_checkpoint)
        resume_step = -2 if resume_step is None else resume_step
    assert_same_on_all_processes(
        trainer.accelerator,
        "SemScaleTrainer",
        num_labels=trainer.num_labels,
        feature_dim=feature_dim,
        train_samples=int(trainer.class_counts.sum()),
        class_counts_hash=int.from_bytes(digest[:7], "little"),
        weighting=WEIGHTING_MODES.index(a.semscale_weighting),
        warmup_steps=a.semscale_warmup_steps,
        warmup_ratio_ppm=round(a.semscale_warmup_ratio * 1e6),
        reweight_start_ppm=-1 if a.semscale_reweight_start is None else round(a.semscale_reweight_start * 1e6),
        fill_max_steps=a.semscale_fill_max_steps,
        update_interval=a.semscale_update_interval,
        pool_capacity=a.semscale_pool_capacity,
        shard_pool=int(a.semscale_shard_pool),
        resume_checkpoint_step=resume_step,
    )
    if trainer.num_labels >= MAX_GATHERED_LABEL:
        raise ValueError(f"SemScaleTrainer gathers labels as float32: num_labels must be below {MAX_GATHERED_LABEL}.")
