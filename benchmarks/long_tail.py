"""Long-tail benchmark: every baseline and every DSB variant in one harness (SemScaleTrainer + the recipes).

    python benchmarks/long_tail.py --tier cpu            # CPU tier (2 workers, short stated schedule)
    python benchmarks/long_tail.py --tier gpu --workers 8  # paper-scale CIFAR-10-LT schedule (Cao et al. 2019)
    python benchmarks/long_tail.py --tier gpu --dry-run    # time the recipe here; the tier's wall time and budget
    bash benchmarks/gpu_session.sh                         # on a lent GPU: the part of the tier one session fits
    python benchmarks/long_tail.py --tier text           # the regime study: MiniLM on CLINC150(-LT), BANKING77-LT
    python benchmarks/long_tail.py --tier cifar_balanced # the regime study: sample-balanced CIFAR-10
    python benchmarks/long_tail.py --report-only         # rebuild the tables from finished runs

Each run is ``recipes/train_image.py`` / ``recipes/train_text.py`` with a method of
``hf_semscale/select/methods.py``; its ``results.json`` lands in ``<work_dir>/<tier>/<dataset>/<method>/seed<k>/``
and finished runs are skipped when the benchmark is restarted. DSB's own knobs (``semscale_gamma``,
``semscale_warmup_ratio``) are chosen for each ``dsb_*`` method separately, on the VALIDATION split
(carved from training data, seed 0) from a small grid; the test split is never used for choices. A
finished DSB run whose knobs differ from the chosen ones is run again.

The study tiers (``text``, ``cifar_balanced``) give every re-weighting method the same validation grid
over the START of re-weighting (the fraction of training after which class weights apply; a pool method's
warm-up ends one epoch, its fill stage, earlier), besides its own knobs (gamma; p of ``pow_ce_tuned``;
for ``dsb_ce`` also the authors' volume constants alpha = 1 without L2 normalisation), and run ablations
of the pool size and update interval. Their report adds the regime analysis (``benchmarks/study_report.py``).

Outputs: ``benchmarks/results/long_tail.json`` (a list of records: ``method``, ``dataset``,
``imbalance_factor``, ``schedule``, ``seeds``, ``<metric>_mean`` / ``<metric>_std``, wall time) and
``benchmarks/results/long_tail.md`` for the CPU and GPU tiers; ``long_tail_<tier>.json`` / ``.md`` for the
study tiers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.smoke import parse_benchmark_args  # noqa: E402
from hf_semscale.atomic import atomic_folder  # noqa: E402
from hf_semscale.hub.report import write_json_atomic  # noqa: E402
from hf_semscale.select.methods import (  # noqa: E402
    BASELINES,
    DRW_DEFERRAL,
    DSB_COUNTERPART,
    METHODS,
    SCALE_METHODS,
    TUNED_METHODS,
    describe,
)
from recipes.common import METRIC_KEYS, RESULTS_FILENAME  # noqa: E402

logger = logging.getLogger("benchmarks.long_tail")

DEFAULT_WORK_DIR = REPO_ROOT / "benchmarks" / "runs"
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"

# Published CIFAR-10-LT IF=100 top-1 (%), ResNet-32, 200 epochs (Cao et al. 2019, Table 2).
PUBLISHED = {"ce": 70.4, "focal": 70.4, "cb_focal": 74.6, "ldam_drw": 77.0}

# --------------------------------------------------------------------------- tiers
# A "setting" is one dataset + schedule: the recipe, its config, the CLI overrides, the methods, the grid.

DEFAULT_SEEDS = [0, 1, 2]
# DSB's knobs, tuned per dsb_* method on the validation split. The warm-up ratio stays at its default 0.3:
# a {0.3, 0.5} grid on an earlier CPU tier differed by <= 0.3 points (within seed noise), so the runs go to gamma.
TUNING_GRID = {"semscale_gamma": [0.5, 1.0, 4.0], "semscale_warmup_ratio": [0.3]}
CPU_EPOCHS = 12
BANKING_EPOCHS = 10
GPU_EPOCHS = 200  # Cao et al. 2019
CIFAR_COMMON = ["--num_threads", "1", "--save_final_model", "false"]
# The CPU tier's image schedule (CIFAR-10-LT there, sample-balanced CIFAR-10 in the study)
CPU_IMAGE_SCHEDULE = (
    f"CIFAR ResNet-8 with half widths (8, 16, 32), {CPU_EPOCHS} epochs, SGD lr 0.1 momentum 0.9 wd 2e-4, "
    "batch 128, 0.5 warm-up epoch + cosine, crop + flip"
)
CPU_IMAGE_OVERRIDES = [
    "--depth",
    "8",
    "--widths",
    "8",
    "16",
    "32",
    "--num_train_epochs",
    str(CPU_EPOCHS),
    "--max_eval_samples_per_class",
    "500",
    "--lr_schedule",
    "cosine",
    "--warmup_epochs",
    "0.5",
    "--learning_rate",
    "0.1",
    "--weight_decay",
    "0.0002",
    "--per_device_train_batch_size",
    "128",
    *CIFAR_COMMON,
]
# The methods of the issue-5 CPU / GPU tiers (their committed results); the study tiers add the rest.
CLASSIC_METHODS = [
    "ce",
    "if_ce",
    "cb_ce",
    "focal",
    "ldam_drw",
    "balanced_softmax",
    "dsb_ce",
    "dsb_focal",
    "dsb_ldam",
    "dsb_balanced_softmax",
    "mix_dsb_cb_ce",
]

# --- the regime study (tiers "text" and "cifar_balanced")
STUDY_STARTS = [0.1, 0.4, 0.8]  # start of re-weighting (fraction of training): one epoch, DSB's default, the DRW point
STUDY_GAMMAS = [0.5, 1.0, 4.0]
STUDY_POWERS = [0.5, 1.0, 1.5, 2.0]  # p of pow_ce_tuned, w_c ∝ n_c^-p
OUR_CONSTANTS = {"semscale_normalize_features": True}  # alpha = d, L2-normalised rows (our default)
AUTHORS_CONSTANTS = {"semscale_alpha": 1.0, "semscale_normalize_features": False}  # the authors' reference code
STUDY_TIERS = ("text", "cifar_balanced")
FROZEN_EPOCHS = 10
FINETUNE_EPOCHS = 8
TEXT_METHODS = [
    "ce",
    "if_ce",
    "cb_ce",
    "focal",
    "balanced_softmax",
    "if_ce_tuned",
    "cb_ce_tuned",
    "pow_ce_tuned",
    "pow_bs_tuned",
    "dsb_ce",
    "dsb_focal",
    "dsb_balanced_softmax",
    "mix_dsb_cb_ce",
    "scalecount_cb_ce",
    "reverse_dsb_ce",
]
FINETUNE_METHODS = ["ce", "balanced_softmax", "cb_ce_tuned", "pow_bs_tuned", "dsb_ce", "dsb_balanced_softmax"]
# On sample-balanced data every count weight is 1 and balanced softmax is plain CE: only the scale can act.
BALANCED_METHODS = ["ce", "focal", "dsb_ce", "dsb_focal", "scalecount_cb_ce", "reverse_dsb_ce"]
# The pool size K and update interval, on one dataset (frozen CLINC150-LT IF=50), around dsb_ce's chosen knobs.
ABLATIONS = {
    "method": "dsb_ce",
    "variants": [
        {"semscale_pool_capacity": 2},
        {"semscale_pool_capacity": 10},
        {"semscale_update_interval": 5},
        {"semscale_update_interval": 100},
    ],
}

GPU_WORKERS = 8  # concurrent runs on the one GPU: a ResNet-32 at batch 128 uses a sliver of an H100 / H200
# One device session (15 min: start-up, install, data, timing, the runs): benchmarks/gpu_session.sh, which runs
# `long_tail.py --tier gpu --workers 8 --budget-min 6` on data packed by benchmarks/gpu_kit.py.
GPU_COMMAND = "bash benchmarks/gpu_session.sh"
ESTIMATE_FILENAME = "long_tail_{tier}_estimate.json"  # a tier's last --dry-run estimate, quoted by the report
GPU_BUDGET_S = 600.0  # the "ten minutes of one H200": what --dry-run compares the whole tier with


def tier_settings(tier: str) -> list[dict[str, Any]]:
    if tier == "cpu":
        cifar = {
            "name": "cifar10_lt_if100",
            "dataset": "CIFAR-10-LT",
            "recipe": "train_image",
            "config": "recipes/configs/cifar10_lt.yaml",
            "imbalance_factor": 100,
            "prepare": {"data_dir": "cifar10", "imbalance_factor": 100, "validation_per_class": 100, "n_max": None},
            "schedule": (
                f"CPU tier: {CPU_IMAGE_SCHEDULE}; the standard IF=100 subset (Cao et al.) "
                "of the training images left after carving a 100/class validation split (4900 ... 49 per class, "
                "12,156 images); balanced test subset of 500/class (5,000, the same for every run)"
            ),
            "overrides": CPU_IMAGE_OVERRIDES,
            "methods": list(CLASSIC_METHODS),
            "grid": TUNING_GRID,
            "method_grids": {"mix_dsb_cb_ce": drw_matched_grid(CPU_EPOCHS)},
        }
        banking = {
            "name": "banking77",
            "dataset": "BANKING77",
            "recipe": "train_text",
            "config": "recipes/configs/banking77_frozen.yaml",
            "imbalance_factor": None,
            "prepare": None,
            "schedule": (
                "CPU tier: all-MiniLM-L6-v2 frozen (mean-pooled, L2-normalised sentence embeddings computed once) + "
                f"MLP head 384-256-77, AdamW lr 1e-3 cosine, batch 128, {BANKING_EPOCHS} epochs; natural imbalance "
                "(30..182 per class after carving 5/class for validation); full test set (3,080)"
            ),
            "overrides": [
                "--num_train_epochs",
                str(BANKING_EPOCHS),
                "--per_device_train_batch_size",
                "128",
                "--num_threads",
                "1",
                "--save_final_model",
                "false",
            ],
            # LDAM's s=30 assumes a cosine head; the MLP head is linear, so the LDAM methods are left out here.
            "methods": [m for m in CLASSIC_METHODS if "ldam" not in m],
            "grid": TUNING_GRID,
            "method_grids": {"mix_dsb_cb_ce": drw_matched_grid(BANKING_EPOCHS)},
        }
        return [cifar, banking]
    if tier == "gpu":
        return [
            {
                "name": f"cifar10_lt_if{imf}",
                "dataset": "CIFAR-10-LT",
                "recipe": "train_image",
                "config": "recipes/configs/cifar10_lt.yaml",
                "imbalance_factor": imf,
                # A balanced 500/class test subset (as on the CPU tier) keeps the packed data under the device
                # tool's 64 MiB (benchmarks/gpu_kit.py); it estimates the same balanced accuracy as all 10,000.
                "prepare": {
                    "data_dir": "cifar10",
                    "imbalance_factor": imf,
                    "validation_per_class": 100,
                    "n_max": None,
                    "test_per_class": 500,
                },
                "schedule": (
                    "GPU tier (Cao et al. 2019): ResNet-32, 200 epochs, SGD lr 0.1 momentum 0.9 wd 2e-4, batch 128, "
                    "5 linear warm-up epochs, lr x0.01 at epochs 160 and 180; validation 100/class carved from train; "
                    "balanced test subset of 500/class (5,000)"
                ),
                "overrides": [
                    "--depth",
                    "32",
                    "--num_train_epochs",
                    str(GPU_EPOCHS),
                    "--lr_schedule",
                    "step",
                    "--warmup_epochs",
                    "5",
                    "--lr_milestones",
                    "160",
                    "180",
                    "--lr_decay",
                    "0.01",
                    "--learning_rate",
                    "0.1",
                    "--weight_decay",
                    "0.0002",
                    "--per_device_train_batch_size",
                    "128",
                    "--save_final_model",
                    "false",
                    # the images and their augmentation on the GPU: no host-side data pipeline
                    "--augmentation",
                    "batched",
                    "--images_on_device",
                    "true",
                    "--dataloader_num_workers",
                    "0",
                    "--dataloader_pin_memory",
                    "false",
                ],
                "methods": list(CLASSIC_METHODS),
                "grid": TUNING_GRID,
                "method_grids": {"mix_dsb_cb_ce": drw_matched_grid(GPU_EPOCHS)},
            }
            for imf in (100,)
        ]
    if tier == "text":
        return text_settings()
    if tier == "cifar_balanced":
        return [cifar_balanced_setting()]
    if tier == "tiny":  # for tests: a few images, a couple of steps
        return [
            {
                "name": "tiny_image",
                "dataset": "tiny",
                "recipe": "train_image",
                "config": "recipes/configs/cifar10_lt.yaml",
                "imbalance_factor": 4,
                "prepare": {"data_dir": None, "imbalance_factor": 4, "validation_per_class": 2, "n_max": None},
                "schedule": "tiny: ResNet-8 widths (4, 8, 16), 1 epoch",
                "overrides": [
                    "--depth",
                    "8",
                    "--widths",
                    "4",
                    "8",
                    "16",
                    "--num_train_epochs",
                    "1",
                    "--lr_schedule",
                    "cosine",
                    "--per_device_train_batch_size",
                    "8",
                    "--semscale_update_interval",
                    "1",
                    *CIFAR_COMMON,
                ],
                "methods": ["ce", "dsb_ce"],
                "grid": {"semscale_gamma": [1.0, 2.0], "semscale_warmup_ratio": [0.3]},
            }
        ]
    raise ValueError(f"unknown tier {tier!r}")


def study_spec(
    epochs: int, constants: tuple[str, ...] = ("dsb_ce",), start_only: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The study's validation grid: ``start_only`` methods get the middle start (0.4) only."""
    return {
        "epochs": epochs,
        "starts": STUDY_STARTS,
        "gammas": STUDY_GAMMAS,
        "powers": STUDY_POWERS,
        "constants": constants,
        "start_only": start_only,
    }


