"""``BalancerSettings``: the knobs of dynamic semantic-scale-balanced learning, as a plain dataclass.

The one place for every knob's default, help text, choices and validity rule. ``SemScaleConfig`` (the
``TrainingArguments`` subclass) declares the same knobs as ``semscale_<name>`` fields built from these and
validates them with :func:`validate_settings`, so the Trainer and a plain loop cannot disagree.
This module imports nothing beyond the standard library and ``hf_semscale.core.losses`` (torch).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ..core.losses import BASE_LOSSES, DEFAULT_LOSS_SETTINGS

__all__ = [
    "BalancerSettings",
    "validate_settings",
    "knob_field",
    "WEIGHTING_MODES",
    "DYNAMIC_WEIGHTING_MODES",
    "BASE_LOSSES",
    "POOL_DTYPES",
    "NORMALIZATIONS",
    "MAX_WEIGHT_RATIO",
]

WEIGHTING_MODES = (
    "dsb",
    "none",
    "inverse_frequency",
    "effective_number",
    "count_power",
    "static",
    "dsb_effective_number",
    "reverse_scale",
    "scale_equivalent_count",
)
DYNAMIC_WEIGHTING_MODES = ("dsb", "dsb_effective_number", "reverse_scale", "scale_equivalent_count")
"""The modes that fill a feature pool and re-measure semantic scales during training."""
POOL_DTYPES = ("float16", "bfloat16", "float32", "float64")
NORMALIZATIONS = ("mean", "sum", "none")
MAX_WEIGHT_RATIO = 1e12
"""Largest allowed ``weight_floor ** -gamma`` (the widest possible class-weight ratio)."""


def _knob(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = list(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class BalancerSettings:
    """How :class:`~hf_semscale.dsb.balancer.SemanticScaleBalancer` stages, measures and weights (docs/method.md).

    Stages: ``warmup`` (plain base loss) for ``warmup_steps``; ``fill`` (features enter the per-class pool, loss
    still plain) until every class's pool holds ``min(n_c, K)`` rows or ``fill_max_steps`` have passed;
    ``reweight`` (weights re-measured every ``update_interval`` optimizer steps). Static modes skip the pool and
    apply their weights from the end of warm-up (deferred re-weighting). ``reweight_start`` places the start of
    ``reweight`` directly (the warm-up then ends where it, less the fill, says). Steps are optimizer steps.
    """

    weighting: str = _knob(
        "dsb",
        "Class weights: 'dsb' (dynamic, from semantic scales), 'none' (the identical base loss, unweighted), "
        "'inverse_frequency', 'effective_number' or 'count_power' (static, from class counts, n_c ** -count_power; "
        "deferred to the end of warm-up, i.e. DRW), 'static' (the user's class_weights, deferred likewise), "
        "'dsb_effective_number' (a mix, not DSB alone: the dsb weights times the effective-number weights, "
        "renormalised), 'reverse_scale' (a control: weights GROW with the scale, (S_c / max S) ** gamma) or "
        "'scale_equivalent_count' (each scale mapped to the sample count at which the head classes' marginal-effect "
        "curve, measured on the pool, reaches it; effective-number weights of those counts).",
        WEIGHTING_MODES,
    )
    loss: str = _knob("ce", "Per-sample base loss the weights apply to.", BASE_LOSSES)
    warmup_steps: int = _knob(-1, "Optimizer steps of stage 1 (plain loss, no pool). -1: use warmup_ratio.")
    warmup_ratio: float = _knob(
        0.3,
        "Stage-1 length as a fraction of max_steps, used when warmup_steps is -1. 0.3 won the validation grid "
        "{0.3, 0.5} on CIFAR-10-LT and tied on BANKING77 (benchmarks/results/long_tail.md).",
    )
    reweight_start: float | None = _knob(
        None,
        "Fraction of training (of max_steps) at which class weights start to apply (stage 3), in [0, 1], for any run "
        "length. For pool modes the fill stage (one epoch, or fill_max_steps) is placed just before it (warm-up = "
        "max(0, start_step - fill_steps)); for static modes (count weights, 'static') the warm-up ends there. "
        "None: use warmup_steps / warmup_ratio (set only one of the two ways).",
    )
    update_interval: int = _knob(20, "Optimizer steps between two re-measurements of the scales (stage 3).")
    fill_max_steps: int = _knob(
        -1,
        "Longest stage 2 in optimizer steps; re-weighting starts earlier once the pool is full. -1: one epoch "
        "(for data of unknown length: sum(class_counts) samples at the global batch size).",
    )
    pool_capacity: int = _knob(
        0, "K: rows per class in the pool are min(n_c, K). 0: n_c (the latest feature of every sample)."
    )
    pool_dtype: str = _knob("float16", "Storage dtype of the pool; scales are computed in float64.", POOL_DTYPES)
    max_pool_memory_mb: float = _knob(
        4096.0, "Stop before training if the pool would take more memory than this (MiB, per process)."
    )
    shard_pool: bool = _knob(
        True,
        "With several processes, each stores only the pool rows of the classes whose volumes it computes (memory "
        "per process ~1/processes; weights identical). Not for weighting='scale_equivalent_count', which reads the "
        "whole pool. False: every process holds the whole pool.",
    )
    gamma: float = _knob(1.0, "DSB strength: w_c ∝ (max_j S_j / S_c) ** gamma.")
    normalization: str = _knob(
        "mean",
        "Weight normalisation: 'mean' (mean per-sample weight 1 under the training distribution), 'sum' "
        "(sum_c w_c = C) or 'none'.",
        NORMALIZATIONS,
    )
    weight_floor: float = _knob(
        0.05, "A scale is clamped to at least this fraction of the largest, so weights stay finite."
    )
    alpha: float | None = _knob(None, "alpha of the volume formula; None: the feature dimension d.")
    normalize_features: bool = _knob(True, "L2-normalise each feature before it enters the pool and the volume.")
    cb_beta: float = _knob(
        0.9999, "beta of the effective-number weights (weighting 'effective_number' or 'dsb_effective_number')."
    )
    count_power: float = _knob(1.0, "p of weighting='count_power': w_c ∝ n_c ** -p (1: inverse frequency).")
    class_weights: list[float] | None = _knob(
        None, "[C] positive class weights for weighting='static' (normalised like the others); None otherwise."
    )
    focal_gamma: float = _knob(DEFAULT_LOSS_SETTINGS["focal_gamma"], "Focusing parameter of the focal loss.")
    ldam_max_margin: float = _knob(DEFAULT_LOSS_SETTINGS["ldam_max_margin"], "Largest LDAM margin (the rarest class).")
    ldam_scale: float = _knob(
        DEFAULT_LOSS_SETTINGS["ldam_scale"],
        "LDAM logit scale s. Cao et al. use 30 with a cosine (normalised) classifier; 1 suits a plain linear head.",
    )
    logit_adjust_tau: float = _knob(
        DEFAULT_LOSS_SETTINGS["logit_adjust_tau"], "tau of the logit adjustment; 1 is balanced softmax."
    )
    label_smoothing: float = _knob(0.0, "Label smoothing of the base loss, in [0, 1).")

    def __post_init__(self) -> None:
        validate_settings(self.to_dict())

    @property
    def uses_pool(self) -> bool:
        return self.weighting in DYNAMIC_WEIGHTING_MODES

    def to_dict(self) -> dict[str, Any]:
        """The knobs as a JSON-ready dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def knob_field(name: str) -> Any:
    """A dataclass field with the default, help and choices of :class:`BalancerSettings`' knob ``name``."""
    source = BalancerSettings.__dataclass_fields__[name]
    metadata = dict(source.metadata)
    if source.default is MISSING:
        return field(default_factory=source.default_factory, metadata=metadata)
    return field(default=source.default, metadata=metadata)


