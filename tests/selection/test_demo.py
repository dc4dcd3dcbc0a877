"""The main job, ``hf-semscale demo``: the bundled long-tailed intents, end to end (one seed here, to stay short)."""

from __future__ import annotations

import json

import pytest

from hf_semscale.cli import main


@pytest.mark.slow
def test_demo_diagnoses_selects_and_recommends(tmp_path, minilm_path, capsys):
    rc = main(["demo", "--output-dir", str(tmp_path), "--seeds", "0", "--workers", "1"])
    printed = capsys.readouterr().out
    assert rc == 0
    result = json.loads((tmp_path / "selection.json").read_text())
    assert result["regime"]["name"] == "long_tail_below_dim" and result["regime"]["feature_dim"] == 256
    assert result["train_class_counts"][0] == 100 and result["train_class_counts"][-1] == 5
    methods = [row["method"] for row in result["candidates"]]
    assert result["chosen"] in methods and len(methods) == 7
    assert all(0.0 < row["test_balanced_accuracy_mean"] <= 1.0 for row in result["candidates"])
    assert "Regime: long_tail_below_dim" in printed and f"Chosen: {result['chosen']}" in printed
    assert (tmp_path / "recommended.yaml").is_file() and (tmp_path / "selection.png").stat().st_size > 0
