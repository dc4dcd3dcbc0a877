"""``SemScaleTrainer``: dynamic semantic-scale-balanced (DSB) learning inside ``transformers.Trainer``.

A thin adapter: the per-step work is :class:`~hf_semscale.trainer.balancing.SemScaleBalancing`'s (the callback that
builds and advances the balancer, the ``compute_loss_func`` that feeds it the batch and takes its weighted loss),
the same pieces a plain ``transformers.Trainer`` uses; this class adds checkpoint save / resume of the balancer
state (``checkpoints.py``) beside the Trainer's own files, ``semantic_scales.json`` and the model card.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..dsb.comm import MAX_GATHERED_LABEL, apply_process_group_timeout, assert_same_on_all_processes
from .balancing import SemScaleBalancing, SemScaleCallback
from .checkpoints import (
    HISTORY_FILENAME,
    STATE_FILENAME,
    checkpoint_problem,
    latest_complete_checkpoint,
    remove_incomplete_checkpoints_after,
    step_of,
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


class SemScaleTrainer(Trainer):
    """A drop-in ``transformers.Trainer`` for single-label classification with DSB re-weighting.

    Args (beyond ``Trainer``'s): ``class_counts``, ``class_names``, ``feature_module``, ``feature_pool_fn`` as in
    :class:`~hf_semscale.trainer.balancing.SemScaleBalancing` (class counts and ``ClassLabel`` names are read from
    the training set's ``labels``/``label`` column when omitted).

    Attributes:
        balancing: the :class:`~hf_semscale.trainer.balancing.SemScaleBalancing` (callback + loss) of this trainer.
        balancer: the run's :class:`~hf_semscale.dsb.balancer.SemanticScaleBalancer`, built from ``args`` when
            training starts (so hyper-parameter trial values take effect).
        class_weights, semantic_scales, stage, pool: the balancer's (``[C]`` float64 weights, NaN for classes
            without training samples; ``[C]`` float64 bits; ``"warmup"``/``"fill"``/``"reweight"``; the feature
            pool or None).
    """

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
        self.balancing = SemScaleBalancing(
            self.model,
            self.args,
            train_dataset=self.train_dataset,
            class_counts=class_counts,
            class_names=class_names,
            feature_module=feature_module,
            feature_pool_fn=feature_pool_fn,
            comm=lambda: self.accelerator,  # a hyper-parameter trial builds a new one
        )
        self.balancing.callback.writes_reports = False  # _save_checkpoint writes them, after the state file
        # The Trainer counts the labelled samples of all accumulated micro-batches (and, with
        # average_tokens_across_devices, of all processes) for a compute_loss_func and passes them as
        # num_items_in_batch; the model itself gets no loss arguments (it runs without labels).
        self.compute_loss_func = self.balancing.loss
        self.model_accepts_loss_kwargs = False
        # Before the user's callbacks: their on_train_begin / on_step_begin see this step's balancer (started, staged).
        self.callback_handler.callbacks.insert(1, self.balancing.callback)  # after DefaultFlowCallback

    # ------------------------------------------------------------------ the balancer's state

    @property
    def balancer(self):
        return self.balancing.balancer

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

    @property
    def class_counts(self) -> Tensor:
        return self.balancing.class_counts

    @property
    def class_names(self) -> list[str]:
        return self.balancing.class_names

    @property
    def num_labels(self) -> int:
        return self.balancing.num_labels

    # ------------------------------------------------------------------ the run

    def hyperparameter_search(self, hp_space: Callable | None = None, *args: Any, **kwargs: Any):
        """``Trainer.hyperparameter_search``; a trial value whose name is not a field of ``SemScaleConfig`` (e.g. a
        misspelt ``semscale_*`` knob) raises instead of being skipped, and every trial trains with its own
        ``semscale_*`` values (an invalid one raises naming the field)."""
        if hp_space is not None:
            space = hp_space

            def hp_space(trial: Any) -> dict[str, Any]:
                params = space(trial)
                self.args.check_overrides(params)
                return params

        return super().hyperparameter_search(hp_space, *args, **kwargs)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ):
        """``Trainer.compute_loss`` with :meth:`SemScaleBalancing.loss`: ``sum_i w_{y_i} l_i / num_items_in_batch``
        (unweighted in evaluation); features are captured in training."""
        inputs = dict(inputs)  # Trainer.compute_loss pops the labels: leave the caller's batch whole
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if return_outputs and not isinstance(outputs, Mapping):
            # prediction_step drops element 0 of a tuple output as the loss; the model ran without labels.
            outputs = (loss, *outputs)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Merge the stage / scale / weight summaries gathered since the last log into training logs."""
        super().log(self.balancing.merged_logs(logs), start_time)

    # ------------------------------------------------------------------ persistence

    def scale_report(self) -> dict[str, Any]:
        """The current ``semantic_scales.json`` content (:meth:`SemScaleBalancing.scale_report`)."""
        return self.balancing.scale_report(self.state.global_step, self.state.max_steps)

    def _write_scale_report(self, output_dir: str | None = None, plots: bool = True) -> None:
        """``semantic_scales.json`` and (``plots``) its PNG plots in ``output_dir`` (default ``args.output_dir``)."""
        if self.args.should_save:
            self.balancing.write_scale_report(
                output_dir or self.args.output_dir, self.state.global_step, self.state.max_steps, plots=plots
            )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        self._write_scale_report(output_dir, plots=not _internal_call)  # internal: checkpoints, push_to_hub

    def _save_semscale_state(self, checkpoint_dir: str) -> None:
        """Every process calls this (a class-sharded pool is gathered first); the main process writes the file."""
        self.balancing.save_state(checkpoint_dir, self.state.global_step, self.args.should_save)

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
            start_step = step_of(resume_from_checkpoint)
        self.balancing.resume(None if resume_from_checkpoint is None else str(resume_from_checkpoint))
        if start_step is not None and self.args.should_save:
            remove_incomplete_checkpoints_after(self.args.output_dir, start_step)
        try:
            output = super().train(
                resume_from_checkpoint=resume_from_checkpoint,
                trial=trial,
                ignore_keys_for_eval=ignore_keys_for_eval,
                **kwargs,
            )
        finally:
            self.balancing.resume(None)
        self._write_scale_report()  # also without any save (save_strategy="no")
        return output


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
    if trainer.balancing.capture is not None:
        feature_dim = trainer.balancing.head_feature_dim() or -1
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