def text_settings() -> list[dict[str, Any]]:
    """CLINC150-LT (IF 10, 50), BANKING77-LT and sample-balanced CLINC150: frozen_cached (every method, the full
    grid), then finetune_top (the core methods on CLINC150-LT IF=50 and BANKING77-LT; ~2-3 min a run on one core,
    so every method starts re-weighting at 40 % of training and only gamma is tuned)."""
    threads = ["--num_threads", "1", "--save_final_model", "false", "--eval_train", "true"]
    clinc = {
        "data": "clinc150",
        "prepare": None,
        "config_frozen": "recipes/configs/clinc150_frozen.yaml",
        "config_finetune": "recipes/configs/clinc150_lt_finetune.yaml",
        "split": "the official validation split (20/class) for tuning, test (30/class, 4,500) for the tables; the "
        "oos label (absent from train) is dropped from the label set",
    }
    banking = {
        "data": "banking77",
        "prepare": None,
        "config_frozen": "recipes/configs/banking77_lt_frozen.yaml",
        "config_finetune": "recipes/configs/banking77_lt_finetune.yaml",
        "split": "validation 10/class carved from train before the long tail; the full test set (3,080)",
    }
    frozen = (
        f"frozen_cached: all-MiniLM-L6-v2 frozen (mean-pooled, L2-normalised sentence embeddings computed once) + MLP "
        f"head 384-256-C (DSB reads the 256-d hidden layer), AdamW lr 1e-3 cosine, batch 32, {FROZEN_EPOCHS} epochs"
    )
    finetune = (
        f"finetune (top layer): all-MiniLM-L6-v2 with its TOP transformer layer + mean pooling + a linear head "
        f"384-C trained (DSB reads the 384-d pooled feature), the frozen lower 5 layers' token states cached once "
        f"per split; AdamW lr 3e-4 cosine, 5 % warm-up, batch 32, {FINETUNE_EPOCHS} epochs; full fine-tuning is the GPU setting"
    )
    profiles = [
        (
            "clinc150_lt_if10",
            "clinc150_lt",
            10,
            clinc,
            "Cao profile IF=10 over the 150 in-scope intents (100 ... 10 per class)",
            ["--imbalance_factor", "10"],
        ),
        (
            "clinc150_lt_if50",
            "clinc150_lt",
            50,
            clinc,
            "Cao profile IF=50 over the 150 in-scope intents (100 ... 2 per class)",
            ["--imbalance_factor", "50"],
        ),
        (
            "banking77_lt",
            "banking77_lt",
            20,
            banking,
            "Cao profile n_max 100, IF=20 (100 ... 5 per class), classes ranked by available count so every class fills its quota",
            [],
        ),
        (
            "clinc150",
            "clinc150",
            None,
            clinc,
            "sample-balanced: the 150 in-scope intents as they are (100 per class)",
            ["--imbalance_factor", "1"],
        ),
    ]
    settings = []
    for mode in ("frozen_cached", "finetune"):
        for name, dataset, imf, src, profile, extra in profiles:
            if mode == "finetune" and name not in ("clinc150_lt_if50", "banking77_lt"):
                continue
            balanced = imf is None
            epochs = FROZEN_EPOCHS if mode == "frozen_cached" else FINETUNE_EPOCHS
            methods = BALANCED_METHODS if balanced else (TEXT_METHODS if mode == "frozen_cached" else FINETUNE_METHODS)
            settings.append(
                {
                    "name": f"{name}_{'frozen' if mode == 'frozen_cached' else 'finetune'}",
                    "dataset": dataset,
                    "data_dir": src["data"],
                    "recipe": "train_text",
                    "config": src["config_frozen" if mode == "frozen_cached" else "config_finetune"],
                    "imbalance_factor": imf,
                    "prepare": None,
                    "schedule": f"{frozen if mode == 'frozen_cached' else finetune}; {profile}; {src['split']}",
                    "overrides": [*extra, "--num_train_epochs", str(epochs), *threads],
                    "methods": methods,
                    "grid_spec": study_spec(epochs, start_only=("dsb_focal", "reverse_dsb_ce"))
                    if mode == "frozen_cached"
                    else {
                        **study_spec(epochs, constants=()),
                        "starts": [0.4],
                        "gammas": [1.0, 4.0],
                        "powers": [0.5, 1.0, 1.5],
                    },
                    "ablations": ABLATIONS if name == "clinc150_lt_if50" and mode == "frozen_cached" else None,
                }
            )
    return settings


