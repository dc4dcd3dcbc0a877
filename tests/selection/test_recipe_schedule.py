"""``hf-semscale select --config <recipe.yaml>`` on the user's own recipe: :class:`RecipeSchedule` runs
``recipes/train_image.py`` in-process per candidate, the recipe saves its logits for ``ce_posthoc_la``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.tiers import write_tiny_image_dataset  # noqa: E402
from hf_semscale.cli import main as cli_main  # noqa: E402
from hf_semscale.select.recipe import import_recipe  # noqa: E402
from hf_semscale.select.selection import SelectionError  # noqa: E402


@pytest.fixture(scope="module")
def tiny_image_config(tmp_path_factory):
    """A tiny image recipe config (4 classes of random 32x32 images, ResNet-8 widths 4/8/16, 2 epochs) whose own
    ``method: dsb_ce`` a selection must not carry into its other candidates."""
    folder = tmp_path_factory.mktemp("tiny_recipe")
    data = write_tiny_image_dataset(folder / "data", per_class=8)
    config = {
        "data_dir": str(data),
        "imbalance_factor": 4,
        "validation_split": "validation",
        "validation_per_class": 0,
        "method": "dsb_ce",
        "model_type": "cifar_resnet",
        "depth": 8,
        "widths": [4, 8, 16],
        "lr_schedule": "cosine",
        "learning_rate": 0.05,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 64,
        "semscale_update_interval": 1,
        "num_threads": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
    }
    path = folder / "tiny_image.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_select_on_an_image_recipe_config_trains_each_candidate_with_the_recipe(
    tiny_image_config, tmp_path, fast_tiny_runs
):
    out = tmp_path / "select"
    argv = ["select", "--config", str(tiny_image_config), "--output-dir", str(out), "--seeds", "0"]
    argv += ["--candidates", "ce_posthoc_la", "dsb_ce", "--starts", "0.4", "--gammas", "1.0", "--workers", "1"]
    assert cli_main(argv) == 0

    result = json.loads((out / "selection.json").read_text())
    rows = {r["method"]: r for r in result["candidates"]}
    assert set(rows) == {"ce_posthoc_la", "dsb_ce"} and result["chosen"] in rows
    assert result["schedule"].startswith("recipes/train_image.py")
    assert rows["dsb_ce"]["uses_pool"] and len(rows["dsb_ce"]["final_semantic_scales"]) == 4
    assert max(rows["dsb_ce"]["final_semantic_scales"]) > 0  # the recipe's DSB stage ran
    assert "tau" in rows["ce_posthoc_la"]["knobs"] and rows["ce_posthoc_la"]["test_balanced_accuracy_mean"] is not None
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*/*.json")]
    weighting = {r["overrides"]["semscale_weighting"]: r["semscale"]["semscale_weighting"] for r in records}
    assert weighting == {"none": "none", "dsb": "dsb"}  # the config's method: dsb_ce did not leak into ce's run
    assert all(r["validation"]["num_samples"] == 8 and r["test"]["num_samples"] == 8 for r in records)
    assert result["regime"]["feature_dim"] == 16  # the ResNet-8's pooled features feed its classifier


def test_recipe_saves_the_logits_it_was_scored_on(tiny_image_config, tmp_path, fast_tiny_runs):
    main = import_recipe("train_image").main
    argv = [str(tiny_image_config), "--output_dir", str(tmp_path), "--save_logits", "true", "--max_steps", "2"]
    record = main(argv + ["--save_final_model", "false", "--method", "ce"])
    for split in ("validation", "test"):
        logits = np.load(tmp_path / f"logits_{split}.npy")
        assert logits.shape == (8, 4) and logits.dtype == np.float32
        labels = np.repeat(np.arange(4), 2)  # the tiny splits: 2 images per class in class order
        accuracy = float((logits.argmax(-1) == labels).mean())
        assert accuracy == pytest.approx(record[split]["accuracy"])


def test_without_the_recipes_folder_the_error_says_to_run_from_a_checkout(tmp_path, monkeypatch):
    for name in ("recipes", "recipes.train_image"):
        monkeypatch.setitem(sys.modules, name, None)  # not importable
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SelectionError, match="checkout of the repository"):
        import_recipe("train_image", tmp_path / "config.yaml")
