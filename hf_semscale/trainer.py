"""``SemScaleTrainer``: dynamic semantic-scale-balanced (DSB) learning inside ``transformers.Trainer``.

The data path of one training micro-batch: forward pass -> the classification head's input
(captured by a hook) -> gathered across processes -> the per-class ring-buffer pool; every
``semscale_update_interval`` optimizer steps the pool's class volumes give new class weights; the
base loss of the batch is weighted by the latest weights. This module is the glue: the math lives
in ``scale``/``weighting``/``losses``, the state in ``pool``, the cross-process part in
``distributed``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length

from .capture import HeadInputCapture
from .config import DYNAMIC_WEIGHTING_MODES, WEIGHTING_MODES, SemScaleConfig
from .distributed import (
    MAX_GATHERED_LABEL,
    apply_process_group_timeout,
    assert_same_on_all_processes,
    gather_labelled_features,
    sharded_class_scales,
)
from .imbalance import imbalance_summary
from .losses import IGNORE_INDEX, build_base_loss, weighted_reduce
from .pool import (
    FeaturePool,
    PoolFileError,
    atomic_save_safetensors,
    estimate_pool_bytes,
    load_safetensors_checked,
    pool_capacities,
)
from .report import SCALES_FILENAME, build_scale_report, write_json_atomic
from .scale import check_finite_features, marginal_effect_curves
from .weighting import (
    count_power_weights,
    effective_number_weights,
    inverse_frequency_weights,
    normalize_weights,
    scale_equivalent_counts,
    semantic_scale_weights,
)

__all__ = ["SemScaleTrainer", "STATE_FILENAME", "HISTORY_FILENAME", "latest_complete_checkpoint", "checkpoint_problem"]

logger = logging.getLogger(__name__)

STATE_FILENAME = "semscale_state.safetensors"
HISTORY_FILENAME = "semscale_history.jsonl"
STAGES = ("warmup", "fill", "reweight")
_STATE_FORMAT = "hf_semscale.trainer_state.v1"
_TRAINER_STATE_NAME = "trainer_state.json"


def _step_of(path: str | os.PathLike) -> int | None:
    """The step ``N`` of a folder named ``...-N`` (``checkpoint-N``), None if its name ends otherwise."""
    tail = Path(path).name.split("-")[-1]
    return int(tail) if tail.isdigit() else None


def _is_checkpoint_folder(path: Path) -> bool:
    return path.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and _step_of(path) is not None


def checkpoint_problem(checkpoint_dir: str | os.PathLike, needs_semscale_state: bool = True) -> str | None:
    """Why ``checkpoint_dir`` is not a complete checkpoint, or None if it is.

    A checkpoint is complete when ``trainer_state.json`` (the last file the Trainer writes) parses
    and, for runs with a pool, ``semscale_state.safetensors`` reads back.
    """
    path = Path(checkpoint_dir)
    try:
        json.loads((path / _TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{path / _TRAINER_STATE_NAME} is missing or unreadable ({err.__class__.__name__})"
    if needs_semscale_state:
        try:
            load_safetensors_checked(path / STATE_FILENAME)
        except PoolFileError as err:
            return str(err)
    return None


def latest_complete_checkpoint(output_dir: str | os.PathLike, needs_semscale_state: bool = True) -> str | None:
    """The highest-step ``checkpoint-N`` folder of ``output_dir`` that is complete (see :func:`checkpoint_problem`)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    checkpoints = [child for child in root.iterdir() if child.is_dir() and _is_checkpoint_folder(child)]
    for child in sorted(checkpoints, key=_step_of, reverse=True):
        problem = checkpoint_problem(child, needs_semscale_state)
        if problem is None:
            return str(child)
        logger.warning("Skipping incomplete checkpoint %s: %s", child, problem)
    return None


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
    values = values[values != IGNORE_INDEX]
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_labels):
        raise ValueError(
            f"The training set's '{column}' column has labels in [{int(values.min())}, {int(values.max())}] but the "
            f"model has num_labels={num_labels}. Fix: set num_labels (and id2label) on the model config to the "
            "number of classes, or remap the labels to 0..num_labels-1."
        )
    return torch.bincount(values.to(torch.long), minlength=num_labels).tolist()


