"""The selection: its rule, its queue (a selection killed with SIGKILL resumes with only the unfinished runs and the
same table), its report, and the clear errors of bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import selection_worker as worker

from hf_semscale.select.candidates import GridSpec, build_candidates
from hf_semscale.select.report import config_kwargs, write_selection
from hf_semscale.select.runs import Job, RunStore
from hf_semscale.select.selection import (
    RunEstimate,
    SelectionError,
    SelectionSettings,
    _plan,
    _unfinished_waves,
    check_class_counts,
    choose_winner,
    estimate_seconds,
    fill_budget,
    wall_seconds,
)

SUPPORT = Path(__file__).resolve().parents[1] / "support"


def _row(method, mean, std, pool=False):
    return {
        "method": method,
        "uses_pool": pool,
        "knobs": {},
        "config": {"semscale_weighting": "none", "semscale_loss": "ce"},
        "validation_balanced_accuracy_mean": mean,
        "validation_balanced_accuracy_std": std,
    }


def test_rule_prefers_the_best_unless_a_simpler_candidate_is_within_one_seed_std():
    cands = {c.name: c for c in build_candidates(["ce", "pow_bs_tuned", "dsb_balanced_softmax"], epochs=10)}
    close = [_row("ce", 0.80, 0.01), _row("pow_bs_tuned", 0.852, 0.01), _row("dsb_balanced_softmax", 0.855, 0.005)]
    winner, rule = choose_winner(close, cands)
    assert winner == "pow_bs_tuned" and "simplest" in rule  # 0.852 >= 0.855 - 0.005: no pool wins
    apart = [_row("ce", 0.80, 0.01), _row("pow_bs_tuned", 0.84, 0.01), _row("dsb_balanced_softmax", 0.855, 0.005)]
    assert choose_winner(apart, cands)[0] == "dsb_balanced_softmax"


def test_budget_plan_keeps_whole_candidates_and_refuses_a_budget_nothing_fits(tmp_path):
    cands = build_candidates(["ce", "dsb_ce"], epochs=10)  # ce: 1 + 2 runs; dsb_ce: 9 grid points + 2 runs
    store, seeds = RunStore(tmp_path), (0, 1, 2)

    def plan(run_s: dict[str, float], settings: SelectionSettings):
        seconds = lambda cand: run_s[cand.name]
        waves = lambda kept: _unfinished_waves(kept, seeds, 10, GridSpec(), store, seconds)
        return _plan(cands, lambda kept: wall_seconds(waves(kept), settings.parallel_runs), seconds, seeds, settings)

    kept, skipped = plan({"ce": 10.0, "dsb_ce": 12.0}, SelectionSettings(workers=1, budget_min=1.0))
    assert [c.name for c in kept] == ["ce"] and skipped == ["dsb_ce"]
    with pytest.raises(SelectionError, match="nothing fits"):
        plan({"ce": 100.0, "dsb_ce": 120.0}, SelectionSettings(workers=1, budget_min=0.5))
    # runs on disk cost nothing: with dsb_ce's grid done (its first point best), only its 2 finals are left
    for i, point in enumerate(cands[1].points):
        store.save(Job.of(point, 0), {"validation": {"balanced_accuracy": 0.9 - i / 100}}, {})
    waves = _unfinished_waves(cands, seeds, 10, GridSpec(), store, lambda cand: 1.0)
    assert waves == [[1.0], [1.0] * 4]  # ce's one tuning run; 2 finals each
    store.save(Job.of(cands[1].points[0], 1), {"validation": {"balanced_accuracy": 0.5}}, {})
    assert _unfinished_waves(cands, seeds, 10, GridSpec(), store, lambda cand: 1.0)[1] == [1.0] * 3
    kept, _ = plan({"ce": 10.0, "dsb_ce": 12.0}, SelectionSettings(workers=1, budget_min=1.0))
    assert [c.name for c in kept] == ["ce", "dsb_ce"]  # 10 + 2 x 10 + 12 = 42 s


def test_wall_seconds_runs_waves_one_after_another_on_the_first_free_worker():
    assert wall_seconds([[10.0] * 4], workers=2) == 20.0
    assert wall_seconds([[10.0] * 5], workers=2) == 30.0
    assert wall_seconds([[30.0, 10.0, 10.0, 10.0]], workers=2) == 30.0  # the short ones share the other worker
    assert wall_seconds([[10.0, 10.0, 10.0], [5.0]], workers=2) == 25.0  # the second wave waits for the first
    assert wall_seconds([[], [5.0]], workers=3) == 5.0 and wall_seconds([], workers=1) == 0.0
    with pytest.raises(ValueError, match="workers must be at least 1"):
        wall_seconds([[1.0]], workers=0)


@pytest.mark.parametrize(
    ("counts", "message"), [([10, 0, 0], "2 classes|nothing to balance"), ([1, 1, 1, 0], "at most one")]
)
def test_data_no_method_can_be_validated_on_is_refused(counts, message):
    with pytest.raises(SelectionError, match=message):
        check_class_counts(counts, [str(c) for c in range(len(counts))])


def test_fill_budget_skips_what_does_not_fit_and_goes_on():
    kept, skipped = fill_budget([5, 9, 3, 2], lambda kept: float(sum(kept)), budget_s=10.0)
    assert kept == [5, 3, 2] and skipped == [9]
    assert fill_budget([11], lambda kept: float(sum(kept)), budget_s=10.0) == ([], [11])


class SleepSchedule:
    """Runs that sleep ``fixed_s + step_s * steps``; a process's first run sleeps ``startup_s`` more (a CUDA
    context). Each run's pid goes to ``log_dir``."""

    first_in_process = True

    def __init__(self, log_dir: Path, fixed_s=0.05, step_s=0.02, startup_s=0.5):
        self.log_dir, self.fixed_s, self.step_s, self.startup_s = log_dir, fixed_s, step_s, startup_s
        self.feature_dim = 8

    def class_counts(self):
        return [20, 5]

    def train(self, overrides, seed, max_steps=None):
        startup = self.startup_s if SleepSchedule.first_in_process else 0.0
        SleepSchedule.first_in_process = False
        time.sleep(startup + self.fixed_s + self.step_s * max_steps)
        with open(self.log_dir / f"{os.getpid()}.txt", "a") as log:
            log.write(f"{max_steps}\n")
        return {}, {}


