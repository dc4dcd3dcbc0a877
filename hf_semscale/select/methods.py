"""The method table: one name -> the ``SemScaleConfig`` overrides that define it.

Shared by ``hf-semscale select``, the recipes (``--method``) and the benchmarks: every method runs in the same harness
(``SemScaleTrainer``); only the fields below differ. ``ce_posthoc_la`` trains as ``ce`` and adjusts its logits after
training (:mod:`hf_semscale.core.posthoc`). The knobs
that are ours (DSB's ``semscale_gamma`` and ``semscale_warmup_ratio``) are NOT set here: they come
from the recipe config / command line, tuned on a validation split carved from training data.

Count-based re-weighting is deferred (DRW, Cao et al. 2019): the trainer applies static weights from
the end of its warm-up stage. ``if_ce`` / ``cb_ce`` / ``ldam_drw`` use Cao et al.'s published deferral
(epoch 160 of 200, ``semscale_warmup_ratio = 0.8``), fixed. Their ``*_tuned`` versions (and
``pow_ce_tuned``, w_c ∝ n_c^-p) get the same validation grid over the START of re-weighting as the
scale-based methods (benchmarks/long_tail.py), so a comparison measures the weights, not the schedule.

``dsb_<base>`` = the base loss with weights from semantic scales alone (docs/method.md, "Naming honesty").
``mix_*`` = a mix of scale and count weights, named apart so the tables show what the scale alone does.
``reverse_dsb_ce`` = the opposite direction (weights grow with the scale), a control, not DSB.
``scalecount_cb_ce`` = each class's scale mapped to the count at which the head classes' marginal-effect
curve reaches it, then effective-number weights of those counts: the scale speaking in count units.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "METHODS",
    "BASELINES",
    "DSB_METHODS",
    "MIXED_METHODS",
    "SCALE_METHODS",
    "COUNT_TUNED_METHODS",
    "TUNED_METHODS",
    "POSTHOC_METHODS",
    "DRW_DEFERRAL",
    "method_overrides",
    "uses_normed_head",
    "describe",
]

DRW_DEFERRAL = 0.8  # Cao et al. 2019: re-weighting starts at epoch 160 of 200

_LDAM = {"semscale_loss": "ldam", "semscale_ldam_scale": 30.0, "semscale_ldam_max_margin": 0.5}

METHODS: dict[str, dict[str, Any]] = {
    # --- baselines (published methods)
    "ce": {"semscale_weighting": "none", "semscale_loss": "ce"},
    "if_ce": {"semscale_weighting": "inverse_frequency", "semscale_loss": "ce", "semscale_warmup_ratio": DRW_DEFERRAL},
    "cb_ce": {
        "semscale_weighting": "effective_number",
        "semscale_cb_beta": 0.9999,
        "semscale_loss": "ce",
        "semscale_warmup_ratio": DRW_DEFERRAL,
    },
    "focal": {"semscale_weighting": "none", "semscale_loss": "focal", "semscale_focal_gamma": 2.0},
    "ldam_drw": {
        "semscale_weighting": "effective_number",
        "semscale_cb_beta": 0.9999,
        "semscale_warmup_ratio": DRW_DEFERRAL,
        **_LDAM,
    },
    "balanced_softmax": {
        "semscale_weighting": "none",
        "semscale_loss": "balanced_softmax",
        "semscale_logit_adjust_tau": 1.0,
    },
    # --- DSB on top of each base loss (weights from semantic scales alone)
    "dsb_ce": {"semscale_weighting": "dsb", "semscale_loss": "ce"},
    "dsb_focal": {"semscale_weighting": "dsb", "semscale_loss": "focal", "semscale_focal_gamma": 2.0},
    "dsb_ldam": {"semscale_weighting": "dsb", **_LDAM},
    "dsb_balanced_softmax": {
        "semscale_weighting": "dsb",
        "semscale_loss": "balanced_softmax",
        "semscale_logit_adjust_tau": 1.0,
    },
    # --- a mix (not DSB alone): cb_ce's effective-number weights times the DSB weights, deferred like cb_ce (the
    # pool's fill stage adds up to an epoch; benchmarks/long_tail.py moves the warm-up so the weights start together)
    "mix_dsb_cb_ce": {
        "semscale_weighting": "dsb_effective_number",
        "semscale_cb_beta": 0.9999,
        "semscale_loss": "ce",
        "semscale_warmup_ratio": DRW_DEFERRAL,
    },
    # --- count-based re-weighting with a validated start (and exponent): the fair count baselines
    "if_ce_tuned": {"semscale_weighting": "inverse_frequency", "semscale_loss": "ce"},
    "cb_ce_tuned": {"semscale_weighting": "effective_number", "semscale_cb_beta": 0.9999, "semscale_loss": "ce"},
    "pow_ce_tuned": {"semscale_weighting": "count_power", "semscale_loss": "ce"},
    "pow_bs_tuned": {
        "semscale_weighting": "count_power",
        "semscale_loss": "balanced_softmax",
        "semscale_logit_adjust_tau": 1.0,
    },
    # --- plain CE, then post-hoc logit adjustment with tau chosen on validation (Menon et al. 2021); no retraining
    "ce_posthoc_la": {"semscale_weighting": "none", "semscale_loss": "ce"},
    # --- controls / hypotheses derived from the scale (not dsb_<base>)
    "reverse_dsb_ce": {"semscale_weighting": "reverse_scale", "semscale_loss": "ce"},
    "scalecount_cb_ce": {
        "semscale_weighting": "scale_equivalent_count",
        "semscale_cb_beta": 0.9999,
        "semscale_loss": "ce",
    },
}

BASELINES = ("ce", "if_ce", "cb_ce", "focal", "ldam_drw", "balanced_softmax")
COUNT_TUNED_METHODS = ("if_ce_tuned", "cb_ce_tuned", "pow_ce_tuned", "pow_bs_tuned")
DSB_METHODS = tuple(name for name in METHODS if name.startswith("dsb_"))
MIXED_METHODS = tuple(name for name in METHODS if name.startswith("mix_"))
SCALE_METHODS = DSB_METHODS + MIXED_METHODS + ("reverse_dsb_ce", "scalecount_cb_ce")
"""Methods whose weights come from semantic scales (alone or mixed): they fill a pool."""
TUNED_METHODS = SCALE_METHODS + COUNT_TUNED_METHODS  # knobs chosen on a validation split
POSTHOC_METHODS = {"ce_posthoc_la": "ce"}
"""Methods that reuse another method's trained runs and only change prediction: name -> the method they reuse."""