def cifar_balanced_setting() -> dict[str, Any]:
    """Sample-balanced CIFAR-10 with the CPU tier's image schedule: does any scale-derived weighting beat CE?"""
    return {
        "name": "cifar10_balanced",
        "dataset": "cifar10",
        "recipe": "train_image",
        "config": "recipes/configs/cifar10_lt.yaml",
        "imbalance_factor": None,
        "prepare": {"data_dir": "cifar10", "imbalance_factor": 1, "validation_per_class": 100, "n_max": 1000},
        "schedule": (
            f"the CPU tier's image schedule: {CPU_IMAGE_SCHEDULE}; sample-balanced: 1,000 training "
            "images per class (after carving a 100/class validation split); balanced test subset of 500/class"
        ),
        "overrides": CPU_IMAGE_OVERRIDES,
        "methods": ["ce", "dsb_ce", "reverse_dsb_ce", "scalecount_cb_ce"],
        "grid_spec": {**study_spec(CPU_EPOCHS, constants=()), "starts": [0.4], "gammas": [1.0, 4.0]},
        "ablations": None,
    }


# --------------------------------------------------------------------------- data preparation


def write_tiny_image_dataset(path: Path, per_class: int = 6, seed: int = 0) -> Path:
    """A ``DatasetDict`` of random 32x32 RGB images in 4 classes (train ``per_class`` each, validation / test 2
    each) saved at ``path``: the ``--source`` of the tiny tier (tests, ``--smoke``)."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = [f"class{c}" for c in range(4)]

    def split(n: int) -> datasets.Dataset:
        labels = np.repeat(np.arange(len(names)), n)
        images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in labels]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        return datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)

    datasets.DatasetDict({"train": split(per_class), "validation": split(2), "test": split(2)}).save_to_disk(str(path))
    return path


def prepare_image_data(setting: dict[str, Any], data_root: Path, cache_root: Path, source: str | None = None) -> Path:
    """Build train (long-tailed) / validation (carved from train) / test once and ``save_to_disk`` them."""
    import datasets

    from hf_semscale.data import (
        class_counts,
        limit_per_class,
        load_dataset_any,
        long_tail_indices,
        train_validation_split,
    )

    prep = setting["prepare"]
    target = cache_root / f"{setting['name']}_data"
    if (target / "dataset_dict.json").is_file():
        return target
    src = source or str(data_root / prep["data_dir"])
    train = load_dataset_any(src, "train")
    test = load_dataset_any(src, "test")
    parts = train_validation_split(train, prep["validation_per_class"], seed=0)
    train = parts["train"]
    labels = train.with_format(None)["label"]
    train = train.select(
        long_tail_indices(
            labels,
            prep["imbalance_factor"],
            seed=0,
            n_max=prep["n_max"],
            num_classes=len(train.features["label"].names),
        )
    )
    if prep.get("test_per_class"):
        test = limit_per_class(test, prep["test_per_class"], seed=0)
    dd = datasets.DatasetDict(
        {"train": train.flatten_indices(), "validation": parts["validation"].flatten_indices(), "test": test}
    )
    save_dataset_dict(dd, target)
    logger.info("prepared %s: train counts %s", target, class_counts(train))
    return target


def save_dataset_dict(dd: Any, target: Path) -> None:
    """``dd.save_to_disk`` through :func:`~hf_semscale.atomic.atomic_folder`: concurrent or interrupted
    preparations never leave a half-written ``target``."""
    try:
        with atomic_folder(target) as tmp:
            dd.save_to_disk(str(tmp))
    except OSError:
        if not (target / "dataset_dict.json").is_file():  # else another process put a complete copy there first
            raise


# --------------------------------------------------------------------------- running


def run_dir(work_dir: Path, tier: str, setting: dict[str, Any], method: str, seed: int, tag: str = "") -> Path:
    return work_dir / tier / setting["name"] / (method + tag) / f"seed{seed}"


def build_argv(
    setting: dict[str, Any], method: str, seed: int, out: Path, data_args: list[str], extra: list[str]
) -> list[str]:
    return [
        str(REPO_ROOT / setting["config"]),
        *data_args,
        *setting["overrides"],
        "--method",
        method,
        "--seed",
        str(seed),
        "--output_dir",
        str(out),
        *extra,
    ]


def _run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Run one recipe in this (worker) process; returns ``{"ok", "results"|"error"}``."""
    out = Path(job["out"])
    finished = load_result(out / RESULTS_FILENAME)
    if finished is not None and knobs_match(finished, job.get("knobs")):
        return {"ok": True, "results": str(out / RESULTS_FILENAME), "skipped": True}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    start = time.time()
    try:
        if job["recipe"] == "train_image":
            from recipes.train_image import main
        else:
            from recipes.train_text import main
        main(job["argv"])
    except Exception:  # one failed run must not stop the benchmark
        err = traceback.format_exc()
        out.mkdir(parents=True, exist_ok=True)
        (out / "error.txt").write_text(err, encoding="utf-8")
        print(f"[benchmark] FAILED {out}: {err.splitlines()[-1]}", flush=True)
        return {"ok": False, "error": err}
    print(f"[benchmark] done {out} in {time.time() - start:.0f}s", flush=True)
    return {"ok": True, "results": str(out / RESULTS_FILENAME)}


