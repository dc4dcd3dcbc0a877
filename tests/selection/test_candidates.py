"""Candidates and their grids: the same start-of-re-weighting grid for count and scale weights."""

from __future__ import annotations

import pytest

from hf_semscale.select.candidates import DEFAULT_CANDIDATES, GridSpec, build_candidates


def test_count_and_scale_weights_start_at_the_same_step():
    grid = GridSpec(starts=(0.2, 0.6), gammas=(1.0, 4.0), powers=(0.5,))
    by_name = {c.name: c for c in build_candidates(["pow_ce_tuned", "dsb_ce", "ce"], epochs=10, grid=grid)}
    # a pool method's warm-up ends one epoch (its fill stage, 1/10 of training) before the weights start
    assert sorted({p["semscale_warmup_ratio"] for p in by_name["dsb_ce"].points}) == [0.1, 0.5]
    assert sorted({p["semscale_warmup_ratio"] for p in by_name["pow_ce_tuned"].points}) == [0.2, 0.6]
    assert len(by_name["dsb_ce"].points) == 4 and {p["semscale_gamma"] for p in by_name["dsb_ce"].points} == {1, 4}
    assert by_name["ce"].points == ({"semscale_weighting": "none", "semscale_loss": "ce"},)
    assert by_name["dsb_ce"].complexity > by_name["pow_ce_tuned"].complexity > by_name["ce"].complexity


def test_posthoc_candidate_trains_as_ce():
    (posthoc,) = build_candidates(["ce_posthoc_la"], epochs=5)
    assert posthoc.trains_as == "ce" and not posthoc.uses_pool
    assert set(DEFAULT_CANDIDATES) >= {"ce", "ce_posthoc_la", "dsb_ce", "pow_bs_tuned"}


@pytest.mark.parametrize(
    ("names", "grid", "message"),
    [
        (["ce", "nope"], None, "unknown candidate methods"),
        ([], None, "no candidate"),
        (["ce", "ce"], None, "repeat"),
        (["dsb_ce"], "bad", "starts"),
    ],
)
def test_bad_candidates_are_refused(names, grid, message):
    with pytest.raises(ValueError, match=message):
        build_candidates(names, 10, GridSpec(starts=(1.5,)) if grid else None)