def validate_settings(values: dict[str, Any], prefix: str = "") -> None:
    """Raise ``ValueError`` naming ``<prefix><knob>`` for the first invalid knob of ``values`` (all knobs)."""

    def fail(message: str) -> None:
        raise ValueError(message.replace("{p}", prefix))

    v = values
    for name, allowed in (
        ("weighting", WEIGHTING_MODES),
        ("loss", BASE_LOSSES),
        ("pool_dtype", POOL_DTYPES),
        ("normalization", NORMALIZATIONS),
    ):
        if v[name] not in allowed:
            fail(f"{{p}}{name}={v[name]!r} is not one of {list(allowed)}")
    if v["update_interval"] < 1:
        fail(f"{{p}}update_interval must be >= 1, got {v['update_interval']}")
    if v["warmup_steps"] < -1:
        fail("{p}warmup_steps must be >= 0, or -1 to use {p}warmup_ratio")
    if not 0.0 <= v["warmup_ratio"] <= 1.0:
        fail(f"{{p}}warmup_ratio must be in [0, 1], got {v['warmup_ratio']}")
    start = v["reweight_start"]
    if start is not None:
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0.0 <= start <= 1.0:
            fail(f"{{p}}reweight_start must be a fraction of training in [0, 1] or None, got {start!r}")
        defaults = BalancerSettings.__dataclass_fields__
        also_set = [name for name in ("warmup_steps", "warmup_ratio") if v[name] != defaults[name].default]
        if also_set:
            fail(
                f"{{p}}reweight_start={start} and {{p}}{also_set[0]}={v[also_set[0]]} both say when re-weighting "
                f"starts. Fix: set only {{p}}reweight_start, or drop it and keep {{p}}{also_set[0]}."
            )
    if not 0.0 < v["weight_floor"] <= 1.0:
        fail(f"{{p}}weight_floor must be in (0, 1], got {v['weight_floor']}")
    if not (math.isfinite(v["gamma"]) and v["gamma"] >= 0):
        fail(f"{{p}}gamma must be finite and >= 0, got {v['gamma']}")
    if v["weight_floor"] ** -v["gamma"] > MAX_WEIGHT_RATIO:
        fail(
            f"{{p}}gamma={v['gamma']} with {{p}}weight_floor={v['weight_floor']} allows a largest/smallest class-weight "
            f"ratio of {v['weight_floor'] ** -v['gamma']:.3g}, over {MAX_WEIGHT_RATIO:.0e}: the float32 loss weights "
            "would lose the small classes' signal or overflow. Fix: lower {p}gamma or raise {p}weight_floor."
        )
    if v["alpha"] is not None and not v["alpha"] > 0:
        fail(f"{{p}}alpha must be positive or None, got {v['alpha']}")
    if v["pool_capacity"] < 0:
        fail("{p}pool_capacity must be >= 0 (0 keeps every sample's latest feature)")
    if not 0.0 <= v["cb_beta"] < 1.0:
        fail(f"{{p}}cb_beta must be in [0, 1), got {v['cb_beta']}")
    if not 0.0 <= v["count_power"] <= 4.0:
        fail(f"{{p}}count_power must be in [0, 4], got {v['count_power']}")
    if v["fill_max_steps"] < -1:
        fail("{p}fill_max_steps must be >= 0, or -1 for one epoch")
    if not v["max_pool_memory_mb"] > 0:
        fail(f"{{p}}max_pool_memory_mb must be positive, got {v['max_pool_memory_mb']}")
    if v["focal_gamma"] < 0 or v["ldam_max_margin"] < 0 or v["ldam_scale"] <= 0:
        fail(
            "{p}focal_gamma and {p}ldam_max_margin must be >= 0 and {p}ldam_scale > 0; got "
            f"{v['focal_gamma']}, {v['ldam_max_margin']}, {v['ldam_scale']}"
        )
    if not 0.0 <= v["label_smoothing"] < 1.0:
        fail(f"label smoothing must be in [0, 1), got {v['label_smoothing']}")
    weights = v["class_weights"]
    if v["weighting"] == "static":
        if not weights or not all(isinstance(w, (int, float)) and math.isfinite(w) and w > 0 for w in weights):
            fail(
                f"{{p}}weighting='static' needs {{p}}class_weights: one finite positive weight per class, got {weights!r}. "
                "Fix: pass {p}class_weights=[w_0, ..., w_(C-1)]."
            )
    elif weights is not None:
        fail(
            f"{{p}}class_weights is only used with {{p}}weighting='static' (got weighting={v['weighting']!r}). "
            "Fix: set {p}weighting='static' or drop {p}class_weights."
        )
