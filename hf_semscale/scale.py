"""Semantic scale: the volume of a class's feature manifold (Ma et al., ICLR 2023).

For the features ``Z`` (``[m, d]``) of one class, rows L2-normalised by default and centred
(``Zc = Z - mean(Z)``)::

    S(Z) = 1/2 * log2 det(I_d + (alpha / m) * Zc^T Zc)          alpha = d by default

computed in float64 through a Cholesky factor (never ``det``, which overflows for d >= ~1024).
When ``m < d`` the equal Gram form ``det(I_m + (alpha / m) * Zc Zc^T)`` (Sylvester) is used.
A class with fewer than 2 samples has no measurable volume: its scale is 0 bits.

This module imports torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "semantic_scale",
    "class_semantic_scales",
    "check_finite_features",
    "classes_without_volume",
    "MIN_SAMPLES_FOR_SCALE",
]

MIN_SAMPLES_FOR_SCALE = 2
"""A class needs at least this many samples for a non-zero volume (centring removes one)."""

_LN2 = math.log(2.0)
# Upper bound on the float64 elements one batched chunk may hold (~512 MiB).
_CHUNK_ELEMENTS = 64 * 1024 * 1024


def check_finite_features(features: Tensor, labels: Tensor | None = None) -> None:
    """Raise ``ValueError`` if any feature row holds NaN or inf, naming the classes and counts.

    features: ``[N, d]``; labels: ``[N]`` int (optional, for the per-class message).
    """
    bad_rows = ~torch.isfinite(features).all(dim=-1)
    if not bool(bad_rows.any()):
        return
    total = int(bad_rows.sum())
    if labels is None:
        where = f"{total} of {features.shape[0]} feature rows"
    else:
        bad_labels = labels[bad_rows].tolist()
        per_class = {c: bad_labels.count(c) for c in sorted(set(bad_labels))}
        where = ", ".join(f"class {c}: {n} row(s)" for c, n in per_class.items())
    raise ValueError(
        f"Non-finite (NaN or inf) features: {where}. The semantic scale is undefined for them. "
        "Fix: find where the model produces NaN/inf (learning rate too high, fp16 overflow, "
        "bad input) or drop those samples before measuring."
    )


def _centred(features: Tensor, normalize: bool) -> Tensor:
    """float64 copy of ``features`` ``[m, d]``, rows L2-normalised if asked, then centred."""
    z = features.to(torch.float64)
    if normalize:
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return z - z.mean(dim=-2, keepdim=True)


def _logdet2_identity_plus(mats: Tensor) -> Tensor:
    """``log2 det(M)`` for a batch of symmetric positive-definite ``mats`` ``[B, k, k]`` (eigenvalues >= 1)."""
    chol = torch.linalg.cholesky(mats)
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1) / _LN2


def semantic_scale(features: Tensor, normalize: bool = True, alpha: float | None = None) -> Tensor:
    """Semantic scale of one class, in bits.

    Args:
        features: ``[m, d]`` float (any float dtype, any device); computed in float64.
        normalize: L2-normalise each row before centring.
        alpha: distortion parameter; ``None`` means the feature dimension ``d``.

    Returns:
        0-dim float64 tensor on ``features.device``: ``1/2 log2 det(I + alpha/m Zc^T Zc)``;
        0 when ``m < 2``.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be [m, d], got shape {tuple(features.shape)}")
    check_finite_features(features)
    m, d = features.shape
    if m < MIN_SAMPLES_FOR_SCALE or d == 0:
        return torch.zeros((), dtype=torch.float64, device=features.device)
    a = float(d if alpha is None else alpha)
    if a <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    zc = _centred(features, normalize)
    gram = zc @ zc.T if m < d else zc.T @ zc
    k = gram.shape[0]
    eye = torch.eye(k, dtype=torch.float64, device=features.device)
    return 0.5 * _logdet2_identity_plus((eye + (a / m) * gram).unsqueeze(0))[0]


@dataclass
class _Chunk:
    classes: list[int]
    size: int  # matrix side shared by the chunk (padded)


def _plan_chunks(sides: list[tuple[int, int]], feature_dim: int, max_pad_ratio: float = 1.25) -> list[_Chunk]:
    """Group ``(class, side)`` pairs, sorted by side, into chunks of similar side for batched Cholesky."""
    chunks: list[_Chunk] = []
    current: list[int] = []
    smallest = largest = 0
    for cls, side in sorted(sides, key=lambda t: t[1]):
        per_item = side * max(side, feature_dim)
        if current and (side > max_pad_ratio * smallest or (len(current) + 1) * per_item > _CHUNK_ELEMENTS):
            chunks.append(_Chunk(current, largest))
            current = []
        if not current:
            smallest = side
        current.append(cls)
        largest = side
    if current:
        chunks.append(_Chunk(current, largest))
    return chunks


def class_semantic_scales(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    normalize: bool = True,
    alpha: float | None = None,
    classes: list[int] | None = None,
) -> Tensor:
    """Semantic scale of every class, batched across classes of similar size.

    Args:
        features: ``[N, d]`` float.
        labels: ``[N]`` int in ``[0, num_classes)``.
        num_classes: ``C``.
        normalize, alpha: as in :func:`semantic_scale`.
        classes: compute only these class ids (the others are returned as 0); used to split
            the work across processes.

    Returns:
        ``[C]`` float64 on ``features.device``, in bits. A class with fewer than 2 samples gets 0:
        see :func:`classes_without_volume` to report them.
    """
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features must be [N, d] and labels [N]; got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    labels = labels.to(device=features.device, dtype=torch.long)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got range [{int(labels.min())}, {int(labels.max())}]. "
            "Fix: pass the right num_classes or remap the labels."
        )
    check_finite_features(features, labels)
    d = features.shape[1]
    a = float(d if alpha is None else alpha)
    if a <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    scales = torch.zeros(num_classes, dtype=torch.float64, device=features.device)
    if d == 0:
        return scales
    order = torch.argsort(labels, stable=True)
    sorted_feats = features[order]
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    wanted = range(num_classes) if classes is None else classes
    counts_list, starts_list = counts.tolist(), starts.tolist()
    sides = [(c, min(counts_list[c], d)) for c in wanted if counts_list[c] >= MIN_SAMPLES_FOR_SCALE]
    for chunk in _plan_chunks(sides, d):
        k = chunk.size
        mats = torch.zeros(len(chunk.classes), k, k, dtype=torch.float64, device=features.device)
        for i, c in enumerate(chunk.classes):
            m, s = counts_list[c], starts_list[c]
            zc = _centred(sorted_feats[s : s + m], normalize)
            side = min(m, d)
            block = zc @ zc.T if m < d else zc.T @ zc
            mats[i, :side, :side] = block.mul_(a / m)
        mats.diagonal(dim1=-2, dim2=-1).add_(1.0)
        scales[chunk.classes] = 0.5 * _logdet2_identity_plus(mats)
    return scales


def classes_without_volume(labels: Tensor, num_classes: int) -> list[int]:
    """Class ids with fewer than 2 samples in ``labels`` (their scale is reported as 0)."""
    counts = torch.bincount(labels.to(torch.long).reshape(-1), minlength=num_classes)
    return [c for c, n in enumerate(counts.tolist()) if n < MIN_SAMPLES_FOR_SCALE]
