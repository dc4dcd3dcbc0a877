"""Per-class ring-buffer storage pool of recent features (the DSB "storage pool").

Class ``c`` owns ``capacity[c]`` rows of one contiguous storage tensor ``[sum(capacity), d]``;
new features of class ``c`` overwrite its oldest rows. With ``capacity[c] = n_c`` and sampling
without replacement, the pool holds exactly the latest feature of every sample of the class.

State (``state_dict``) is tensors only and round-trips through safetensors; nothing is pickled.
This module imports torch and safetensors only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..atomic import atomic_path
from ..core.losses import IGNORE_INDEX, check_class_labels

__all__ = [
    "FeaturePool",
    "PoolFileError",
    "pool_capacities",
    "estimate_pool_bytes",
    "atomic_save_safetensors",
    "load_safetensors_checked",
    "tensors_checksum",
]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"unsupported pool dtype {dtype!r}; choose one of {list(_DTYPES)}")


class PoolFileError(ValueError):
    """A pool / weights file that is unreadable, truncated, or from another model."""


def pool_capacities(class_counts: Tensor | list[int], max_per_class: int | None) -> Tensor:
    """``[C]`` int64 capacities ``min(n_c, K)``; ``K = None`` or ``<= 0`` means ``n_c``; at least 1 each."""
    counts = torch.as_tensor(class_counts, dtype=torch.long)
    if max_per_class is not None and max_per_class > 0:
        counts = counts.clamp_max(max_per_class)
    return counts.clamp_min(1)


def estimate_pool_bytes(capacities: Tensor, feature_dim: int, dtype: str | torch.dtype = "float16") -> int:
    """Bytes the pool's storage will take: ``sum(capacities) * feature_dim * itemsize``."""
    itemsize = torch.empty((), dtype=_resolve_dtype(dtype)).element_size()
    return int(torch.as_tensor(capacities).sum()) * int(feature_dim) * itemsize


CHECKSUM_KEY = "sha256"
"""Metadata key of the checksum over a file's tensors (:func:`tensors_checksum`)."""


