"""Property tests (hypothesis): scales and weights stay finite and well-behaved on any input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_semscale.core.imbalance import imbalance_summary
from hf_semscale.core.scale import class_semantic_scales, semantic_scale
from hf_semscale.core.weighting import effective_number_weights, inverse_frequency_weights, semantic_scale_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SETTINGS = settings(max_examples=40, deadline=None)
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# Largest data scale each dtype holds with room for a Gaussian tail (float16 tops out at 65504).
MAX_SCALE = {torch.float16: 1e3, torch.bfloat16: 1e6, torch.float32: 1e6, torch.float64: 1e6}


@st.composite
def feature_sets(draw, max_rows: int = 24, max_dim: int = 40):
    """``(features [m, d] in some dtype, kind)``: Gaussian, low rank, duplicated rows or constant."""
    m = draw(st.integers(0, max_rows))
    d = draw(st.integers(1, max_dim))
    dtype = draw(st.sampled_from(DTYPES))
    log_scale = draw(st.floats(-6.0, math.log10(MAX_SCALE[dtype])))
    kind = draw(st.sampled_from(["gaussian", "low_rank", "duplicated", "constant"]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    offset = torch.randn(d, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.0, 1.0, 10.0]))
    if kind == "gaussian":
        z = torch.randn(m, d, generator=g, dtype=torch.float64)
    elif kind == "low_rank":
        rank = draw(st.integers(1, max(1, min(d, m) - 1)))
        z = torch.randn(m, rank, generator=g, dtype=torch.float64) @ torch.randn(
            rank, d, generator=g, dtype=torch.float64
        )
    elif kind == "duplicated":
        base = torch.randn(max(1, m // 3), d, generator=g, dtype=torch.float64)
        z = base[torch.randint(0, base.shape[0], (m,), generator=g)]
    else:
        z = torch.zeros(m, d, dtype=torch.float64)
    z = (z + offset) * 10.0**log_scale
    return z.to(dtype), kind


def assert_close(a: float, b: float, rel: float = 1e-7, abs_: float = 1e-7) -> None:
    assert a == pytest.approx(b, rel=rel, abs=abs_)


def resolvable_unnormalised(z: torch.Tensor) -> bool:
    """Whether float64 resolves every direction of ``alpha/m Zc^T Zc`` without normalisation.

    Without normalisation the rounding of values ~1e7 alone moves eigenvalues of the d x d
    matrix by O(1), so the volume of rank-deficient classes is ill-determined by O(1) bits
    in any float64 method; invariances are checked unnormalised only below that.
    """
    return z.numel() == 0 or float(z.double().abs().max()) <= 1e4


@SETTINGS
@given(feature_sets(), st.booleans())
def test_scale_finite_and_non_negative(case, normalize):
    z, _ = case
    value = semantic_scale(z, normalize=normalize)
    assert value.dtype == torch.float64
    assert math.isfinite(float(value)) and float(value) >= 0.0


@SETTINGS
@given(feature_sets(), st.booleans(), st.integers(0, 1000))
def test_invariant_to_sample_order(case, normalize, seed):
    z, _ = case
    normalize = normalize or not resolvable_unnormalised(z)
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))
    expected = float(semantic_scale(z, normalize=normalize))
    assert_close(float(semantic_scale(z[perm], normalize=normalize)), expected)


@SETTINGS
@given(feature_sets(max_dim=24), st.integers(0, 1000))
def test_invariant_to_rotation(case, seed):
    z, _ = case
    z = z.double()  # the rounded values of whatever dtype, rotated exactly in float64
    q, r = torch.linalg.qr(
        torch.randn(z.shape[1], z.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    rotated = z @ (q * torch.sign(torch.diagonal(r)))
    assert_close(float(semantic_scale(rotated)), float(semantic_scale(z)), abs_=1e-6)


@SETTINGS
@given(feature_sets(), st.lists(st.floats(-6.0, 6.0), min_size=24, max_size=24))
def test_normalised_scale_invariant_to_positive_row_rescaling(case, log_factors):
    z, _ = case
    z = z.double()
    factors = torch.tensor([10.0**f for f in log_factors[: z.shape[0]]], dtype=torch.float64)
    rescaled = z * factors[:, None]
    assert_close(float(semantic_scale(rescaled)), float(semantic_scale(z)), abs_=1e-6)


@SETTINGS
@given(st.lists(feature_sets(max_rows=12, max_dim=20), min_size=1, max_size=5), st.booleans())
def test_batched_equals_single_on_any_classes(cases, normalize):
    d = min(z.shape[1] for z, _ in cases)
    sets = [z[:, :d].double() for z, _ in cases]
    features = torch.cat(sets)
    normalize = normalize or not resolvable_unnormalised(features)
    labels = torch.repeat_interleave(torch.arange(len(sets)), torch.tensor([s.shape[0] for s in sets]))
    batched = class_semantic_scales(features, labels, len(sets), normalize=normalize)
    assert bool(torch.isfinite(batched).all()) and bool((batched >= 0).all())
    for c, s in enumerate(sets):
        assert_close(float(batched[c]), float(semantic_scale(s, normalize=normalize)), rel=1e-9, abs_=1e-9)


@st.composite
def scale_vectors(draw):
    num_classes = draw(st.integers(1, 30))
    values = draw(
        st.lists(
            st.one_of(st.just(0.0), st.floats(1e-6, 1e4, allow_nan=False)),
            min_size=num_classes,
            max_size=num_classes,
        )
    )
    counts = draw(
        st.lists(st.integers(0, 10_000), min_size=num_classes, max_size=num_classes).filter(lambda c: sum(c) > 0)
    )
    return torch.tensor(values, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64)


@SETTINGS
@given(scale_vectors(), st.floats(0.0, 8.0), st.floats(0.01, 1.0), st.sampled_from(["mean", "sum", "none"]))
def test_ssb_weights_finite_positive_monotone(data, gamma, floor, normalization):
    scales, counts = data
    w = semantic_scale_weights(scales, gamma=gamma, class_counts=counts, normalization=normalization, floor=floor)
    assert bool(torch.isfinite(w).all()) and bool((w > 0).all())
    order = torch.argsort(scales)
    assert bool((w[order].diff() <= 1e-12 * w.max()).all())  # smaller scale, larger or equal weight
    if normalization == "mean":
        assert float((w * counts).sum() / counts.sum()) == pytest.approx(1.0, rel=1e-9)
    if normalization == "sum":
        assert float(w.sum()) == pytest.approx(scales.numel(), rel=1e-9)


@SETTINGS
@given(scale_vectors(), st.floats(0.0, 0.999999))
def test_count_weights_finite_positive(data, beta):
    _, counts = data
    for w in (inverse_frequency_weights(counts), effective_number_weights(counts, beta=beta)):
        assert bool(torch.isfinite(w).all()) and bool((w > 0).all())
        assert float((w * counts).sum() / counts.sum()) == pytest.approx(1.0, rel=1e-9)


@SETTINGS
@given(scale_vectors(), st.booleans())
def test_summary_is_json_safe(data, with_accuracy):
    scales, counts = data
    accuracy = (scales / (scales.max() + 1.0)) if with_accuracy else None
    json.dumps(imbalance_summary(scales, counts, accuracy), allow_nan=False)
