"""``hf-semscale select``: which method for THIS dataset, measured on a validation split of its own training data.

    hf-semscale select --dataset ../shared/data/banking77 --imbalance-factor 20 --output-dir out/select
    hf-semscale select --config recipes/configs/clinc150_frozen.yaml --imbalance-factor 50 --output-dir out/select
    hf-semscale select --config recipes/configs/cifar10_lt.yaml --seeds 0 --output-dir out/select   # its own recipe

A config whose encoder_mode is frozen_cached (or unset) trains the frozen_cached schedule here; any other recipe config
(an image config, a fine-tuning text config, or ``--recipe``) trains each run with that recipe (``recipes/``: run from a
checkout of the repository).

Prints the regime, the time estimate, a progress bar, the table and the chosen ``SemScaleConfig`` arguments; writes
``selection.json``, ``selection.md``, ``recommended.yaml`` and ``selection.png``. Started again on the same output
folder, it re-runs only the runs that did not finish.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from ..select.candidates import DEFAULT_CANDIDATES, GridSpec
from ..select.recipe import RECIPES

VALIDATION_FRACTION = 0.15

_DATA_KEYS = {
    "data_dir",
    "dataset_name",
    "train_split",
    "test_split",
    "validation_split",
    "validation_per_class",
    "imbalance_factor",
    "long_tail_n_max",
    "long_tail_order",
    "subset_seed",
    "text_column",
    "label_column",
    "max_train_samples_per_class",
    "max_eval_samples_per_class",
}
_START_KNOBS = {"semscale_warmup_ratio", "semscale_warmup_steps", "semscale_reweight_start"}
"""Where re-weighting starts: the candidates' grid places it, so a config's value is not carried into the runs."""
_FROZEN_KEYS = {"model_name_or_path", "encoder_mode", "method", "output_dir"}
"""Config keys the frozen_cached selection reads itself (the encoder, the schedule check) or replaces (method, output)."""
_SCHEDULE_KEYS = {
    "num_train_epochs": "epochs",
    "learning_rate": "learning_rate",
    "weight_decay": "weight_decay",
    "per_device_train_batch_size": "batch_size",
    "head_hidden_dims": "hidden_dims",
    "head_dropout": "dropout",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("data and model")
    src.add_argument(
        "--config",
        help="A recipe config (YAML, as recipes/train_text.py / train_image.py take): data, model, schedule.",
    )
    src.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="Train every run with this recipe on --config (default: frozen_cached configs here, any other config "
        "with its own recipe, image or text from its fields).",
    )
    src.add_argument("--dataset", help="A local data folder or a datasets Hub id (instead of / over --config's data).")
    src.add_argument("--model", help="Frozen text encoder: 'minilm' (offline, the default), a folder or a Hub id.")
    src.add_argument("--validation-split", help="The dataset's own validation split (default: carved from train).")
    src.add_argument(
        "--validation-fraction",
        type=float,
        help=f"Share of each class carved off train (default {VALIDATION_FRACTION}).",
    )
    src.add_argument("--imbalance-factor", type=float, help="Make the training split long-tailed (n_max / n_min).")
    src.add_argument("--text-column", help="Text column (default: text / sentence / content).")
    src.add_argument("--label-column", help="Label column (default: label / labels).")
    sel = parser.add_argument_group("selection")
    sel.add_argument("--output-dir", default="outputs/select", help="Where runs and reports go (a rerun resumes).")
    sel.add_argument(
        "--candidates", nargs="+", default=list(DEFAULT_CANDIDATES), help="Methods of the method table to compare."
    )
    sel.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="Training seeds (knobs tuned at the first)."
    )
    sel.add_argument(
        "--starts", type=float, nargs="+", default=list(GridSpec.starts), help="Start-of-re-weighting grid."
    )
    sel.add_argument(
        "--gammas", type=float, nargs="+", default=list(GridSpec.gammas), help="gamma grid (scale weights)."
    )
    sel.add_argument("--powers", type=float, nargs="+", default=list(GridSpec.powers), help="p grid (count weights).")
    sel.add_argument("--epochs", type=float, help="Training epochs per run (default: the config's, else 10).")
    sel.add_argument("--workers", type=int, default=2, help="Runs at once (worker processes).")
    sel.add_argument("--budget-min", type=float, help="Run only the candidates that fit this many minutes.")


def load_recipe(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise SystemExit(f"{path}: expected a mapping of recipe fields to values")
    return config


def uses_recipe(args: argparse.Namespace, config: dict[str, Any]) -> bool:
    """Whether the runs train the config's own recipe (:class:`RecipeSchedule`) rather than frozen_cached."""
    from ..select.recipe import RECIPES, recipe_for

    if args.recipe is not None:
        if args.config is None:
            raise SystemExit("--recipe trains the recipe on a config: pass --config <recipe.yaml> too")
        return True
    if args.config is None:
        return False
    return (
        config.get("encoder_mode", "frozen_cached") != "frozen_cached"
        or recipe_for(config, args.config) == RECIPES["image"]
    )


