"""Base losses and the weighted reduction against hand computations (plain Python math, float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_semscale.core.losses import IGNORE_INDEX, BaseLoss, build_base_loss, weighted_reduce

NUM_CLASSES = 4
COUNTS = [100, 30, 10, 2]


def batch(batch_size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch_size, NUM_CLASSES, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    return logits, labels


# ---------------------------------------------------------------- hand computations


def hand_log_probs(row: list[float]) -> list[float]:
    top = max(row)
    log_norm = top + math.log(sum(math.exp(z - top) for z in row))
    return [z - log_norm for z in row]


def hand_ce(row: list[float], label: int, smoothing: float = 0.0) -> float:
    """``(1 - eps) * -log p_y + eps * mean_c(-log p_c)`` (torch's label smoothing)."""
    log_p = hand_log_probs(row)
    return (1 - smoothing) * -log_p[label] + smoothing * -sum(log_p) / len(row)


def hand_focal(row: list[float], label: int, gamma: float, smoothing: float = 0.0) -> float:
    p_true = math.exp(hand_log_probs(row)[label])
    return (1 - p_true) ** gamma * hand_ce(row, label, smoothing)


def hand_ldam(
    row: list[float], label: int, counts: list[int], max_margin: float, scale: float, smoothing: float = 0.0
) -> float:
    raw = [n**-0.25 for n in counts]
    margin = raw[label] * max_margin / max(raw)
    adjusted = [scale * (z - margin if c == label else z) for c, z in enumerate(row)]
    return hand_ce(adjusted, label, smoothing)


def hand_balanced_softmax(row: list[float], label: int, counts: list[int], tau: float, smoothing: float = 0.0) -> float:
    total = sum(counts)
    adjusted = [z + tau * math.log(n / total) for z, n in zip(row, counts)]
    return hand_ce(adjusted, label, smoothing)


HAND = {
    "ce": lambda row, y, eps: hand_ce(row, y, eps),
    "focal": lambda row, y, eps: hand_focal(row, y, 2.0, eps),
    "ldam": lambda row, y, eps: hand_ldam(row, y, COUNTS, 0.5, 1.0, eps),  # the default scale s = 1
    "balanced_softmax": lambda row, y, eps: hand_balanced_softmax(row, y, COUNTS, 1.0, eps),
}


def assert_matches_hand(per_sample: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(per_sample.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("name", list(HAND))
def test_per_sample_loss_matches_hand_computation(name, smoothing):
    loss = build_base_loss(name, class_counts=torch.tensor(COUNTS), label_smoothing=smoothing)
    logits, labels = batch()
    per_sample = loss(logits, labels)
    assert per_sample.dtype == torch.float32 and per_sample.shape == (8,)
    assert_matches_hand(
        per_sample, [HAND[name](row, y, smoothing) for row, y in zip(logits.double().tolist(), labels.tolist())]
    )


def test_non_default_knobs_match_hand_computation():
    logits, labels = batch()
    rows_and_labels = list(zip(logits.double().tolist(), labels.tolist()))
    focal = build_base_loss("focal", focal_gamma=0.5)(logits, labels)
    ldam = build_base_loss("ldam", class_counts=COUNTS, ldam_max_margin=0.3, ldam_scale=5.0)(logits, labels)
    logit_adjusted = build_base_loss("balanced_softmax", class_counts=COUNTS, logit_adjust_tau=0.5)(logits, labels)
    assert_matches_hand(focal, [hand_focal(r, y, 0.5) for r, y in rows_and_labels])
    assert_matches_hand(ldam, [hand_ldam(r, y, COUNTS, 0.3, 5.0) for r, y in rows_and_labels])
    assert_matches_hand(logit_adjusted, [hand_balanced_softmax(r, y, COUNTS, 0.5) for r, y in rows_and_labels])


def test_low_precision_logits_give_float32_losses():
    logits, labels = batch()
    per_sample = build_base_loss("ce")(logits.bfloat16(), labels)
    assert per_sample.dtype == torch.float32
    torch.testing.assert_close(per_sample, F.cross_entropy(logits.bfloat16().float(), labels, reduction="none"))


# ---------------------------------------------------------------- identities


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_focal_with_gamma_zero_is_cross_entropy(smoothing):
    logits, labels = batch()
    focal = build_base_loss("focal", focal_gamma=0.0, label_smoothing=smoothing)(logits, labels)
    ce = build_base_loss("ce", label_smoothing=smoothing)(logits, labels)
    torch.testing.assert_close(focal, ce)


def test_balanced_softmax_with_uniform_counts_is_cross_entropy():
    logits, labels = batch()
    balanced = build_base_loss("balanced_softmax", class_counts=[7] * NUM_CLASSES)(logits, labels)
    torch.testing.assert_close(balanced, F.cross_entropy(logits, labels, reduction="none"))


def test_ldam_margins_are_largest_for_the_rarest_class():
    loss = build_base_loss("ldam", class_counts=[50, 2, 500, 10], ldam_max_margin=0.4)
    margins = loss.margins
    assert int(margins.argmax()) == 1
    assert float(margins.max()) == pytest.approx(0.4)
    assert margins[1] > margins[3] > margins[0] > margins[2]
    assert loss.logit_scale == 1.0  # DEFAULT_LOSS_SETTINGS: one default for the library and SemScaleConfig


# ---------------------------------------------------------------- ignore_index and the reduction


@pytest.mark.parametrize("name", list(HAND))
def test_ignored_positions_give_zero_and_leave_the_normaliser(name):
    loss = build_base_loss(name, class_counts=COUNTS)
    logits, labels = batch()
    labels[[1, 4, 5]] = IGNORE_INDEX
    per_sample = loss(logits, labels)
    assert per_sample[[1, 4, 5]].eq(0).all()
    valid = labels != IGNORE_INDEX
    torch.testing.assert_close(weighted_reduce(per_sample, labels), per_sample[valid].sum() / 5)


def test_weighted_reduce_divides_by_the_number_of_samples_not_the_weight_sum():
    logits, labels = batch()
    labels[2] = IGNORE_INDEX
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    per_sample = build_base_loss("ce")(logits, labels)
    expected = (
        sum(
            float(weights[y]) * float(loss)
            for y, loss in zip(labels.tolist(), per_sample.tolist())
            if y != IGNORE_INDEX
        )
        / 7
    )
    reduced = weighted_reduce(per_sample, labels, weights)
    assert float(reduced) == pytest.approx(expected, rel=1e-6)
    weight_sum_mean = F.cross_entropy(logits, labels, weight=weights, ignore_index=IGNORE_INDEX)
    assert float(reduced) != pytest.approx(float(weight_sum_mean), rel=1e-3)


@pytest.mark.parametrize("weights", [None, torch.tensor([0.5, 1.0, 2.0, 4.0])])
@pytest.mark.parametrize("name", list(HAND))
def test_gradient_accumulation_halves_sum_to_the_full_batch(name, weights):
    loss = build_base_loss(name, class_counts=COUNTS, label_smoothing=0.1)
    logits, labels = batch()
    labels[6] = IGNORE_INDEX  # 7 labelled samples over the two halves
    full = weighted_reduce(loss(logits, labels), labels, weights)
    halves = [
        weighted_reduce(loss(logits[part], labels[part]), labels[part], weights, num_items_in_batch=torch.tensor(7))
        for part in (slice(0, 4), slice(4, 8))
    ]
    torch.testing.assert_close(halves[0] + halves[1], full)
    torch.testing.assert_close(weighted_reduce(loss(logits, labels), labels, weights, num_items_in_batch=7), full)


def test_batch_of_eight_equals_two_halves_with_num_items_eight():
    logits, labels = batch()
    loss = build_base_loss("ce")
    full = weighted_reduce(loss(logits, labels), labels)
    halves = sum(
        weighted_reduce(loss(logits[i : i + 4], labels[i : i + 4]), labels[i : i + 4], num_items_in_batch=8)
        for i in (0, 4)
    )
    torch.testing.assert_close(halves, full)
    torch.testing.assert_close(full, F.cross_entropy(logits, labels))


def test_nan_at_an_ignored_position_does_not_reach_the_loss_or_gradient():
    logits, labels = batch()
    poisoned = build_base_loss("ce")(logits, labels).detach()
    poisoned[3] = float("nan")
    labels[3] = IGNORE_INDEX
    poisoned.requires_grad_()
    reduced = weighted_reduce(poisoned, labels, torch.ones(NUM_CLASSES))
    reduced.backward()
    assert torch.isfinite(reduced) and torch.isfinite(poisoned.grad).all()


def test_micro_batches_without_labels_give_zero_not_nan():
    per_sample = torch.zeros(4)
    labels = torch.full((4,), IGNORE_INDEX)
    assert float(weighted_reduce(per_sample, labels)) == 0.0
    assert float(weighted_reduce(per_sample, labels, num_items_in_batch=0)) == 0.0


# ---------------------------------------------------------------- errors


def test_unknown_loss_name():
    with pytest.raises(ValueError, match="unknown base loss 'cb'.*'balanced_softmax'"):
        build_base_loss("cb")


@pytest.mark.parametrize("name", ["ldam", "balanced_softmax"])
def test_count_based_losses_need_counts(name):
    with pytest.raises(ValueError, match="needs the training class counts.*class_counts="):
        build_base_loss(name)


@pytest.mark.parametrize("counts", [[], [[1, 2]], [3, -1], [2, float("nan")]])
def test_bad_class_counts(counts):
    with pytest.raises(ValueError, match="class_counts must be"):
        build_base_loss("balanced_softmax", class_counts=torch.tensor(counts, dtype=torch.float32))


@pytest.mark.parametrize("smoothing", [-0.1, 1.0, float("nan")])
def test_bad_label_smoothing(smoothing):
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        build_base_loss("ce", label_smoothing=smoothing)


def test_bad_focal_and_ldam_knobs():
    with pytest.raises(ValueError, match="focal_gamma must be >= 0"):
        build_base_loss("focal", focal_gamma=-1.0)
    with pytest.raises(ValueError, match="ldam_max_margin and ldam_scale must be > 0"):
        build_base_loss("ldam", class_counts=COUNTS, ldam_scale=0.0)


def test_counts_for_another_number_of_classes():
    logits, labels = batch()
    for name in ("ldam", "balanced_softmax"):
        with pytest.raises(ValueError, match="for 3 classes but the logits have 4.*Fix"):
            build_base_loss(name, class_counts=[5, 5, 5])(logits, labels)


def test_bad_shapes_and_labels():
    logits, labels = batch()
    loss = BaseLoss()
    with pytest.raises(ValueError, match=r"expected logits \[B, C\] and labels \[B\]"):
        loss(logits, labels[:5])
    labels[0], labels[1] = NUM_CLASSES, -3
    with pytest.raises(ValueError, match=r"labels \[-3, 4\] are outside \[0, 4\).*Fix"):
        loss(logits, labels)
    with pytest.raises(ValueError, match=r"expected per_sample \[B\] and labels \[B\]"):
        weighted_reduce(torch.zeros(8), torch.zeros(7, dtype=torch.long))
