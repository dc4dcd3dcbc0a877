"""Post-hoc logit adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021).

Train with plain cross-entropy, then predict ``argmax_y f_y(x) - tau * log pi_y`` with ``pi`` the training label
prior and ``tau`` chosen on a validation split (1 in theory). No retraining; for a linear head the adjustment is a
change of the classifier bias, ``b_y - tau * log pi_y``, so a saved model can carry it (:func:`bake_logit_adjustment`).
Its loss-time twin is balanced softmax (``build_base_loss("balanced_softmax")``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..metrics import long_tail_metrics

__all__ = ["DEFAULT_TAUS", "log_prior", "adjust_logits", "choose_tau", "bake_logit_adjustment"]

DEFAULT_TAUS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
"""The validation grid of ``tau`` (0: no adjustment; Menon et al. report tau = 1 and tune it)."""


def log_prior(class_counts: Tensor | Sequence[int]) -> Tensor:
    """``[C]`` float64 ``log(n_c / sum n)``. A class without training samples counts as one sample (its prior is
    the smallest possible, not zero, so its adjusted logit stays finite)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    if counts.numel() < 2 or bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise ValueError(f"class_counts must be >= 2 finite non-negative counts, got {counts.tolist()}")
    counts = counts.clamp_min(1.0)
    return torch.log(counts / counts.sum())


def adjust_logits(logits: Tensor, class_counts: Tensor | Sequence[int], tau: float = 1.0) -> Tensor:
    """``logits [N, C] - tau * log pi [C]``, in the logits' dtype and device."""
    prior = log_prior(class_counts)
    if logits.ndim != 2 or logits.shape[1] != prior.numel():
        raise ValueError(f"logits must be [N, {prior.numel()}] (one column per class), got {tuple(logits.shape)}")
    return logits - tau * prior.to(device=logits.device, dtype=logits.dtype)


def choose_tau(
    logits: Tensor,
    labels: Tensor,
    class_counts: Tensor | Sequence[int],
    taus: Sequence[float] = DEFAULT_TAUS,
) -> tuple[float, list[float]]:
    """The ``tau`` of ``taus`` with the best balanced accuracy of the adjusted VALIDATION ``logits [N, C]``;
    ties go to the first in grid order (the smaller adjustment). Returns ``(tau, score per tau)``."""
    if not taus:
        raise ValueError("choose_tau needs at least one tau")
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    counts = torch.as_tensor(class_counts).tolist()
    scores = [
        long_tail_metrics(adjust_logits(logits, counts, t).argmax(-1).tolist(), labels.tolist(), counts)[
            "balanced_accuracy"
        ]
        for t in taus
    ]
    best = max(range(len(taus)), key=lambda i: (scores[i], -i))
    return float(taus[best]), scores


@torch.no_grad()
def bake_logit_adjustment(head: nn.Linear, class_counts: Tensor | Sequence[int], tau: float) -> None:
    """Fold the adjustment into a linear classifier head in place: ``bias_y -= tau * log pi_y`` (a head without a
    bias gets one). The model then predicts adjusted logits with no extra code, saved or pushed."""
    if not isinstance(head, nn.Linear):
        raise TypeError(
            f"bake_logit_adjustment needs the classifier's nn.Linear, got {type(head).__name__}. Fix: adjust the "
            "logits at prediction time with adjust_logits(logits, class_counts, tau) instead."
        )
    prior = log_prior(class_counts)
    if head.out_features != prior.numel():
        raise ValueError(f"the head has {head.out_features} outputs but class_counts has {prior.numel()} classes")
    shift = (-tau * prior).to(device=head.weight.device, dtype=head.weight.dtype)
    if head.bias is None:
        head.bias = nn.Parameter(shift.clone())
    else:
        head.bias.add_(shift)
