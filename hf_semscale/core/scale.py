"""Semantic scale: the volume of a class's feature manifold (Ma et al., ICLR 2023).

For the features ``Z`` (``[m, d]``) of one class, rows L2-normalised by default and centred
(``Zc = Z - mean(Z)``)::

    S(Z) = 1/2 * log2 det(I_d + (alpha / m) * Zc^T Zc)          alpha = d by default

in bits, computed in float64 through a Cholesky factor (never ``det``, which overflows for
d >= ~1024). When ``m < d`` the equal Gram form ``det(I_m + (alpha / m) * Zc Zc^T)`` (Sylvester)
is used, so the work per class is ``min(m, d)^2 * max(m, d)`` multiply-adds.
A class with fewer than 2 samples has no measurable volume: its scale is 0 bits.

Many classes are computed together: classes of similar size are padded with zero rows (which
change neither the centred Gram matrix's determinant nor the mean) and go through one batched
matrix product and one batched Cholesky per chunk; chunks are kept small enough to stay in cache.

This module imports torch only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "semantic_scale",
    "class_semantic_scales",
    "chunk_layout",
    "check_finite_features",
    "classes_without_volume",
    "marginal_effect_curves",
    "MarginalEffect",
    "MIN_SAMPLES_FOR_SCALE",
]

MIN_SAMPLES_FOR_SCALE = 2
"""A class needs at least this many samples for a non-zero volume (centring removes one)."""

# float64 elements of padded features one chunk may hold. On the CPU a chunk should stay in
# cache (8 MiB); on an accelerator bigger chunks mean fewer kernel launches (512 MiB).
_CHUNK_ELEMENTS_CPU = 1024 * 1024
_CHUNK_ELEMENTS_ACCELERATOR = 64 * 1024 * 1024
# Classes share a chunk (padded to its largest class) while padding adds at most this fraction
# of work, or less work than the fixed cost of one more chunk (~0.1 ms of torch calls).
_PAD_WORK = 0.1
_CHUNK_OVERHEAD_WORK = 1_000_000
# Rows per panel when building a large Gram matrix block-lower-triangularly (see _lower_gram).
_GRAM_PANEL_ROWS = 128
_MAX_LISTED_CLASSES = 20


def _require_features(features: Tensor, name: str = "features") -> None:
    if not isinstance(features, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}. Fix: torch.as_tensor(...)")
    if features.ndim != 2:
        raise ValueError(f"{name} must be [m, d] (one row per sample), got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {features.dtype}. Fix: features.float()")


def _resolve_alpha(alpha: float | None, feature_dim: int) -> float:
    """``alpha`` as a float; ``None`` means the feature dimension ``d``."""
    if alpha is None:
        return float(feature_dim)
    a = float(alpha)
    if not (math.isfinite(a) and a > 0):
        raise ValueError(f"alpha must be a finite positive number (None means d), got {alpha}")
    return a


def _nonfinite_rows(features: Tensor) -> Tensor | None:
    """Bool ``[N]`` marking rows with NaN/inf, or ``None`` if all are finite.

    A row sum is non-finite whenever the row holds NaN or inf, so one cheap reduction screens
    every row; only rows whose sum is non-finite (possibly through overflow) are checked exactly.
    """
    sum_dtype = torch.promote_types(features.dtype, torch.float32)
    suspect = ~torch.isfinite(features.sum(dim=-1, dtype=sum_dtype))
    if not bool(suspect.any()):
        return None
    bad = torch.zeros_like(suspect)
    bad[suspect] = ~torch.isfinite(features[suspect]).all(dim=-1)
    return bad if bool(bad.any()) else None


def check_finite_features(features: Tensor, labels: Tensor | None = None) -> None:
    """Raise ``ValueError`` if any feature row holds NaN or inf, naming the classes and counts.

    features: ``[N, d]``; labels: ``[N]`` int (optional, for the per-class message).
    """
    if features.ndim == 0 or features.numel() == 0:
        return
    bad_rows = _nonfinite_rows(features.reshape(features.shape[0], -1))
    if bad_rows is None:
        return
    total = int(bad_rows.sum())
    if labels is None:
        where = (
            f"{total} of {features.shape[0]} feature rows (rows {_listed(torch.nonzero(bad_rows).flatten().tolist())})"
        )
    else:
        bad_labels = labels.reshape(-1).cpu()[bad_rows.cpu()]
        ids, per_class = torch.unique(bad_labels, return_counts=True)
        parts = [f"class {c}: {n} row(s)" for c, n in zip(ids.tolist(), per_class.tolist())]
        where = _listed(parts) + f" ({total} of {features.shape[0]} rows)"
    raise ValueError(
        f"Non-finite (NaN or inf) features: {where}. The semantic scale is undefined for them. "
        "Fix: find where the model produces NaN/inf (learning rate too high, fp16 overflow, "
        "bad input) or drop those samples before measuring."
    )


def _listed(items: list) -> str:
    shown = ", ".join(str(x) for x in items[:_MAX_LISTED_CLASSES])
    more = len(items) - _MAX_LISTED_CLASSES
    return shown + (f", ... and {more} more" if more > 0 else "")


def _chunk_elements(device: torch.device) -> int:
    return _CHUNK_ELEMENTS_CPU if device.type == "cpu" else _CHUNK_ELEMENTS_ACCELERATOR


def _scales_of_row_sets(features: Tensor, rows: Tensor, lengths: Tensor, normalize: bool, alpha: float) -> Tensor:
    """Semantic scales of ``B`` row sets of ``features``, in bits.

    Args:
        features: ``[N, d]`` float (finite).
        rows: ``[B, L]`` long indices into ``features``; set ``b`` is ``rows[b, :lengths[b]]``,
            the rest is padding (any valid index).
        lengths: ``[B]`` long, ``2 <= lengths[b] <= L``, on ``features.device``.
        normalize, alpha: as in :func:`semantic_scale` (``alpha`` resolved).

    Returns:
        ``[B]`` float64 on ``features.device``, >= 0.
    """
    num_sets, width = rows.shape
    d = features.shape[1]
    x = features.index_select(0, rows.reshape(-1)).reshape(num_sets, width, d).to(torch.float64)
    if normalize:
        norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        x.div_(norms.clamp_min_(torch.finfo(torch.float64).tiny))
    padded = bool((lengths < width).any())
    if padded:
        mask = (torch.arange(width, device=x.device) < lengths[:, None]).to(torch.float64).unsqueeze(-1)
        x.mul_(mask)
    lengths64 = lengths.to(torch.float64)
    x.sub_(x.sum(dim=1, keepdim=True).div_(lengths64[:, None, None]))
    if padded:
        x.mul_(mask)
    # Gram form (side L) when the sets are smaller than d, else the d x d form; padding rows are 0.
    mats = _lower_gram(x if width < d else x.mT)
    mats.mul_((alpha / lengths64)[:, None, None])
    mats.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return _half_log2det(mats)


def _lower_gram(factor: Tensor) -> Tensor:
    """Lower triangle (diagonal included) of ``factor @ factor^T`` ``[B, k, k]`` for ``factor`` ``[B, k, n]``.

    Large matrices are built one panel of rows at a time, skipping the blocks above the
    diagonal (left 0; Cholesky and ``eigvalsh`` read only the lower triangle), which saves up to
    half of the multiply-adds.
    """
    side = factor.shape[-2]
    if side <= 2 * _GRAM_PANEL_ROWS:
        return factor @ factor.mT
    gram = torch.zeros(factor.shape[0], side, side, dtype=factor.dtype, device=factor.device)
    for first in range(0, side, _GRAM_PANEL_ROWS):
        last = min(first + _GRAM_PANEL_ROWS, side)
        gram[:, first:last, :last].baddbmm_(factor[:, first:last], factor[:, :last].mT, beta=0.0)
    return gram


def _half_log2det(mats: Tensor) -> Tensor:
    """``1/2 log2 det(M)`` ``[B]`` for symmetric ``mats`` ``[B, k, k]`` = I + positive semi-definite.

    Cholesky first; a matrix it rejects (rounding made it barely indefinite, e.g. huge
    unnormalised features) goes through its eigenvalues, clamped to the exact lower bound 1.
    """
    # The upper factor of the transposed view reads the same (lower) triangle without a copy:
    # LAPACK is column-major. Its diagonal is the lower factor's.
    factor, info = torch.linalg.cholesky_ex(mats.mT, upper=True)
    bits = torch.log2(torch.diagonal(factor, dim1=-2, dim2=-1)).sum(-1)
    failed = info != 0
    if bool(failed.any()):
        eigenvalues = torch.linalg.eigvalsh(mats[failed])
        bits[failed] = 0.5 * torch.log2(eigenvalues.clamp_min(1.0)).sum(-1)
    return bits.clamp_min_(0.0)


def semantic_scale(features: Tensor, normalize: bool = True, alpha: float | None = None) -> Tensor:
    """Semantic scale of one class, in bits.

    Args:
        features: ``[m, d]`` float (any float dtype, any device); computed in float64.
        normalize: L2-normalise each row before centring (an all-zero row stays zero).
        alpha: distortion parameter; ``None`` means the feature dimension ``d``.

    Returns:
        0-dim float64 tensor on ``features.device``: ``1/2 log2 det(I + alpha/m Zc^T Zc)``;
        0 when ``m < 2``.
    """
    _require_features(features)
    m, d = features.shape
    a = _resolve_alpha(alpha, d)
    check_finite_features(features)
    if m < MIN_SAMPLES_FOR_SCALE or d == 0:
        return torch.zeros((), dtype=torch.float64, device=features.device)
    rows = torch.arange(m, device=features.device).unsqueeze(0)
    lengths = torch.tensor([m], device=features.device)
    return _scales_of_row_sets(features, rows, lengths, normalize, a)[0]


@dataclass
class _Chunk:
    classes: list[int]
    width: int  # rows per set after padding (the largest set of the chunk)


def _set_cost(size: int, feature_dim: int) -> int:
    """Multiply-adds for one set of ``size`` rows: Gram matrix plus Cholesky of side ``min(size, d)``."""
    side = min(size, feature_dim)
    return side * side * max(size, feature_dim) + side**3 // 3


def _plan_chunks(set_sizes: list[tuple[int, int]], feature_dim: int, max_elements: int) -> list[_Chunk]:
    """Group ``(class, size)`` pairs, sorted by size, into chunks padded to their largest size.

    A set joins the current chunk while the padding costs at most ``_PAD_WORK`` more work than
    the chunk's own, or less than the fixed cost of one more chunk (``_CHUNK_OVERHEAD_WORK``), and
    the padded features fit ``max_elements`` (a set bigger than that is a chunk of its own).
    """
    chunks: list[_Chunk] = []
    current: list[int] = []
    own_work = width = 0
    for cls, size in sorted(set_sizes, key=lambda t: t[1]):
        cost = _set_cost(size, feature_dim)
        if current:
            padded_work = (len(current) + 1) * cost
            too_uneven = padded_work - (own_work + cost) > max(_PAD_WORK * (own_work + cost), _CHUNK_OVERHEAD_WORK)
            too_big = (len(current) + 1) * size * feature_dim > max_elements
            if too_uneven or too_big:
                chunks.append(_Chunk(current, width))
                current, own_work = [], 0
        current.append(cls)
        own_work += cost
        width = size
    if current:
        chunks.append(_Chunk(current, width))
    return chunks


def _class_layout(labels: Tensor, num_classes: int) -> tuple[Tensor, list[int], list[int]]:
    """Rows sorted by class (``[N]`` long), and per-class counts and start offsets into them."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    return order, counts.tolist(), starts.tolist()


