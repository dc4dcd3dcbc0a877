"""Semantic scale of one class and of all classes, against an independent numpy float64 reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hf_semscale.core import scale as scale_module
from hf_semscale.core.scale import (
    MIN_SAMPLES_FOR_SCALE,
    check_finite_features,
    class_semantic_scales,
    classes_without_volume,
    marginal_effect_curves,
    semantic_scale,
)

REL = 1e-9


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_bits(z, normalize: bool = True, alpha: float | None = None, form: str = "dxd") -> float:
    """``1/2 log2 det(I + alpha/m Zc^T Zc)`` by numpy float64 slogdet, in the d x d or the Gram form."""
    z = np.asarray(z, dtype=np.float64)
    if normalize:
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    zc = z - z.mean(axis=0)
    m, d = z.shape
    a = d if alpha is None else alpha
    inner = zc.T @ zc if form == "dxd" else zc @ zc.T
    sign, logdet = np.linalg.slogdet(np.eye(inner.shape[0]) + a / m * inner)
    assert sign == 1.0
    return 0.5 * logdet / math.log(2.0)


def structured_features(m: int, d: int, seed: int, rank: int | None = None, offset: float = 0.5) -> torch.Tensor:
    """``[m, d]`` float64: a shared offset (like ReLU features) plus a Gaussian of the given rank."""
    g = torch.Generator().manual_seed(seed)
    r = d if rank is None else rank
    basis = torch.randn(r, d, generator=g, dtype=torch.float64)
    return (
        offset * torch.randn(d, generator=g, dtype=torch.float64)
        + torch.randn(m, r, generator=g, dtype=torch.float64) @ basis
    )


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@pytest.mark.parametrize(
    "m,d", [(2, 3), (7, 64), (63, 64), (64, 64), (65, 64), (300, 32), (40, 256), (300, 400), (400, 300)]
)
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_numpy_reference(m, d, normalize):
    z = structured_features(m, d, seed=m * 1000 + d)
    ours = semantic_scale(z, normalize=normalize)
    assert ours.dtype == torch.float64 and ours.ndim == 0
    assert float(ours) == pytest.approx(reference_bits(z.numpy(), normalize), rel=REL)


@pytest.mark.parametrize("alpha", [0.5, 3.0, 1000.0])
def test_alpha_matches_reference(alpha):
    z = structured_features(20, 16, seed=3)
    assert float(semantic_scale(z, alpha=alpha)) == pytest.approx(reference_bits(z.numpy(), alpha=alpha), rel=REL)
    assert float(semantic_scale(z, alpha=None)) == pytest.approx(float(semantic_scale(z, alpha=16)), rel=1e-14)


@pytest.mark.parametrize("m,d", [(5, 40), (40, 5), (12, 12)])
def test_gram_form_equals_dxd_form(m, d):
    z = structured_features(m, d, seed=11).numpy()
    assert reference_bits(z, form="gram") == pytest.approx(reference_bits(z, form="dxd"), rel=1e-11)
    # ours switches form at m = d: both sides of the switch agree with the d x d reference
    assert float(semantic_scale(torch.from_numpy(z))) == pytest.approx(reference_bits(z), rel=REL)


def test_invariant_to_sample_order_and_rotation():
    z = structured_features(50, 24, seed=5)
    base = float(semantic_scale(z))
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    assert float(semantic_scale(z[perm])) == pytest.approx(base, rel=1e-12)
    for normalize in (True, False):
        rotated = z @ random_orthogonal(24, seed=2)
        assert float(semantic_scale(rotated, normalize=normalize)) == pytest.approx(
            float(semantic_scale(z, normalize=normalize)), rel=1e-11
        )


def test_two_samples_closed_form():
    # m = 2: Zc = +-(z1 - z2)/2, so S = 1/2 log2(1 + alpha |z1 - z2|^2 / 4) exactly.
    for d in (1, 3, 4096):
        z = structured_features(2, d, seed=d, rank=1 if d > 1000 else None)
        u = z / z.norm(dim=1, keepdim=True)
        expected = 0.5 * math.log2(1 + d * float((u[0] - u[1]).pow(2).sum()) / 4)
        assert float(semantic_scale(z)) == pytest.approx(expected, rel=REL)


def test_one_dimensional_features_closed_form():
    # d = 1: S = 1/2 log2(1 + alpha * variance); normalised rows are the signs.
    x = torch.tensor([[2.0], [-0.5], [3.0], [1.0], [-7.0]], dtype=torch.float64)
    signs = torch.sign(x)
    for normalize, values in ((True, signs), (False, x)):
        variance = float(values.var(correction=0))
        assert float(semantic_scale(x, normalize=normalize)) == pytest.approx(0.5 * math.log2(1 + variance), rel=REL)


def test_high_dimension_few_samples_uses_small_form():
    z = structured_features(6, 4096, seed=9, rank=8)
    assert float(semantic_scale(z)) == pytest.approx(reference_bits(z.numpy(), form="gram"), rel=REL)


@pytest.mark.parametrize("m", [0, 1])
def test_fewer_than_two_samples_give_zero(m):
    assert MIN_SAMPLES_FOR_SCALE == 2
    out = semantic_scale(torch.randn(m, 8))
    assert out.dtype == torch.float64 and float(out) == 0.0


def test_identical_rows_have_no_volume():
    z = torch.randn(1, 16, dtype=torch.float64).repeat(9, 1) * 1e3
    for normalize in (True, False):
        value = float(semantic_scale(z, normalize=normalize))
        assert 0.0 <= value < 1e-9


def test_zero_feature_dimension():
    assert float(semantic_scale(torch.zeros(5, 0))) == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_input_is_computed_in_float64(dtype):
    z = structured_features(30, 48, seed=4).to(dtype)
    ours = semantic_scale(z)
    assert ours.dtype == torch.float64
    # exactly the float64 result on the same (rounded) numbers, and close to the unrounded data
    assert float(ours) == pytest.approx(reference_bits(z.double().numpy()), rel=REL)
    assert float(ours) == pytest.approx(float(semantic_scale(structured_features(30, 48, seed=4))), rel=2e-2)


def test_input_is_not_modified():
    z = structured_features(10, 8, seed=0)
    copy = z.clone()
    semantic_scale(z)
    class_semantic_scales(z, torch.zeros(10, dtype=torch.long), 1)
    assert torch.equal(z, copy)


def _mixed_classes(seed: int, d: int = 32):
    """Classes of sizes 0, 1, 2, below d, at d, above d, in shuffled order."""
    sizes = [0, 1, 2, 3, 5, 17, 31, 32, 33, 40, 70, 12]
    feats = torch.cat([structured_features(n, d, seed=seed + c) for c, n in enumerate(sizes)])
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return feats[perm].float(), labels[perm], sizes


def test_batched_equals_per_class():
    feats, labels, sizes = _mixed_classes(seed=20)
    batched = class_semantic_scales(feats, labels, len(sizes))
    assert batched.shape == (len(sizes),) and batched.dtype == torch.float64
    for c, n in enumerate(sizes):
        single = float(semantic_scale(feats[labels == c]))
        assert float(batched[c]) == pytest.approx(single, rel=1e-11, abs=0)
        if n >= 2:
            assert float(batched[c]) == pytest.approx(reference_bits(feats[labels == c].double().numpy()), rel=REL)
        else:
            assert float(batched[c]) == 0.0
    assert classes_without_volume(labels, len(sizes)) == [0, 1]


def test_batched_with_tiny_chunks_and_panels(monkeypatch):
    feats, labels, sizes = _mixed_classes(seed=21)
    expected = class_semantic_scales(feats, labels, len(sizes))
    monkeypatch.setattr(scale_module, "_CHUNK_ELEMENTS_CPU", 1)  # one class per chunk
    monkeypatch.setattr(scale_module, "_GRAM_PANEL_ROWS", 3)  # Gram matrices built in row panels
    assert torch.allclose(class_semantic_scales(feats, labels, len(sizes)), expected, rtol=1e-12, atol=0)


def test_classes_subset():
    feats, labels, sizes = _mixed_classes(seed=22)
    full = class_semantic_scales(feats, labels, len(sizes))
    part = class_semantic_scales(feats, labels, len(sizes), classes=[2, 7, 9, 1])
    for c in range(len(sizes)):
        # other classes in a chunk may change its padding, hence the rounding: not bit-identical
        expected = float(full[c]) if c in (2, 7, 9) else 0.0
        assert float(part[c]) == pytest.approx(expected, rel=1e-12, abs=0)


def test_alpha_is_fixed_across_classes():
    feats, labels, sizes = _mixed_classes(seed=23)
    ours = class_semantic_scales(feats, labels, len(sizes), alpha=5.0, normalize=False)
    for c in (3, 8, 10):
        expected = reference_bits(feats[labels == c].double().numpy(), normalize=False, alpha=5.0)
        assert float(ours[c]) == pytest.approx(expected, rel=REL)


def test_nonfinite_features_rejected_naming_class_and_count():
    feats, labels, _ = _mixed_classes(seed=24)
    rows3 = torch.nonzero(labels == 3).flatten()
    rows9 = torch.nonzero(labels == 9).flatten()
    feats[rows3[0], 1] = float("nan")
    feats[rows3[2], 0] = float("inf")
    feats[rows9[4], 5] = -float("inf")
    with pytest.raises(ValueError) as err:
        class_semantic_scales(feats, labels, 12)
    message = str(err.value)
    assert "class 3: 2 row(s)" in message and "class 9: 1 row(s)" in message and "Fix" in message
    with pytest.raises(ValueError, match="1 of 4 feature rows"):
        semantic_scale(torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [0.0, 1.0], [2.0, 2.0]]))
    with pytest.raises(ValueError, match="class 3: 2 row"):
        marginal_effect_curves(feats, labels, 12)


def test_finite_check_is_exact_for_huge_finite_rows():
    # row sums overflow float32 but every value is finite: no error
    big = torch.full((3, 4), 3e38, dtype=torch.float32)
    check_finite_features(big, torch.tensor([0, 0, 1]))
    big[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"class 0: 1 row\(s\)"):
        check_finite_features(big, torch.tensor([0, 0, 1]))


def test_huge_unnormalised_rank_deficient_features_stay_finite():
    z = structured_features(30, 64, seed=3, rank=3) * 1e6
    z = torch.cat([z, z[:10]])  # duplicated rows too
    value = float(semantic_scale(z, normalize=False))
    assert math.isfinite(value) and value > 0


def test_indefinite_rounding_falls_back_to_clamped_eigenvalues():
    # Cholesky rejects eigenvalues (3, -1); the fallback clamps -1 to the exact bound 1.
    mats = torch.tensor([[[1.0, 2.0], [2.0, 1.0]], [[2.0, 0.0], [0.0, 8.0]]], dtype=torch.float64)
    out = scale_module._half_log2det(mats)
    assert out.tolist() == pytest.approx([0.5 * math.log2(3.0), 0.5 * math.log2(16.0)], rel=1e-14)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: semantic_scale(torch.randn(4)), r"\[m, d\]"),
        (lambda: semantic_scale(torch.randn(4, 3), alpha=0), "alpha must be"),
        (lambda: semantic_scale(torch.randn(4, 3), alpha=float("nan")), "alpha must be"),
        (
            lambda: class_semantic_scales(torch.randn(4, 3), torch.tensor([0, 1, 2, 5]), 3),
            r"Fix: pass the right num_classes",
        ),
        (lambda: class_semantic_scales(torch.randn(4, 3), torch.tensor([0, 1, 2]), 3), r"labels \[N\]"),
        (lambda: class_semantic_scales(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 0), "num_classes"),
        (
            lambda: class_semantic_scales(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 2, classes=[2]),
            "classes must be",
        ),
        (lambda: marginal_effect_curves(torch.randn(4, 3), torch.arange(4), 4), "at least 2 samples"),
        (lambda: marginal_effect_curves(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 1, draws=0), "draws"),
        (lambda: marginal_effect_curves(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 1, sizes=[0, 2]), "sizes"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: semantic_scale(torch.ones(4, 3, dtype=torch.long)), "floating point"),
        (lambda: semantic_scale(np.ones((4, 3))), "torch.Tensor"),
        (lambda: class_semantic_scales(torch.randn(4, 3), torch.zeros(4), 2), "integer class ids"),
    ],
)
def test_bad_types_raise_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def _low_rank_class(n: int = 256, d: int = 32, rank: int = 4, seed: int = 0) -> torch.Tensor:
    return structured_features(n, d, seed=seed, rank=rank, offset=3.0)


def test_marginal_effect_rises_then_saturates():
    z = _low_rank_class()
    sizes = [2, 4, 8, 16, 32, 64, 128, 256]
    curve = marginal_effect_curves(z, torch.zeros(256, dtype=torch.long), 1, sizes=sizes, draws=8, seed=1)
    mean = curve.mean[0]
    steps = mean.diff()
    assert bool((mean > 0).all())
    assert float(steps[0]) > 0.5  # the first samples add a lot of volume
    assert bool((steps[:4] > 0).all())  # rising
    assert bool((steps > -0.05 * steps[0]).all())  # never falls by more than noise
    assert float(steps[-2:].abs().max()) < 0.1 * float(steps[0])  # saturated
    # the whole class is the last point: every draw is the class itself
    assert float(mean[-1]) == pytest.approx(float(semantic_scale(z)), rel=1e-12)
    assert float(curve.std[0, -1]) == 0.0


def test_marginal_effect_shapes_nan_and_json():
    feats, labels, sizes = _mixed_classes(seed=30)
    curve = marginal_effect_curves(feats, labels, len(sizes), draws=3, seed=7)
    counts = [int((labels == c).sum()) for c in range(len(sizes))]
    assert curve.counts == counts
    assert curve.sizes[0] == 2 and curve.sizes[-1] == max(counts)
    assert curve.sizes == sorted(set(curve.sizes))
    ratios = np.diff(np.log(curve.sizes))
    assert ratios.max() < 3 * ratios.min() + 0.5  # roughly log-spaced
    assert curve.mean.shape == curve.std.shape == (len(sizes), len(curve.sizes))
    for c, n in enumerate(counts):
        for j, m in enumerate(curve.sizes):
            assert math.isnan(curve.mean[c, j]) == (m > n)
            if m <= n:
                assert curve.mean[c, j] >= 0 and curve.std[c, j] >= 0
    data = curve.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["mean"][0] == [None] * len(curve.sizes)  # class 0 has no samples
    assert data["alpha"] == 32.0 and data["draws"] == 3 and data["seed"] == 7


def test_marginal_effect_is_seeded_and_alpha_held_at_d():
    z = _low_rank_class(n=60, seed=2)
    labels = torch.zeros(60, dtype=torch.long)
    first = marginal_effect_curves(z, labels, 1, sizes=[3, 10, 30], draws=4, seed=5)
    again = marginal_effect_curves(z, labels, 1, sizes=[3, 10, 30], draws=4, seed=5)
    other = marginal_effect_curves(z, labels, 1, sizes=[3, 10, 30], draws=4, seed=6)
    explicit_alpha = marginal_effect_curves(z, labels, 1, sizes=[3, 10, 30], draws=4, seed=5, alpha=32)
    assert torch.equal(first.mean, again.mean) and torch.equal(first.std, again.std)
    assert not torch.equal(first.mean, other.mean)
    assert torch.allclose(first.mean, explicit_alpha.mean, rtol=1e-14)


def test_marginal_effect_single_draw_and_small_sizes():
    z = _low_rank_class(n=20, seed=3)
    curve = marginal_effect_curves(z, torch.zeros(20, dtype=torch.long), 1, sizes=[1, 5, 5, 2], draws=1)
    assert curve.sizes == [1, 2, 5]
    assert float(curve.mean[0, 0]) == 0.0
    assert curve.std.tolist() == [[0.0, 0.0, 0.0]]


def test_marginal_effect_subset_scale_matches_semantic_scale():
    # with one draw and size m, the subset is the first m of a seeded permutation
    z = _low_rank_class(n=15, seed=4)
    curve = marginal_effect_curves(z, torch.zeros(15, dtype=torch.long), 1, sizes=[6], draws=1, seed=9)
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(9))
    assert float(curve.mean[0, 0]) == pytest.approx(float(semantic_scale(z[perm[:6]])), rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    feats, labels, sizes = _mixed_classes(seed=40, d=96)
    cpu = class_semantic_scales(feats, labels, len(sizes))
    gpu = class_semantic_scales(feats.cuda(), labels.cuda(), len(sizes))
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-10, atol=0)
    curve_cpu = marginal_effect_curves(feats, labels, len(sizes), draws=2)
    curve_gpu = marginal_effect_curves(feats.cuda(), labels.cuda(), len(sizes), draws=2)
    assert torch.allclose(curve_cpu.mean, curve_gpu.mean, rtol=1e-10, equal_nan=True)
