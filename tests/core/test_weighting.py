"""Class weights: semantic-scale-balanced (SSB) and its reverse, inverse frequency (with an exponent), effective number,
scale-equivalent counts."""

from __future__ import annotations

import math

import pytest
import torch

from hf_semscale.core.weighting import (
    count_power_weights,
    effective_number_weights,
    inverse_frequency_weights,
    normalize_weights,
    scale_equivalent_counts,
    semantic_scale_weights,
)

SCALES = torch.tensor([4.0, 0.0, 1.0, 2.5, 4.0, 0.3], dtype=torch.float64)
COUNTS = torch.tensor([500, 3, 40, 120, 7, 0], dtype=torch.float64)


def mean_sample_weight(weights: torch.Tensor, counts: torch.Tensor) -> float:
    return float((weights * counts).sum() / counts.sum())


@pytest.mark.parametrize("normalization", ["mean", "sum", "none"])
def test_gamma_zero_is_uniform(normalization):
    w = semantic_scale_weights(SCALES, gamma=0.0, class_counts=COUNTS, normalization=normalization)
    assert torch.equal(w, torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("gamma", [0.5, 1.0, 3.0])
def test_mean_normalisation_keeps_mean_sample_weight_one(gamma):
    for w in (
        semantic_scale_weights(SCALES, gamma=gamma, class_counts=COUNTS),
        inverse_frequency_weights(COUNTS),
        effective_number_weights(COUNTS, beta=0.99),
    ):
        assert mean_sample_weight(w, COUNTS) == pytest.approx(1.0, rel=1e-12)


def test_mean_normalisation_without_counts_is_unit_mean():
    w = semantic_scale_weights(SCALES, gamma=1.0)
    assert float(w.mean()) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 3.0])
def test_sum_normalisation_sums_to_num_classes(gamma):
    for w in (
        semantic_scale_weights(SCALES, gamma=gamma, normalization="sum"),
        inverse_frequency_weights(COUNTS, normalization="sum"),
        effective_number_weights(COUNTS, beta=0.999, normalization="sum"),
    ):
        assert float(w.sum()) == pytest.approx(6.0, rel=1e-12)


@pytest.mark.parametrize("gamma", [0.7, 1.0, 2.0])
def test_ssb_formula_ratios(gamma):
    w = semantic_scale_weights(SCALES, gamma=gamma, floor=0.05, normalization="none")
    top = 4.0
    for c, s in enumerate(SCALES.tolist()):
        assert float(w[c]) == pytest.approx((top / max(s, 0.05 * top)) ** gamma, rel=1e-12)


def test_floor_keeps_zero_scale_finite():
    for floor in (0.01, 0.05, 0.5):
        w = semantic_scale_weights(SCALES, gamma=2.0, floor=floor, class_counts=COUNTS)
        assert bool(torch.isfinite(w).all()) and bool((w > 0).all())
        # class 1 (scale 0) over class 0 (the largest scale): floor ** -gamma
        assert float(w[1] / w[0]) == pytest.approx(floor**-2.0, rel=1e-12)


def test_smaller_scale_gets_larger_weight():
    scales = torch.tensor([0.5, 1.0, 1.5, 3.0, 6.0], dtype=torch.float64)
    for gamma in (0.25, 1.0, 4.0):
        w = semantic_scale_weights(scales, gamma=gamma)
        assert bool((w.diff() < 0).all())
    tied = semantic_scale_weights(SCALES, gamma=1.0)
    assert float(tied[0]) == float(tied[4])  # equal scales, equal weights


def test_all_zero_scales_give_uniform_weights():
    w = semantic_scale_weights(torch.zeros(4), gamma=2.0, class_counts=torch.tensor([1, 2, 3, 4]))
    assert torch.allclose(w, torch.ones(4, dtype=torch.float64))


def test_inverse_frequency_formula_and_empty_class():
    w = inverse_frequency_weights(COUNTS, normalization="none")
    expected = [1.0 / max(n, 1.0) for n in COUNTS.tolist()]
    assert w.tolist() == pytest.approx(expected, rel=1e-15)


def test_effective_number_formula():
    beta = 0.999
    w = effective_number_weights(COUNTS, beta=beta, normalization="none")
    expected = [(1 - beta) / (1 - beta ** max(n, 1.0)) for n in COUNTS.tolist()]
    assert w.tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("beta", [0.0, 1e-12])
def test_effective_number_small_beta_is_uniform(beta):
    w = effective_number_weights(COUNTS, beta=beta)
    assert torch.allclose(w, torch.ones(6, dtype=torch.float64), rtol=1e-10)


def test_effective_number_large_beta_approaches_inverse_frequency():
    inverse = inverse_frequency_weights(COUNTS)
    errors = [
        float(((effective_number_weights(COUNTS, beta=1 - eps) - inverse).abs() / inverse).max())
        for eps in (1e-3, 1e-5, 1e-7, 1e-10)
    ]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-6


