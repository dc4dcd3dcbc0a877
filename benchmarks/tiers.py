"""The long-tail benchmark's tiers: each tier's settings (dataset, recipe, config, schedule, methods, grids), the
data preparation, and where a run lives (``<work_dir>/<tier>/<setting>/<method><tag>/seed<k>``) and which of its
grid points was chosen. Shared by ``long_tail.py`` (runs, tables), ``study_report.py`` and ``tier_budget.py``; it
imports none of them."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from hf_semscale.select.candidates import GridSpec, grid_axes, grid_points
from hf_semscale.select.methods import DRW_DEFERRAL, METHODS, TUNED_METHODS
from hf_semscale.select.recipe import RecipeRun
from recipes.common import RESULTS_FILENAME

logger = logging.getLogger("benchmarks.tiers")

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_WORK_DIR = REPO_ROOT / "benchmarks" / "runs"

DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"

# Published CIFAR-10-LT IF=100 top-1 (%), ResNet-32, 200 epochs (Cao et al. 2019, Table 2).
PUBLISHED = {"ce": 70.4, "focal": 70.4, "cb_focal": 74.6, "ldam_drw": 77.0}

DEFAULT_SEEDS = [0, 1, 2]

# DSB's knobs, tuned per dsb_* method on the validation split. The warm-up ratio stays at its default 0.3:
# a {0.3, 0.5} grid on an earlier CPU tier differed by <= 0.3 points (within seed noise), so the runs go to gamma.
TUNING_GRID = {"semscale_gamma": [0.5, 1.0, 4.0], "semscale_warmup_ratio": [0.3]}

CPU_EPOCHS = 12

BANKING_EPOCHS = 10

GPU_EPOCHS = 200  # Cao et al. 2019

CIFAR_COMMON = "--num_threads 1 --save_final_model false".split()

# The CPU tier's image schedule (CIFAR-10-LT there, sample-balanced CIFAR-10 in the study)
CPU_IMAGE_SCHEDULE = (
    f"CIFAR ResNet-8 with half widths (8, 16, 32), {CPU_EPOCHS} epochs, SGD lr 0.1 momentum 0.9 wd 2e-4, "
    "batch 128, 0.5 warm-up epoch + cosine, crop + flip"
)

CPU_IMAGE_OVERRIDES = [
    *f"--depth 8 --widths 8 16 32 --num_train_epochs {CPU_EPOCHS} --max_eval_samples_per_class 500".split(),
    *"--lr_schedule cosine --warmup_epochs 0.5 --learning_rate 0.1 --weight_decay 0.0002".split(),
    *"--per_device_train_batch_size 128".split(),
    *CIFAR_COMMON,
]

# The methods of the issue-5 CPU / GPU tiers (their committed results); the study tiers add the rest.
CLASSIC_METHODS = "ce if_ce cb_ce focal ldam_drw balanced_softmax dsb_ce dsb_focal dsb_ldam dsb_balanced_softmax mix_dsb_cb_ce".split()

# --- the regime study (tiers "text" and "cifar_balanced")
STUDY_STARTS = [0.1, 0.4, 0.8]  # start of re-weighting (fraction of training): one epoch, DSB's default, the DRW point

STUDY_GAMMAS = [0.5, 1.0, 4.0]

STUDY_POWERS = [0.5, 1.0, 1.5, 2.0]  # p of pow_ce_tuned, w_c ∝ n_c^-p

OUR_CONSTANTS = {"semscale_normalize_features": True}  # alpha = d, L2-normalised rows (our default)

AUTHORS_CONSTANTS = {"semscale_alpha": 1.0, "semscale_normalize_features": False}  # the authors' reference code

STUDY_TIERS = ("text", "cifar_balanced")

FROZEN_EPOCHS = 10

FINETUNE_EPOCHS = 8

TEXT_METHODS = "ce if_ce cb_ce focal balanced_softmax if_ce_tuned cb_ce_tuned pow_ce_tuned pow_bs_tuned dsb_ce dsb_focal dsb_balanced_softmax mix_dsb_cb_ce scalecount_cb_ce reverse_dsb_ce".split()

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
                *f"--num_train_epochs {BANKING_EPOCHS} --per_device_train_batch_size 128".split(),
                *CIFAR_COMMON,
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
                    *f"--depth 32 --num_train_epochs {GPU_EPOCHS} --lr_schedule step --warmup_epochs 5".split(),
                    *"--lr_milestones 160 180 --lr_decay 0.01 --learning_rate 0.1 --weight_decay 0.0002".split(),
                    *"--per_device_train_batch_size 128 --save_final_model false".split(),
                    # the images and their augmentation on the GPU: no host-side data pipeline
                    *"--augmentation batched --images_on_device true".split(),
                    *"--dataloader_num_workers 0 --dataloader_pin_memory false".split(),
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
                    *"--depth 8 --widths 4 8 16 --num_train_epochs 1 --lr_schedule cosine".split(),
                    *"--per_device_train_batch_size 8 --semscale_update_interval 1".split(),
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
    threads = [*CIFAR_COMMON, "--eval_train", "true"]
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
    """The setting's train (long-tailed) / validation (carved from train) / test, built once and saved under
    ``cache_root`` (:func:`hf_semscale.data.save_long_tailed_splits`)."""
    from hf_semscale.data import save_long_tailed_splits

    prep = setting["prepare"]
    source = source or str(data_root / prep["data_dir"])
    target = cache_root / f"{setting['name']}_data"
    return save_long_tailed_splits(
        source,
        target,
        prep["imbalance_factor"],
        prep["validation_per_class"],
        prep["n_max"],
        prep.get("test_per_class"),
    )


def run_dir(work_dir: Path, tier: str, setting: dict[str, Any], method: str, seed: int, tag: str = "") -> Path:
    return work_dir / tier / setting["name"] / (method + tag) / f"seed{seed}"


def load_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
    """The study grid of ``method``: the library's grid (:func:`hf_semscale.select.candidates.grid_axes`: the start
    of re-weighting, gamma, p) over the spec's values, times our / the authors' volume constants for the methods in
    ``spec["constants"]``; ``start_only`` methods start at 0.4 only."""
    starts = [0.4] if method in spec["start_only"] else spec["starts"]
    axes = grid_axes(method, spec["epochs"], GridSpec(tuple(starts), tuple(spec["gammas"]), tuple(spec["powers"])))
    constants = [OUR_CONSTANTS, AUTHORS_CONSTANTS] if method in spec["constants"] else [{}]
    return [{**point, **c} for c in constants for point in grid_points(axes)]


def drw_matched_grid(epochs: int) -> dict[str, list[float]]:
    """The mix's grid: DSB's stage 2 fills the pool for one epoch before any weight applies, so its warm-up
    ends one epoch before DRW_DEFERRAL and its weights start at the same step as cb_ce's."""
    return {
        "semscale_gamma": TUNING_GRID["semscale_gamma"],
        "semscale_warmup_ratio": [round(DRW_DEFERRAL - 1.0 / epochs, 4)],
    }


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


