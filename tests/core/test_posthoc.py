"""Post-hoc logit adjustment (Menon et al. 2021): the formula, tau on validation, and the baked head."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hf_semscale.core.posthoc import adjust_logits, bake_logit_adjustment, choose_tau, log_prior
from hf_semscale.modeling import MLPClassifierConfig, MLPForClassification, bake_posthoc_adjustment


def test_adjust_logits_subtracts_tau_log_prior():
    counts = [60, 30, 10]
    logits = torch.zeros(2, 3)
    out = adjust_logits(logits, counts, tau=1.0)
    expected = [-math.log(n / 100) for n in counts]
    assert torch.allclose(out[0], torch.tensor(expected, dtype=torch.float32))
    assert torch.equal(adjust_logits(logits, counts, tau=0.0), logits)


def test_absent_class_counts_as_one_sample_and_bad_counts_are_refused():
    prior = log_prior([99, 0])
    assert torch.isfinite(prior).all() and prior[1] == pytest.approx(math.log(1 / 100))
    with pytest.raises(ValueError, match="non-negative"):
        log_prior([5, -1])
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        adjust_logits(torch.zeros(4, 2), [1, 2, 3])


def test_choose_tau_recovers_the_prior_shift_and_prefers_the_smaller_tie():
    # Logits of a model biased by exactly log prior: the balanced scores are recovered at tau = 1.
    torch.manual_seed(0)
    counts = [500, 50, 5]
    labels = torch.arange(3).repeat_interleave(40)
    clean = torch.nn.functional.one_hot(labels, 3).float() * 1.0 + 0.4 * torch.randn(120, 3)
    biased = clean + log_prior(counts).float()
    tau, scores = choose_tau(biased, labels, counts, taus=(0.0, 0.5, 1.0, 1.5))
    assert tau == 1.0 and scores[2] > scores[0]
    # every tau ties on perfectly separated logits: the first (no adjustment) wins
    separated = torch.nn.functional.one_hot(labels, 3).float() * 100
    assert choose_tau(separated, labels, counts, taus=(0.0, 1.0))[0] == 0.0


def test_baked_head_predicts_adjusted_logits_after_save_and_reload(tmp_path):
    torch.manual_seed(0)
    counts = [40, 8, 2]
    model = MLPForClassification(MLPClassifierConfig(input_dim=5, hidden_dims=(6,), num_labels=3)).eval()
    x = torch.randn(7, 5)
    with torch.no_grad():
        expected = adjust_logits(model(pixel_values=x).logits, counts, 0.75)
    assert bake_posthoc_adjustment(model, counts, 0.75) == "classifier"
    model.save_pretrained(tmp_path)
    again = MLPForClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(again(pixel_values=x).logits, expected, atol=1e-6)
    assert again.config.posthoc_logit_adjustment == {"tau": 0.75, "class_counts": counts}


def test_bake_gives_a_bias_to_a_head_without_one_and_refuses_other_heads():
    head = nn.Linear(4, 2, bias=False)
    bake_logit_adjustment(head, [3, 1], 1.0)
    assert torch.allclose(head.bias, -log_prior([3, 1]).float())
    with pytest.raises(TypeError, match="adjust_logits"):
        bake_logit_adjustment(nn.Conv1d(1, 2, 1), [3, 1], 1.0)
    with pytest.raises(ValueError, match="3 classes"):
        bake_logit_adjustment(nn.Linear(4, 2), [3, 1, 1], 1.0)
