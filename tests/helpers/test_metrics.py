"""Long-tail metrics: the pure helper against hand-computed values, and the offline ``evaluate`` module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_semscale.metrics import LONG_TAIL_METRIC_PATH, long_tail_metrics

# Training counts: class 0 many-shot (>100), 1 and 2 medium (100 and 20 are medium), 3 and 4 few (<20).
COUNTS = [150, 100, 20, 19, 5]
# class 0: 3/4 right; class 1: 1/2; class 2: 2/2; class 3: 0/1; class 4: not in the evaluation set.
REFERENCES = [0, 0, 0, 0, 1, 1, 2, 2, 3]
PREDICTIONS = [0, 0, 0, 1, 1, 2, 2, 2, 4]


def test_hand_computed_values():
    out = long_tail_metrics(PREDICTIONS, REFERENCES, COUNTS)
    assert out["accuracy"] == pytest.approx(6 / 9)
    assert out["per_class_accuracy"] == [0.75, 0.5, 1.0, 0.0, None]
    assert out["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 1.0 + 0.0) / 4)
    assert out["many_shot_accuracy"] == pytest.approx(0.75)
    assert out["medium_shot_accuracy"] == pytest.approx(0.75)
    assert out["few_shot_accuracy"] == pytest.approx(0.0)  # class 4 has no test sample: not averaged in


def test_empty_group_is_none_and_json_safe():
    out = long_tail_metrics([0, 1, 1], [0, 1, 0], [500, 300])
    assert out["medium_shot_accuracy"] is None and out["few_shot_accuracy"] is None
    assert out["many_shot_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    json.dumps(out, allow_nan=False)  # raises on NaN / inf


def test_thresholds_are_configurable():
    out = long_tail_metrics(PREDICTIONS, REFERENCES, COUNTS, many_threshold=50, few_threshold=10)
    assert out["many_shot_accuracy"] == pytest.approx((0.75 + 0.5) / 2)  # 150 and 100 > 50
    assert out["medium_shot_accuracy"] == pytest.approx((1.0 + 0.0) / 2)  # 20 and 19
    assert out["few_shot_accuracy"] is None  # only class 4 (5 < 10), absent from the references


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(predictions=[0, 1], references=[0], train_class_counts=[5, 5]), "2 predictions but 1 references"),
        (dict(predictions=[0, 2], references=[0, 1], train_class_counts=[5, 5]), "predictions span"),
        (dict(predictions=[0], references=[3], train_class_counts=[5, 5]), "references span"),
        (dict(predictions=[], references=[], train_class_counts=[5]), "no references"),
        (dict(predictions=[0], references=[0], train_class_counts=[5], few_threshold=200), "few_threshold"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        long_tail_metrics(**kwargs)


@pytest.fixture(scope="module")
def evaluate_module():
    evaluate = pytest.importorskip("evaluate")
    return evaluate


def test_metric_folder_follows_evaluate_local_rules():
    folder = Path(LONG_TAIL_METRIC_PATH)
    assert (folder / f"{folder.name}.py").is_file()  # evaluate.load(dir) runs dir/<dir name>.py
    assert (folder / "README.md").is_file()


def test_evaluate_load_offline_matches_helper(evaluate_module):
    metric = evaluate_module.load(LONG_TAIL_METRIC_PATH, train_class_counts=COUNTS)
    out = metric.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert out == long_tail_metrics(PREDICTIONS, REFERENCES, COUNTS)


def test_evaluate_batches_and_compute_time_settings(evaluate_module):
    metric = evaluate_module.load(LONG_TAIL_METRIC_PATH)
    metric.add_batch(predictions=PREDICTIONS[:4], references=REFERENCES[:4])
    metric.add_batch(predictions=PREDICTIONS[4:], references=REFERENCES[4:])
    out = metric.compute(train_class_counts=COUNTS, many_threshold=50, few_threshold=10)
    assert out == long_tail_metrics(PREDICTIONS, REFERENCES, COUNTS, many_threshold=50, few_threshold=10)


def test_evaluate_without_counts_says_how_to_fix(evaluate_module):
    metric = evaluate_module.load(LONG_TAIL_METRIC_PATH)
    with pytest.raises(ValueError, match="train_class_counts"):
        metric.compute(predictions=[0], references=[0])
