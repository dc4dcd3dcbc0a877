"""Cross-process helpers over Accelerate or torch.distributed: gather uneven batches, split class volumes by rank.

The communicator is an ``accelerate.Accelerator`` or a :class:`TorchDistributedComm`. With one process (or none)
every function is a local no-op (no communication), so callers use them unconditionally. With several (DDP,
FSDP, DeepSpeed, multi-CPU over gloo):

- :func:`gather_labelled_features` gives every process the global batch ``[sum_r B_r, d]`` in rank
  order. One small gather of the per-rank sizes (which also checks that every process has the same
  feature size), the batch padded to the largest one, one gather, the padding cut off.
- :func:`sharded_class_scales` splits the per-class volume computations across processes (each
  computes its share of classes, balanced by cost) and gathers the results, so every process ends
  with the bit-identical ``[C]`` vector: each value is copied from the one process that computed it.
- :func:`owned_class_scales` does the same for a class-sharded pool (each process holds only the rows of the
  classes it measures); :func:`gather_rows` reassembles such a pool (for a checkpoint), keeping its dtype.
- :func:`assert_same_on_all_processes` turns a configuration mismatch between processes into the
  same clear error on every process instead of a hang inside a later collective.
- Every collective is wrapped: a timeout or a lost peer becomes :class:`DistributedSyncError`, naming
  the operation, the step, the rank and the likely causes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

from ..core.scale import class_semantic_scales

__all__ = [
    "DistributedSyncError",
    "TorchDistributedComm",
    "gather_labelled_features",
    "shard_classes_by_cost",
    "class_owners",
    "sharded_class_scales",
    "owned_class_scales",
    "gather_rows",
    "assert_same_on_all_processes",
    "apply_process_group_timeout",
    "MAX_GATHERED_LABEL",
]

logger = logging.getLogger(__name__)

_PAD_LABEL = -1
MAX_GATHERED_LABEL = 2**24
"""Labels travel as a float32 column next to the features; float32 holds integers exactly below 2**24."""

_LIKELY_CAUSES = (
    "Every process must reach the same cross-process calls in the same order. Likely causes: "
    "(1) another process crashed or was killed: its own traceback (printed by that process, or in its log) "
    "is the root cause; "
    "(2) the processes run different numbers of batches: an uneven split of the data (an IterableDataset "
    "with unequal shards, a custom sampler or dataloader that is not sharded evenly, dataloader_drop_last / "
    "even_batches set so that one process gets an extra batch), or a per-process max_steps; "
    "(3) a process is stuck (slow I/O, a deadlock, a debugger) for longer than the process-group timeout "
    "(TrainingArguments.ddp_timeout)."
)


class DistributedSyncError(RuntimeError):
    """A collective across processes failed or timed out: a peer crashed, stalled or runs a different schedule."""


class TorchDistributedComm:
    """The communicator interface the helpers below use (``num_processes``, ``process_index``, ``device``,
    ``gather``), over an initialised ``torch.distributed`` process group, for loops without Accelerate.

    ``gather(tensor)`` is an all-gather concatenated along dim 0 in rank order (every rank gets the result),
    as ``Accelerator.gather``; every rank's tensor must have the same shape.
    """

    def __init__(self, device: str | torch.device | None = None, group: Any = None):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "TorchDistributedComm needs an initialised torch.distributed process group. Fix: call "
                "torch.distributed.init_process_group(...) first (torchrun sets the environment), or pass comm=None "
                "for one process."
            )
        self._dist, self.group = dist, group
        self.num_processes = dist.get_world_size(group)
        self.process_index = dist.get_rank(group)
        if device is None:
            device = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
        self.device = torch.device(device)

    def gather(self, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(self.num_processes)]
        self._dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts, dim=0)


def _is_multi_process(accelerator: Any) -> bool:
    return accelerator is not None and accelerator.num_processes > 1


def _failure_kind(err: BaseException) -> str:
    text = str(err).lower()
    if "timed out" in text or "timeout" in text:
        return "timed out waiting for the other processes"
    if any(s in text for s in ("connection closed", "connection reset", "broken pipe", "connection refused")):
        return "the connection to another process was lost (it probably exited)"
    return "the collective failed"


def _collective(accelerator: Any, operation: str, step: int | None, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one collective; turn a backend failure into :class:`DistributedSyncError` with a diagnosis."""
    try:
        return fn(*args)
    except DistributedSyncError:
        raise
    except Exception as err:  # torch.distributed.DistError (a RuntimeError), accelerate's DistributedOperationException
        if not isinstance(err, RuntimeError) and type(err).__name__ != "DistributedOperationException":
            raise
        at_step = f" at optimizer step {step}" if step is not None else ""
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedSyncError(
            f"SemScaleTrainer: the {operation} across {accelerator.num_processes} processes failed on rank "
            f"{accelerator.process_index}{at_step}: {_failure_kind(err)}. {_LIKELY_CAUSES} "
            f"Original error: {type(err).__name__}: {first_line}"
        ) from err