def ablation_tag(variant: dict[str, float]) -> str:
    return "_ablate" + grid_tag(variant)


def seeds_on_disk(work_dir: Path, tier: str, setting: dict[str, Any], method: str) -> list[int]:
    """Seeds with a final-run folder of ``method`` (finished or not)."""
    folder = run_dir(work_dir, tier, setting, method, 0).parent
    return sorted(int(p.name[4:]) for p in folder.glob("seed*") if p.name[4:].isdigit())


def recipe_run(
    setting: dict[str, Any],
    method: str,
    seed: int,
    out: Path,
    data_args: list[str],
    knobs: dict | None,
    extra: list[str],
) -> RecipeRun:
    """The run of ``method`` at ``seed`` in ``out`` with the setting's overrides, ``knobs`` (checked against a
    finished run's settings: a run with other knobs is run again) and ``extra`` flags."""
    argv = [str(REPO_ROOT / setting["config"]), *data_args, *setting["overrides"], "--method", method]
    argv += ["--seed", str(seed), "--output_dir", str(out), *extra, *(grid_cli(knobs) if knobs else [])]
    return RecipeRun(setting["recipe"], tuple(argv), str(out), tuple(sorted((knobs or {}).items())))


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


def fills_a_cache(setting: dict[str, Any]) -> bool:
    """Whether the setting's first run fills a cache (the text recipes' encoder outputs) that the others read."""
    return setting["recipe"] == "train_text"


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f}"
