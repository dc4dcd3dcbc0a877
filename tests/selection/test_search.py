"""The selection's candidates as a Trainer.hyperparameter_search space, and the runnable example that uses it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hf_semscale import SemScaleConfig
from hf_semscale.select.candidates import GridSpec, build_candidates
from hf_semscale.select.search import trainer_search_space

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_one_trial_per_candidate_point_with_every_knob_set(tmp_path):
    args = SemScaleConfig(output_dir=str(tmp_path), num_train_epochs=10, semscale_reweight_start=0.5, report_to=[])
    grid = GridSpec(starts=(0.1, 0.4), gammas=(1.0, 4.0), powers=(0.5,))
    space = trainer_search_space(args, ["ce", "ce_posthoc_la", "pow_ce_tuned", "dsb_ce"], grid)
    expected = sum(len(c.points) for c in build_candidates(["ce", "pow_ce_tuned", "dsb_ce"], 10, grid))
    assert len(space) == expected == 1 + 2 + 4  # the post-hoc candidate is no trial
    assert "dsb_ce[gamma=4,warmup_ratio=0.3]" in space.points
    for values in space.points.values():
        assert set(values) == {k for k in vars(args) if k.startswith("semscale_")}  # nothing carries over
        SemScaleConfig(output_dir=str(tmp_path), report_to=[], **values)  # every trial is a valid configuration
    ce = space.points["ce"]
    assert ce["semscale_weighting"] == "none" and ce["semscale_reweight_start"] == 0.5  # the user's own value
    assert space.points["pow_ce_tuned[warmup_ratio=0.4]"]["semscale_reweight_start"] is None


def test_only_post_hoc_candidates_are_refused(tmp_path):
    args = SemScaleConfig(output_dir=str(tmp_path), report_to=[])
    with pytest.raises(ValueError, match="post-hoc"):
        trainer_search_space(args, ["ce_posthoc_la"])


@pytest.mark.slow
def test_the_example_runs_a_grid_search_over_the_candidates(tmp_path, minilm_path, fast_tiny_runs):
    pytest.importorskip("optuna")
    sys.path.insert(0, str(EXAMPLES))
    try:
        import hyperparameter_search as example
    finally:
        sys.path.remove(str(EXAMPLES))
    out = example.main(
        [
            "--output_dir", str(tmp_path), "--candidates", "ce", "pow_ce_tuned", "dsb_ce", "--starts", "0.4",
            "--gammas", "1", "--powers", "1", "--epochs", "2", "--max_train_per_class", "12", "--max_eval_per_class", "3",
        ]
    )  # fmt: skip
    assert out["trials"] == 3
    assert out["best"].hyperparameters["candidate"] in {"ce", "pow_ce_tuned", "dsb_ce"}
    assert 0.0 <= out["best"].objective <= 1.0
    assert out["overrides"]["semscale_weighting"] in {"none", "count_power", "dsb"}