def apply_process_group_timeout(accelerator: Any, seconds: float) -> bool:
    """Make a gloo process group time out after ``seconds`` (``TrainingArguments.ddp_timeout``).

    ``TrainingArguments(use_cpu=True)`` does not pass ``ddp_timeout`` to the process group it creates
    (transformers passes it only for GPU backends and DeepSpeed), so a stalled peer would block the
    others for gloo's default 30 minutes. Returns True when the timeout was applied.
    """
    if not _is_multi_process(accelerator):
        return False
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or not hasattr(dist, "set_timeout"):
        return False
    if dist.get_backend() != "gloo":
        return False  # NCCL and others get ddp_timeout from TrainingArguments already
    dist.set_timeout(timedelta(seconds=float(seconds)))
    logger.info("gloo process group: collectives now time out after %s s (ddp_timeout)", seconds)
    return True


def gather_labelled_features(
    accelerator: Any, features: Tensor, labels: Tensor, step: int | None = None
) -> tuple[Tensor, Tensor]:
    """All processes' ``features [B_r, d]`` and ``labels [B_r]`` concatenated in rank order.

    Rows labelled ``-100`` (or any negative label) are dropped locally first. The batches may differ
    in size between processes: the per-rank sizes are gathered (checking every process has the same
    feature size ``d``, else the same ``RuntimeError`` is raised on every process), each batch is
    padded to the largest with ``-1`` and sent as one ``float32`` tensor ``[B_max, d + 1]`` (the last
    column is the label, exact below :data:`MAX_GATHERED_LABEL`), and the padding is cut off after
    the gather. Features come back as ``float32``. Two collectives per call; none with one process.
    """
    labels = labels.reshape(-1).to(torch.long)
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features must be [B, d] and labels [B]; got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    keep = labels >= 0
    features, labels = features[keep.to(features.device)], labels[keep]
    if not _is_multi_process(accelerator):
        return features, labels
    num_rows, width = features.shape
    packed = torch.cat([features.float(), labels.to(device=features.device, dtype=torch.float32)[:, None]], dim=1)
    local_size = torch.tensor([[num_rows, width]], dtype=torch.long, device=packed.device)
    sizes = _collective(accelerator, "gather of the feature-batch sizes", step, accelerator.gather, local_size).cpu()
    widths = sizes[:, 1].tolist()
    if len(set(widths)) > 1:
        per_rank = ", ".join(f"rank {r}: {w}" for r, w in enumerate(widths))
        raise RuntimeError(
            f"SemScaleTrainer: processes disagree on the feature size ({per_rank}) at optimizer step {step}. "
            "Every process must train the same model. Fix: launch all processes with the same model and "
            "feature_module / feature_pool_fn."
        )
    rows = sizes[:, 0].tolist()
    max_rows = max(rows)
    if max_rows == 0:
        return features.float(), labels
    if num_rows < max_rows:
        pad = packed.new_full((max_rows - num_rows, width + 1), float(_PAD_LABEL))
        packed = torch.cat([packed, pad], dim=0)
    gathered = _collective(accelerator, "gather of the batch features", step, accelerator.gather, packed)
    gathered = torch.cat([gathered[r * max_rows : r * max_rows + n] for r, n in enumerate(rows)], dim=0)
    return gathered[:, :width], gathered[:, width].round().to(torch.long)


def gather_rows(accelerator: Any, features: Tensor, labels: Tensor, step: int | None = None) -> tuple[Tensor, Tensor]:
    """Every process's ``features [N_r, d]`` (any dtype, kept exactly) and ``labels [N_r]`` concatenated in rank
    order; ``N_r`` may differ. Three collectives (sizes, padded features, padded labels); none with one process."""
    if not _is_multi_process(accelerator):
        return features, labels
    device = accelerator.device
    sizes = _collective(
        accelerator, "gather of the pool-row counts", step, accelerator.gather,
        torch.tensor([features.shape[0]], dtype=torch.long, device=device),
    ).tolist()  # fmt: skip
    top = max(sizes)
    padded = features.new_zeros((top, features.shape[1]))
    padded[: features.shape[0]] = features
    padded_labels = torch.full((top,), _PAD_LABEL, dtype=torch.long, device=device)
    padded_labels[: labels.shape[0]] = labels.to(device)
    all_features = _collective(accelerator, "gather of the pool rows", step, accelerator.gather, padded.to(device))
    all_labels = _collective(accelerator, "gather of the pool labels", step, accelerator.gather, padded_labels)
    keep = torch.cat([torch.arange(r * top, r * top + n) for r, n in enumerate(sizes)]).to(device)
    return all_features[keep], all_labels[keep]


