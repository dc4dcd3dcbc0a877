"""``SemScaleBalancing``: DSB re-weighting for a plain ``transformers.Trainer``, and the per-step work that
``SemScaleTrainer`` shares with it (one callback, one loss function).

    args = SemScaleConfig(output_dir="out", semscale_weighting="dsb", ...)
    balancing = SemScaleBalancing(model, args, train_dataset=train)
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      compute_loss_func=balancing.loss, callbacks=[balancing.callback])

:class:`SemScaleCallback` builds the :class:`~hf_semscale.dsb.balancer.SemanticScaleBalancer` from the Trainer's
arguments when training starts (so hyper-parameter trial values take effect) and advances it at every optimizer
step; a forward pre-hook on the model arms the head-input capture for each training forward pass, and
:meth:`SemScaleBalancing.loss` (the Trainer's ``compute_loss_func``) feeds the features to the pool and returns
``sum_i w_{y_i} l_i / num_items_in_batch``. The Trainer counts ``num_items_in_batch`` over the accumulated
micro-batches (and processes) whenever ``compute_loss_func`` is set, so gradient accumulation is exact.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length

from ..core.imbalance import imbalance_summary
from ..core.losses import IGNORE_INDEX, check_class_labels
from ..dsb.balancer import SemanticScaleBalancer, classes_with_volume, json_weights
from ..dsb.capture import HeadInputCapture
from ..dsb.comm import TorchDistributedComm
from ..dsb.pool import PoolFileError
from ..hub.report import build_scale_report, write_report_and_plots
from .checkpoints import (
    HISTORY_FILENAME,
    STATE_FILENAME,
    append_history,
    read_state_file,
    save_state_file,
    truncate_history,
)
from .config import SemScaleConfig

__all__ = ["SemScaleBalancing", "SemScaleCallback"]

logger = logging.getLogger(__name__)

LABEL_COLUMNS = ("labels", "label")
_TOKEN_TASK = (
    "SemScaleTrainer / SemScaleBalancing support per-sample single-label classification (one class id per sample, "
    "e.g. *ForSequenceClassification, *ForImageClassification); token classification (one label per token) is "
    "not supported: semantic scales are measured on one feature per sample."
)


def single_label_num_labels(model: nn.Module) -> int:
    """``model.config.num_labels`` of a per-sample single-label classifier; a clear error for any other task."""
    if type(model).__name__.endswith("ForTokenClassification"):
        raise ValueError(f"{type(model).__name__} is a token classifier. {_TOKEN_TASK}")
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


def _label_column(dataset: Any) -> str:
    """The ``labels``/``label`` column of a map-style dataset; ``ValueError`` naming ``class_counts=`` otherwise."""
    fix = "Fix: pass class_counts=[n_0, ..., n_{C-1}] (training samples per class)."
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            f"The training set is a {type(dataset).__name__} (streamed: its length and labels are unknown until it is "
            f"read), so the samples per class cannot be counted. {fix}"
        )
    if len(dataset) == 0:
        raise ValueError("The training set is empty (0 rows). Fix: pass a training set with labelled samples.")
    names = getattr(dataset, "column_names", None)
    if not names:
        raise ValueError(f"The training set ({type(dataset).__name__}) has no columns to count labels from. {fix}")
    column = next((c for c in LABEL_COLUMNS if c in names), None)
    if column is None:
        raise ValueError(f"The training set has no 'labels' or 'label' column (columns: {names}). {fix}")
    return column


def label_column_counts(dataset: Any, num_labels: int) -> list[int]:
    """Per-class counts ``[C]`` of a map-style ``datasets.Dataset``'s label column (no transforms run).

    Raises ``ValueError`` naming the fix for an empty or streamed training set, string labels, per-token labels and
    labels outside ``[0, num_labels)``."""
    column = _label_column(dataset)
    values = np.asarray(dataset.with_format("numpy", columns=[column])[:][column])
    if values.dtype.kind in "US" or (values.dtype.kind == "O" and isinstance(values.flat[0], str)):
        raise ValueError(
            f"The training set's '{column}' column holds strings (e.g. {str(values.flat[0])!r}); labels must be "
            f"integer class ids 0..num_labels-1. Fix: dataset = dataset.class_encode_column({column!r}) (a ClassLabel "
            f"column; its names then reach the report), or dataset.map(lambda row: {{{column!r}: "
            f"label2id[row[{column!r}]]}}) with the model's config.label2id."
        )
    if values.dtype.kind == "O" or (values.ndim > 1 and values.dtype.kind != "f"):  # ragged or per-token ids
        raise ValueError(
            f"The training set's '{column}' column holds a sequence of labels per sample (token classification or "
            f"multi-label). {_TOKEN_TASK}"
        )
    tensor = torch.as_tensor(values)
    if tensor.ndim != 1 or tensor.is_floating_point():
        raise ValueError(
            f"The training set's '{column}' column is not a 1-D integer class id (shape {tuple(tensor.shape)}, "
            f"{tensor.dtype}). SemScaleTrainer handles single-label classification only."
        )
    try:
        check_class_labels(tensor, num_labels)
    except ValueError as err:
        raise ValueError(f"The training set's '{column}' column: {err}") from None
    tensor = tensor[tensor != IGNORE_INDEX]
    return torch.bincount(tensor.to(torch.long), minlength=num_labels).tolist()


def default_class_names(model: nn.Module, dataset: Any, num_labels: int) -> list[str]:
    """``[C]`` names: the training set's ``ClassLabel`` names, else ``model.config.id2label``, else the ids.

    ``ClassLabel`` names win over a config's generic ``LABEL_i``; a ``ClassLabel`` of another size is an error."""
    features = getattr(dataset, "features", None) or {}
    column = next((c for c in LABEL_COLUMNS if c in features), None)
    names = getattr(features[column], "names", None) if column is not None else None
    if names:
        if len(names) != num_labels:
            raise ValueError(
                f"The training set's '{column}' ClassLabel has {len(names)} names but the model has num_labels="
                f"{num_labels}. Fix: load the model with num_labels={len(names)}, or pass class_names=."
            )
        return list(names)
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