def _check_labels(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Validated labels as long on ``features.device``."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}. Fix: torch.as_tensor(...)")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"features must be [N, d] and labels [N]; got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class ids, got {labels.dtype}. Fix: labels.long()")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    labels = labels.to(device=features.device, dtype=torch.long)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got range [{int(labels.min())}, {int(labels.max())}]. "
            "Fix: pass the right num_classes or remap the labels."
        )
    return labels


def _padded_rows(order: Tensor, starts: list[int], lengths: list[int], width: int) -> Tensor:
    """``[B, width]`` indices: set ``b`` is ``order[starts[b] : starts[b] + lengths[b]]``, padded with its last row."""
    device = order.device
    start = torch.tensor(starts, device=device)[:, None]
    last = torch.tensor(lengths, device=device)[:, None] - 1
    offsets = torch.arange(width, device=device)[None, :]
    return order[start + torch.minimum(offsets, last)]


def class_semantic_scales(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    normalize: bool = True,
    alpha: float | None = None,
    classes: Iterable[int] | None = None,
) -> Tensor:
    """Semantic scale of every class, batched across classes of similar size.

    Args:
        features: ``[N, d]`` float (any float dtype, any device); computed in float64.
        labels: ``[N]`` int in ``[0, num_classes)``.
        num_classes: ``C``.
        normalize, alpha: as in :func:`semantic_scale` (``alpha = None`` means ``d`` for every class).
        classes: compute only these class ids (the others are returned as 0); used to split
            the work across processes.

    Returns:
        ``[C]`` float64 on ``features.device``, in bits. A class with fewer than 2 samples gets 0:
        see :func:`classes_without_volume` to report them.
    """
    _require_features(features)
    labels = _check_labels(features, labels, num_classes)
    d = features.shape[1]
    a = _resolve_alpha(alpha, d)
    wanted = _check_class_ids(classes, num_classes)
    check_finite_features(features, labels)
    scales = torch.zeros(num_classes, dtype=torch.float64, device=features.device)
    if d == 0:
        return scales
    order, counts, starts = _class_layout(labels, num_classes)
    set_sizes = [(c, counts[c]) for c in wanted if counts[c] >= MIN_SAMPLES_FOR_SCALE]
    for chunk in _plan_chunks(set_sizes, d, _chunk_elements(features.device)):
        lengths = [counts[c] for c in chunk.classes]
        rows = _padded_rows(order, [starts[c] for c in chunk.classes], lengths, chunk.width)
        length_tensor = torch.tensor(lengths, device=features.device)
        scales[chunk.classes] = _scales_of_row_sets(features, rows, length_tensor, normalize, a)
    return scales


