"""The recipe schedule: each run of a selection is the user's own recipe (``recipes/train_text.py`` or
``recipes/train_image.py``) with the candidate's knobs, trained in this process through the recipe's ``main(argv)``.

    schedule = RecipeSchedule.from_config("my_finetune.yaml", work_dir="out/select")
    result = select_method(schedule, "out/select", SelectionSettings())

The recipes folder lives in the repository, not in the installed package: it is found on ``sys.path``, in the
current folder or above the config file. A config's ``method:`` is dropped (the candidates set the method); every
other field is the recipe's. Runs write ``results.json`` and (``--save_logits``) ``logits_<split>.npy`` to a
temporary folder; the schedule returns the record and the logits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import math
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import yaml

from ..atomic import atomic_path
from ..metrics import long_tail_metrics
from .frozen import quiet_library_logs
from .runs import run_pending
from .selection import SelectionError

__all__ = ["RECIPES", "RecipeRun", "RecipeSchedule", "import_recipe", "recipe_for", "run_recipes", "settings_match"]

logger = logging.getLogger(__name__)

RECIPES = {"text": "train_text", "image": "train_image"}
"""``--recipe`` name -> the module of ``recipes/``."""


def _recipes_root(near: Path | None) -> Path | None:
    """The folder holding ``recipes/`` (the repository): the current folder, ``near`` or one above it, else None."""
    for folder in [Path.cwd(), *([near.resolve(), *near.resolve().parents] if near is not None else [])]:
        if (folder / "recipes" / "common.py").is_file():
            return folder
    return None


def import_recipe(module: str, near: str | Path | None = None) -> ModuleType:
    """``recipes.<module>`` (e.g. ``train_image``), importable or found at or above ``near`` (a config file, the
    repository)."""
    with contextlib.suppress(ImportError):
        return importlib.import_module(f"recipes.{module}")
    root = _recipes_root(Path(near) if near is not None else None)
    if root is None:
        raise SelectionError(
            f"cannot import recipes.{module}: the recipes folder is not part of the installed package. Fix: run from a "
            "checkout of the repository (the folder that holds recipes/), or keep the config inside it."
        )
    sys.path.insert(0, str(root))
    return importlib.import_module(f"recipes.{module}")


def recipe_for(config: dict[str, Any], config_path: str | Path, recipe: str | None = None) -> str:
    """The recipe module of ``config``: ``recipe`` ('text' / 'image') if given, else image when the config sets a
    field of the image recipe's model arguments, else text."""
    if recipe is not None:
        if recipe not in RECIPES:
            raise SelectionError(f"unknown --recipe {recipe!r}. Fix: choose from {sorted(RECIPES)}")
        return RECIPES[recipe]
    image_fields = {f.name for f in dataclasses.fields(import_recipe("train_image", config_path).ImageModelArguments)}
    return RECIPES["image" if image_fields & set(config) else "text"]


def _cli_value(value: Any) -> list[str]:
    if isinstance(value, bool):
        return [str(value).lower()]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]