def recipe_argv(args: argparse.Namespace, recipe: str) -> tuple[str, ...]:
    """The recipe command-line flags of ``--dataset`` / ``--imbalance-factor`` / ... (on top of ``--config``)."""
    if args.validation_fraction is not None:
        raise SystemExit(
            "--validation-fraction carves validation for the frozen_cached schedule; a recipe carves its own. Fix: "
            "set validation_per_class (rows per class) in the config."
        )
    if args.model is not None and recipe == RECIPES["image"]:
        raise SystemExit("--model is the text encoder; an image recipe's model comes from its config (model_type)")
    argv: list[str] = []
    if args.dataset is not None:
        argv += ["--data_dir" if Path(args.dataset).exists() else "--dataset_name", args.dataset]
    for flag, field in (
        ("validation_split", "validation_split"),
        ("imbalance_factor", "imbalance_factor"),
        ("text_column", "text_column"),
        ("label_column", "label_column"),
        ("model", "model_name_or_path"),
        ("epochs", "num_train_epochs"),
    ):
        if getattr(args, flag) is not None:
            argv += [f"--{field}", str(getattr(args, flag))]
    return tuple(argv)


def selection_inputs(args: argparse.Namespace) -> tuple[Any, dict[str, Any], dict[str, Any], str]:
    """``(DataArguments, schedule fields, recipe config, encoder)`` from ``--config`` with the flags on top."""
    from ..data import DataArguments

    recipe = load_recipe(args.config)
    data_fields = {k: v for k, v in recipe.items() if k in _DATA_KEYS}
    for flag, key in (
        ("validation_split", "validation_split"),
        ("imbalance_factor", "imbalance_factor"),
        ("text_column", "text_column"),
        ("label_column", "label_column"),
    ):
        if getattr(args, flag) is not None:
            data_fields[key] = getattr(args, flag)
    if args.dataset is not None:
        data_fields.pop("data_dir", None)
        data_fields.pop("dataset_name", None)
        data_fields["data_dir" if Path(args.dataset).exists() else "dataset_name"] = args.dataset
    if not (data_fields.get("data_dir") or data_fields.get("dataset_name")):
        raise SystemExit("no data: pass --dataset <folder or Hub id> or --config <recipe.yaml>")
    schedule = {ours: recipe[theirs] for theirs, ours in _SCHEDULE_KEYS.items() if theirs in recipe}
    if "hidden_dims" in schedule:
        schedule["hidden_dims"] = tuple(schedule["hidden_dims"])
    if args.epochs is not None:
        schedule["epochs"] = args.epochs
    # the config's own semscale_* knobs hold for every run, except where the candidates and their start grid set them
    knobs = {k: v for k, v in recipe.items() if k.startswith("semscale_") and k not in _START_KNOBS}
    if knobs:
        schedule["extra_args"] = knobs
    unused = sorted(set(recipe) - _DATA_KEYS - set(_SCHEDULE_KEYS) - set(knobs) - _START_KNOBS - _FROZEN_KEYS)
    if unused:
        print(
            f"note: the frozen_cached selection does not use these keys of {args.config}: {unused} (each run is the "
            "schedule printed below; the candidates set the method and the start of re-weighting)",
            file=sys.stderr,
        )
    model = args.model or recipe.get("model_name_or_path", "minilm")
    return DataArguments(**data_fields), schedule, recipe, model


def run(args: argparse.Namespace) -> int:
    from ..data import DatasetLoadError
    from ..select.pipeline import select_text
    from ..select.report import summary_lines
    from ..select.selection import SelectionError, SelectionSettings

    settings = SelectionSettings(
        candidates=tuple(args.candidates),
        seeds=tuple(args.seeds),
        grid=GridSpec(tuple(args.starts), tuple(args.gammas), tuple(args.powers)),
        workers=args.workers,
        budget_min=args.budget_min,
    )
    config = load_recipe(args.config)
    try:
        if uses_recipe(args, config):
            from ..select.pipeline import select_recipe
            from ..select.recipe import recipe_for

            module = recipe_for(config, args.config, args.recipe)
            result = select_recipe(args.output_dir, args.config, args.recipe, recipe_argv(args, module), settings)
        else:
            data, schedule, recipe, model = selection_inputs(args)
            result = select_text(
                args.output_dir,
                data,
                model=model,
                settings=settings,
                schedule=schedule,
                validation_fraction=VALIDATION_FRACTION
                if args.validation_fraction is None
                else args.validation_fraction,
                recipe=recipe or None,
            )
    except (SelectionError, DatasetLoadError, ValueError) as err:
        print(f"hf-semscale select: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(result, args.output_dir)))
    return 0