class SemScaleTrainer(Trainer):
    """A drop-in ``transformers.Trainer`` for single-label classification with DSB re-weighting.

    Args (beyond ``Trainer``'s):
        class_counts: ``[C]`` training samples per class; read from the training set's
            ``labels``/``label`` column when omitted.
        class_names: ``[C]`` names for reports; default ``model.config.id2label``.
        feature_module: the module whose input is the feature (name or module); overrides
            ``args.semscale_feature_module``; default: the classification head, found automatically.
        feature_pool_fn: ``(head_input, batch_inputs) -> [B, d]`` for heads whose input needs custom pooling.

    Attributes:
        class_weights: ``[C]`` float64, the weights the loss uses now (ones before re-weighting).
        semantic_scales: ``[C]`` float64 bits, the latest measured scales (zeros before the first).
        stage: ``"warmup"``, ``"fill"`` or ``"reweight"``.
        pool: the :class:`~hf_semscale.pool.FeaturePool` (None until the first captured batch).
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
        self.num_labels = self._check_single_label_task(self.model)
        counts = class_counts
        if counts is None and self.train_dataset is not None:
            counts = _label_column_counts(self.train_dataset, self.num_labels)
        self.class_counts = torch.as_tensor(counts if counts is not None else [1] * self.num_labels, dtype=torch.long)
        if self.class_counts.shape != (self.num_labels,):
            raise ValueError(f"class_counts has {self.class_counts.numel()} entries but num_labels={self.num_labels}")
        absent = [c for c, n in enumerate(self.class_counts.tolist()) if n == 0]
        if absent:
            logger.warning(
                "Classes %s have no training samples: they get no pool rows, scale 0 and are listed in the summary's "
                "classes_without_volume; their weight never touches the loss.", absent
            )
        self.class_names = list(class_names) if class_names is not None else self._names_from_config(self.model)
        a = self.args
        self.base_loss = build_base_loss(
            a.semscale_loss,
            class_counts=self.class_counts,
            label_smoothing=a.label_smoothing_factor,
            focal_gamma=a.semscale_focal_gamma,
            ldam_max_margin=a.semscale_ldam_max_margin,
            ldam_scale=a.semscale_ldam_scale,
            logit_adjust_tau=a.semscale_logit_adjust_tau,
        )
        self._feature_module = feature_module if feature_module is not None else a.semscale_feature_module
        self._feature_pool_fn = feature_pool_fn
        self._capture: HeadInputCapture | None = None
        self._captured_model: nn.Module | None = None
        self._capacities = pool_capacities(self.class_counts, a.semscale_pool_capacity)
        self._steps_per_epoch: int | None = None  # optimizer steps per epoch, known once train() built its dataloader
        self._reset_run_state()
        # Fail at construction, not at the first step, when the head cannot be found or the pool
        # would not fit (the hook is re-installed if model_init later replaces the model).
        self._install_capture()

    # ------------------------------------------------------------------ setup

    def _reset_run_state(self) -> None:
        """The state of a run that has not started: stage warm-up, no pool, unit weights, zero scales."""
        self.class_weights = torch.ones(self.num_labels, dtype=torch.float64)
        self.semantic_scales = torch.zeros(self.num_labels, dtype=torch.float64)
        self.equivalent_counts: Tensor | None = None  # [C] float64, semscale_weighting='scale_equivalent_count' only
        self.pool: FeaturePool | None = None
        self.stage = "warmup"
        self._fill_start_step = -1
        self._reweight_start_step = -1
        self._last_update_step = -1
        self._num_updates = 0
        self._last_seen_step = -1
        self._loss_weights: Tensor | None = None
        self._pending_logs: dict[str, float] = {}

    @staticmethod
    def _check_single_label_task(model: nn.Module) -> int:
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

    def _names_from_config(self, model: nn.Module) -> list[str]:
        id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
        return [str(id2label.get(c, id2label.get(str(c), c))) for c in range(self.num_labels)]

    @property
    def uses_pool(self) -> bool:
        return self.args.semscale_weighting in DYNAMIC_WEIGHTING_MODES

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
            self._check_pool_budget(feature_dim)

    def _head_feature_dim(self) -> int | None:
        """``in_features`` of the captured module (nn.Linear, NormedLinear, ...), None if it has none."""
        in_features = getattr(self.model.get_submodule(self._capture.head_name), "in_features", None)
        return in_features if isinstance(in_features, int) else None

    @staticmethod
    def _largest_fitting_capacity(class_counts: Tensor, feature_dim: int, itemsize: int, budget: float) -> int | None:
        """Largest K with ``sum_c min(n_c, K) * d * itemsize <= budget`` (bisection); None if K = 1 is over."""

        def fits(k: int) -> bool:
            return int(pool_capacities(class_counts, k).sum()) * feature_dim * itemsize <= budget

        lo, hi = 1, max(int(class_counts.max()), 1)
        if not fits(lo):
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo

    def _check_pool_budget(self, feature_dim: int) -> None:
        """Log the pool's storage size; over ``semscale_max_pool_memory_mb``, stop with the settings that fit."""
        if getattr(self, "_budget_checked_dim", None) == feature_dim:
            return  # once per run and feature size
        a = self.args
        rows = int(self._capacities.sum())
        needed = estimate_pool_bytes(self._capacities, feature_dim, a.semscale_pool_dtype)
        budget = a.semscale_max_pool_memory_mb * 2**20
        logger.info(
            "SemScaleTrainer pool: %d classes, %d rows (capacity min(n_c, %s)), d=%d, %s: %d bytes = %.1f MiB "
            "(budget %g MiB; each weight update briefly holds ~2 more copies)",
            self.num_labels, rows, a.semscale_pool_capacity or "n_c", feature_dim, a.semscale_pool_dtype, needed,
            needed / 2**20, a.semscale_max_pool_memory_mb,
        )
        if needed <= budget:
            self._budget_checked_dim = feature_dim
            return
        itemsize = estimate_pool_bytes(torch.ones(1, dtype=torch.long), 1, a.semscale_pool_dtype)
        k = self._largest_fitting_capacity(self.class_counts, feature_dim, itemsize, budget)
        fixes = []
        if k is not None:
            fitted = estimate_pool_bytes(pool_capacities(self.class_counts, k), feature_dim, a.semscale_pool_dtype)
            fixes.append(f"set semscale_pool_capacity={k} (rows per class; {fitted / 2**20:.2f} MiB)")
        if itemsize > 2:
            half = estimate_pool_bytes(self._capacities, feature_dim, "float16")
            fixes.append(f"set semscale_pool_dtype='bfloat16' or 'float16' ({half / 2**20:.2f} MiB)")
        fixes.append("raise semscale_max_pool_memory_mb")
        too_big = "" if k is not None else (
            f" Even one row per class ({self.num_labels * feature_dim * itemsize} bytes) is over the budget."
        )
        raise MemoryError(
            f"The feature pool would take {needed / 2**20:.2f} MiB, over semscale_max_pool_memory_mb="
            f"{a.semscale_max_pool_memory_mb:g} ({self.num_labels} classes, {rows} rows, d={feature_dim}, "
            f"{a.semscale_pool_dtype}).{too_big} Fix: {', or '.join(fixes)}."
        )

    def _check_processes_agree(self, resume_from_checkpoint: str | None) -> None:
        """At train start, on every process: the same model / label set / DSB settings, or one clear error
        everywhere (instead of a hang or silently different weights later). Also gives gloo process
        groups ``ddp_timeout`` (transformers skips it with ``use_cpu``) and refuses DSB under DataParallel."""
        a = self.args
        if self.uses_pool and a.n_gpu > 1:
            raise ValueError(
                f"SemScaleTrainer with semscale_weighting={a.semscale_weighting!r} runs one process per device, but this process drives "
                f"{a.n_gpu} GPUs through torch.nn.DataParallel (the script was started with plain `python` on a "
                "multi-GPU machine), whose per-GPU replicas the feature capture cannot follow. Fix: launch with "
                "`accelerate launch` or `torchrun --nproc_per_node <gpus>`, or set CUDA_VISIBLE_DEVICES to one GPU."
            )
        if self.accelerator.num_processes == 1:
            return
        apply_process_group_timeout(self.accelerator, a.ddp_timeout)
        feature_dim = -1
        if self.uses_pool:
            self._install_capture()
            feature_dim = self._head_feature_dim() or -1
        digest = hashlib.sha256(json.dumps(self.class_counts.tolist()).encode()).digest()
        resume_step = -1
        if resume_from_checkpoint is not None:
            resume_step = _step_of(resume_from_checkpoint)
            resume_step = -2 if resume_step is None else resume_step
        assert_same_on_all_processes(
            self.accelerator,
            "SemScaleTrainer",
            num_labels=self.num_labels,
            feature_dim=feature_dim,
            train_samples=int(self.class_counts.sum()),
            class_counts_hash=int.from_bytes(digest[:7], "little"),
            weighting=WEIGHTING_MODES.index(a.semscale_weighting),
            warmup_steps=a.semscale_warmup_steps,
            fill_max_steps=a.semscale_fill_max_steps,
            update_interval=a.semscale_update_interval,
            pool_capacity=a.semscale_pool_capacity,
            resume_checkpoint_step=resume_step,
        )
        if self.num_labels >= MAX_GATHERED_LABEL:
            raise ValueError(f"SemScaleTrainer gathers labels as float32: num_labels must be below {MAX_GATHERED_LABEL}.")

    def _create_pool(self, feature_dim: int) -> None:
        assert_same_on_all_processes(
            self.accelerator, "SemScaleTrainer", step=self.state.global_step, num_labels=self.num_labels, feature_dim=feature_dim
        )
        self._check_pool_budget(feature_dim)
        self.pool = FeaturePool(self._capacities, feature_dim, self.args.semscale_pool_dtype, device=self.args.device)

    # ------------------------------------------------------------------ stages

    def _warmup_steps(self) -> int:
        a = self.args
        if a.semscale_warmup_steps >= 0:
            return a.semscale_warmup_steps
        return int(a.semscale_warmup_ratio * self.state.max_steps)

    def _fill_max_steps(self) -> int:
        """Longest fill stage: ``semscale_fill_max_steps``, else one epoch in optimizer steps (gradient accumulation
        included), else, for data of unknown length, one pass over ``sum(class_counts)`` samples at the global batch size."""
        if self.args.semscale_fill_max_steps >= 0:
            return self.args.semscale_fill_max_steps
        if self._steps_per_epoch is not None:
            return self._steps_per_epoch
        return max(1, math.ceil(int(self.class_counts.sum()) / self.get_total_train_batch_size(self.args)))

    def set_initial_training_values(self, args: Any, dataloader: Any) -> tuple:
        """``Trainer``'s step arithmetic; records the optimizer steps per epoch (None for data of unknown length)."""
        values = super().set_initial_training_values(args, dataloader)
        self._steps_per_epoch = values[1] if has_length(dataloader) else None
        return values

    def _pool_ready(self, step: int) -> bool:
        if self.pool is None:
            return False
        present = self.class_counts > 0
        full = bool((self.pool.filled[present] >= self._capacities[present]).all())
        return full or step - self._fill_start_step >= self._fill_max_steps()

    def _enter_stage(self, stage: str, step: int) -> None:
        logger.info("SemScaleTrainer: stage %s -> %s at step %d", self.stage, stage, step)
        self.stage = stage
        self._pending_logs["semscale/stage"] = float(STAGES.index(stage))
        if stage == "fill":
            self._fill_start_step = step
        elif stage == "reweight":
            self._reweight_start_step = step
            if not self.uses_pool:
                self._set_static_weights()
            elif self.pool is not None:
                self._warn_if_underfilled(step)

    def _warn_if_underfilled(self, step: int) -> None:
        """Once per run: re-weighting starts with classes whose pool holds fewer rows than ``min(n_c, K)``."""
        short = [(c, int(have), int(want)) for c, (have, want) in enumerate(zip(self.pool.filled.tolist(), self._capacities.tolist()))
                 if have < want]
        if short:
            listed = ", ".join(f"{self.class_names[c]} {have}/{want}" for c, have, want in short[:10])
            logger.warning(
                "SemScaleTrainer: re-weighting starts at step %d with %d classes under-filled (pool rows / capacity: %s%s): "
                "their first scales come from fewer features than they will have. Fix: a longer fill stage "
                "(semscale_fill_max_steps) if this is not intended.", step, len(short), listed, ", ..." if len(short) > 10 else "",
            )

    def _set_static_weights(self) -> None:
        a = self.args
        if a.semscale_weighting == "inverse_frequency":
            weights = inverse_frequency_weights(self.class_counts, a.semscale_normalization)
        elif a.semscale_weighting == "effective_number":
            weights = effective_number_weights(self.class_counts, a.semscale_cb_beta, a.semscale_normalization)
        elif a.semscale_weighting == "count_power":
            weights = count_power_weights(self.class_counts, a.semscale_count_power, a.semscale_normalization)
        else:
            weights = torch.ones(self.num_labels, dtype=torch.float64)
        self._set_weights(weights)

    def _set_weights(self, weights: Tensor) -> None:
        self.class_weights = weights.to(torch.float64).cpu()
        self._loss_weights = None
        self._pending_logs.update({"semscale/weight_min": float(weights.min()), "semscale/weight_max": float(weights.max())})

    def _advance(self, step: int) -> None:
        """Stage transitions and weight updates, once per optimizer step (same decisions on every process)."""
        if step == self._last_seen_step:
            return
        self._last_seen_step = step
        if self.stage == "warmup" and step >= self._warmup_steps():
            self._enter_stage("fill" if self.uses_pool else "reweight", step)
        if self.stage == "fill" and self._pool_ready(step):
            self._enter_stage("reweight", step)
        if (
            self.stage == "reweight"
            and self.uses_pool
            and (step - self._reweight_start_step) % self.args.semscale_update_interval == 0
            and step != self._last_update_step
        ):
            self._update_weights(step)

    def _update_weights(self, step: int) -> None:
        a = self.args
        features, labels = self.pool.contents()
        scales = sharded_class_scales(
            self.accelerator, features, labels, self.num_labels, normalize=a.semscale_normalize_features,
            alpha=a.semscale_alpha, step=step,
        ).cpu()
        self.semantic_scales = scales
        if a.semscale_weighting == "scale_equivalent_count":
            self.equivalent_counts = self._scale_equivalent_counts(features, labels, scales)
            weights = effective_number_weights(self.equivalent_counts, a.semscale_cb_beta, "none")
            weights = normalize_weights(weights, self.class_counts, a.semscale_normalization)
        else:
            weights = semantic_scale_weights(scales, a.semscale_gamma, self.class_counts, a.semscale_normalization,
                                             a.semscale_weight_floor, reverse=a.semscale_weighting == "reverse_scale")
        if a.semscale_weighting == "dsb_effective_number":  # the mix: scale weights x count weights, renormalised
            count_weights = effective_number_weights(self.class_counts, a.semscale_cb_beta, a.semscale_normalization)
            weights = normalize_weights(weights * count_weights, self.class_counts, a.semscale_normalization)
        self._set_weights(weights)
        self._last_update_step = step
        self._num_updates += 1
        present = self.class_counts > 0
        self._pending_logs.update(
            {
                "semscale/scale_min": float(scales[present].min()),
                "semscale/scale_mean": float(scales[present].mean()),
                "semscale/scale_max": float(scales[present].max()),
                "semscale/updates": float(self._num_updates),
            }
        )
        if self.args.should_save:
            self._append_history(step)

    def _scale_equivalent_counts(self, features: Tensor, labels: Tensor, scales: Tensor) -> Tensor:
        """``[C]`` float64: the count at which the head classes' mean marginal-effect curve (on the pool, the
        same alpha / normalisation as the scales) reaches each class's scale. Head classes: pool rows at least
        half the largest class's. Computed identically on every process (same pool, fixed seed)."""
        a = self.args
        filled = self.pool.filled
        head = torch.nonzero(filled >= max(2, int(filled.max()) // 2)).flatten()
        top = int(filled[head].min())
        sizes = sorted({max(2, round(top ** (k / 8))) for k in range(1, 9)})
        keep = torch.isin(labels.cpu(), head)
        curves = marginal_effect_curves(features[keep.to(features.device)], labels[keep.to(labels.device)], self.num_labels,
                                        sizes=sizes, draws=2, seed=0, normalize=a.semscale_normalize_features, alpha=a.semscale_alpha)
        reference = curves.mean[head].mean(dim=0)
        return scale_equivalent_counts(scales, sizes, reference)

    # ------------------------------------------------------------------ loss

    def _validate_labels(self, labels: Tensor) -> None:
        if labels.ndim != 1 or labels.is_floating_point():
            raise ValueError(
                f"labels must be integer class ids of shape [batch]; got {labels.dtype} of shape {tuple(labels.shape)}. "
                "SemScaleTrainer handles single-label classification; use transformers.Trainer for multi-label."
            )
        invalid = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= self.num_labels))
        if bool(invalid.any()):  # one host sync; the offending values are only gathered on error
            bad = labels[invalid]
            raise ValueError(
                f"labels {sorted(set(bad.tolist()))[:10]} are outside [0, {self.num_labels}) and not -100. "
                "Fix: remap the labels to 0..num_labels-1 or load the model with the right num_labels."
            )

    def _store(self, features: Tensor | None, labels: Tensor) -> None:
        if features is None:
            raise RuntimeError(
                f"The feature module {self._capture.head_name!r} was not called in this forward pass. "
                "Fix: set SemScaleConfig.semscale_feature_module to the module whose input is the feature."
            )
        features = features.float()
        if self.args.semscale_normalize_features:
            features = F.normalize(features, dim=-1)
        features, labels = gather_labelled_features(
            self.accelerator, features, labels.to(features.device), step=self.state.global_step
        )
        try:
            check_finite_features(features, labels)
        except ValueError as err:
            raise ValueError(f"At step {self.state.global_step}: {err}") from None
        if self.pool is None:
            self._create_pool(features.shape[1])
        try:
            self.pool.add(features, labels)  # refuses values its dtype cannot hold (float16 > 65504)
        except ValueError as err:
            raise ValueError(f"At step {self.state.global_step}: {err}") from None

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
        self._validate_labels(labels)
        if labels.dtype != torch.long:
            labels = labels.long()  # int32 / uint8 ids from custom collators: the losses index with int64
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        training = model.training
        if training:
            self._advance(self.state.global_step)
            self._install_capture()
        capturing = training and self.uses_pool and self.stage != "warmup"
        if capturing:
            self._capture.arm()
        outputs = model(**model_inputs)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        if capturing:
            self._store(self._capture.take(model_inputs), labels)
        weights = None
        if training and self.stage == "reweight":
            if self._loss_weights is None or self._loss_weights.device != logits.device:
                self._loss_weights = self.class_weights.to(device=logits.device, dtype=torch.float32)
            weights = self._loss_weights
        loss = weighted_reduce(self.base_loss(logits, labels), labels, weights, num_items_in_batch)
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

    def _state_tensors(self) -> dict[str, Tensor]:
        counters = [self._fill_start_step, self._reweight_start_step, self._last_update_step, self._num_updates]
        tensors = {
            "semscale.class_weights": self.class_weights,
            "semscale.semantic_scales": self.semantic_scales,
            "semscale.class_counts": self.class_counts,
            "semscale.counters": torch.tensor(counters + [STAGES.index(self.stage)], dtype=torch.long),
        }
        if self.pool is not None:
            tensors.update(self.pool.state_dict())
        return tensors

    def _save_semscale_state(self, checkpoint_dir: str) -> None:
        metadata = {
            "format": _STATE_FORMAT,
            "num_labels": str(self.num_labels),
            "feature_dim": str(self.pool.feature_dim if self.pool is not None else 0),
            "global_step": str(self.state.global_step),
        }
        atomic_save_safetensors(self._state_tensors(), Path(checkpoint_dir) / STATE_FILENAME, metadata=metadata)

    def _load_semscale_state(self, checkpoint_dir: str) -> None:
        path = Path(checkpoint_dir) / STATE_FILENAME
        tensors, metadata = load_safetensors_checked(path)
        if metadata.get("format") != _STATE_FORMAT:
            raise PoolFileError(f"{path}: not a SemScaleTrainer state file (format {metadata.get('format')!r})")
        saved_labels = int(metadata.get("num_labels", -1))
        if saved_labels != self.num_labels:
            raise PoolFileError(
                f"{path}: saved for num_labels={saved_labels} but this model has {self.num_labels}. "
                "Fix: resume with the model and label set of the original run, or start a fresh output_dir."
            )
        # The file is untrusted: check shapes and values before anything is restored.
        for key, shape in (("semscale.class_weights", (self.num_labels,)), ("semscale.semantic_scales", (self.num_labels,)),
                           ("semscale.class_counts", (self.num_labels,)), ("semscale.counters", (5,))):
            value = tensors.get(key)
            if value is None or tuple(value.shape) != shape or (key.endswith("counters") and value.is_floating_point()):
                found = "missing" if value is None else f"{value.dtype} of shape {tuple(value.shape)}"
                raise PoolFileError(
                    f"{path}: {key} is {found}, expected shape {shape} (num_labels={self.num_labels}). "
                    "Fix: resume with the model and label set of the original run, or start a fresh output_dir."
                )
        saved_weights = tensors["semscale.class_weights"].to(torch.float64)
        saved_scales = tensors["semscale.semantic_scales"].to(torch.float64)
        if not bool((torch.isfinite(saved_weights) & (saved_weights > 0)).all()):
            raise PoolFileError(f"{path}: semscale.class_weights must be finite and positive, got {saved_weights.tolist()}")
        if not bool((torch.isfinite(saved_scales) & (saved_scales >= 0)).all()):
            raise PoolFileError(f"{path}: semscale.semantic_scales must be finite and >= 0, got {saved_scales.tolist()}")
        if not 0 <= int(tensors["semscale.counters"][-1]) < len(STAGES):
            raise PoolFileError(f"{path}: unknown stage index {int(tensors['semscale.counters'][-1])} in semscale.counters")
        if not torch.equal(tensors["semscale.class_counts"].to(torch.long), self.class_counts):
            raise PoolFileError(
                f"{path}: the training class counts differ from this run's. Fix: resume on the same training set."
            )
        feature_dim = int(metadata.get("feature_dim", 0))
        if feature_dim:
            if self.uses_pool:
                self._install_capture()
                head_dim = self._head_feature_dim()
                if head_dim is not None and head_dim != feature_dim:
                    raise PoolFileError(
                        f"{path}: pool features have size {feature_dim} but this model's head takes "
                        f"{head_dim}. Fix: resume with the same model architecture."
                    )
            pool = FeaturePool(self._capacities, feature_dim, self.args.semscale_pool_dtype, device=self.args.device)
            pool.load_state_dict(tensors, source=str(path))
            self.pool = pool  # only once it loaded: a refused file leaves the trainer as it was
        else:
            self.pool = None  # saved before the first captured batch: drop a pool left by an earlier train()
        fill_start, reweight_start, last_update, updates, stage = tensors["semscale.counters"].tolist()
        self._fill_start_step, self._reweight_start_step = fill_start, reweight_start
        self._last_update_step, self._num_updates = last_update, updates
        self.stage = STAGES[stage]
        self.semantic_scales = tensors["semscale.semantic_scales"].to(torch.float64)
        self.class_weights = tensors["semscale.class_weights"].to(torch.float64)
        self._loss_weights = None
        self._last_seen_step = -1
        self._truncate_history(int(metadata.get("global_step", 0)))

    def _history_path(self) -> Path:
        return Path(self.args.output_dir) / HISTORY_FILENAME

    def _append_history(self, step: int) -> None:
        record = {
            "step": step,
            "stage": self.stage,
            "scales": self.semantic_scales.tolist(),
            "weights": self.class_weights.tolist(),
            "pool_counts": self.pool.filled.tolist() if self.pool is not None else None,
        }
        self._history_path().parent.mkdir(parents=True, exist_ok=True)
        with open(self._history_path(), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def _truncate_history(self, resume_step: int) -> None:
        """Drop history lines a killed run wrote after the checkpoint being resumed."""
        path = self._history_path()
        if not self.args.should_save or not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] < resume_step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by the interruption
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, path)

    def scale_report(self) -> dict[str, Any]:
        """The current ``semantic_scales.json`` content."""
        pool_counts = self.pool.filled.tolist() if self.pool is not None else [0] * self.num_labels
        summary = imbalance_summary(self.semantic_scales, torch.as_tensor(pool_counts)) if self._num_updates else {}
        return build_scale_report(
            source="trainer",
            scales=self.semantic_scales.tolist(),
            counts=pool_counts,
            class_names=self.class_names,
            weights=self.class_weights.tolist(),
            feature_dim=self.pool.feature_dim if self.pool is not None else None,
            step=self.state.global_step,
            stage=self.stage,
            settings=self.args.semscale_settings(),
            summary=summary,
            extra_per_class={"train_count": self.class_counts.tolist()},
            num_updates=self._num_updates,
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            write_json_atomic(Path(output_dir or self.args.output_dir) / SCALES_FILENAME, self.scale_report())

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        checkpoint_dir = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            self._save_semscale_state(str(checkpoint_dir))
        super()._save_checkpoint(model, trial)  # writes trainer_state.json last: the completeness mark
        if self.args.should_save:
            write_json_atomic(Path(self.args.output_dir) / SCALES_FILENAME, self.scale_report())

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **card_kwargs: Any,
    ) -> str | None:
        """Save the model and ``semantic_scales.json``, then push ``output_dir`` with an hf_semscale model card
        in one commit (:func:`hf_semscale.hub.push_output_dir`); the local folder is never modified by the push.

        ``card_kwargs`` go to :func:`hf_semscale.hub.build_model_card` (base_model, dataset_name, metrics, ...);
        ``metrics`` default to the last evaluation in ``state.log_history``. The push is always blocking.
        Returns the commit URL on the main process, None elsewhere.
        """
        from .hub import push_output_dir

        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        self.save_model(_internal_call=True)  # every process (FSDP/DeepSpeed gather); writes semantic_scales.json
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()  # a checkpoint push of hub_strategy may still be running
        if "metrics" not in card_kwargs:
            evaluations = [logs for logs in self.state.log_history if any(k.startswith("eval_") for k in logs)]
            card_kwargs["metrics"] = evaluations[-1] if evaluations else None
        return push_output_dir(
            self.args.output_dir,
            self.hub_model_id or self.args.hub_model_id or Path(self.args.output_dir).name,
            token=token if token is not None else self.args.hub_token,
            private=private if private is not None else self.args.hub_private_repo,
            revision=revision if revision is not None else self.args.hub_revision,
            commit_message=commit_message,
            **card_kwargs,
        )

    def _remove_incomplete_checkpoints_after(self, step: int) -> None:
        """Delete the half-written ``checkpoint-N`` (N > ``step``) an interrupted run left in ``output_dir``.

        Resume never uses them, and the Trainer's rotation (``save_total_limit``) protects the highest-numbered
        (or newest) checkpoint: a stale incomplete one there would make it delete the complete ones. Only folders
        whose ``trainer_state.json`` (written last) is missing or unreadable go: an interrupted save's signature.
        """
        root = Path(self.args.output_dir)
        if not self.args.should_save or not root.is_dir():
            return
        for child in sorted(root.iterdir()):
            if not (_is_checkpoint_folder(child) and _step_of(child) > step):
                continue
            problem = checkpoint_problem(child, needs_semscale_state=False) if child.is_dir() else None
            if problem is not None:
                logger.warning("Removing incomplete checkpoint %s left by an interrupted run: %s", child, problem)
                shutil.rmtree(child, ignore_errors=True)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint=True`` picks the latest COMPLETE checkpoint and the
        pool, weights and stage are restored from it."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint found in output_dir {self.args.output_dir!r} to resume from.")
        elif resume_from_checkpoint is False:
            resume_from_checkpoint = None
        self._check_processes_agree(resume_from_checkpoint)
        start_step: int | None = 0
        if resume_from_checkpoint is not None:
            problem = checkpoint_problem(resume_from_checkpoint)
            if problem is not None:
                raise ValueError(f"Cannot resume from {resume_from_checkpoint}: {problem}")
            self._load_semscale_state(str(resume_from_checkpoint))
            start_step = _step_of(resume_from_checkpoint)
        else:
            self._reset_run_state()  # a fresh run (another train(), a hyper-parameter trial) starts from warm-up
            self._truncate_history(0)  # and drops the lines of an earlier (e.g. killed) run
        if start_step is not None:
            self._remove_incomplete_checkpoints_after(start_step)
        self._last_seen_step = -1
        output = super().train(
            resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
        )
        if self.args.should_save:  # also without any save (save_strategy="no")
            write_json_atomic(Path(self.args.output_dir) / SCALES_FILENAME, self.scale_report())
        return output