def test_estimate_seconds_leaves_the_warm_up_out_and_times_workers_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(SleepSchedule, "first_in_process", True)
    estimate = estimate_seconds(SleepSchedule(tmp_path), probe_steps=(2, 2, 12))
    assert estimate.step_s == pytest.approx(0.02, abs=0.01) and estimate.fixed_s < 0.3  # the 0.5 s start-up left out
    (tmp_path / "w2").mkdir()
    estimate = estimate_seconds(SleepSchedule(tmp_path / "w2"), probe_steps=(1, 2, 12), workers=2)
    logs = [p.read_text().split() for p in (tmp_path / "w2").glob("*.txt")]
    assert logs == [["1", "2", "12"]] * 2 and os.getpid() not in [int(p.stem) for p in (tmp_path / "w2").glob("*")]
    assert estimate.step_s == pytest.approx(0.02, abs=0.01) and estimate.measure_s > 0
    with pytest.raises(SelectionError, match="0 < short < long"):
        estimate_seconds(SleepSchedule(tmp_path), probe_steps=(4, 4))


def test_a_changed_schedule_never_reuses_finished_runs(tmp_path):
    from hf_semscale.select.frozen import HeadSchedule
    from hf_semscale.select.runs import schedule_fingerprint

    base = HeadSchedule(str(tmp_path / "f.npz"), ["a", "b"], epochs=2.0)
    assert schedule_fingerprint(base) == schedule_fingerprint(
        HeadSchedule(str(tmp_path / "f.npz"), ["a", "b"], epochs=2.0)
    )
    for changed in (
        HeadSchedule(str(tmp_path / "f.npz"), ["a", "b"], epochs=3.0),
        HeadSchedule(str(tmp_path / "g.npz"), ["a", "b"], epochs=2.0),  # other data / encoder: another features file
        HeadSchedule(str(tmp_path / "f.npz"), ["a", "b"], epochs=2.0, extra_args={"semscale_update_interval": 5}),
    ):
        assert schedule_fingerprint(changed) != schedule_fingerprint(base)


