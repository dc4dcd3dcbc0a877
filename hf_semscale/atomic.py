"""The one atomic-write rule of the library: write a temporary file (or folder) beside the target, then rename.

Readers (a resumed run, a concurrent benchmark, the Hub push) see the old file or the new one, never half of one;
a failed write leaves the old file and no temporary behind. Standard library only.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_folder", "atomic_path"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` (same folder and suffix, a hidden ``.tmp`` name) to write into.

    On a clean exit of the ``with`` block the file is fsynced and renamed over ``path`` (atomic on POSIX and
    Windows); on an exception it is removed and ``path`` is untouched. The folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the write or the rename failed


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary folder beside ``path`` (hidden ``.tmp`` name, created) to fill.

    On a clean exit of the ``with`` block it is renamed to ``path``; that rename fails (``OSError``) when ``path``
    is a non-empty folder already. On any exception the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left when the write or the rename failed
