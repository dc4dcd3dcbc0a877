"""Semantic-scale imbalance: normalised scales, degree, summary and its correlations (vs scipy)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from scipy import stats

from hf_semscale.core.imbalance import (
    average_ranks,
    imbalance_degree,
    imbalance_summary,
    normalized_scales,
    pearson,
    permutation_p_value,
    spearman,
)

SCALES = torch.tensor([6.0, 3.0, 0.0, 1.5, 6.0], dtype=torch.float64)
COUNTS = torch.tensor([100, 50, 1, 20, 5])

REQUIRED_KEYS = {
    "num_classes",
    "scale_min",
    "scale_max",
    "scale_mean",
    "max_min_ratio",
    "coefficient_of_variation",
    "classes_without_volume",
    "count_max_min_ratio",
    "count_coefficient_of_variation",
}
ACCURACY_KEYS = {
    "pearson_scale_accuracy",
    "spearman_scale_accuracy",
    "pearson_count_accuracy",
    "spearman_count_accuracy",
}


def test_normalized_scales():
    out = normalized_scales(SCALES)
    assert out.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.25, 1.0])
    assert torch.equal(normalized_scales(torch.zeros(3)), torch.zeros(3, dtype=torch.float64))


def test_imbalance_degree():
    out = imbalance_degree(SCALES, floor=0.05)
    assert out.tolist() == pytest.approx([1.0, 2.0, 20.0, 4.0, 1.0])
    assert float(imbalance_degree(SCALES, floor=0.5)[2]) == pytest.approx(2.0)
    assert bool((imbalance_degree(torch.rand(20) + 0.01) >= 1).all())
    assert torch.equal(imbalance_degree(torch.zeros(3)), torch.ones(3, dtype=torch.float64))


def test_summary_values_against_numpy():
    s = np.array([2.0, 5.0, 3.5, 7.25])
    n = np.array([10, 400, 40, 3])
    out = imbalance_summary(torch.tensor(s), torch.tensor(n))
    assert REQUIRED_KEYS <= out.keys() and not (ACCURACY_KEYS & out.keys())
    assert out["num_classes"] == 4
    assert out["scale_min"] == 2.0 and out["scale_max"] == 7.25
    assert out["scale_mean"] == pytest.approx(s.mean())
    assert out["max_min_ratio"] == pytest.approx(7.25 / 2.0)
    assert out["coefficient_of_variation"] == pytest.approx(s.std() / s.mean())
    assert out["count_max_min_ratio"] == pytest.approx(400 / 3)
    assert out["count_coefficient_of_variation"] == pytest.approx(n.std() / n.mean())
    assert out["classes_without_volume"] == [] and out["notes"] == {}


def test_summary_zero_scale_and_zero_count_are_json_safe():
    counts = COUNTS.clone()
    counts[3] = 0
    out = imbalance_summary(SCALES, counts, per_class_accuracy=torch.tensor([0.9, 0.7, 0.1, 0.3, 0.8]))
    assert out["classes_without_volume"] == [2, 3]  # one sample (scale 0); no samples
    # the scale statistics cover the classes with volume only: a 0 there means "not measured"
    measured = [0, 1, 4]
    assert out["num_classes_with_volume"] == 3 and out["scale_min"] == float(SCALES[measured].min())
    assert out["scale_mean"] == pytest.approx(float(SCALES[measured].mean()))
    assert out["max_min_ratio"] == pytest.approx(float(SCALES[measured].max() / SCALES[measured].min()))
    assert out["count_max_min_ratio"] is None and "count" in out["notes"]["count_max_min_ratio"]
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    num_classes = 40
    scales = rng.uniform(0.5, 9.0, num_classes)
    scales[:5] = scales[5]  # ties
    counts = rng.integers(2, 30, num_classes)  # many ties; every class has a volume
    accuracy = np.clip(0.05 * scales + rng.normal(0, 0.1, num_classes), 0, 1)
    out = imbalance_summary(torch.tensor(scales), torch.tensor(counts), torch.tensor(accuracy))
    assert ACCURACY_KEYS <= out.keys()
    assert out["pearson_scale_accuracy"] == pytest.approx(stats.pearsonr(scales, accuracy)[0], abs=1e-12)
    assert out["spearman_scale_accuracy"] == pytest.approx(stats.spearmanr(scales, accuracy)[0], abs=1e-12)
    assert out["pearson_count_accuracy"] == pytest.approx(stats.pearsonr(counts, accuracy)[0], abs=1e-12)
    assert out["spearman_count_accuracy"] == pytest.approx(stats.spearmanr(counts, accuracy)[0], abs=1e-12)


def test_average_ranks_match_scipy():
    values = np.array([3.0, 1.0, 3.0, 2.0, 3.0, -1.0, 2.0])
    assert average_ranks(torch.tensor(values)).tolist() == stats.rankdata(values).tolist()


def test_permutation_p_value_matches_the_exact_permutation_test():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = np.array([0.3, 0.1, 0.9, 0.4, 1.2, 0.8])
    observed = abs(stats.pearsonr(x, y)[0])
    exact = np.mean(
        [abs(stats.pearsonr(x, y[list(p)])[0]) >= observed - 1e-12 for p in itertools.permutations(range(6))]
    )
    assert permutation_p_value(x, y, rank=False) == pytest.approx(exact, abs=0.01)
    assert permutation_p_value(x, np.exp(x), rank=True) == pytest.approx(2 / 720, abs=0.002)  # only x and reversed x
    assert permutation_p_value(x, y, rank=True, seed=3) == permutation_p_value(x, y, rank=True, seed=3)
    assert permutation_p_value(x, np.full(6, 0.5), rank=False) is None
    with pytest.raises(ValueError, match="same length"):
        permutation_p_value(x, y[:5], rank=False)


def test_constant_vectors_give_none_with_reason():
    out = imbalance_summary(torch.full((4,), 2.0), torch.tensor([5, 5, 5, 5]), torch.tensor([0.1, 0.4, 0.2, 0.9]))
    for key in ACCURACY_KEYS:
        assert out[key] is None and "constant" in out["notes"][key]
    assert "scale" in out["notes"]["pearson_scale_accuracy"] and "count" in out["notes"]["spearman_count_accuracy"]
    out = imbalance_summary(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2, 2, 3]), torch.full((3,), 0.1))
    assert out["pearson_scale_accuracy"] is None and "accuracy" in out["notes"]["pearson_scale_accuracy"]
    assert out["max_min_ratio"] == pytest.approx(3.0)
    json.dumps(out, allow_nan=False)


def test_constant_values_whose_centring_leaves_rounding_noise():
    # 0.1 three times: the mean is not exactly 0.1, but the vector is constant
    assert pearson(torch.tensor([0.1, 0.1, 0.1]), torch.tensor([1.0, 2.0, 4.0]))[0] is None


def test_single_class_correlation_is_undefined():
    value, reason = spearman(torch.tensor([1.0]), torch.tensor([0.5]))
    assert value is None and "fewer than 2" in reason


def test_no_measured_class_gives_no_scale_accuracy_correlation():
    out = imbalance_summary(torch.zeros(2), torch.tensor([1, 1]), per_class_accuracy=torch.tensor([0.2, 0.9]))
    assert out["pearson_scale_accuracy"] is None and out["spearman_scale_accuracy"] is None
    assert "no class has a measured volume" in out["notes"]["spearman_scale_accuracy"]
    assert out["pearson_count_accuracy"] is None  # constant counts: its own reason
    json.dumps(out, allow_nan=False)


def test_all_zero_scales():
    out = imbalance_summary(torch.zeros(3), torch.tensor([0, 1, 1]))
    assert out["coefficient_of_variation"] is None and out["max_min_ratio"] is None and out["scale_mean"] is None
    assert "no class has a measured volume" in out["notes"]["scale_mean"] and out["num_classes_with_volume"] == 0
    assert out["classes_without_volume"] == [0, 1, 2]
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: imbalance_summary(torch.tensor([1.0, float("nan")]), torch.tensor([1, 2])), "NaN or inf"),
        (lambda: imbalance_summary(torch.tensor([1.0, 2.0]), torch.tensor([1, 2, 3])), "one count per class"),
        (lambda: imbalance_summary(torch.tensor([1.0, -2.0]), torch.tensor([1, 2])), ">= 0"),
        (
            lambda: imbalance_summary(torch.tensor([1.0, 2.0]), torch.tensor([1, 2]), torch.tensor([0.5])),
            "per_class_accuracy",
        ),
        (lambda: imbalance_degree(torch.tensor([1.0]), floor=2.0), "floor"),
        (lambda: normalized_scales(torch.ones(2, 2)), "1-D"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