class SemScaleBalancing:
    """DSB re-weighting of a classifier trained by a ``transformers.Trainer``: :attr:`callback` + :meth:`loss`.

    Args:
        model: the classifier (``config.num_labels`` >= 2, one label per sample).
        args: the run's :class:`~hf_semscale.trainer.config.SemScaleConfig`; pass the same object to the Trainer
            (the balancer is rebuilt from the Trainer's arguments when training starts).
        train_dataset: a map-style dataset whose ``labels``/``label`` column gives the class counts (and the
            names of a ``ClassLabel``), unless ``class_counts`` is given.
        class_counts: ``[C]`` training samples per class (required for streamed data).
        class_names: ``[C]`` names for reports; default the ``ClassLabel`` names, else ``model.config.id2label``.
        feature_module: the module whose input is the feature (name or module); default
            ``args.semscale_feature_module``, else the classification head, found automatically.
        feature_pool_fn: ``(head_input, batch_inputs) -> [B, d]`` for heads whose input needs custom pooling.
        comm: an ``accelerate.Accelerator`` / :class:`~hf_semscale.dsb.comm.TorchDistributedComm`, or a
            zero-argument callable returning one (read when training starts); None: the initialised
            ``torch.distributed`` group when there are several processes.

    Attributes:
        balancer: the :class:`~hf_semscale.dsb.balancer.SemanticScaleBalancer` of the current run.
        callback: the :class:`SemScaleCallback` to give the Trainer.
        capture: the :class:`~hf_semscale.dsb.capture.HeadInputCapture` on the model (None for static modes).
        class_counts: ``[C]`` long; class_names: ``[C]`` str.
    """

    def __init__(
        self,
        model: nn.Module,
        args: SemScaleConfig,
        *,
        train_dataset: Any = None,
        class_counts: list[int] | Tensor | None = None,
        class_names: list[str] | None = None,
        feature_module: str | nn.Module | None = None,
        feature_pool_fn: Callable[[Tensor, Mapping[str, Any]], Tensor] | None = None,
        comm: Any = None,
    ):
        if not isinstance(args, SemScaleConfig):
            raise TypeError(
                f"DSB re-weighting needs args of type SemScaleConfig, got {type(args).__name__}. "
                "Fix: build SemScaleConfig(...) with the same arguments (it subclasses TrainingArguments)."
            )
        self.num_labels = single_label_num_labels(model)
        counts = class_counts
        if counts is None and train_dataset is not None:
            counts = label_column_counts(train_dataset, self.num_labels)
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
            list(class_names) if class_names is not None else default_class_names(model, train_dataset, self.num_labels)
        )
        self.feature_module = feature_module if feature_module is not None else args.semscale_feature_module
        self.feature_pool_fn = feature_pool_fn
        self.comm = comm
        self.args = args
        self.balancer = self._new_balancer(args)
        self.capture: HeadInputCapture | None = None
        self.model: nn.Module | None = None
        self._input_hook: Any = None
        self._inputs: Mapping[str, Any] | None = None
        self._losses_in_step = 0
        self.resume_from: str | None = None  # the checkpoint resume() restored the balancer from
        self.pending_logs: dict[str, float] = {}
        self.callback = SemScaleCallback(self)
        # Fail at construction, not at the first step, when the head cannot be found or the pool would not fit.
        self.use_model(model)

    # ------------------------------------------------------------------ setup

    def _current_comm(self, args: SemScaleConfig) -> Any:
        if callable(self.comm):
            return self.comm()
        if self.comm is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                self.comm = TorchDistributedComm(device=args.device)
        return self.comm

    def _new_balancer(self, args: SemScaleConfig) -> SemanticScaleBalancer:
        return SemanticScaleBalancer(
            self.class_counts,
            args.balancer_settings(),
            comm=self._current_comm(args),
            class_names=self.class_names,
            device=args.device,
            knob_prefix="semscale_",
        )

    def use_model(self, model: nn.Module) -> None:
        """Watch ``model`` (a new one from ``model_init``) for the current balancer: a forward pre-hook and, for the
        modes with a pool, the head-input capture (its pool budget checked)."""
        if self._input_hook is not None:
            self._input_hook.remove()
        if self.capture is not None:
            self.capture.remove()
            self.capture = None
        self.model = model
        self._input_hook = model.register_forward_pre_hook(self._record_inputs, with_kwargs=True)
        if not self.balancer.uses_pool:
            return
        self.capture = HeadInputCapture(
            self.model, num_labels=self.num_labels, module=self.feature_module, pool_fn=self.feature_pool_fn
        )
        feature_dim = self.head_feature_dim()
        if feature_dim is not None:
            self.balancer.check_pool_budget(feature_dim)

    def head_feature_dim(self) -> int | None:
        """``in_features`` of the captured module (nn.Linear, NormedLinear, ...), None if it has none."""
        in_features = getattr(self.capture.head, "in_features", None)
        return in_features if isinstance(in_features, int) else None

    def _record_inputs(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: keep the batch (for pooling) and arm the capture for a training forward."""
        self._inputs = {k: v for k, v in kwargs.items() if k not in ("labels", "num_items_in_batch")}
        if model.training and self.balancer.capturing:
            self.capture.arm()

    # ------------------------------------------------------------------ the run

    def begin_run(self, args: Any, state: Any, model: nn.Module, train_dataloader: Any) -> None:
        """At train start: a balancer built from ``args`` (trial values included) unless :meth:`resume` restored
        one, watching ``model``, started with this run's optimizer steps."""
        if not isinstance(args, SemScaleConfig):
            raise TypeError(
                f"The Trainer's args are a {type(args).__name__}: pass the SemScaleConfig given to SemScaleBalancing "
                "to the Trainer as args, so its semscale_* settings are the ones the run uses."
            )
        if self.resume_from is None and state.global_step > 0:
            raise ValueError(
                f"Resuming at step {state.global_step}: a plain transformers.Trainer cannot restore the feature pool, "
                "weights and stage of DSB re-weighting. Fix: train with hf_semscale.SemScaleTrainer (its checkpoints "
                "hold them), or start a fresh run."
            )
        self.args = args
        if self.resume_from is None:
            settings, comm = args.balancer_settings(), self._current_comm(args)
            if settings != self.balancer.settings or comm is not self.balancer.comm:  # e.g. a trial's values
                self.balancer = self._new_balancer(args)
            if args.should_save:  # a fresh run drops the history lines of an earlier (e.g. killed) run
                truncate_history(Path(args.output_dir) / HISTORY_FILENAME, 0)
        self.use_model(model)
        steps_per_epoch = None
        if has_length(train_dataloader):
            steps_per_epoch = max(math.ceil(len(train_dataloader) / args.gradient_accumulation_steps), 1)
        global_batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        self.balancer.start(state.max_steps, steps_per_epoch, global_batch_size, reset=self.resume_from is None)
        self.pending_logs = {}

    def resume(self, checkpoint_dir: str | None) -> None:
        """Restore the balancer (built from :attr:`args`) from ``checkpoint_dir/semscale_state.safetensors`` for the
        next run, and drop the history lines written after it; None: the next run starts fresh. A refused state
        (:class:`~hf_semscale.dsb.pool.PoolFileError` naming the file) changes nothing."""
        self.resume_from = checkpoint_dir
        if checkpoint_dir is None:
            return
        tensors, metadata = read_state_file(checkpoint_dir, self.num_labels)
        feature_dim = int(metadata.get("feature_dim", 0))
        head_dim = self.head_feature_dim() if self.capture is not None else None
        if feature_dim and head_dim is not None and head_dim != feature_dim:
            raise PoolFileError(
                f"{Path(checkpoint_dir) / STATE_FILENAME}: pool features have size {feature_dim} but this model's "
                f"head takes {head_dim}. Fix: resume with the same model architecture."
            )
        balancer = self._new_balancer(self.args)
        balancer.load_state_dict(tensors, source=str(Path(checkpoint_dir) / STATE_FILENAME))
        self.balancer = balancer
        if self.args.should_save:
            truncate_history(Path(self.args.output_dir) / HISTORY_FILENAME, int(metadata.get("global_step", 0)))

    def begin_step(self, args: Any, step: int) -> None:
        """The balancer's decisions for optimizer step ``step``; summaries go to the next training log and each
        weight re-measurement to ``semscale_history.jsonl``."""
        self._losses_in_step = 0
        record = self.balancer.begin_step(step)
        if record is None:
            return
        self.pending_logs.update(record.logs)
        if record.measured and args.should_save:
            append_history(Path(args.output_dir) / HISTORY_FILENAME, record.history_line())

    def end_step(self, step: int) -> None:
        if self._losses_in_step == 0:
            raise RuntimeError(
                f"Optimizer step {step} trained without SemScaleBalancing.loss, so no class weight reached it. "
                "Fix: pass compute_loss_func=balancing.loss to the Trainer (or use SemScaleTrainer)."
            )

    def merged_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """``logs`` plus the summaries gathered since the last training log (which has a ``loss``)."""
        if not (self.pending_logs and "loss" in logs):
            return logs
        merged, self.pending_logs = {**logs, **self.pending_logs}, {}
        return merged

    # ------------------------------------------------------------------ the loss

    def loss(self, outputs: Any, labels: Tensor | None, num_items_in_batch: Tensor | int | None = None) -> Tensor:
        """The Trainer's ``compute_loss_func``: ``sum_i w_{y_i} l_i / num_items_in_batch`` of the base loss.

        ``outputs``: the model's output (``logits [B, C]``); ``labels [B]`` integer ids (-100 ignored). In training
        mode the batch's head-input features enter the pool and the class weights apply (stage ``reweight``);
        in evaluation the loss is unweighted. The batch's labels are validated here, once."""
        if labels is None:
            raise ValueError("DSB re-weighting needs a 'labels' entry in every batch (integer class ids).")
        inputs, self._inputs = self._inputs, None
        if inputs is None:
            raise RuntimeError(
                "SemScaleBalancing.loss got the outputs of a model whose forward pass it did not see. Fix: give the "
                "Trainer the model given to SemScaleBalancing (or its model_init), and callbacks=[balancing.callback]."
            )
        check_class_labels(labels, self.num_labels)
        if labels.dtype != torch.long:
            labels = labels.long()  # int32 / uint8 ids from custom collators: the losses index with int64
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        training = self.model.training
        if training:
            if not self.balancer.started:
                raise RuntimeError(
                    "SemScaleBalancing.loss ran a training batch before training started. Fix: pass "
                    "callbacks=[balancing.callback] to the Trainer and train with trainer.train()."
                )
            self._losses_in_step += 1
            if self.balancer.capturing:
                features = self.capture.take(inputs)
                if features is None:
                    raise RuntimeError(
                        f"The feature module {self.capture.head_name!r} was not called in this forward pass. "
                        "Fix: set SemScaleConfig.semscale_feature_module to the module whose input is the feature."
                    )
                self.balancer.observe(features, labels, labels_checked=True)
        return self.balancer.loss(logits, labels, num_items_in_batch, weighted=training, labels_checked=True)

    # ------------------------------------------------------------------ state and report

    def save_state(self, checkpoint_dir: str | Path, global_step: int, should_save: bool) -> None:
        """Every process calls this (a class-sharded pool is gathered first); ``should_save`` writes the file."""
        tensors = self.balancer.state_dict()
        if should_save:
            pool = self.balancer.pool
            feature_dim = pool.feature_dim if pool is not None else 0
            save_state_file(tensors, checkpoint_dir, self.num_labels, feature_dim, global_step)

    def scale_report(self, step: int, max_steps: int) -> dict[str, Any]:
        """The ``semantic_scales.json`` content: the run's settings, scales, weights and class names.

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
            step=step,
            stage=b.stage,
            settings=self.args.semscale_settings(),
            summary=summary,
            extra_per_class={
                "train_count": self.class_counts.tolist(),
                "has_volume": classes_with_volume(b.semantic_scales, pool_counts).tolist(),
            },
            num_updates=b.num_updates,
            training=_training_hyperparameters(self.args, max_steps),
        )

    def write_scale_report(self, output_dir: str | Path, step: int, max_steps: int, plots: bool = True) -> None:
        """``semantic_scales.json`` and (``plots``) its PNG plots in ``output_dir``."""
        write_report_and_plots(output_dir, self.scale_report(step, max_steps), plots=plots)


class SemScaleCallback(TrainerCallback):
    """Runs a :class:`SemScaleBalancing` inside a Trainer: builds and starts its balancer at train start, advances
    it at each optimizer step, merges its summaries into the training logs, and (for a plain Trainer) writes
    ``semantic_scales.json`` at each save and at the end. ``SemScaleTrainer`` adds it itself."""

    def __init__(self, balancing: SemScaleBalancing, writes_reports: bool = True):
        self.balancing = balancing
        self.writes_reports = writes_reports

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.balancing.begin_run(args, state, model, train_dataloader)

    def on_step_begin(self, args, state, control, **kwargs):
        self.balancing.begin_step(args, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.balancing.end_step(state.global_step - 1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        merged = self.balancing.merged_logs(logs)
        if merged is not logs:  # a plain Trainer: reaches the history and the callbacks after this one
            logs.update(merged)
            state.log_history[-1].update(merged)

    def on_save(self, args, state, control, **kwargs):
        if self.writes_reports and args.should_save:
            checkpoint_dir = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            for folder in (checkpoint_dir, Path(args.output_dir)):
                self.balancing.write_scale_report(folder, state.global_step, state.max_steps)

    def on_train_end(self, args, state, control, **kwargs):
        if self.writes_reports and args.should_save:
            self.balancing.write_scale_report(args.output_dir, state.global_step, state.max_steps)