def chunk_layout(
    class_sizes: Sequence[int], feature_dim: int, device: str | torch.device = "cpu"
) -> list[tuple[int, int]]:
    """How :func:`class_semantic_scales` batches classes of ``class_sizes`` rows of ``feature_dim`` features on
    ``device``: ``(classes, padded rows)`` of each chunk, in order (classes of fewer than 2 rows are left out)."""
    sets = [(c, n) for c, n in enumerate(class_sizes) if n >= MIN_SAMPLES_FOR_SCALE]
    chunks = _plan_chunks(sets, feature_dim, _chunk_elements(torch.device(device)))
    return [(len(chunk.classes), chunk.width) for chunk in chunks]


def _check_class_ids(classes: Iterable[int] | None, num_classes: int) -> list[int]:
    if classes is None:
        return list(range(num_classes))
    ids = sorted({int(c) for c in classes})
    if ids and (ids[0] < 0 or ids[-1] >= num_classes):
        raise ValueError(f"classes must be ids in [0, {num_classes}); got {ids[0]}..{ids[-1]}")
    return ids


def classes_without_volume(labels: Tensor, num_classes: int) -> list[int]:
    """Class ids with fewer than 2 samples in ``labels`` ``[N]`` (their scale is reported as 0)."""
    ids = torch.as_tensor(labels).to(device="cpu", dtype=torch.long).reshape(-1)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got range [{int(ids.min())}, {int(ids.max())}]")
    counts = torch.bincount(ids, minlength=num_classes)
    return [c for c, n in enumerate(counts.tolist()) if n < MIN_SAMPLES_FOR_SCALE]


