"""Checkpoint files of ``SemScaleTrainer``: the balancer state, the weight-update history, completeness.

- ``checkpoint-N/semscale_state.safetensors``: :meth:`SemanticScaleBalancer.state_dict` (tensors only, with a
  checksum; written before the Trainer's ``trainer_state.json``, the completeness mark of a checkpoint);
- ``output_dir/semscale_history.jsonl``: one JSON line per weight update; lines a killed run wrote after the
  checkpoint being resumed are dropped on resume.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..atomic import atomic_path
from ..dsb.pool import PoolFileError, atomic_save_safetensors, load_safetensors_checked

__all__ = [
    "STATE_FILENAME",
    "HISTORY_FILENAME",
    "checkpoint_problem",
    "latest_complete_checkpoint",
    "remove_incomplete_checkpoints_after",
    "save_state_file",
    "read_state_file",
    "append_history",
    "truncate_history",
]

logger = logging.getLogger(__name__)

STATE_FILENAME = "semscale_state.safetensors"
HISTORY_FILENAME = "semscale_history.jsonl"
STATE_FORMAT = "hf_semscale.trainer_state.v1"
_TRAINER_STATE_NAME = "trainer_state.json"


def step_of(path: str | os.PathLike) -> int | None:
    """The step ``N`` of a folder named ``...-N`` (``checkpoint-N``), None if its name ends otherwise."""
    tail = Path(path).name.split("-")[-1]
    return int(tail) if tail.isdigit() else None


def _is_checkpoint_folder(path: Path) -> bool:
    return path.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and step_of(path) is not None


def checkpoint_problem(checkpoint_dir: str | os.PathLike, needs_semscale_state: bool = True) -> str | None:
    """Why ``checkpoint_dir`` is not a complete checkpoint, or None if it is.

    A checkpoint is complete when ``trainer_state.json`` (the last file the Trainer writes) parses
    and, for runs with a pool, ``semscale_state.safetensors`` reads back (checksum included).
    """
    path = Path(checkpoint_dir)
    try:
        json.loads((path / _TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{path / _TRAINER_STATE_NAME} is missing or unreadable ({err.__class__.__name__})"
    if needs_semscale_state:
        try:
            load_safetensors_checked(path / STATE_FILENAME)
        except PoolFileError as err:
            return str(err)
    return None


def latest_complete_checkpoint(output_dir: str | os.PathLike, needs_semscale_state: bool = True) -> str | None:
    """The highest-step ``checkpoint-N`` folder of ``output_dir`` that is complete (see :func:`checkpoint_problem`)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    checkpoints = [child for child in root.iterdir() if child.is_dir() and _is_checkpoint_folder(child)]
    for child in sorted(checkpoints, key=step_of, reverse=True):
        problem = checkpoint_problem(child, needs_semscale_state)
        if problem is None:
            return str(child)
        logger.warning("Skipping incomplete checkpoint %s: %s", child, problem)
    return None


def remove_incomplete_checkpoints_after(output_dir: str | os.PathLike, step: int) -> None:
    """Delete the half-written ``checkpoint-N`` (N > ``step``) an interrupted run left in ``output_dir``.

    Resume never uses them, and the Trainer's rotation (``save_total_limit``) protects the highest-numbered
    (or newest) checkpoint: a stale incomplete one there would make it delete the complete ones. Only folders
    whose ``trainer_state.json`` (written last) is missing or unreadable go: an interrupted save's signature.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        if not (_is_checkpoint_folder(child) and step_of(child) > step):
            continue
        problem = checkpoint_problem(child, needs_semscale_state=False) if child.is_dir() else None
        if problem is not None:
            logger.warning("Removing incomplete checkpoint %s left by an interrupted run: %s", child, problem)
            shutil.rmtree(child, ignore_errors=True)


def save_state_file(
    tensors: dict[str, Tensor], checkpoint_dir: str | os.PathLike, num_labels: int, feature_dim: int, global_step: int
) -> None:
    """Write the balancer's ``tensors`` to ``checkpoint_dir/semscale_state.safetensors`` atomically."""
    metadata = {
        "format": STATE_FORMAT,
        "num_labels": str(num_labels),
        "feature_dim": str(feature_dim),
        "global_step": str(global_step),
    }
    atomic_save_safetensors(tensors, Path(checkpoint_dir) / STATE_FILENAME, metadata=metadata)


def read_state_file(checkpoint_dir: str | os.PathLike, num_labels: int) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata of ``checkpoint_dir/semscale_state.safetensors``; :class:`PoolFileError` names the
    file when it is unreadable, fails its checksum, is of another format or another label set."""
    path = Path(checkpoint_dir) / STATE_FILENAME
    tensors, metadata = load_safetensors_checked(path)
    if metadata.get("format") != STATE_FORMAT:
        raise PoolFileError(f"{path}: not a SemScaleTrainer state file (format {metadata.get('format')!r})")
    saved_labels = int(metadata.get("num_labels", -1))
    if saved_labels != num_labels:
        raise PoolFileError(
            f"{path}: saved for num_labels={saved_labels} but this model has {num_labels}. "
            "Fix: resume with the model and label set of the original run, or start a fresh output_dir."
        )
    return tensors, metadata


def append_history(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line to the history file ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def truncate_history(path: str | os.PathLike, resume_step: int) -> None:
    """Keep the lines of ``path`` with ``step < resume_step`` (drop a killed run's later lines and cut lines)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] < resume_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by the interruption
    with atomic_path(path) as tmp:
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