def load_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def grid_points(grid: dict[str, list[float]]) -> list[dict[str, float]]:
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _knob_text(value: float | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}"


def grid_tag(point: dict[str, float | bool]) -> str:
    return "__" + "_".join(f"{k.replace('semscale_', '')}{_knob_text(v)}" for k, v in sorted(point.items()))


def grid_cli(point: dict[str, float | bool]) -> list[str]:
    return [x for k, v in sorted(point.items()) for x in (f"--{k}", _knob_text(v))]


def tuned_methods(setting: dict[str, Any]) -> list[str]:
    """The setting's methods with knobs chosen on the validation split (DSB's, the tuned count methods')."""
    return [m for m in setting["methods"] if m in TUNED_METHODS]


def method_grid(setting: dict[str, Any], method: str) -> list[dict[str, float | bool]]:
    """``method``'s tuning grid points: its own grid in the setting's ``method_grids``, else the study grid
    (``grid_spec``), else the setting's grid without the knobs the method fixes itself."""
    own = setting.get("method_grids", {}).get(method)
    if own is not None:
        return grid_points(own)
    if "grid_spec" in setting:
        return study_points(setting["grid_spec"], method)
    return grid_points({k: v for k, v in setting["grid"].items() if k not in METHODS[method]})


def study_points(spec: dict[str, Any], method: str) -> list[dict[str, float | bool]]:
    """The study grid of ``method``: the start of re-weighting (a pool method's warm-up ends one epoch, the fill
    stage, earlier, so both families start at the same step), gamma for scale-weighted methods, p for
    ``pow_ce_tuned``, and our / the authors' volume constants for the methods in ``spec["constants"]``."""
    fill = 1.0 / spec["epochs"] if method in SCALE_METHODS else 0.0
    starts = [0.4] if method in spec["start_only"] else spec["starts"]
    axes: dict[str, list[float]] = {"semscale_warmup_ratio": [round(max(0.0, s - fill), 4) for s in starts]}
    if method in SCALE_METHODS and METHODS[method]["semscale_weighting"] != "scale_equivalent_count":
        axes["semscale_gamma"] = spec["gammas"]
    if METHODS[method]["semscale_weighting"] == "count_power":
        axes["semscale_count_power"] = spec["powers"]
    constants = [OUR_CONSTANTS, AUTHORS_CONSTANTS] if method in spec["constants"] else [{}]
    return [{**point, **c} for c in constants for point in grid_points(axes)]