def test_normalize_weights_direct():
    w = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(normalize_weights(w, normalization="none"), w.double())
    assert float(normalize_weights(w, normalization="sum").sum()) == pytest.approx(3.0)
    counts = torch.tensor([0.0, 1.0, 3.0])
    assert mean_sample_weight(normalize_weights(w, counts), counts) == pytest.approx(1.0)


def test_weights_follow_the_scales_device_and_dtype():
    w = semantic_scale_weights(torch.tensor([1.0, 2.0], dtype=torch.float32), class_counts=[3, 4])
    assert w.dtype == torch.float64 and w.device == torch.device("cpu")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: semantic_scale_weights(torch.tensor([1.0, -1.0])), ">= 0"),
        (lambda: semantic_scale_weights(torch.tensor([1.0, float("nan")])), "NaN or inf"),
        (lambda: semantic_scale_weights(torch.tensor([1.0, 2.0]), floor=0.0), "floor"),
        (lambda: semantic_scale_weights(torch.tensor([1.0, 2.0]), gamma=-1.0), "gamma"),
        (lambda: semantic_scale_weights(torch.tensor([1.0, 2.0]), gamma=float("inf")), "gamma"),
        (lambda: semantic_scale_weights(torch.tensor([0.0, 2.0]), gamma=400.0), "smaller gamma"),
        (lambda: semantic_scale_weights(torch.tensor([1.0, 2.0]), normalization="max"), "normalization"),
        (lambda: semantic_scale_weights(torch.tensor([1.0, 2.0]), class_counts=[1, 2, 3]), "shape"),
        (lambda: semantic_scale_weights(torch.tensor([1.0, 2.0]), class_counts=[0, 0]), "positive total"),
        (
            lambda: semantic_scale_weights(
                torch.tensor([]),
            ),
            "non-empty",
        ),
        (lambda: effective_number_weights(torch.tensor([1, 2]), beta=1.0), "beta"),
        (lambda: inverse_frequency_weights(torch.tensor([[1, 2]])), "1-D"),
        (lambda: normalize_weights(torch.tensor([0.0, 0.0]), normalization="sum"), "sum to 0"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- the regime study's weights


def test_count_power_weights_span_inverse_frequency_and_uniform():
    counts = torch.tensor([100.0, 30.0, 5.0, 2.0])
    assert torch.allclose(count_power_weights(counts, 1.0), inverse_frequency_weights(counts))
    assert torch.allclose(count_power_weights(counts, 0.0), torch.ones(4, dtype=torch.float64))
    steep = count_power_weights(counts, 2.0, normalization="none")
    assert torch.allclose(steep / steep[0], (100.0 / counts.double()) ** 2)  # ratios n_max^p / n_c^p
    mean_weight = (counts.double() * count_power_weights(counts, 1.5)).sum() / counts.sum()
    assert float(mean_weight) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="power"):
        count_power_weights(counts, -1.0)


def test_reversed_scale_weights_grow_with_the_scale():
    scales = torch.tensor([4.0, 1.0, 2.0, 0.0])
    forward = semantic_scale_weights(scales, gamma=1.0, normalization="none", floor=0.1)
    backward = semantic_scale_weights(scales, gamma=1.0, normalization="none", floor=0.1, reverse=True)
    assert torch.allclose(backward, 1.0 / forward)  # each class's weight mirrored: (S_c / max S) ** gamma
    order = torch.argsort(scales)
    assert bool((backward[order].diff() >= 0).all()) and bool((forward[order].diff() <= 0).all())
    assert float(backward[3]) == pytest.approx(0.1)  # a zero scale is clamped to the floor, not zero weight


def test_scale_equivalent_counts_invert_the_reference_curve():
    sizes = [2, 4, 8, 16]
    curve = torch.tensor([1.0, 3.0, 5.0, 6.0])
    on_curve = scale_equivalent_counts(curve, sizes, curve)
    assert torch.allclose(on_curve, torch.tensor(sizes, dtype=torch.float64))  # the curve's own points map back
    # halfway between 2 and 4 bits in scale is halfway in log m: sqrt(2 * 4)
    assert float(scale_equivalent_counts(torch.tensor([2.0]), sizes, curve)[0]) == pytest.approx(math.sqrt(8))
    assert float(scale_equivalent_counts(torch.tensor([0.0]), sizes, curve)[0]) == pytest.approx(
        1.0
    )  # one sample: no volume
    # above the curve: the last segment's slope, at most 10x the largest size
    assert float(scale_equivalent_counts(torch.tensor([7.0]), sizes, curve)[0]) == pytest.approx(32.0)
    assert float(scale_equivalent_counts(torch.tensor([100.0]), sizes, curve)[0]) == pytest.approx(160.0)
    # a curve that dips (noise) is made non-decreasing; more scale never maps to fewer samples
    bumpy = torch.tensor([1.0, 3.0, 2.5, 6.0])
    grid = torch.linspace(0, 6, 25)
    mapped = scale_equivalent_counts(grid, sizes, bumpy)
    assert bool((mapped.diff() >= 0).all())
    with pytest.raises(ValueError, match="ascending"):
        scale_equivalent_counts(curve, [4, 2, 8, 16], curve)
