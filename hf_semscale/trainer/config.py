"""``SemScaleConfig``: ``TrainingArguments`` plus the knobs of dynamic semantic-scale-balanced learning.

Every ``semscale_<name>`` field is :class:`~hf_semscale.dsb.settings.BalancerSettings`' knob ``<name>``: the same
default, help text, choices and validity rule (defined once, in ``settings.py``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from transformers.integrations import is_tensorboard_available

from ..dsb.settings import (
    BASE_LOSSES,
    DYNAMIC_WEIGHTING_MODES,
    WEIGHTING_MODES,
    BalancerSettings,
    knob_field,
    validate_settings,
)

__all__ = ["SemScaleConfig", "WEIGHTING_MODES", "DYNAMIC_WEIGHTING_MODES", "BASE_LOSSES"]

PREFIX = "semscale_"


@dataclass
class SemScaleConfig(TrainingArguments):
    """Training arguments for :class:`~hf_semscale.SemScaleTrainer`: ``TrainingArguments`` and the
    :class:`~hf_semscale.dsb.settings.BalancerSettings` knobs as ``semscale_*`` fields (docs/method.md).

    The base loss's label smoothing is ``TrainingArguments.label_smoothing_factor``.
    """

    semscale_weighting: str = knob_field("weighting")
    semscale_loss: str = knob_field("loss")
    semscale_warmup_steps: int = knob_field("warmup_steps")
    semscale_warmup_ratio: float = knob_field("warmup_ratio")
    semscale_reweight_start: float | None = knob_field("reweight_start")
    semscale_update_interval: int = knob_field("update_interval")
    semscale_fill_max_steps: int = knob_field("fill_max_steps")
    semscale_pool_capacity: int = knob_field("pool_capacity")
    semscale_pool_dtype: str = knob_field("pool_dtype")
    semscale_max_pool_memory_mb: float = knob_field("max_pool_memory_mb")
    semscale_shard_pool: bool = knob_field("shard_pool")
    semscale_gamma: float = knob_field("gamma")
    semscale_normalization: str = knob_field("normalization")
    semscale_weight_floor: float = knob_field("weight_floor")
    semscale_alpha: float | None = knob_field("alpha")
    semscale_normalize_features: bool = knob_field("normalize_features")
    semscale_cb_beta: float = knob_field("cb_beta")
    semscale_count_power: float = knob_field("count_power")
    semscale_class_weights: list[float] | None = knob_field("class_weights")
    semscale_focal_gamma: float = knob_field("focal_gamma")
    semscale_ldam_max_margin: float = knob_field("ldam_max_margin")
    semscale_ldam_scale: float = knob_field("ldam_scale")
    semscale_logit_adjust_tau: float = knob_field("logit_adjust_tau")
    semscale_feature_module: str | None = field(
        default=None,
        metadata={"help": "Dotted name of the module whose INPUT is the feature; None: the classification head."},
    )

    def __post_init__(self):
        super().__post_init__()
        validate_settings(self._knob_values(), prefix=PREFIX)
        if "tensorboard" in self.report_to and not is_tensorboard_available():
            raise ImportError(
                'report_to="tensorboard" needs the tensorboard package, which is not installed. '
                'Fix: pip install "hf_semscale[tensorboard]" (or drop "tensorboard" from report_to).'
            )

    def check_overrides(self, values: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` for a name in ``values`` (e.g. a hyper-parameter trial's) that is not a field of
        these arguments; a misspelt knob would otherwise be skipped and the run train with its default."""
        unknown = [name for name in values if name not in self.__dataclass_fields__]
        if unknown:
            knobs = sorted(k for k in self.__dataclass_fields__ if k.startswith(PREFIX))
            close = {name: difflib.get_close_matches(name, list(self.__dataclass_fields__), n=1) for name in unknown}
            hints = "; ".join(f"{name!r}: did you mean {match[0]!r}?" for name, match in close.items() if match)
            raise ValueError(
                f"{unknown} are not fields of {type(self).__name__}, so they would be ignored. {hints} "
                f"Fix: name TrainingArguments fields or one of the knobs {knobs}."
            )

    def _knob_values(self) -> dict:
        values = {
            name: getattr(self, PREFIX + name)
            for name in BalancerSettings.__dataclass_fields__
            if name != "label_smoothing"
        }
        values["label_smoothing"] = self.label_smoothing_factor
        return values

    def balancer_settings(self) -> BalancerSettings:
        """These arguments' knobs as the balancer's settings; ``ValueError`` naming the ``semscale_*`` field for an
        invalid value (fields set after construction, e.g. by a hyper-parameter trial, are checked here)."""
        values = self._knob_values()
        validate_settings(values, prefix=PREFIX)
        return BalancerSettings(**values)

    def semscale_settings(self) -> dict:
        """The ``semscale_*`` fields as a JSON-ready dict (for reports and model cards)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k.startswith(PREFIX)}