def owned_class_scales(
    accelerator: Any,
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    owner: Tensor,
    normalize: bool = True,
    alpha: float | None = None,
    step: int | None = None,
) -> Tensor:
    """The ``[C]`` float64 scales of a class-sharded pool, identical on every process: each process computes the
    classes it owns (``owner [C]``: the rank holding each class's rows, -1 for none: scale 0) from its own
    ``features`` / ``labels``, and the ``[P, C]`` results are gathered, each class taken from its owner."""
    mine = [c for c in range(num_classes) if int(owner[c]) == accelerator.process_index]
    local = class_semantic_scales(features, labels, num_classes, normalize=normalize, alpha=alpha, classes=mine)
    gathered = _collective(
        accelerator,
        "gather of the per-class semantic scales",
        step,
        accelerator.gather,
        local.to(accelerator.device)[None],
    ).cpu()  # [P, C]
    scales = gathered.gather(0, owner.clamp_min(0)[None])[0]
    scales[owner < 0] = 0.0  # fewer than 2 rows: no volume, 0 on every process
    return scales.to(features.device)


def class_owners(class_sizes: list[int], feature_dim: int, num_processes: int) -> Tensor:
    """``[C]`` long: the rank that measures each class under :func:`shard_classes_by_cost`, -1 for classes of
    fewer than 2 rows (no volume)."""
    owner = torch.full((len(class_sizes),), -1, dtype=torch.long)
    for rank, classes in enumerate(shard_classes_by_cost(class_sizes, feature_dim, num_processes)):
        owner[classes] = rank
    return owner


def shard_classes_by_cost(class_sizes: list[int], feature_dim: int, num_shards: int) -> list[list[int]]:
    """Split class ids into ``num_shards`` lists of about equal Cholesky + Gram cost.

    The cost of a class of ``m`` rows is ``min(m, d)^2 * max(m, d)``; classes with fewer than 2 rows
    cost nothing and are left out (their scale is 0). Deterministic (the same on every process):
    classes in decreasing cost order, each to the currently cheapest shard (ties to the lowest rank).
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
    step: int | None = None,
) -> Tensor:
    """:func:`~hf_semscale.core.scale.class_semantic_scales` with the classes split across processes.

    Every process must hold the same ``features`` / ``labels`` (the pool). Each computes the scales of
    its share of classes (:func:`shard_classes_by_cost`, on its rows only); the ``[P, C]`` results
    are gathered and each class's value is taken from the process that computed it, so every process
    returns the bit-identical ``[C]`` float64 vector (on ``features.device``).
    """
    if not _is_multi_process(accelerator):
        return class_semantic_scales(features, labels, num_classes, normalize=normalize, alpha=alpha)
    labels = labels.to(torch.long)
    sizes = torch.bincount(labels.cpu(), minlength=num_classes).tolist()
    owner = class_owners(sizes, features.shape[1], accelerator.num_processes)
    rows = (owner == accelerator.process_index).to(labels.device)[labels]
    return owned_class_scales(
        accelerator, features[rows], labels[rows], num_classes, owner, normalize=normalize, alpha=alpha, step=step
    )


def assert_same_on_all_processes(accelerator: Any, what: str, step: int | None = None, **values: int) -> None:
    """Raise the same ``RuntimeError`` on every process if integer ``values`` differ between processes.

    The message names each differing value and every rank's value. One small gather; none with one process.
    """
    if not _is_multi_process(accelerator):
        return
    mine = torch.tensor([int(v) for v in values.values()], dtype=torch.long, device=accelerator.device)
    everyone = _collective(
        accelerator, f"consistency check ({', '.join(values)})", step, accelerator.gather, mine[None]
    ).cpu()
    problems = []
    for k, name in enumerate(values):
        column = everyone[:, k].tolist()
        if len(set(column)) > 1:
            problems.append(f"{name} (" + ", ".join(f"rank {r}: {v}" for r, v in enumerate(column)) + ")")
    if problems:
        raise RuntimeError(
            f"{what}: processes disagree on {'; '.join(problems)}. Every process must train the same model on "
            "the same label set with the same settings. Fix: launch all processes with the same model, dataset "
            "and arguments (pass class_counts computed on the WHOLE training set if each process loads a shard)."
        )