def tensors_checksum(tensors: dict[str, Tensor]) -> str:
    """SHA-256 (hex) over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_save_safetensors(
    tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically (:func:`~hf_semscale.atomic.atomic_path`), with a
    checksum of its tensors in the metadata that :func:`load_safetensors_checked` verifies."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {**(metadata or {}), CHECKSUM_KEY: tensors_checksum(tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


class FeaturePool:
    """Ring buffers of detached features, one per class.

    Args:
        capacities: ``[C]`` rows per class (see :func:`pool_capacities`).
        feature_dim: ``d``.
        dtype: storage dtype (``"float16"``, ``"bfloat16"``, ``"float32"``, ``"float64"``);
            scales are computed in float64 whatever it is.
        device: where the storage lives.
        stored: ``[C]`` bool, the classes whose rows this pool keeps (a class-sharded pool: one process's share);
            default all. The counters (``filled``, ``total_added``, ``write_pos``) follow every class either way.
    """

    def __init__(
        self,
        capacities: Tensor,
        feature_dim: int,
        dtype: str | torch.dtype = "float16",
        device: str | torch.device = "cpu",
        stored: Tensor | None = None,
    ):
        self.capacities = torch.as_tensor(capacities, dtype=torch.long).cpu()
        if self.capacities.ndim != 1 or bool((self.capacities < 1).any()):
            raise ValueError("capacities must be a [C] vector of positive integers")
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        self.num_classes = int(self.capacities.numel())
        self.feature_dim = int(feature_dim)
        self.dtype = _resolve_dtype(dtype)
        self.device = torch.device(device)
        self.stored = (
            torch.ones(self.num_classes, dtype=torch.bool) if stored is None else torch.as_tensor(stored).cpu()
        )
        if self.stored.shape != self.capacities.shape or self.stored.dtype != torch.bool:
            raise ValueError(f"stored must be a [{self.num_classes}] bool mask")
        rows = self.capacities * self.stored  # storage rows per class
        self.offsets = torch.cumsum(rows, 0) - rows
        self.storage = torch.zeros(int(rows.sum()), self.feature_dim, dtype=self.dtype, device=self.device)
        self.write_pos = torch.zeros(self.num_classes, dtype=torch.long)  # next row to write, per class
        self.filled = torch.zeros(self.num_classes, dtype=torch.long)  # rows holding data, per class
        self.total_added = torch.zeros(self.num_classes, dtype=torch.long)

    @property
    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()

    @property
    def is_sharded(self) -> bool:
        return not bool(self.stored.all())

    @property
    def is_full(self) -> bool:
        return bool((self.filled >= self.capacities).all())

    def add(self, features: Tensor, labels: Tensor, labels_checked: bool = False) -> None:
        """Insert ``features [B, d]`` of classes ``labels [B]`` (rows with label -100 are skipped).

        Within a batch, later rows are newer; if a class gets more rows than its capacity, only
        the newest ``capacity`` rows are kept. ``labels_checked``: the caller validated the labels already.
        """
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"pool holds features of size {self.feature_dim}; got shape {tuple(features.shape)}")
        labels = labels.reshape(-1).to(torch.long).cpu()
        if labels.numel() != features.shape[0]:
            raise ValueError(f"{features.shape[0]} feature rows but {labels.numel()} labels")
        if not labels_checked:  # the caller validated them
            check_class_labels(labels, self.num_classes)
        keep = labels != IGNORE_INDEX
        idx = torch.nonzero(keep).flatten()
        labels = labels[idx]
        if labels.numel() == 0:
            return
        order = torch.argsort(labels, stable=True)  # group by class, keep arrival order
        labels, idx = labels[order], idx[order]
        per_class = torch.bincount(labels, minlength=self.num_classes)
        first = torch.cumsum(per_class, 0) - per_class
        rank = torch.arange(labels.numel()) - first[labels]  # arrival rank within its class
        cap = self.capacities[labels]
        newest = rank >= per_class[labels] - cap  # drop rows that the same batch overwrites anyway
        labels, idx, rank, cap = labels[newest], idx[newest], rank[newest], cap[newest]
        rows = self.offsets[labels] + (self.write_pos[labels] + rank) % cap
        mine = self.stored[labels]  # a sharded pool counts every class but writes only its own
        labels, idx, rows = labels[mine], idx[mine], rows[mine]
        values = features[idx.to(features.device)].detach().to(self.storage)
        self._check_representable(features[idx.to(features.device)], values, labels)
        self.storage[rows.to(self.device)] = values
        self.write_pos = (self.write_pos + per_class) % self.capacities
        self.total_added += per_class
        self.filled = torch.minimum(self.filled + per_class, self.capacities)

    def _check_representable(self, source: Tensor, stored: Tensor, labels: Tensor) -> None:
        """Refuse a batch (before writing any of it) whose rows are or would become NaN/inf in storage."""
        bad = ~torch.isfinite(stored).all(dim=1).cpu()
        if not bool(bad.any()):
            return
        classes = sorted(set(labels[bad].tolist()))
        if not bool(torch.isfinite(source[bad.to(source.device)]).all()):
            raise ValueError(f"Non-finite (NaN or inf) features of class(es) {classes}: the pool refuses them.")
        raise ValueError(
            f"Features of class(es) {classes} exceed the range of the pool's {str(self.dtype).replace('torch.', '')} "
            f"storage (largest finite value {torch.finfo(self.dtype).max:g}) and would be stored as inf. Fix: "
            "semscale_pool_dtype='bfloat16' or 'float32', or L2-normalise the features (semscale_normalize_features=True)."
        )

    def _ring_rows(self) -> tuple[Tensor, Tensor]:
        """Storage rows of every held feature and their labels, grouped by class (0 first), oldest first."""
        held = self.filled * self.stored
        labels = torch.repeat_interleave(torch.arange(self.num_classes), held)
        first_of_class = torch.cumsum(held, 0) - held
        age_rank = torch.arange(labels.numel()) - first_of_class[labels]  # 0 = oldest
        oldest = self.write_pos[labels] - self.filled[labels]
        return self.offsets[labels] + (oldest + age_rank) % self.capacities[labels], labels

    def contents(self) -> tuple[Tensor, Tensor]:
        """All stored rows ``[N, d]`` (storage dtype) and their labels ``[N]``, N = ``filled[stored].sum()``.

        Grouped by class (0 first); within a class, oldest row first.
        """
        rows, labels = self._ring_rows()
        return self.storage[rows.to(self.device)], labels.to(self.device)

    def resharded(self, stored: Tensor | None = None, rows: tuple[Tensor, Tensor] | None = None) -> FeaturePool:
        """A pool with these counters that keeps the classes ``stored`` (default all), filled from ``rows``
        (``(features [N, d], labels [N])`` grouped by class, oldest first, as :meth:`contents` returns them, holding
        at least every kept class's rows; default this pool's own contents)."""
        pool = FeaturePool(self.capacities, self.feature_dim, self.dtype, self.device, stored)
        pool.write_pos, pool.filled, pool.total_added = (
            self.write_pos.clone(),
            self.filled.clone(),
            self.total_added.clone(),
        )
        features, labels = rows if rows is not None else self.contents()
        target_rows, target_labels = pool._ring_rows()
        order = torch.argsort(labels.cpu(), stable=True)  # class-grouped, oldest first within a class
        keep = pool.stored[labels.cpu()[order]]
        source = order[keep]
        if not torch.equal(labels.cpu()[source], target_labels):
            raise ValueError("rows do not hold exactly the filled rows of the kept classes")
        pool.storage[target_rows.to(pool.device)] = features[source.to(features.device)].to(pool.storage)
        return pool

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors of an unsharded pool (a sharded one: :meth:`resharded` with the gathered rows of every class)."""
        if self.is_sharded:
            raise RuntimeError("a class-sharded pool holds only its classes' rows: gather the whole pool to save it")
        return {
            "pool.storage": self.storage,
            "pool.capacities": self.capacities,
            "pool.write_pos": self.write_pos,
            "pool.filled": self.filled,
            "pool.total_added": self.total_added,
        }

    def load_state_dict(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Restore from :meth:`state_dict` (into an unsharded pool); a mismatch raises :class:`PoolFileError` naming
        ``source``."""
        if self.is_sharded:
            raise RuntimeError("load into an unsharded pool, then keep a process's classes with resharded()")
        missing = [k for k in self.state_dict() if k not in state]
        if missing:
            raise PoolFileError(f"{source}: not a feature-pool state (missing {missing})")
        caps = state["pool.capacities"].to(torch.long)
        storage = state["pool.storage"]
        if caps.numel() != self.num_classes:
            raise PoolFileError(
                f"{source}: pool is for {caps.numel()} classes but this model has {self.num_classes}. "
                "Fix: resume with the model and label set it was saved with, or start a fresh run."
            )
        if storage.ndim != 2 or storage.shape[1] != self.feature_dim:
            raise PoolFileError(
                f"{source}: pool features have size {tuple(storage.shape[1:])} but this model's are "
                f"{self.feature_dim}. Fix: resume with the same model architecture."
            )
        if not torch.equal(caps.cpu(), self.capacities):
            raise PoolFileError(
                f"{source}: per-class capacities differ from this run's (pool capacity or training data "
                "changed). Fix: keep semscale_pool_capacity and the training set of the original run."
            )
        counters = {name: state[f"pool.{name}"].to(torch.long).cpu() for name in ("write_pos", "filled", "total_added")}
        consistent = (
            storage.shape[0] == int(self.capacities.sum())
            and all(c.shape == self.capacities.shape for c in counters.values())
            and torch.equal(counters["filled"], torch.minimum(counters["total_added"], self.capacities))
            and torch.equal(counters["write_pos"], counters["total_added"] % self.capacities)
            and bool((counters["total_added"] >= 0).all())
        )
        if not consistent:
            raise PoolFileError(
                f"{source}: pool counters or storage size are inconsistent with its capacities (a damaged or "
                "edited file). Fix: resume from an earlier checkpoint or start a fresh run."
            )
        if not storage.is_floating_point():
            raise PoolFileError(f"{source}: pool storage has dtype {storage.dtype}; a feature pool stores floats")
        held = torch.arange(storage.shape[0]) - self.offsets.repeat_interleave(self.capacities)
        held = held < counters["filled"].repeat_interleave(self.capacities)  # rows that hold features
        if not bool(torch.isfinite(storage[held.to(storage.device)]).all()):
            raise PoolFileError(f"{source}: the stored features hold NaN or inf (a damaged file)")
        if not bool(torch.isfinite(storage[held.to(storage.device)].to(self.dtype)).all()):
            raise PoolFileError(f"{source}: the stored features exceed the range of this pool's dtype {self.dtype}")
        self.storage = storage.to(device=self.device, dtype=self.dtype).clone()
        self.write_pos, self.filled, self.total_added = (c.clone() for c in counters.values())


def load_safetensors_checked(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file (tensors and metadata), turning any failure, and a checksum that does not match
    the tensors (a bit flip, a partial overwrite), into :class:`PoolFileError`."""
    path = Path(path)
    if not path.is_file():
        raise PoolFileError(f"{path}: file not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise PoolFileError(
            f"{path}: not a readable safetensors file ({err}). It may be truncated by an interrupted "
            "write or be another format (pickle is never loaded). Fix: resume from an earlier checkpoint."
        ) from err
    expected = metadata.get(CHECKSUM_KEY)
    if expected is not None and tensors_checksum(tensors) != expected:
        raise PoolFileError(
            f"{path}: the tensors do not match the file's {CHECKSUM_KEY} checksum: the file is damaged (a flipped bit "
            "or a partial overwrite). Fix: resume from an earlier checkpoint."
        )
    return tensors, metadata