def test_run_estimate_adds_the_pool_re_measurements():
    estimate = RunEstimate(fixed_s=2.0, step_s=0.01, measure_s=0.5)
    assert estimate.seconds(1000, uses_pool=False) == pytest.approx(12.0)
    assert estimate.seconds(1000, uses_pool=True, start=0.4, update_interval=20) == pytest.approx(12.0 + 30 * 0.5)


def test_bad_settings_are_refused():
    with pytest.raises(SelectionError, match="seeds"):
        SelectionSettings(seeds=(0, 0))
    with pytest.raises(SelectionError, match="budget_min"):
        SelectionSettings(budget_min=0)


def _finished_runs(out: Path) -> int:
    """Run records in ``out/runs`` (not the hidden temporary files of a write in progress or killed)."""
    return sum(not p.name.startswith(".") for p in (out / "runs").glob("*/*.json"))


def _run_worker(features: Path, out: Path, kill_after_runs: int | None = None) -> dict | None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SUPPORT), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, str(SUPPORT / "selection_worker.py"), str(features), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    if kill_after_runs is None:
        stdout, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0
        return json.loads(stdout.strip().splitlines()[-1])
    deadline = time.time() + 600
    while _finished_runs(out) < kill_after_runs:
        assert proc.poll() is None and time.time() < deadline, "the selection ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return None


@pytest.mark.slow
def test_selection_killed_with_sigkill_resumes_with_only_unfinished_runs_and_the_same_table(tmp_path):
    features = tmp_path / "features.npz"
    worker.make_features(str(features))
    whole = _run_worker(features, tmp_path / "whole")
    assert whole["runs_total"] == whole["runs_executed"] == 7  # ce, pow x2, dsb at seed 0; 3 finals at seed 1

    _run_worker(features, tmp_path / "killed", kill_after_runs=3)
    finished = _finished_runs(tmp_path / "killed")
    assert 3 <= finished < 7
    resumed = _run_worker(features, tmp_path / "killed")
    assert resumed["runs_executed"] == 7 - finished
    strip = lambda r: [{k: v for k, v in row.items() if k != "grid"} for row in r["candidates"]]
    assert strip(resumed) == strip(whole)
    assert (resumed["chosen"], resumed["rule"]) == (whole["chosen"], whole["rule"])
    posthoc = next(r for r in whole["candidates"] if r["method"] == "ce_posthoc_la")
    assert posthoc["knobs"]["tau"] in SelectionSettings().taus

    result = {**whole, "regime": {"name": "long_tail_below_dim", "summary": "s", "feature_dim": 8}}
    paths = write_selection(tmp_path / "report", result, {"data_dir": "x", "num_train_epochs": 2})
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    markdown = (tmp_path / "report" / "selection.md").read_text()
    assert whole["chosen"] in markdown and whole["machine"]["cpu_count"] == os.cpu_count()
    assert f"7 of 7 runs trained by this call in {whole['wall_time_s'] / 60:.1f} min on " in markdown
    write_selection(tmp_path / "resumed", {**resumed, "regime": result["regime"]}, {"data_dir": "x"})
    assert f"; {finished} were on disk." in (tmp_path / "resumed" / "selection.md").read_text()
    recommended = (tmp_path / "report" / "recommended.yaml").read_text()
    for key, value in config_kwargs(whole).items():
        assert f"{key}: {value}" in recommended