# The baseline each DSB variant is compared with (same base loss; LDAM's counterpart is LDAM-DRW).
DSB_COUNTERPART = {
    "dsb_ce": "ce",
    "dsb_focal": "focal",
    "dsb_ldam": "ldam_drw",
    "dsb_balanced_softmax": "balanced_softmax",
    "mix_dsb_cb_ce": "cb_ce",
    "reverse_dsb_ce": "ce",
    "scalecount_cb_ce": "cb_ce_tuned",
}

_DESCRIPTIONS = {
    "ce": "cross-entropy, no weights",
    "if_ce": "CE + inverse-frequency weights, deferred (DRW at 80 %)",
    "cb_ce": "CE + effective-number weights beta 0.9999 (Cui et al.), deferred (DRW at 80 %)",
    "focal": "focal loss gamma 2 (Lin et al.)",
    "ldam_drw": "LDAM (max margin 0.5, s 30, cosine head) + effective-number DRW at 80 % (Cao et al.)",
    "balanced_softmax": "balanced softmax / logit adjustment tau 1 (Ren et al.; Menon et al.)",
    "dsb_ce": "CE + DSB weights (semantic scales only)",
    "dsb_focal": "focal + DSB weights (semantic scales only)",
    "dsb_ldam": "LDAM (s 30, cosine head) + DSB weights instead of DRW",
    "dsb_balanced_softmax": "balanced softmax + DSB weights",
    "mix_dsb_cb_ce": "a mix, not DSB alone: CE + effective-number x DSB weights, start of re-weighting tuned",
    "if_ce_tuned": "CE + inverse-frequency weights, start of re-weighting tuned",
    "cb_ce_tuned": "CE + effective-number weights beta 0.9999, start of re-weighting tuned",
    "pow_ce_tuned": "CE + weights n_c^-p, p and start of re-weighting tuned",
    "pow_bs_tuned": "balanced softmax + weights n_c^-p, p and start tuned: the count control for dsb_balanced_softmax",
    "ce_posthoc_la": "CE, then logits - tau * log prior at prediction, tau chosen on validation (Menon et al.)",
    "reverse_dsb_ce": "a control, not DSB: CE + weights GROWING with the scale, (S_c / max S)^gamma",
    "scalecount_cb_ce": "CE + effective-number weights of scale-equivalent counts (head classes' marginal-effect curve)",
}


def method_overrides(name: str) -> dict[str, Any]:
    """The ``SemScaleConfig`` field overrides of method ``name`` (a copy)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return dict(METHODS[name])


def uses_normed_head(name_or_loss: str) -> bool:
    """LDAM runs use a cosine ("normed") classifier with logit scale 30, as Cao et al."""
    loss = METHODS[name_or_loss]["semscale_loss"] if name_or_loss in METHODS else name_or_loss
    return loss == "ldam"


def describe(name: str) -> str:
    return _DESCRIPTIONS.get(name, name)