@dataclass
class RecipeSchedule:
    """Runs of ``recipes/<recipe>.py`` on ``config`` (a YAML without ``method:``) with ``extra_argv`` on top.

    ``class_names`` / ``train_counts`` / ``labels`` (``{split: [N]}``) are the recipe's data (``load_splits``);
    ``epochs`` and ``steps_per_epoch`` its schedule. Picklable (paths, lists and numbers)."""

    config: str
    recipe: str
    class_names: list[str]
    train_counts: list[int]
    labels: dict[str, list[int]]
    epochs: float
    steps_per_epoch: int
    recipes_root: str
    extra_argv: tuple[str, ...] = ()
    feature_dim_seen: int | None = dataclasses.field(default=None, compare=False)  # learnt from the first run

    @classmethod
    def from_config(
        cls, config_path: str | Path, work_dir: str | Path, recipe: str | None = None, extra_argv: tuple[str, ...] = ()
    ) -> RecipeSchedule:
        """Read ``config_path``, write it without ``method:`` to ``work_dir/recipe_config.yaml`` and load its data."""
        config = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
        if not isinstance(config, dict):
            raise SelectionError(f"{config_path}: expected a mapping of recipe fields to values")
        module = recipe_for(config, config_path, recipe)
        if config.pop("method", None) is not None:
            logger.warning("%s: its method is not used; the selection sets each candidate's method", config_path)
        target = Path(work_dir) / "recipe_config.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        common = import_recipe("common", config_path)
        data, _, _, args = common.parse_yaml_then_cli(
            import_recipe(module, config_path).make_parser(), [str(target), *extra_argv]
        )
        from ..data import load_splits

        splits = load_splits(data, "image" if module == RECIPES["image"] else "text")
        if splits["validation"] is None:
            raise SelectionError(
                f"{config_path}: the data have no validation split, and a selection chooses on validation. Fix: set "
                "validation_per_class (rows per class carved from training data) or validation_split in the config."
            )
        return cls(
            config=str(target),
            recipe=module,
            class_names=list(splits["class_names"]),
            train_counts=list(splits["train_class_counts"]),
            labels={s: list(splits[s]["label"]) for s in ("validation", "test") if splits[s] is not None},
            epochs=float(args.num_train_epochs),
            steps_per_epoch=common.steps_per_epoch(len(splits["train"]), args),
            recipes_root=str(Path(common.__file__).resolve().parents[1]),
            extra_argv=tuple(extra_argv),
        )

    def class_counts(self) -> list[int]:
        return list(self.train_counts)

    def steps_per_run(self) -> int:
        return int(math.ceil(self.epochs * self.steps_per_epoch))

    @property
    def feature_dim(self) -> int:
        """The size of the features DSB measures (the classifier's input), seen in a run of this process."""
        if self.feature_dim_seen is None:
            raise SelectionError("the recipe's feature size is known after its first run: train one first")
        return self.feature_dim_seen

    def arrays(self) -> dict[str, np.ndarray]:
        """``{split}_y [N]`` labels of the evaluated splits (post-hoc methods)."""
        return {f"{s}_y": np.asarray(y, dtype=np.int64) for s, y in self.labels.items()}

    def argv(self, overrides: dict[str, Any], seed: int, output_dir: str, max_steps: int | None = None) -> list[str]:
        """The recipe's command line of one run."""
        fixed = {
            "seed": seed,
            "output_dir": output_dir,
            "eval_validation": True,
            "eval_test": "test" in self.labels,
            "save_logits": True,
            "save_final_model": False,
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
            **({"max_steps": max_steps} if max_steps else {}),
        }
        pairs = {**fixed, **overrides}
        return [self.config, *self.extra_argv, *(x for k, v in pairs.items() for x in (f"--{k}", *_cli_value(v)))]

    def train(
        self, overrides: dict[str, Any], seed: int, max_steps: int | None = None
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """One recipe run; ``max_steps`` cuts it short (timing probes). Returns the record and the split logits."""
        common = import_recipe("common", self.recipes_root)
        with quiet_library_logs("recipes"), tempfile.TemporaryDirectory(prefix="semscale-recipe-") as tmp:
            record = import_recipe(self.recipe, self.recipes_root).main(self.argv(overrides, seed, tmp, max_steps))
            logits = {
                f"{split}_logits": np.load(common.logits_file(tmp, split)) for split in self.labels if record.get(split)
            }
        if record.get("feature_dim"):
            self.feature_dim_seen = int(record["feature_dim"])
        return record, logits

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """Long-tail metrics of ``logits [N, C]`` against ``labels [N]`` (shot groups from the training counts)."""
        return long_tail_metrics(logits.argmax(-1).tolist(), labels.tolist(), self.class_counts())


@dataclass(frozen=True)
class RecipeRun:
    """One run of ``recipes/<recipe>.py`` that writes into its own ``folder`` (``argv`` names it as output_dir):
    finished once ``folder/results.json`` holds a record whose ``semscale`` settings match ``knobs``."""

    recipe: str
    argv: tuple[str, ...]
    folder: str
    knobs: tuple[tuple[str, Any], ...] = ()

    def record(self) -> dict[str, Any] | None:
        """The finished run's record (None: not run, interrupted, or run with other knobs)."""
        try:
            record = json.loads((Path(self.folder) / "results.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if settings_match(record, dict(self.knobs)) else None


def settings_match(record: dict[str, Any], knobs: dict[str, Any] | None) -> bool:
    """Whether a finished recipe run (its ``results.json`` record) used ``knobs`` (None: nothing to check)."""
    used = record.get("semscale") or {}
    return knobs is None or all(
        used.get(k) is not None and math.isclose(float(used[k]), float(v)) for k, v in knobs.items()
    )


def execute_recipe_run(run: RecipeRun) -> bool:
    """Worker: train ``run`` (one torch thread); a failure is written to ``folder/error.txt`` and returns False, so
    one failed run does not stop the others."""
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        import_recipe(run.recipe).main(list(run.argv))
    except Exception:
        error = traceback.format_exc()
        Path(run.folder).mkdir(parents=True, exist_ok=True)
        (Path(run.folder) / "error.txt").write_text(error, encoding="utf-8")
        print(f"[benchmark] FAILED {run.folder}: {error.splitlines()[-1]}", flush=True)
        return False
    print(f"[benchmark] done {run.folder} in {time.perf_counter() - start:.0f}s", flush=True)
    return True


def run_recipes(runs: list[RecipeRun], workers: int = 1) -> int:
    """Train the ``runs`` that are not finished (``workers`` processes); returns how many failed."""
    unique = list(dict.fromkeys(runs))
    pending = [r for r in unique if r.record() is None]
    return sum(not ok for ok in run_pending(execute_recipe_run, pending, workers, total=len(unique)))
