"""``SemanticScaleBalancer``: dynamic semantic-scale-balanced (DSB) re-weighting for any training loop.

One small object holds the method's run state: the stage (warm-up, fill, re-weight), the per-class feature
pool, the class weights and semantic scales. A loop tells it where it is (:meth:`begin_step`), shows it the
head-input features of each training batch (:meth:`observe`) and asks it for the weighted loss
(:meth:`loss`). It does no file I/O and imports torch and the library's math only (no transformers); its
:meth:`state_dict` holds named tensors, so ``accelerator.register_for_checkpointing(balancer)`` saves it.

    balancer = SemanticScaleBalancer(class_counts, BalancerSettings(), comm=accelerator)
    balancer.start(max_steps, steps_per_epoch)
    for step, batch in enumerate(loader):
        balancer.begin_step(step)              # stage changes and weight updates; a record or None
        with capture.armed():                  # HeadInputCapture: the classifier head's input
            logits = model(**inputs).logits
        balancer.observe(capture.take(inputs), labels)
        accelerator.backward(balancer.loss(logits, labels))

With several processes, ``comm`` (an ``accelerate.Accelerator`` or :class:`~hf_semscale.dsb.comm.TorchDistributedComm`)
gathers every batch into every process's pool and splits the volume computations; every process then holds the
same pool and bit-identical weights. Every process must call :meth:`begin_step` and :meth:`observe` in step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.losses import IGNORE_INDEX, build_base_loss, check_class_labels, weighted_reduce
from ..core.scale import MIN_SAMPLES_FOR_SCALE, check_finite_features, marginal_effect_curves
from ..core.weighting import (
    count_power_weights,
    effective_number_weights,
    inverse_frequency_weights,
    normalize_weights,
    scale_equivalent_counts,
    semantic_scale_weights,
)
from .comm import (
    assert_same_on_all_processes,
    class_owners,
    gather_labelled_features,
    gather_rows,
    owned_class_scales,
    sharded_class_scales,
)
from .pool import FeaturePool, PoolFileError, estimate_pool_bytes, pool_capacities
from .settings import BalancerSettings

__all__ = ["SemanticScaleBalancer", "UpdateRecord", "STAGES", "stage_number", "classes_with_volume", "json_weights"]

logger = logging.getLogger(__name__)

STAGES = ("warmup", "fill", "reweight")


def stage_number(stage: str) -> int:
    """The stage's number as docs/method.md counts them: 1 warm-up, 2 fill, 3 re-weight (logged ``semscale/stage``)."""
    return STAGES.index(stage) + 1


def json_weights(weights: Tensor) -> list[float | None]:
    """``[C]`` class weights for JSON files: NaN (a class without training samples, no weight) as None (null)."""
    return [None if math.isnan(w) else w for w in weights.tolist()]


def classes_with_volume(scales: Tensor, pool_counts: Tensor) -> Tensor:
    """``[C]`` bool: classes whose scale was measured, i.e. at least 2 pool rows and a non-zero volume.

    The one rule behind the logged ``semscale/scale_*``, the report's summary and the model card: the others
    (absent classes, one-sample classes) are listed as ``classes_without_volume`` instead of averaged in."""
    return (torch.as_tensor(pool_counts).cpu() >= MIN_SAMPLES_FOR_SCALE) & (torch.as_tensor(scales).cpu() > 0)


@dataclass
class UpdateRecord:
    """What :meth:`SemanticScaleBalancer.begin_step` changed at optimizer step ``step``.

    ``measured``: the scales were re-measured (one line of ``semscale_history.jsonl``); ``scales`` ``[C]`` bits,
    ``weights`` ``[C]`` (None for classes without training samples), ``pool_counts`` ``[C]`` rows (None without a
    pool); ``logs``: ``semscale/*`` values for a training logger (``semscale/stage``: :func:`stage_number`).
    """

    step: int
    stage: str
    stage_changed: bool
    measured: bool
    scales: list[float]
    weights: list[float | None]
    pool_counts: list[int] | None
    logs: dict[str, float]

    def history_line(self) -> dict[str, Any]:
        """The JSON line of ``semscale_history.jsonl`` for this update."""
        return {
            "step": self.step,
            "stage": self.stage,
            "scales": self.scales,
            "weights": self.weights,
            "pool_counts": self.pool_counts,
        }


