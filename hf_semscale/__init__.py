"""hf_semscale: semantic-scale-balanced learning for the Hugging Face stack.

Layers, each depending only on those before it: ``core`` (the math: scale, imbalance, weighting, losses) and
``dsb`` (the framework-neutral engine: ``SemanticScaleBalancer``, ``BalancerSettings``, ``FeaturePool``,
``HeadInputCapture``, cross-process helpers) import torch only; ``trainer`` (the transformers adapter) and
``hub`` (reports, cards, pushes) build on them. ``SemScaleTrainer``, ``SemScaleBalancing``, ``SemScaleCallback`` and
``SemScaleConfig`` are imported lazily, so ``import hf_semscale`` never imports transformers.
"""

from .core.imbalance import imbalance_degree, imbalance_summary, normalized_scales
from .core.losses import BaseLoss, build_base_loss, weighted_reduce
from .core.scale import (
    MarginalEffect,
    check_finite_features,
    class_semantic_scales,
    classes_without_volume,
    marginal_effect_curves,
    semantic_scale,
)
from .core.weighting import (
    count_power_weights,
    effective_number_weights,
    inverse_frequency_weights,
    normalize_weights,
    scale_equivalent_counts,
    semantic_scale_weights,
)
from .dsb.balancer import SemanticScaleBalancer, UpdateRecord
from .dsb.capture import HeadInputCapture
from .dsb.comm import TorchDistributedComm
from .dsb.pool import FeaturePool
from .dsb.settings import BalancerSettings

__version__ = "0.1.0"

_LAZY = {
    "SemScaleTrainer": ".trainer",
    "SemScaleCallback": ".trainer",
    "SemScaleBalancing": ".trainer",
    "SemScaleConfig": ".trainer",
}

__all__ = [
    "semantic_scale",
    "class_semantic_scales",
    "classes_without_volume",
    "check_finite_features",
    "marginal_effect_curves",
    "MarginalEffect",
    "normalized_scales",
    "imbalance_degree",
    "imbalance_summary",
    "semantic_scale_weights",
    "inverse_frequency_weights",
    "effective_number_weights",
    "count_power_weights",
    "scale_equivalent_counts",
    "normalize_weights",
    "BaseLoss",
    "build_base_loss",
    "weighted_reduce",
    "FeaturePool",
    "HeadInputCapture",
    "SemanticScaleBalancer",
    "BalancerSettings",
    "UpdateRecord",
    "TorchDistributedComm",
    "SemScaleTrainer",
    "SemScaleCallback",
    "SemScaleBalancing",
    "SemScaleConfig",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'hf_semscale' has no attribute {name!r}")
