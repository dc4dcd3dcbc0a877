"""The regime diagnosis: names, the facts behind them, and refusals."""

from __future__ import annotations

import pytest

from hf_semscale.select.regime import REGIMES, diagnose_regime


@pytest.mark.parametrize(
    ("counts", "dim", "name"),
    [
        ([100] * 10, 64, "balanced"),
        ([182, 150, 120, 90, 30], 384, "mild_imbalance"),
        ([100, 40, 10, 5, 2], 256, "long_tail_below_dim"),
        ([4900, 1000, 300, 49], 32, "long_tail_above_dim"),
    ],
)
def test_regime_names_follow_counts_and_dimension(counts, dim, name):
    regime = diagnose_regime(counts, dim)
    assert regime["name"] == name
    assert regime["recommendation"]["config"] == REGIMES[name]["config"]
    assert regime["feature_dim"] == dim and regime["count_ratio"] == pytest.approx(max(counts) / min(counts))


def test_fraction_below_dim_and_spearman_over_measured_classes():
    counts = [300, 100, 50, 10, 0]  # the absent class is left out of every statistic
    scales = [9.0, 8.0, 7.0, 0.0, 0.0]  # class 3 has no measured volume
    regime = diagnose_regime(counts, 64, scales)
    assert regime["fraction_classes_below_dim"] == pytest.approx(2 / 4)
    assert regime["num_classes_without_samples"] == 1
    assert regime["spearman_scale_count"] == pytest.approx(1.0)
    assert diagnose_regime(counts, 64)["spearman_scale_count"] is None


def test_bad_inputs_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="at least 2"):
        diagnose_regime([10, 0, 0], 8)
    with pytest.raises(ValueError, match="feature_dim"):
        diagnose_regime([10, 5], 0)
    with pytest.raises(ValueError, match="scales has 3"):
        diagnose_regime([10, 5], 8, [1.0, 2.0, 3.0])