class SemanticScaleBalancer:
    """Stages, feature pool and class weights of DSB learning, for a plain, Accelerate or Trainer loop.

    Args:
        class_counts: ``[C]`` training samples per class (of the whole training set, on every process).
        settings: :class:`~hf_semscale.dsb.settings.BalancerSettings` (defaults if None).
        comm: None (one process), an ``accelerate.Accelerator``, or
            :class:`~hf_semscale.dsb.comm.TorchDistributedComm`: anything with ``num_processes``,
            ``process_index``, ``device`` and ``gather(tensor)`` (rank-order concatenation along dim 0).
        class_names: ``[C]`` names for warnings; default the ids.
        device: where the pool lives (default ``comm.device``, else CPU).
        knob_prefix: how error messages spell the settings (``"semscale_"`` for ``SemScaleConfig`` users).

    Attributes:
        class_weights: ``[C]`` float64, the weights the loss uses in stage ``reweight`` (ones before); NaN for a
            class without training samples (``class_counts`` 0): no loss term ever carries its label, so it has no
            weight, and no summary counts it. The loss refuses such a label in a weighted (training) batch.
        semantic_scales: ``[C]`` float64 bits, the latest measured scales (zeros before the first).
        equivalent_counts: ``[C]`` float64 for ``weighting='scale_equivalent_count'``, else None.
        stage: ``"warmup"``, ``"fill"`` or ``"reweight"``.
        pool: the :class:`~hf_semscale.dsb.pool.FeaturePool` (None until the first observed batch).
        num_updates: weight re-measurements so far.
    """

    def __init__(
        self,
        class_counts: Tensor | list[int],
        settings: BalancerSettings | None = None,
        *,
        comm: Any = None,
        class_names: list[str] | None = None,
        device: str | torch.device | None = None,
        knob_prefix: str = "",
    ):
        self.settings = settings if settings is not None else BalancerSettings()
        if not isinstance(self.settings, BalancerSettings):
            raise TypeError(f"settings must be a BalancerSettings, got {type(self.settings).__name__}")
        counts = torch.as_tensor(class_counts)
        if counts.ndim != 1 or counts.numel() < 2 or counts.is_floating_point() or bool((counts < 0).any()):
            raise ValueError(f"class_counts must be a [C] vector (C >= 2) of integer counts >= 0; got {class_counts!r}")
        self.class_counts = counts.to(torch.long).cpu()
        self.num_classes = int(self.class_counts.numel())
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} entries but class_counts {self.num_classes}")
        s = self.settings
        if s.weighting == "static" and len(s.class_weights) != self.num_classes:
            raise ValueError(
                f"class_weights has {len(s.class_weights)} entries but there are {self.num_classes} classes. "
                "Fix: one weight per class."
            )
        self.comm = comm
        self.knob_prefix = knob_prefix
        self.device = torch.device(device if device is not None else getattr(comm, "device", "cpu"))
        self.base_loss = build_base_loss(
            s.loss,
            class_counts=self.class_counts,
            label_smoothing=s.label_smoothing,
            focal_gamma=s.focal_gamma,
            ldam_max_margin=s.ldam_max_margin,
            ldam_scale=s.ldam_scale,
            logit_adjust_tau=s.logit_adjust_tau,
        )
        self.capacities = pool_capacities(self.class_counts, s.pool_capacity)
        self._budget_checked_dim: int | None = None
        self._owner: tuple[int, Tensor] | None = None  # (feature_dim, class_owner(feature_dim))
        self._warmup_steps: int | None = None
        self._fill_max_steps: int | None = None
        self.reset()

    # ------------------------------------------------------------------ run

    @property
    def uses_pool(self) -> bool:
        return self.settings.uses_pool

    @property
    def shards_pool(self) -> bool:
        """Whether each process stores only its classes' pool rows (``settings.shard_pool`` with several processes)."""
        return (
            self.settings.shard_pool
            and getattr(self.comm, "num_processes", 1) > 1
            and self.settings.weighting != "scale_equivalent_count"
        )

    def class_owner(self, feature_dim: int) -> Tensor:
        """``[C]`` long: the process storing (and measuring) each class in a sharded pool, -1 for classes of fewer
        than 2 rows (scale 0); the class-cost split of the capacities, the same on every process. Computed once
        per feature size (every weight update asks)."""
        if self._owner is None or self._owner[0] != feature_dim:
            self._owner = (feature_dim, class_owners(self.capacities.tolist(), feature_dim, self.comm.num_processes))
        return self._owner[1]

    def _stored_classes(self, feature_dim: int) -> Tensor | None:
        """``[C]`` bool: this process's classes in a sharded pool; None for an unsharded one."""
        return self.class_owner(feature_dim) == self.comm.process_index if self.shards_pool else None

    @property
    def capturing(self) -> bool:
        """Whether this step's training features should go to :meth:`observe`."""
        return self.uses_pool and self.stage != "warmup"

    @property
    def started(self) -> bool:
        """Whether :meth:`start` fixed the stage lengths."""
        return self._warmup_steps is not None

    @property
    def warmup_steps(self) -> int:
        return self._require_started(self._warmup_steps)

    @property
    def fill_max_steps(self) -> int:
        return self._require_started(self._fill_max_steps)

    def _require_started(self, value: int | None) -> int:
        if value is None:
            raise RuntimeError("SemanticScaleBalancer: call start(max_steps, steps_per_epoch) before the first step.")
        return value

    def reset(self) -> None:
        """The state of a run that has not started: stage warm-up, no pool, unit weights, zero scales."""
        self.class_weights = self._absent_as_nan(torch.ones(self.num_classes, dtype=torch.float64))
        self.semantic_scales = torch.zeros(self.num_classes, dtype=torch.float64)
        self.equivalent_counts: Tensor | None = None
        self.pool: FeaturePool | None = None
        self.stage = "warmup"
        self.num_updates = 0
        self._fill_start_step = -1
        self._reweight_began_step = -1
        self._last_update_step = -1
        self._step = -1
        self._loss_weights: Tensor | None = None

    def start(
        self,
        max_steps: int,
        steps_per_epoch: int | None = None,
        global_batch_size: int | None = None,
        reset: bool = True,
    ) -> None:
        """Fix the stage lengths of a run of ``max_steps`` optimizer steps and (``reset``) start from warm-up.

        The fill stage lasts at most ``settings.fill_max_steps``, else one epoch: ``steps_per_epoch`` optimizer
        steps (gradient accumulation included), else, for data of unknown length, ``sum(class_counts)`` samples
        at ``global_batch_size``. ``reset=False`` keeps a state restored by :meth:`load_state_dict` (resume).
        """
        s = self.settings
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if s.fill_max_steps >= 0:
            self._fill_max_steps = s.fill_max_steps
        elif steps_per_epoch is not None:
            self._fill_max_steps = max(1, int(steps_per_epoch))
        elif global_batch_size is not None:
            self._fill_max_steps = max(1, math.ceil(int(self.class_counts.sum()) / int(global_batch_size)))
        else:
            raise ValueError(
                "SemanticScaleBalancer.start: the fill stage is one epoch, but neither steps_per_epoch nor "
                "global_batch_size was given. Fix: pass one of them, or set settings.fill_max_steps."
            )
        self._warmup_steps = self._planned_warmup_steps(max_steps)
        if reset:
            self.reset()
        if self.settings.weighting != "none" and self.stage != "reweight":  # 'none' never re-weights by design
            self._warn_if_reweighting_cannot_start(max_steps)

    def _planned_warmup_steps(self, max_steps: int) -> int:
        """Optimizer steps of stage 1: up to ``reweight_start`` (less the fill for pool modes), else the
        ``warmup_steps`` / ``warmup_ratio`` of ``max_steps``. Needs ``_fill_max_steps``."""
        s = self.settings
        if s.reweight_start is None:
            return s.warmup_steps if s.warmup_steps >= 0 else int(s.warmup_ratio * max_steps)
        start_step = round(s.reweight_start * max_steps)
        if not self.uses_pool:
            return start_step
        fill_steps, p = self._fill_steps(), self.knob_prefix
        if start_step < fill_steps:
            logger.warning(
                "SemanticScaleBalancer: %sreweight_start=%g asks for class weights from step %d, but the fill stage "
                "before it takes up to %d optimizer steps from step 0: re-weighting starts at step %d at the latest "
                "(earlier once the pool is full). Fix: a later %sreweight_start, or a shorter fill (%sfill_max_steps, "
                "%spool_capacity).",
                p,
                s.reweight_start,
                start_step,
                fill_steps,
                fill_steps,
                p,
                p,
                p,
            )
        return max(0, start_step - fill_steps)

    def _fill_steps(self) -> int:
        """Most optimizer steps of stage 2: the fill is checked from the step after its first batch."""
        return max(1, self.fill_max_steps)

    @property
    def reweight_start_step(self) -> int:
        """The optimizer step by which class weights apply (stage 3): the end of warm-up for static modes, plus the
        fill for pool modes (which starts re-weighting earlier if the pool is full sooner). Needs :meth:`start`."""
        return self.warmup_steps + (self._fill_steps() if self.uses_pool else 0)

    def _warn_if_reweighting_cannot_start(self, max_steps: int) -> None:
        """Warn when the planned start of re-weighting is at or after ``max_steps``: the run would end unweighted."""
        start_step, warmup_steps, p = self.reweight_start_step, self.warmup_steps, self.knob_prefix
        if start_step < max_steps:
            return
        final_stage = "warmup" if warmup_steps >= max_steps or not self.uses_pool else "fill"
        plan = f"the warm-up ends at step {warmup_steps}"
        if self.uses_pool:
            plan += f" and the fill stage (up to {self._fill_steps()} steps) at step {start_step}"
            if final_stage == "fill" and self.settings.pool_capacity > 0:
                plan += f", unless the pool of min(n_c, {self.settings.pool_capacity}) rows per class is full sooner"
        fixes = []
        if not self.uses_pool or self._fill_steps() < max_steps:
            earliest = self._fill_steps() if self.uses_pool else 0
            fraction = math.ceil(max(0.4, earliest / max_steps) * 1000) / 1000
            if round(fraction * max_steps) < max_steps:
                instead = (
                    f" in place of {p}warmup_steps / {p}warmup_ratio" if self.settings.reweight_start is None else ""
                )
                fixes.append(
                    f"set {p}reweight_start={fraction:g}{instead} (weights from step {round(fraction * max_steps)})"
                )
        if self.uses_pool:
            fixes.append(f"a shorter fill ({p}fill_max_steps, or a smaller {p}pool_capacity that fills sooner)")
        if self.settings.reweight_start is None:
            fixes.append(f"fewer warm-up steps ({p}warmup_steps / {p}warmup_ratio)")
        fixes.append("more training steps")
        logger.warning(
            "SemanticScaleBalancer: re-weighting can never start in this run of max_steps=%d optimizer steps: %s. "
            "Training will end in stage '%s' with every class weight 1 (the plain %s loss, %sweighting=%r unused). "
            "Fix: %s.",
            max_steps,
            plan,
            final_stage,
            self.settings.loss,
            p,
            self.settings.weighting,
            ", or ".join(fixes),
        )

    def begin_step(self, step: int) -> UpdateRecord | None:
        """Stage transitions and weight updates for optimizer step ``step``; the same decisions on every process.

        Call once per optimizer step, before its forward passes (further calls with the same step do nothing).
        Returns what changed, or None.
        """
        if step == self._step:
            return None
        self._step = step
        warmup_steps, fill_max_steps = self.warmup_steps, self.fill_max_steps
        logs: dict[str, float] = {}
        stage_changed = measured = False
        if self.stage == "warmup" and step >= warmup_steps:
            self._enter_stage("fill" if self.uses_pool else "reweight", step, logs)
            stage_changed = True
        if self.stage == "fill" and self._pool_ready(step, fill_max_steps):
            self._enter_stage("reweight", step, logs)
            stage_changed = True
        if (
            self.stage == "reweight"
            and self.uses_pool
            and self.pool is not None
            and (step - self._reweight_began_step) % self.settings.update_interval == 0
            and step != self._last_update_step
        ):
            self._update_weights(step, logs)
            measured = True
        if not (stage_changed or measured):
            return None
        return UpdateRecord(
            step=step,
            stage=self.stage,
            stage_changed=stage_changed,
            measured=measured,
            scales=self.semantic_scales.tolist(),
            weights=json_weights(self.class_weights),
            pool_counts=self.pool.filled.tolist() if self.pool is not None else None,
            logs=logs,
        )

    def _pool_ready(self, step: int, fill_max_steps: int) -> bool:
        if self.pool is None:
            return False
        present = self.class_counts > 0
        full = bool((self.pool.filled[present] >= self.capacities[present]).all())
        return full or step - self._fill_start_step >= fill_max_steps

    def _enter_stage(self, stage: str, step: int, logs: dict[str, float]) -> None:
        logger.info("SemanticScaleBalancer: stage %s -> %s at step %d", self.stage, stage, step)
        self.stage = stage
        logs["semscale/stage"] = float(stage_number(stage))
        if stage == "fill":
            self._fill_start_step = step
        elif stage == "reweight":
            self._reweight_began_step = step
            if not self.uses_pool:
                self._set_weights(self._static_weights(), logs)
            elif self.pool is not None:
                self._warn_if_underfilled(step)

    def _warn_if_underfilled(self, step: int) -> None:
        short = [
            (c, have, want)
            for c, (have, want) in enumerate(zip(self.pool.filled.tolist(), self.capacities.tolist()))
            if have < want
        ]
        if short:
            listed = ", ".join(f"{self.class_names[c]} {have}/{want}" for c, have, want in short[:10])
            logger.warning(
                "SemanticScaleBalancer: re-weighting starts at step %d with %d classes under-filled (pool rows / "
                "capacity: %s%s): their first scales come from fewer features than they will have. Fix: a longer "
                "fill stage (%sfill_max_steps) if this is not intended.",
                step,
                len(short),
                listed,
                ", ..." if len(short) > 10 else "",
                self.knob_prefix,
            )

    def _static_weights(self) -> Tensor:
        s = self.settings
        if s.weighting == "inverse_frequency":
            return inverse_frequency_weights(self.class_counts, s.normalization)
        if s.weighting == "effective_number":
            return effective_number_weights(self.class_counts, s.cb_beta, s.normalization)
        if s.weighting == "count_power":
            return count_power_weights(self.class_counts, s.count_power, s.normalization)
        if s.weighting == "static":
            return normalize_weights(
                torch.tensor(s.class_weights, dtype=torch.float64), self.class_counts, s.normalization
            )
        return torch.ones(self.num_classes, dtype=torch.float64)

    def _absent_as_nan(self, weights: Tensor) -> Tensor:
        """``weights [C]`` float64 with NaN for the classes without training samples."""
        return weights.masked_fill(self.class_counts == 0, math.nan)

    def _set_weights(self, weights: Tensor, logs: dict[str, float]) -> None:
        """Keep ``weights [C]`` of the present classes (renormalised over them when a class is absent, so its weight
        takes no share of a 'sum' normalisation), NaN for absent ones; log their summary over present classes."""
        weights = weights.to(torch.float64).cpu()
        present = self.class_counts > 0
        if not bool(present.all()):
            weights = weights.clone()
            weights[present] = normalize_weights(
                weights[present], self.class_counts[present], self.settings.normalization
            )
        self.class_weights = self._absent_as_nan(weights)
        self._loss_weights = None
        logs.update(
            {"semscale/weight_min": float(weights[present].min()), "semscale/weight_max": float(weights[present].max())}
        )

    def _update_weights(self, step: int, logs: dict[str, float]) -> None:
        s = self.settings
        features, labels = self.pool.contents()
        if self.pool.is_sharded:  # each process measures the classes it stores
            owner = self.class_owner(self.pool.feature_dim)
            scales = owned_class_scales(
                self.comm, features, labels, self.num_classes, owner, normalize=s.normalize_features, alpha=s.alpha,
                step=step,
            ).cpu()  # fmt: skip
        else:
            scales = sharded_class_scales(
                self.comm, features, labels, self.num_classes, normalize=s.normalize_features, alpha=s.alpha, step=step
            ).cpu()
        self.semantic_scales = scales
        if s.weighting == "scale_equivalent_count":
            self.equivalent_counts = self._scale_equivalent_counts(features, labels, scales)
            weights = effective_number_weights(self.equivalent_counts, s.cb_beta, "none")
            weights = normalize_weights(weights, self.class_counts, s.normalization)
        else:
            weights = semantic_scale_weights(
                scales,
                s.gamma,
                self.class_counts,
                s.normalization,
                s.weight_floor,
                reverse=s.weighting == "reverse_scale",
            )
        if s.weighting == "dsb_effective_number":  # the mix: scale weights x count weights, renormalised
            count_weights = effective_number_weights(self.class_counts, s.cb_beta, s.normalization)
            weights = normalize_weights(weights * count_weights, self.class_counts, s.normalization)
        self._set_weights(weights, logs)
        self._last_update_step = step
        self.num_updates += 1
        measured = classes_with_volume(scales, self.pool.filled)
        if self.num_updates == 1:
            self._warn_about_classes_without_volume(measured)
        if bool(measured.any()):
            logs.update(
                {
                    "semscale/scale_min": float(scales[measured].min()),
                    "semscale/scale_mean": float(scales[measured].mean()),
                    "semscale/scale_max": float(scales[measured].max()),
                }
            )
        logs["semscale/updates"] = float(self.num_updates)

    def _warn_about_classes_without_volume(self, measured: Tensor) -> None:
        """Once per run: present classes whose scale cannot be measured (one pool row) weigh as the smallest scale."""
        unmeasured = [c for c in range(self.num_classes) if int(self.class_counts[c]) > 0 and not bool(measured[c])]
        if unmeasured:
            names = ", ".join(self.class_names[c] for c in unmeasured[:10])
            logger.warning(
                "SemanticScaleBalancer: %d classes have no measurable volume (fewer than %d pool rows, or identical "
                "features): %s%s. Their scale is 0, so they get the largest weight, as a class at the scale floor "
                "(weight_floor); they are listed as classes_without_volume in the report.",
                len(unmeasured),
                MIN_SAMPLES_FOR_SCALE,
                names,
                ", ..." if len(unmeasured) > 10 else "",
            )

    def _scale_equivalent_counts(self, features: Tensor, labels: Tensor, scales: Tensor) -> Tensor:
        """``[C]`` float64: the count at which the head classes' mean marginal-effect curve (on the pool, the
        same alpha / normalisation as the scales) reaches each class's scale. Head classes: pool rows at least
        half the largest class's. Computed identically on every process (same pool, fixed seed)."""
        s = self.settings
        filled = self.pool.filled
        head = torch.nonzero(filled >= max(2, int(filled.max()) // 2)).flatten()
        top = int(filled[head].min())
        sizes = sorted({max(2, round(top ** (k / 8))) for k in range(1, 9)})
        keep = torch.isin(labels.cpu(), head)
        curves = marginal_effect_curves(
            features[keep.to(features.device)],
            labels[keep.to(labels.device)],
            self.num_classes,
            sizes=sizes,
            draws=2,
            seed=0,
            normalize=s.normalize_features,
            alpha=s.alpha,
        )
        reference = curves.mean[head].mean(dim=0)
        return scale_equivalent_counts(scales, sizes, reference)

    # ------------------------------------------------------------------ features and loss

    def observe(self, features: Tensor | None, labels: Tensor, labels_checked: bool = False) -> None:
        """Add this process's training features ``[B, d]`` of ``labels [B]`` (-100 rows skipped) to the pool of
        every process. Outside the fill / re-weight stages (or for static modes) it does nothing.
        ``labels_checked``: the caller validated ``labels`` (``check_class_labels``) for this batch already."""
        if not self.capturing:
            return
        if features is None:
            raise RuntimeError(
                "SemanticScaleBalancer.observe got no features: the feature module was not called in this forward "
                "pass. Fix: capture the input of the module that the classifier reads (feature_module)."
            )
        if not labels_checked:
            check_class_labels(labels, self.num_classes)
        self._refuse_labels_without_samples(labels)
        features = features.detach().float()
        if self.settings.normalize_features:
            features = F.normalize(features, dim=-1)
        features, labels = gather_labelled_features(self.comm, features, labels.to(features.device), step=self._step)
        try:
            check_finite_features(features, labels)
            if self.pool is None:
                self._create_pool(features.shape[1])
            self.pool.add(
                features, labels, labels_checked=True
            )  # refuses values its dtype cannot hold (float16 > 65504)
        except ValueError as err:
            raise ValueError(f"At step {self._step}: {err}") from None

    def _refuse_labels_without_samples(self, labels: Tensor) -> None:
        """Raise ``ValueError`` if training ``labels [B]`` hold a class that ``class_counts`` says has no sample (it
        has no pool rows and no weight). One host sync, only when some class is absent."""
        absent = self.class_counts == 0
        if not bool(absent.any()):
            return
        labelled = labels[labels != IGNORE_INDEX].to(torch.long)
        found = absent.to(labelled.device)[labelled]
        if bool(found.any()):
            classes = sorted(set(labelled[found].tolist()))
            raise ValueError(
                f"A training batch holds labels {classes}, but class_counts gives these classes 0 training samples, "
                "so they have no pool rows and no class weight. Fix: pass class_counts counted on the whole training "
                "set (every process, every shard)."
            )

    def _create_pool(self, feature_dim: int) -> None:
        assert_same_on_all_processes(
            self.comm, "SemanticScaleBalancer", step=self._step, num_labels=self.num_classes, feature_dim=feature_dim
        )
        self.check_pool_budget(feature_dim)
        stored = self._stored_classes(feature_dim)
        self.pool = FeaturePool(
            self.capacities, feature_dim, self.settings.pool_dtype, device=self.device, stored=stored
        )

    def loss(
        self,
        logits: Tensor,
        labels: Tensor,
        num_items_in_batch: Tensor | int | None = None,
        weighted: bool = True,
        labels_checked: bool = False,
    ) -> Tensor:
        """``sum_i w_{y_i} l_i / num_items_in_batch`` (default: the labelled samples of this batch) of the base loss.

        ``logits [B, C]``, ``labels [B]`` (-100 ignored). The class weights apply in stage ``reweight`` and when
        ``weighted`` (pass ``weighted=False`` for evaluation losses); ``labels_checked`` as in :meth:`observe`."""
        weights = None
        if weighted and self.stage == "reweight":
            self._refuse_labels_without_samples(labels)
            if self._loss_weights is None or self._loss_weights.device != logits.device:
                # absent classes' NaN as 0: finite even for an IGNORE_INDEX row indexed as class 0
                self._loss_weights = self.class_weights.nan_to_num(0.0).to(device=logits.device, dtype=torch.float32)
            weights = self._loss_weights
        per_sample = self.base_loss(logits, labels, labels_checked=labels_checked)
        return weighted_reduce(per_sample, labels, weights, num_items_in_batch)

    # ------------------------------------------------------------------ pool size

    def check_pool_budget(self, feature_dim: int) -> None:
        """Log the pool's storage size; over ``settings.max_pool_memory_mb``, raise ``MemoryError`` naming the
        settings that fit. Checked once per feature size."""
        if self._budget_checked_dim == feature_dim:
            return
        s = self.settings
        stored = self._stored_classes(feature_dim)
        capacities = self.capacities if stored is None else self.capacities * stored  # this process's rows
        rows = int(capacities.sum())
        needed = estimate_pool_bytes(capacities, feature_dim, s.pool_dtype)
        budget = s.max_pool_memory_mb * 2**20
        logger.info(
            "SemanticScaleBalancer pool: %d classes, %d rows (capacity min(n_c, %s)), d=%d, %s: %d bytes = %.1f MiB "
            "(budget %g MiB; each weight update briefly holds ~2 more copies)",
            self.num_classes,
            rows,
            s.pool_capacity or "n_c",
            feature_dim,
            s.pool_dtype,
            needed,
            needed / 2**20,
            s.max_pool_memory_mb,
        )
        if needed <= budget:
            self._budget_checked_dim = feature_dim
            return
        itemsize = estimate_pool_bytes(torch.ones(1, dtype=torch.long), 1, s.pool_dtype)
        k = _largest_fitting_capacity(self.class_counts, feature_dim, itemsize, budget)
        p = self.knob_prefix
        fixes = []
        if k is not None:
            fitted = estimate_pool_bytes(pool_capacities(self.class_counts, k), feature_dim, s.pool_dtype)
            fixes.append(f"set {p}pool_capacity={k} (rows per class; {fitted / 2**20:.2f} MiB)")
        if itemsize > 2:
            half = estimate_pool_bytes(capacities, feature_dim, "float16")
            fixes.append(f"set {p}pool_dtype='bfloat16' or 'float16' ({half / 2**20:.2f} MiB)")
        fixes.append(f"raise {p}max_pool_memory_mb")
        too_big = (
            ""
            if k is not None
            else (f" Even one row per class ({self.num_classes * feature_dim * itemsize} bytes) is over the budget.")
        )
        raise MemoryError(
            f"The feature pool would take {needed / 2**20:.2f} MiB, over {p}max_pool_memory_mb="
            f"{s.max_pool_memory_mb:g} ({self.num_classes} classes, {rows} rows, d={feature_dim}, {s.pool_dtype})."
            f"{too_big} Fix: {', or '.join(fixes)}. `hf-semscale plan` shows each setting's cost per process."
        )

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Tensor]:
        """Named tensors only (safetensors- and ``register_for_checkpointing``-ready). The whole pool, also when it
        is sharded (then every process must call this: the rows are gathered), so a state resumes on any number
        of processes."""
        counters = [
            self._fill_start_step,
            self._reweight_began_step,
            self._last_update_step,
            self.num_updates,
            STAGES.index(self.stage),
        ]
        tensors = {
            "semscale.class_weights": self.class_weights,
            "semscale.semantic_scales": self.semantic_scales,
            "semscale.class_counts": self.class_counts,
            "semscale.counters": torch.tensor(counters, dtype=torch.long),
        }
        if self.pool is not None and self.pool.is_sharded:
            features, labels = gather_rows(self.comm, *self.pool.contents(), step=self._step)
            tensors.update(self.pool.resharded(None, (features, labels)).state_dict())
        elif self.pool is not None:
            tensors.update(self.pool.state_dict())
        return tensors

    def load_state_dict(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Restore :meth:`state_dict`. The state is untrusted: shapes and values are checked first, and a refused
        state (:class:`~hf_semscale.dsb.pool.PoolFileError` naming ``source``) leaves the balancer as it was."""
        fix = "Fix: resume with the model and label set of the original run, or start a fresh run."
        c = self.num_classes
        for key, shape in (
            ("semscale.class_weights", (c,)),
            ("semscale.semantic_scales", (c,)),
            ("semscale.class_counts", (c,)),
            ("semscale.counters", (5,)),
        ):
            value = state.get(key)
            if value is None or tuple(value.shape) != shape or (key.endswith("counters") and value.is_floating_point()):
                found = "missing" if value is None else f"{value.dtype} of shape {tuple(value.shape)}"
                raise PoolFileError(f"{source}: {key} is {found}, expected shape {shape} ({c} classes). {fix}")
        weights = state["semscale.class_weights"].to(torch.float64).cpu()
        scales = state["semscale.semantic_scales"].to(torch.float64).cpu()
        counters = state["semscale.counters"].tolist()
        present = self.class_counts > 0
        if not bool((torch.isfinite(weights[present]) & (weights[present] > 0)).all()):
            raise PoolFileError(
                f"{source}: semscale.class_weights must be finite and positive for the classes with training samples, "
                f"got {weights.tolist()}"
            )
        if not bool((torch.isfinite(scales) & (scales >= 0)).all()):
            raise PoolFileError(f"{source}: semscale.semantic_scales must be finite and >= 0, got {scales.tolist()}")
        if not 0 <= counters[-1] < len(STAGES):
            raise PoolFileError(f"{source}: unknown stage index {counters[-1]} in semscale.counters")
        if not torch.equal(state["semscale.class_counts"].to(torch.long).cpu(), self.class_counts):
            raise PoolFileError(
                f"{source}: the training class counts differ from this run's. Fix: resume on the same training set."
            )
        pool = None
        if "pool.storage" in state:
            storage = state["pool.storage"]
            if storage.ndim != 2 or storage.shape[1] < 1:
                raise PoolFileError(f"{source}: pool.storage has shape {tuple(storage.shape)}, expected [rows, d]")
            pool = FeaturePool(self.capacities, int(storage.shape[1]), self.settings.pool_dtype, device=self.device)
            pool.load_state_dict(state, source=source)
            stored = self._stored_classes(pool.feature_dim)
            if stored is not None:
                pool = pool.resharded(stored)  # keep this process's classes
        # Everything checked: restore.
        self.pool = pool  # None: saved before the first observed batch
        self._fill_start_step, self._reweight_began_step, self._last_update_step, self.num_updates, stage = counters
        self.stage = STAGES[stage]
        self.semantic_scales, self.class_weights = scales, self._absent_as_nan(weights)  # older states: finite there
        self._loss_weights = None
        self._step = -1


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
