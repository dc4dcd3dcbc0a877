"""Cross-process helpers on top of Accelerate: gather uneven batches, split class volumes by rank.

With one process every function is a local no-op, so the trainer calls them unconditionally.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .scale import class_semantic_scales

__all__ = ["gather_labelled_features", "shard_classes_by_cost", "sharded_class_scales", "assert_same_on_all_processes"]

_PAD_LABEL = -1


def gather_labelled_features(accelerator: Any, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """All processes' ``features [B_r, d]`` and ``labels [B_r]`` concatenated in rank order.

    Batches of different sizes are padded with ``pad_across_processes`` (labels with -1) before the
    gather and the padding is masked out after it. Rows labelled -100 are dropped too.
    """
    labels = labels.reshape(-1).to(torch.long)
    if accelerator is None or accelerator.num_processes == 1:
        keep = labels >= 0
        return features[keep], labels[keep]
    features = features.contiguous()
    padded_feats = accelerator.pad_across_processes(features, dim=0, pad_index=0)
    padded_labels = accelerator.pad_across_processes(labels, dim=0, pad_index=_PAD_LABEL)
    all_feats = accelerator.gather(padded_feats)
    all_labels = accelerator.gather(padded_labels)
    keep = all_labels >= 0
    return all_feats[keep], all_labels[keep]


def shard_classes_by_cost(class_sizes: list[int], feature_dim: int, num_shards: int) -> list[list[int]]:
    """Split class ids into ``num_shards`` lists of about equal Cholesky + Gram cost.

    Deterministic (same result on every process): classes in decreasing cost order, each to the
    currently cheapest shard (ties to the lowest rank).
    """
    costs = [min(m, feature_dim) ** 2 * max(m, feature_dim) if m >= 2 else 0 for m in class_sizes]
    shards: list[list[int]] = [[] for _ in range(num_shards)]
    load = [0] * num_shards
    for c in sorted(range(len(class_sizes)), key=lambda c: (-costs[c], c)):
        if costs[c] == 0:
            continue
        target = min(range(num_shards), key=lambda r: (load[r], r))
        shards[target].append(c)
        load[target] += costs[c]
    return shards


def sharded_class_scales(
    accelerator: Any,
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    normalize: bool = True,
    alpha: float | None = None,
) -> Tensor:
    """:func:`~hf_semscale.scale.class_semantic_scales` with the classes split across processes.

    Every process must hold the same ``features`` / ``labels`` (the pool). Each computes its share;
    the shares are gathered and summed (each class is non-zero on exactly one process), so every
    process returns the bit-identical ``[C]`` float64 vector.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return class_semantic_scales(features, labels, num_classes, normalize=normalize, alpha=alpha)
    sizes = torch.bincount(labels.to(torch.long).cpu(), minlength=num_classes).tolist()
    shard = shard_classes_by_cost(sizes, features.shape[1], accelerator.num_processes)[accelerator.process_index]
    mine = class_semantic_scales(features, labels, num_classes, normalize=normalize, alpha=alpha, classes=shard)
    gathered = accelerator.gather(mine.to(accelerator.device).unsqueeze(0))  # [P, C]
    return gathered.sum(dim=0).to(features.device)


def assert_same_on_all_processes(accelerator: Any, what: str, **values: int) -> None:
    """Raise on every process if integer ``values`` differ between processes, naming them and the ranks."""
    if accelerator is None or accelerator.num_processes == 1:
        return
    mine = torch.tensor(list(values.values()), dtype=torch.long, device=accelerator.device)
    everyone = accelerator.gather(mine.unsqueeze(0)).cpu()  # [P, K]
    for k, name in enumerate(values):
        column = everyone[:, k].tolist()
        if len(set(column)) > 1:
            per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(column))
            raise RuntimeError(
                f"{what}: processes disagree on {name} ({per_rank}). Every process must train the same "
                "model on the same label set. Fix: launch all processes with the same model and dataset."
            )