@dataclass
class MarginalEffect:
    """Semantic scale of random class subsets against subset size (the "marginal effect").

    Attributes:
        sizes: ``S`` subset sizes ``m``, increasing.
        mean: ``[C, S]`` float64 (CPU), mean scale in bits over the draws; NaN where ``m > n_c``.
        std: ``[C, S]`` float64 (CPU), sample standard deviation over the draws (0 when
            ``draws == 1`` or ``m == n_c``); NaN where ``m > n_c``.
        counts: ``C`` class sizes ``n_c``.
        draws, seed, alpha, normalize: how the curves were drawn (``alpha`` resolved, the same
            for every ``m``).
    """

    sizes: list[int]
    mean: Tensor
    std: Tensor
    counts: list[int]
    draws: int
    seed: int
    alpha: float
    normalize: bool

    def to_dict(self) -> dict:
        """JSON-ready dict; entries with ``m > n_c`` are ``null``."""
        return {
            "sizes": list(self.sizes),
            "counts": list(self.counts),
            "draws": self.draws,
            "seed": self.seed,
            "alpha": self.alpha,
            "normalize": self.normalize,
            "mean": _nan_to_none(self.mean),
            "std": _nan_to_none(self.std),
        }


def _nan_to_none(values: Tensor) -> list[list[float | None]]:
    return [[v if math.isfinite(v) else None for v in row] for row in values.tolist()]