def drw_matched_grid(epochs: int) -> dict[str, list[float]]:
    """The mix's grid: DSB's stage 2 fills the pool for one epoch before any weight applies, so its warm-up
    ends one epoch before DRW_DEFERRAL and its weights start at the same step as cb_ce's."""
    return {
        "semscale_gamma": TUNING_GRID["semscale_gamma"],
        "semscale_warmup_ratio": [round(DRW_DEFERRAL - 1.0 / epochs, 4)],
    }


def knobs_match(result: dict[str, Any], knobs: dict[str, float] | None) -> bool:
    """Whether a finished run used ``knobs`` (``None``: no tuned knobs to check)."""
    used = result.get("semscale") or {}
    return knobs is None or all(
        used.get(k) is not None and math.isclose(float(used[k]), float(v)) for k, v in knobs.items()
    )


def choose_knobs(
    work_dir: Path, tier: str, setting: dict[str, Any], method: str
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``method``'s grid point with the best VALIDATION balanced accuracy (ties: first in grid order), and the grid rows."""
    rows, best, best_score = [], None, -math.inf
    points = method_grid(setting, method)
    for point in points:
        result = load_result(run_dir(work_dir, tier, setting, method, 0, "_tune" + grid_tag(point)) / RESULTS_FILENAME)
        score = result["validation"]["balanced_accuracy"] if result and result.get("validation") else None
        rows.append(
            {
                **point,
                "validation_balanced_accuracy": score,
                "validation_accuracy": result["validation"]["accuracy"] if score is not None else None,
            }
        )
        if score is not None and score > best_score:
            best, best_score = point, score
    if best is None:
        best = points[0]
    return best, rows


def chosen_knobs(work_dir: Path, tier: str, setting: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{dsb method: its chosen knobs}`` for the setting."""
    return {method: choose_knobs(work_dir, tier, setting, method)[0] for method in tuned_methods(setting)}


def setting_jobs(
    work_dir: Path,
    tier: str,
    setting: dict[str, Any],
    data_args: list[str],
    seeds: list[int],
    knobs: dict[str, dict[str, float]],
    methods: list[str],
) -> list[dict[str, Any]]:
    """The final (all-seed, test-evaluated) runs of ``methods``; ``knobs``: the chosen knobs of each dsb method."""
    jobs = []
    for method in methods:
        method_knobs = knobs.get(method)
        for seed in seeds:
            out = run_dir(work_dir, tier, setting, method, seed)
            extra = ["--eval_validation", "true", *(grid_cli(method_knobs) if method_knobs else [])]
            jobs.append(
                {
                    "recipe": setting["recipe"],
                    "out": str(out),
                    "knobs": method_knobs,
                    "argv": build_argv(setting, method, seed, out, data_args, extra),
                }
            )
    return jobs


def tuning_jobs(
    work_dir: Path, tier: str, setting: dict[str, Any], data_args: list[str], method: str
) -> list[dict[str, Any]]:
    """Seed-0 runs of ``method`` at every grid point, evaluated on the validation split only."""
    jobs = []
    for point in method_grid(setting, method):
        out = run_dir(work_dir, tier, setting, method, 0, "_tune" + grid_tag(point))
        extra = ["--eval_test", "false", *grid_cli(point)]
        jobs.append(
            {
                "recipe": setting["recipe"],
                "out": str(out),
                "knobs": point,
                "argv": build_argv(setting, method, 0, out, data_args, extra),
            }
        )
    return jobs


def data_args_for(setting: dict[str, Any], data_root: Path, cache_root: Path, source: str | None) -> list[str]:
    if setting["prepare"] is not None:
        folder = prepare_image_data(setting, data_root, cache_root, source)
        return [
            "--data_dir",
            str(folder),
            "--imbalance_factor",
            "1",
            "--validation_split",
            "validation",
            "--validation_per_class",
            "0",
        ]
    emb = cache_root / "embeddings"
    return [
        "--data_dir",
        source or str(data_root / setting.get("data_dir", setting["name"])),
        "--embedding_cache_dir",
        str(emb),
    ]


def ablation_tag(variant: dict[str, float]) -> str:
    return "_ablate" + grid_tag(variant)


def ablation_jobs(
    work_dir: Path,
    tier: str,
    setting: dict[str, Any],
    data_args: list[str],
    seeds: list[int],
    knobs: dict[str, dict[str, float]],
) -> list[dict[str, Any]]:
    """The setting's ablation runs: its ablated method at its chosen knobs with one setting changed, every seed."""
    spec = setting.get("ablations")
    if not spec or spec["method"] not in setting["methods"]:
        return []
    method, jobs = spec["method"], []
    for variant in spec["variants"]:
        point = {**knobs.get(method, {}), **variant}
        for seed in seeds:
            out = run_dir(work_dir, tier, setting, method, seed, ablation_tag(variant))
            jobs.append(
                {
                    "recipe": setting["recipe"],
                    "out": str(out),
                    "knobs": point,
                    "argv": build_argv(
                        setting, method, seed, out, data_args, ["--eval_validation", "true", *grid_cli(point)]
                    ),
                }
            )
    return jobs


def fills_a_cache(setting: dict[str, Any]) -> bool:
    """Whether the setting's first run fills a cache (the text recipes' encoder outputs) that the others read."""
    return setting["recipe"] == "train_text"


def run_tier(
    tier: str,
    work_dir: Path,
    data_root: Path,
    seeds: list[int],
    workers: int,
    only: list[str] | None,
    source: str | None,
    methods: list[str] | None = None,
) -> None:
    """Run (or finish) a tier; ``only`` / ``methods`` restrict it to some settings / methods (the report lists them all).

    Order: per text setting, its first untuned run alone (it fills the embedding cache the others then read; an image
    setting's data is prepared before any run); then every tuning run and the other untuned runs; each tuned method's
    final runs once its grid and the grids before it are done; the ablations last. ``benchmarks/tier_budget.py``
    simulates this order to estimate a tier's wall time."""
    settings = [s for s in tier_settings(tier) if not only or s["name"] in only]
    if methods:
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {sorted(METHODS)}")
        settings = [{**s, "methods": [m for m in s["methods"] if m in methods]} for s in settings]
    cache_root = work_dir / tier / "cache"
    ctx = mp.get_context("spawn")
    os.environ["OMP_NUM_THREADS"] = "1"
    prepared = [(s, data_args_for(s, data_root, cache_root, source)) for s in settings]
    with ctx.Pool(workers) as pool:
        untuned = {
            s["name"]: setting_jobs(
                work_dir, tier, s, a, seeds, {}, [m for m in s["methods"] if m not in tuned_methods(s)]
            )
            for s, a in prepared
        }
        warmers = {s["name"] for s, _ in prepared if fills_a_cache(s)}
        for handle in [
            pool.apply_async(_run_one, (jobs[0],)) for name, jobs in untuned.items() if name in warmers and jobs
        ]:
            handle.wait()
        tuning = [
            (s, a, method, [pool.apply_async(_run_one, (job,)) for job in tuning_jobs(work_dir, tier, s, a, method)])
            for s, a in prepared
            for method in tuned_methods(s)
        ]
        finals = [
            pool.apply_async(_run_one, (job,))
            for name, jobs in untuned.items()
            for job in (jobs[1:] if name in warmers else jobs)
        ]
        for setting, data_args, method, handles in tuning:
            for h in handles:
                h.wait()
            knobs = {method: choose_knobs(work_dir, tier, setting, method)[0]}
            finals += [
                pool.apply_async(_run_one, (job,))
                for job in setting_jobs(work_dir, tier, setting, data_args, seeds, knobs, [method])
            ]
        for setting, data_args in prepared:
            knobs = chosen_knobs(work_dir, tier, setting)
            finals += [
                pool.apply_async(_run_one, (job,))
                for job in ablation_jobs(work_dir, tier, setting, data_args, seeds, knobs)
            ]
        for handle in finals:
            handle.wait()


# --------------------------------------------------------------------------- report


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def seeds_on_disk(work_dir: Path, tier: str, setting: dict[str, Any], method: str) -> list[int]:
    """Seeds with a final-run folder of ``method`` (finished or not)."""
    folder = run_dir(work_dir, tier, setting, method, 0).parent
    return sorted(int(p.name[4:]) for p in folder.glob("seed*") if p.name[4:].isdigit())


def collect(work_dir: Path, tier: str, seeds: list[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records of every method of the tier: all finished seeds on disk; status ``done`` when all of ``seeds`` are."""
    records, tuning = [], {}
    for setting in tier_settings(tier):
        knobs = {}
        for method in tuned_methods(setting):
            knobs[method], grid_rows = choose_knobs(work_dir, tier, setting, method)
            if any(r["validation_balanced_accuracy"] is not None for r in grid_rows):
                tuning.setdefault(setting["name"], {})[method] = {"chosen": knobs[method], "grid": grid_rows, "seed": 0}
        for method in setting["methods"]:
            all_seeds = sorted(set(seeds) | set(seeds_on_disk(work_dir, tier, setting, method)))
            results = [load_result(run_dir(work_dir, tier, setting, method, s) / RESULTS_FILENAME) for s in all_seeds]
            done = [
                (s, r) for s, r in zip(all_seeds, results) if r and r.get("test") and knobs_match(r, knobs.get(method))
            ]
            record: dict[str, Any] = {
                "method": method,
                "dataset": setting["dataset"],
                "imbalance_factor": setting["imbalance_factor"],
                "schedule": setting["schedule"],
                "tier": tier,
                "seeds": [s for s, _ in done],
                "status": "done" if set(seeds) <= {s for s, _ in done} else ("partial" if done else "not yet run"),
                "description": describe(method),
            }
            for key in METRIC_KEYS:
                mean, std = _mean_std([r["test"].get(key) for _, r in done])
                record[f"{key}_mean"], record[f"{key}_std"] = mean, std
                vmean, _ = _mean_std([(r.get("validation") or {}).get(key) for _, r in done])
                record[f"validation_{key}_mean"] = vmean
            wall = [r["wall_time_s"] for _, r in done]
            record["wall_time_s_mean"], _ = _mean_std(wall)
            record["wall_time_s_total"] = sum(wall) if wall else None
            train_acc = [(r.get("train") or {}).get("accuracy") for _, r in done]
            record["train_accuracy_mean"], record["train_accuracy_std"] = _mean_std(train_acc)
            if method in TUNED_METHODS:
                record["knobs"] = knobs.get(method)
                weights = [r["final_class_weights"] for _, r in done]
                scales = [r["final_semantic_scales"] for _, r in done]
                record["final_class_weights_seed0"] = weights[0] if weights else None
                record["final_semantic_scales_seed0"] = scales[0] if scales else None
            if done:
                record["train_class_counts"] = done[0][1]["train_class_counts"]
            records.append(record)
    return records, tuning


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f}"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def target_checks(records: list[dict[str, Any]], dataset: str = "CIFAR-10-LT") -> list[str]:
    by = {r["method"]: r for r in records if r["dataset"] == dataset and r["status"] != "not yet run"}
    lines = []

    def bal(name):
        r = by.get(name)
        return (
            (r["balanced_accuracy_mean"], r["balanced_accuracy_std"])
            if r and r["balanced_accuracy_mean"] is not None
            else (None, None)
        )

    d_m, d_s = bal("dsb_ce")
    for base in ("ce", "cb_ce"):
        b_m, b_s = bal(base)
        if d_m is None or b_m is None:
            lines.append(f"- dsb_ce vs {base}: not measured")
            continue
        margin = d_m - b_m
        needed = max(d_s, b_s)
        ok = margin > needed
        lines.append(
            f"- dsb_ce vs {base} (balanced accuracy): {_pct(d_m, d_s)} vs {_pct(b_m, b_s)}, difference {100 * margin:+.2f} "
            f"points; target '> the larger seed std ({100 * needed:.2f})': **{'met' if ok else 'MISSED'}**"
        )
    baselines = [(m, bal(m)) for m in BASELINES if bal(m)[0] is not None]
    if baselines:
        strongest, (s_m, s_s) = max(baselines, key=lambda x: x[1][0])
        dsb_on = {v: k for k, v in DSB_COUNTERPART.items()}.get(strongest)
        if dsb_on is None:
            lines.append(f"- strongest baseline {strongest} ({_pct(s_m, s_s)}) has no DSB variant in the table")
        else:
            o_m, o_s = bal(dsb_on)
            if o_m is None:
                lines.append(f"- {dsb_on} on the strongest baseline {strongest}: not measured")
            else:
                ok = o_m >= s_m - max(o_s, s_s)
                lines.append(
                    f"- {dsb_on} vs the strongest baseline {strongest}: {_pct(o_m, o_s)} vs {_pct(s_m, s_s)} "
                    f"({100 * (o_m - s_m):+.2f} points); target 'does not lose (within one seed std)': **{'met' if ok else 'MISSED'}**"
                )
    return lines


def _warmup_of(method: str, knobs: dict[str, Any]) -> float:
    return knobs.get("semscale_warmup_ratio", METHODS[method].get("semscale_warmup_ratio"))


def tuning_table(tier: str, name: str, per_method: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown: one row per tuned method (and warm-up ratio), one column per gamma; the chosen cell in bold."""
    gammas = sorted({row["semscale_gamma"] for info in per_method.values() for row in info["grid"]})
    lines = [
        f"### DSB tuning grid ({tier} tier, {name}; seed 0, validation balanced accuracy %, chosen in bold)",
        "",
        "| method | warm-up ratio | " + " | ".join(f"gamma {g:g}" for g in gammas) + " |",
        "|---|---|" + "---|" * len(gammas),
    ]
    for method, info in per_method.items():
        for w in sorted({_warmup_of(method, row) for row in info["grid"]}):
            cells = []
            for g in gammas:
                row = next((r for r in info["grid"] if r["semscale_gamma"] == g and _warmup_of(method, r) == w), None)
                cell = "—" if row is None else _pct(row["validation_balanced_accuracy"])
                chosen = (
                    row is not None
                    and row["validation_balanced_accuracy"] is not None
                    and info["chosen"] == {k: row[k] for k in info["chosen"]}
                )
                cells.append(f"**{cell}**" if chosen else cell)
            lines.append(f"| {method} | {w:g} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_report(
    out_dir: Path, tiers: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]], notes: list[str]
) -> None:
    all_records = [r for records, _ in tiers.values() for r in records]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "long_tail.json").write_text(json.dumps(all_records, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Long-tail benchmark: DSB against the published baselines",
        "",
        "Generated by `python benchmarks/long_tail.py` (tables: `--report-only`). Test sets are balanced and never "
        "used for choices; each tuned method's gamma (DSB's knob) is chosen on a validation split carved from TRAIN data. "
        "Accuracies in %, mean ± sample std over seeds. `balanced` = mean per-class accuracy; many / medium / few: "
        "classes with > 100 / 20-100 / < 20 training samples (— = no class in that group).",
        "",
    ]
    lines += notes
    for tier, (records, tuning) in tiers.items():
        datasets = []
        for r in records:
            if (r["dataset"], r["schedule"]) not in datasets:
                datasets.append((r["dataset"], r["schedule"]))
        for dataset, schedule in datasets:
            rows = [r for r in records if r["dataset"] == dataset and r["schedule"] == schedule]
            imf = rows[0]["imbalance_factor"]
            lines += [
                f"## {tier.upper()} tier — {dataset}" + (f" IF={imf}" if imf else ""),
                "",
                f"Schedule: {schedule}.",
                "",
            ]
            if all(r["status"] == "not yet run" for r in rows):
                if tier == "gpu":
                    lines += [
                        f"**not yet run** (no GPU was lent to the sessions so far). Command: `{GPU_COMMAND}` on the "
                        "GPU machine (after `python benchmarks/gpu_kit.py pack` here; it runs the part of the tier "
                        "that fits one device session). `python benchmarks/long_tail.py --tier gpu --dry-run` times "
                        "the tier's recipe where it runs and prints the estimate.",
                        "",
                    ]
                    estimate = load_result(out_dir / ESTIMATE_FILENAME.format(tier=tier))
                    if estimate:
                        lines += [
                            f"Last estimate (`{estimate['command']}`, {estimate['machine']}): {estimate['text']}",
                            "",
                        ]
                else:
                    lines += [f"**not yet run**. Command: `python benchmarks/long_tail.py --tier {tier}`.", ""]
                continue
            lines += [
                "| method | seeds | balanced | accuracy | many | medium | few | wall s/run | what |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for r in rows:
                lines.append(
                    f"| {r['method']} | {len(r['seeds'])} | {_pct(r['balanced_accuracy_mean'], r['balanced_accuracy_std'])} | "
                    f"{_pct(r['accuracy_mean'], r['accuracy_std'])} | {_pct(r['many_shot_accuracy_mean'], r['many_shot_accuracy_std'])} | "
                    f"{_pct(r['medium_shot_accuracy_mean'], r['medium_shot_accuracy_std'])} | "
                    f"{_pct(r['few_shot_accuracy_mean'], r['few_shot_accuracy_std'])} | "
                    f"{_seconds(r['wall_time_s_mean'])} | {r['description']} |"
                )
            counts = next((r.get("train_class_counts") for r in rows if r.get("train_class_counts")), None)
            if counts:
                lines += ["", f"Training class counts: {counts}."]
            dsb = next((r for r in rows if r["method"] == "dsb_ce" and r.get("final_semantic_scales_seed0")), None)
            if dsb:
                lines += [
                    f"dsb_ce seed 0, final semantic scales (bits): {[round(x, 2) for x in dsb['final_semantic_scales_seed0']]}; "
                    f"final weights: {[round(x, 2) for x in dsb['final_class_weights_seed0']]}."
                ]
            if dataset == "CIFAR-10-LT":
                lines += ["", "Targets:"] + target_checks(rows, dataset)
            lines.append("")
        for name, per_method in tuning.items():
            lines += tuning_table(tier, name, per_method)
    lines += [
        "## Published reference",
        "",
        "CIFAR-10-LT IF=100, ResNet-32, 200 epochs (Cao et al. 2019, Table 2), top-1 %: "
        + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items())
        + ". Our CIFAR-10 copy was decoded from JPEG (../shared/data/cifar10/SOURCE.md): compare methods inside this "
        "harness, not absolute numbers against the paper.",
        "",
    ]
    (out_dir / "long_tail.md").write_text("\n".join(lines), encoding="utf-8")


def read_run_info(path: Path) -> list[dict[str, Any]]:
    """The recorded invocations of a tier (older files hold one record, not a list)."""
    info = load_result(path)
    return info if isinstance(info, list) else ([info] if info else [])


def append_run_info(path: Path, entry: dict[str, Any]) -> None:
    write_json_atomic(path, [*read_run_info(path), entry])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", choices=["cpu", "gpu", *STUDY_TIERS, "tiny"], default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=f"default {DEFAULT_SEEDS}")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs (one thread each on CPU)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument(
        "--data-root", type=Path, default=Path(os.environ.get("HF_SEMSCALE_DATA_DIR", DEFAULT_DATA_ROOT))
    )
    parser.add_argument(
        "--source", default=None, help="override the data source of every setting (tests: a tiny folder)"
    )
    parser.add_argument(
        "--only", nargs="+", default=None, help="setting names to run (e.g. cifar10_lt_if100 banking77)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="methods to run (default: all of each setting), e.g. a GPU-tier subset: --seeds 0 --methods ce cb_ce dsb_ce",
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="time the tier's recipe here with --workers runs at once, print the whole tier's wall time and what fits "
        "--budget-min (default 10); run nothing (benchmarks/tier_budget.py)",
    )
    parser.add_argument(
        "--budget-min",
        type=float,
        default=None,
        help="time the recipe as --dry-run does, then run only the methods and seeds that fit this many minutes of "
        "wall time (each method at seed 0 that still fits, in benchmarks/tier_budget.py's priority order, then more "
        "seeds; finished runs are skipped)",
    )
    parser.add_argument(
        "--machine",
        default="a 2-core x86-64 CPU (no GPU), single-threaded runs",
        help="The machine, as stated in the report (name the GPU for --tier gpu)",
    )
    args = parse_benchmark_args(
        parser, argv, smoke={"tier": "tiny", "seeds": [0], "workers": 1, "methods": ["dsb_ce"], "work_dir": None}
    )
    if args.smoke and args.work_dir is None:
        args.work_dir = args.out_dir / "runs"
    if args.smoke and args.tier == "tiny" and args.source is None:
        args.source = str(write_tiny_image_dataset(args.work_dir / "tiny_source"))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.dry_run or args.budget_min is not None:
        if args.tier not in ("cpu", "gpu", "tiny"):
            parser.error("--dry-run and --budget-min time the CIFAR-10-LT tiers: --tier cpu or --tier gpu")
        if args.budget_min is not None and (args.methods or args.seeds or args.only):
            parser.error("--budget-min chooses the methods and seeds itself: drop --methods, --seeds and --only")
        if args.budget_min is not None and args.budget_min <= 0:
            parser.error(f"--budget-min must be positive, got {args.budget_min}")
        from benchmarks.tier_budget import plan

        budget_s = 60 * args.budget_min if args.budget_min is not None else GPU_BUDGET_S
        setting, fit = plan(args.tier, args.work_dir, args.data_root, args.source, args.workers, budget_s)
        if args.dry_run:
            command = shlex.join(["python", "benchmarks/long_tail.py", *(argv if argv is not None else sys.argv[1:])])
            estimate = {"command": command, "machine": args.machine, "text": fit["text"]}
            write_json_atomic(args.out_dir / ESTIMATE_FILENAME.format(tier=args.tier), estimate)
            return
        if not fit["methods"]:
            print("nothing runs: not one run fits the budget")
            return
        args.only, args.methods, args.seeds = [setting["name"]], fit["methods"], fit["seeds"]
        budget_note = f"budget {args.budget_min:g} min: {fit['text']}"
    args.seeds = args.seeds or DEFAULT_SEEDS
    start, load_at_start = time.time(), os.getloadavg()
    if not args.report_only:
        run_tier(
            args.tier, args.work_dir, args.data_root, args.seeds, args.workers, args.only, args.source, args.methods
        )
    if not args.report_only:
        append_run_info(
            args.work_dir / args.tier / "run_info.json",
            {
                "wall_time_s": time.time() - start,
                "workers": args.workers,
                "seeds": args.seeds,
                "only": args.only,
                "methods": args.methods,
                "load_average_1min": [load_at_start[0], os.getloadavg()[0]],
                "machine": args.machine,
                **({"note": budget_note} if args.budget_min is not None else {}),
            },
        )
    # The CPU and GPU tiers share one report, whichever was run: running one never drops the other's tables.
    report_tiers = ["cpu", "gpu"] if args.tier in ("cpu", "gpu") else [args.tier]
    tiers = {
        tier: collect(args.work_dir, tier, args.seeds if tier == args.tier else DEFAULT_SEEDS) for tier in report_tiers
    }
    notes = invocation_notes(args.work_dir, report_tiers, args.machine)
    if args.tier in STUDY_TIERS:
        from benchmarks.study_report import write_study_report

        write_study_report(args.out_dir, args.tier, tiers[args.tier], notes, args.work_dir, args.seeds)
        logger.info("wrote %s", args.out_dir / f"long_tail_{args.tier}.md")
        return
    if "cpu" in tiers:
        ce = next(
            (
                r
                for r in tiers["cpu"][0]
                if r["method"] == "ce" and r["dataset"] == "CIFAR-10-LT" and r["accuracy_mean"] is not None
            ),
            None,
        )
        reached = f"plain CE reaches {100 * ce['accuracy_mean']:.1f} %" if ce else "plain CE is not yet measured"
        notes += [
            "",
            f"The CPU tier is a short, small-model schedule far from convergence ({reached} on CIFAR-10-LT here "
            f"vs {PUBLISHED['ce']} % published for ResNet-32 / 200 epochs): it checks that every method runs in one "
            "harness and shows the trends of a short schedule; it is not evidence for or against the paper's numbers. "
            "Those need the GPU tier.",
        ]
    notes.append("")
    write_report(args.out_dir, tiers, notes)
    logger.info("wrote %s", args.out_dir / "long_tail.md")


def invocation_notes(work_dir: Path, tiers: list[str], machine: str) -> list[str]:
    """One line per recorded invocation of each of ``tiers`` (what it ran, its wall time, machine and load)."""
    notes = []
    for tier in tiers:
        for info in read_run_info(work_dir / tier / "run_info.json"):
            load = info.get("load_average_1min")
            notes.append(
                f"- `--tier {tier}` "
                + (f"`--only {' '.join(info['only'])}` " if info.get("only") else "")
                + (f"`--methods {' '.join(info['methods'])}`" if info.get("methods") else "(all methods)")
                + f" took {info['wall_time_s'] / 60:.1f} min wall ({info['workers']} runs in parallel, seeds {info['seeds']}) "
                f"on {info.get('machine', machine)}"
                + (f"; 1-minute load average {load[0]:.1f} at its start, {load[1]:.1f} at its end" if load else "")
                + (f" ({info['note']})." if info.get("note") else ".")
            )
    return (
        ["Invocations that produced these runs (finished runs are skipped, so each timed only what it ran):", *notes]
        if notes
        else []
    )


if __name__ == "__main__":
    main()
