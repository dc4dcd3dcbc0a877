"""``SemScaleConfig``: ``TrainingArguments`` plus the knobs of dynamic semantic-scale-balanced learning."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

__all__ = ["SemScaleConfig", "WEIGHTING_MODES", "DYNAMIC_WEIGHTING_MODES", "BASE_LOSSES"]

WEIGHTING_MODES = (
    "dsb",
    "none",
    "inverse_frequency",
    "effective_number",
    "count_power",
    "dsb_effective_number",
    "reverse_scale",
    "scale_equivalent_count",
)
DYNAMIC_WEIGHTING_MODES = ("dsb", "dsb_effective_number", "reverse_scale", "scale_equivalent_count")
"""The modes that fill a feature pool and re-measure semantic scales during training."""
BASE_LOSSES = ("ce", "focal", "ldam", "balanced_softmax")
POOL_DTYPES = ("float16", "bfloat16", "float32", "float64")
MAX_WEIGHT_RATIO = 1e12
"""Largest allowed ``semscale_weight_floor ** -semscale_gamma`` (the widest possible class-weight ratio)."""


@dataclass
class SemScaleConfig(TrainingArguments):
    """Training arguments for :class:`~hf_semscale.SemScaleTrainer`.

    Stages (docs/method.md): ``warmup`` (plain base loss) for ``semscale_warmup_steps``; ``fill`` (features
    enter the per-class pool, loss still plain) until every class's pool holds ``min(n_c, K)`` rows or
    ``semscale_fill_max_steps`` have passed; ``reweight`` (weights re-measured every
    ``semscale_update_interval`` optimizer steps). Static weighting modes skip the pool and apply their
    weights from the end of warm-up (deferred re-weighting).
    """

    semscale_weighting: str = field(
        default="dsb",
        metadata={
            "help": "Class weights: 'dsb' (dynamic, from semantic scales), 'none' (the identical base loss, "
            "unweighted), 'inverse_frequency', 'effective_number' or 'count_power' (static, from class counts, "
            "n_c ** -semscale_count_power; deferred to the end of warm-up, i.e. DRW), 'dsb_effective_number' (a "
            "mix, not DSB alone: the dsb weights times the effective-number weights, renormalised), "
            "'reverse_scale' (a control: weights GROW with the scale, (S_c / max S) ** gamma) or "
            "'scale_equivalent_count' (each scale mapped to the sample count at which the head classes' "
            "marginal-effect curve, measured on the pool, reaches it; effective-number weights of those counts).",
            "choices": list(WEIGHTING_MODES),
        },
    )
    semscale_loss: str = field(
        default="ce",
        metadata={"help": "Per-sample base loss the weights apply to.", "choices": list(BASE_LOSSES)},
    )
    semscale_warmup_steps: int = field(
        default=-1,
        metadata={"help": "Optimizer steps of stage 1 (plain loss, no pool). -1: use semscale_warmup_ratio."},
    )
    semscale_warmup_ratio: float = field(
        default=0.3,
        metadata={
            "help": "Stage-1 length as a fraction of max_steps, used when semscale_warmup_steps is -1. 0.3 won the "
            "validation grid {0.3, 0.5} on CIFAR-10-LT and tied on BANKING77 (benchmarks/results/long_tail.md)."
        },
    )
    semscale_update_interval: int = field(
        default=20,
        metadata={"help": "Optimizer steps between two re-measurements of the scales (stage 3)."},
    )
    semscale_fill_max_steps: int = field(
        default=-1,
        metadata={
            "help": "Longest stage 2 in optimizer steps; re-weighting starts earlier once the pool is full. "
            "-1: one epoch."
        },
    )
    semscale_pool_capacity: int = field(
        default=0,
        metadata={"help": "K: rows per class in the pool are min(n_c, K). 0: n_c (the latest feature of every sample)."},
    )
    semscale_pool_dtype: str = field(
        default="float16",
        metadata={"help": "Storage dtype of the pool; scales are computed in float64.", "choices": list(POOL_DTYPES)},
    )
    semscale_max_pool_memory_mb: float = field(
        default=4096.0,
        metadata={"help": "Stop before training if the pool would take more memory than this (MiB)."},
    )
    semscale_gamma: float = field(
        default=1.0, metadata={"help": "DSB strength: w_c ∝ (max_j S_j / S_c) ** gamma."}
    )
    semscale_normalization: str = field(
        default="mean",
        metadata={
            "help": "Weight normalisation: 'mean' (mean per-sample weight 1 under the training distribution), "
            "'sum' (sum_c w_c = C) or 'none'.",
            "choices": ["mean", "sum", "none"],
        },
    )
    semscale_weight_floor: float = field(
        default=0.05,
        metadata={"help": "A scale is clamped to at least this fraction of the largest, so weights stay finite."},
    )
    semscale_alpha: float | None = field(
        default=None, metadata={"help": "alpha of the volume formula; None: the feature dimension d."}
    )
    semscale_normalize_features: bool = field(
        default=True, metadata={"help": "L2-normalise each feature before it enters the pool and the volume."}
    )
    semscale_feature_module: str | None = field(
        default=None,
        metadata={"help": "Dotted name of the module whose INPUT is the feature; None: the classification head."},
    )
    semscale_cb_beta: float = field(
        default=0.9999, metadata={"help": "beta of the effective-number weights (semscale_weighting='effective_number' or 'dsb_effective_number')."}
    )
    semscale_count_power: float = field(
        default=1.0, metadata={"help": "p of semscale_weighting='count_power': w_c ∝ n_c ** -p (1: inverse frequency)."}
    )
    semscale_focal_gamma: float = field(default=2.0, metadata={"help": "Focusing parameter of the focal loss."})
    semscale_ldam_max_margin: float = field(default=0.5, metadata={"help": "Largest LDAM margin (the rarest class)."})
    semscale_ldam_scale: float = field(
        default=1.0,
        metadata={"help": "LDAM logit scale s. Cao et al. use 30 with a cosine (normalised) classifier; 1 suits a plain linear head."},
    )
    semscale_logit_adjust_tau: float = field(
        default=1.0, metadata={"help": "tau of the logit adjustment; 1 is balanced softmax."}
    )

    def __post_init__(self):
        super().__post_init__()
        checks = {
            "semscale_weighting": (self.semscale_weighting, WEIGHTING_MODES),
            "semscale_loss": (self.semscale_loss, BASE_LOSSES),
            "semscale_pool_dtype": (self.semscale_pool_dtype, POOL_DTYPES),
            "semscale_normalization": (self.semscale_normalization, ("mean", "sum", "none")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")
        if self.semscale_update_interval < 1:
            raise ValueError(f"semscale_update_interval must be >= 1, got {self.semscale_update_interval}")
        if self.semscale_warmup_steps < -1:
            raise ValueError("semscale_warmup_steps must be >= 0, or -1 to use semscale_warmup_ratio")
        if not 0.0 <= self.semscale_warmup_ratio <= 1.0:
            raise ValueError(f"semscale_warmup_ratio must be in [0, 1], got {self.semscale_warmup_ratio}")
        if not 0.0 < self.semscale_weight_floor <= 1.0:
            raise ValueError(f"semscale_weight_floor must be in (0, 1], got {self.semscale_weight_floor}")
        if self.semscale_gamma < 0:
            raise ValueError(f"semscale_gamma must be >= 0, got {self.semscale_gamma}")
        if self.semscale_weight_floor ** -self.semscale_gamma > MAX_WEIGHT_RATIO:
            raise ValueError(
                f"semscale_gamma={self.semscale_gamma} with semscale_weight_floor={self.semscale_weight_floor} allows a "
                f"largest/smallest class-weight ratio of {self.semscale_weight_floor ** -self.semscale_gamma:.3g}, over "
                f"{MAX_WEIGHT_RATIO:.0e}: the float32 loss weights would lose the small classes' signal or overflow. "
                "Fix: lower semscale_gamma or raise semscale_weight_floor."
            )
        if self.semscale_alpha is not None and self.semscale_alpha <= 0:
            raise ValueError(f"semscale_alpha must be positive or None, got {self.semscale_alpha}")
        if self.semscale_pool_capacity < 0:
            raise ValueError("semscale_pool_capacity must be >= 0 (0 keeps every sample's latest feature)")
        if not 0.0 <= self.semscale_cb_beta < 1.0:
            raise ValueError(f"semscale_cb_beta must be in [0, 1), got {self.semscale_cb_beta}")
        if not 0.0 <= self.semscale_count_power <= 4.0:
            raise ValueError(f"semscale_count_power must be in [0, 4], got {self.semscale_count_power}")
        if self.semscale_fill_max_steps < -1:
            raise ValueError("semscale_fill_max_steps must be >= 0, or -1 for one epoch")
        if not self.semscale_max_pool_memory_mb > 0:
            raise ValueError(f"semscale_max_pool_memory_mb must be positive, got {self.semscale_max_pool_memory_mb}")
        if self.semscale_focal_gamma < 0 or self.semscale_ldam_max_margin < 0 or self.semscale_ldam_scale <= 0:
            raise ValueError(
                "semscale_focal_gamma and semscale_ldam_max_margin must be >= 0 and semscale_ldam_scale > 0; got "
                f"{self.semscale_focal_gamma}, {self.semscale_ldam_max_margin}, {self.semscale_ldam_scale}"
            )

    def semscale_settings(self) -> dict:
        """The ``semscale_*`` fields as a JSON-ready dict (for reports and model cards)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k.startswith("semscale_")}