def _default_sizes(max_count: int, points: int = 12) -> list[int]:
    """Log-spaced integer grid from 2 to ``max_count`` (at most ``points`` sizes)."""
    if max_count < MIN_SAMPLES_FOR_SCALE:
        raise ValueError(
            "no class has at least 2 samples, so no marginal-effect curve can be drawn. "
            "Fix: measure on more samples per class."
        )
    grid = torch.logspace(math.log10(2), math.log10(max_count), points, dtype=torch.float64)
    return sorted({int(round(float(v))) for v in grid})


def _check_sizes(sizes: Sequence[int]) -> list[int]:
    checked = sorted({int(m) for m in sizes})
    if not checked or checked[0] < 1:
        raise ValueError(f"sizes must be a non-empty list of positive subset sizes, got {list(sizes)}")
    return checked


def marginal_effect_curves(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    sizes: Sequence[int] | None = None,
    draws: int = 5,
    seed: int = 0,
    normalize: bool = True,
    alpha: float | None = None,
) -> MarginalEffect:
    """Scale of random subsets of each class against the subset size ``m``.

    For each class ``c``, ``draws`` seeded random permutations of its rows are drawn; draw ``k``
    at size ``m`` is the first ``m`` rows of permutation ``k`` (a uniform subset without
    replacement; along ``m`` each draw is one growing dataset). ``alpha`` stays at one value
    (``d`` by default) for all ``m``, so the points of a curve are comparable.

    Args:
        features: ``[N, d]`` float; labels: ``[N]`` int in ``[0, num_classes)``.
        sizes: subset sizes (sorted, deduplicated); default a log-spaced grid from 2 to ``max n_c``.
        draws: random subsets per class and size (>= 1).
        seed: seed of the CPU generator drawing the subsets (same subsets on every device).
        normalize, alpha: as in :func:`semantic_scale`.

    Returns:
        :class:`MarginalEffect`; a subset of size ``m < 2`` has scale 0.
    """
    _require_features(features)
    labels = _check_labels(features, labels, num_classes)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive int, got {draws!r}")
    d = features.shape[1]
    a = _resolve_alpha(alpha, d)
    check_finite_features(features, labels)
    order, counts, starts = _class_layout(labels, num_classes)
    grid = _default_sizes(max(counts)) if sizes is None else _check_sizes(sizes)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    perms = [[torch.randperm(n, generator=generator) for _ in range(draws)] for n in counts]
    values = torch.full((num_classes, len(grid), draws), math.nan, dtype=torch.float64)  # bits
    for j, m in enumerate(grid):
        members = [c for c in range(num_classes) if m <= counts[c]]
        if m < MIN_SAMPLES_FOR_SCALE or d == 0:
            values[members, j] = 0.0
            continue
        # m == n_c: every draw is the whole class, so one subset stands for all draws.
        subsets = [(c, k) for c in members for k in range(draws if m < counts[c] else 1)]
        per_chunk = max(1, _chunk_elements(features.device) // (m * d))
        for first in range(0, len(subsets), per_chunk):
            batch = subsets[first : first + per_chunk]
            local = torch.stack([perms[c][k][:m] + starts[c] for c, k in batch]).to(order.device)
            lengths = torch.full((len(batch),), m, device=features.device)
            scales = _scales_of_row_sets(features, order[local], lengths, normalize, a).cpu()
            for (c, k), s in zip(batch, scales.tolist()):
                values[c, j, k if m < counts[c] else slice(None)] = s
    mean = values.mean(dim=-1)
    std = values.std(dim=-1) if draws > 1 else torch.where(mean.isnan(), mean, 0.0)
    whole_class = torch.tensor([[m == n for m in grid] for n in counts], dtype=torch.bool)
    std[whole_class] = 0.0  # identical draws (the rounding of their mean is not a spread)
    return MarginalEffect(grid, mean, std, counts, draws=draws, seed=int(seed), alpha=a, normalize=normalize)
