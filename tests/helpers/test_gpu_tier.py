"""The GPU tier's device session: the schedule simulation and budget of ``benchmarks/tier_budget.py`` (on the
library's timing and budget fill), and the data kit of ``benchmarks/gpu_kit.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import gpu_kit, tiers  # noqa: E402
from benchmarks import long_tail as lt  # noqa: E402
from benchmarks import tier_budget as tb  # noqa: E402
from recipes.common import RESULTS_FILENAME  # noqa: E402


def _finish(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILENAME).write_text(json.dumps({"test": {"balanced_accuracy": 0.5}}))


# --------------------------------------------------------------------------- the schedule simulation


def test_simulated_pool_runs_workers_at_once_and_skips_finished_runs():
    assert tb.simulate_wall([[], [False] * 4, []], run_s=10.0, workers=2) == (20.0, 4)
    assert tb.simulate_wall([[], [False] * 5, []], run_s=10.0, workers=2) == (30.0, 5)
    assert tb.simulate_wall([[], [True, False, False], []], run_s=10.0, workers=2) == (10.0, 2)
    assert tb.simulate_wall([[], [True, True], []], run_s=10.0, workers=2) == (0.0, 0)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        tb.simulate_wall([[False]], run_s=1.0, workers=0)


def test_simulated_pool_keeps_run_tiers_waves():
    # a text setting's first run goes alone (it fills the encoder cache), then the rest start
    assert tb.simulate_wall([[False], [False, False], []], 10.0, 3) == (20.0, 3)
    assert tb.simulate_wall([[], [False, False, False], []], 10.0, 3) == (10.0, 3)
    # the tuned methods' final runs wait for every grid and untuned run, even with workers free
    assert tb.simulate_wall([[], [False, False], [False]], 10.0, 4) == (20.0, 3)
    assert tb.simulate_wall([[], [False] * 4, [False]], 10.0, 2) == (30.0, 5)


def test_planned_runs_follow_the_tier_and_what_is_on_disk(tmp_path):
    gpu = lt.tier_settings("gpu")[0]
    waves = tb.planned_runs(tmp_path, "gpu", gpu, gpu["methods"], lt.DEFAULT_SEEDS)
    runs = [f for flags in waves for f in flags]
    tuned = lt.tuned_methods(gpu)
    tuning = sum(len(lt.method_grid(gpu, m)) for m in tuned)
    assert len(runs) == len(gpu["methods"]) * len(lt.DEFAULT_SEEDS) + tuning and not any(runs)
    assert waves[0] == [] and len(waves[2]) == len(tuned) * len(lt.DEFAULT_SEEDS)  # image data: no cache to fill
    _finish(lt.run_dir(tmp_path, "gpu", gpu, "ce", 0))
    assert tb.planned_runs(tmp_path, "gpu", gpu, ["ce"], [0, 1]) == [[], [True, False], []]
    banking = next(s for s in lt.tier_settings("cpu") if s["recipe"] == "train_text")
    assert tb.planned_runs(tmp_path, "cpu", banking, ["ce"], [0, 1]) == [[False], [False], []]


def test_budget_takes_methods_at_seed_0_in_priority_order_then_more_seeds(tmp_path):
    gpu = lt.tier_settings("gpu")[0]
    assert set(tb.BUDGET_PRIORITY) == set(gpu["methods"])
    untuned = [m for m in tb.BUDGET_PRIORITY if m not in lt.tuned_methods(gpu)]
    # one round of 100 s on 8 workers: the untuned methods fit; a tuned one needs its grid first, then its final
    fit = tb.fit_budget(tmp_path, "gpu", gpu, run_s=100.0, workers=8, budget_s=150.0)
    assert fit == {"methods": untuned, "seeds": [0], "wall_s": 100.0, "runs": len(untuned)}
    # two rounds: DSB-CE (3 grid runs, then its final) joins in priority order; seed 1 no longer fits
    fit = tb.fit_budget(tmp_path, "gpu", gpu, run_s=100.0, workers=8, budget_s=250.0)
    assert fit["methods"][:3] == ["ce", "cb_ce", "dsb_ce"] and fit["seeds"] == [0] and fit["wall_s"] == 200.0
    assert tb.fit_budget(tmp_path, "gpu", gpu, run_s=100.0, workers=8, budget_s=50.0)["methods"] == []
    everything = tb.fit_budget(tmp_path, "gpu", gpu, run_s=1.0, workers=8, budget_s=1e6)
    assert everything["seeds"] == lt.DEFAULT_SEEDS and set(everything["methods"]) == set(gpu["methods"])
    assert everything["runs"] == len(gpu["methods"]) * 3 + sum(
        len(lt.method_grid(gpu, m)) for m in lt.tuned_methods(gpu)
    )
    # finished runs cost nothing: with DSB-CE's grid done, its place in the first round goes to another grid
    for point in lt.method_grid(gpu, "dsb_ce"):
        _finish(lt.run_dir(tmp_path, "gpu", gpu, "dsb_ce", 0, "_tune" + lt.grid_tag(point)))
    later = tb.fit_budget(tmp_path, "gpu", gpu, run_s=100.0, workers=8, budget_s=250.0)
    assert "dsb_balanced_softmax" not in fit["methods"] and "dsb_balanced_softmax" in later["methods"]
    assert later["methods"][:3] == ["ce", "cb_ce", "dsb_ce"] and later["wall_s"] == 200.0


def test_timing_refuses_text_settings():
    banking = next(s for s in lt.tier_settings("cpu") if s["recipe"] == "train_text")
    with pytest.raises(ValueError, match="only image settings are timed"):
        tb.measure(banking, [], 1)


def test_budget_run_times_the_recipe_then_runs_what_fits(tmp_path, one_torch_thread):
    """The whole flow on the tiny tier with real processes: timing runs, estimate, the fitting runs, the report."""
    source = lt.write_tiny_image_dataset(tmp_path / "src")
    work, out = tmp_path / "work", tmp_path / "out"
    common = ["--tier", "tiny", "--source", str(source), "--work-dir", str(work), "--out-dir", str(out)]
    with pytest.raises(SystemExit):
        lt.main([*common, "--budget-min", "5", "--methods", "ce"])  # the budget chooses the methods itself
    lt.main([*common, "--dry-run", "--workers", "1"])
    estimate = json.loads((out / lt.ESTIMATE_FILENAME.format(tier="tiny")).read_text())
    assert estimate["text"].startswith("tiny tier, tiny_image: 8 runs to do x 1 optimizer steps. Measured on cpu")
    assert "(2- and 10-step timing runs)" in estimate["text"] and "s per scale re-measurement" in estimate["text"]
    assert "--dry-run" in estimate["command"] and not (work / "tiny" / "tiny_image").exists()  # nothing ran
    lt.main([*common, "--budget-min", "5", "--workers", "1"])
    info = json.loads((work / "tiny" / "run_info.json").read_text())[-1]
    assert info["note"].startswith("budget 5 min: tiny tier, tiny_image:") and "Measured on cpu" in info["note"]
    assert info["methods"] == ["ce", "dsb_ce"] and info["seeds"] == lt.DEFAULT_SEEDS
    setting = lt.tier_settings("tiny")[0]
    for method in ("ce", "dsb_ce"):
        for seed in lt.DEFAULT_SEEDS:
            assert (lt.run_dir(work, "tiny", setting, method, seed) / RESULTS_FILENAME).is_file()
    assert "| ce |" in (out / "long_tail.md").read_text()


# --------------------------------------------------------------------------- the data kit


def test_kit_round_trip_is_exact_and_checked(tmp_path):
    import datasets

    source = lt.write_tiny_image_dataset(tmp_path / "prepared")
    kit = tmp_path / "kit"
    manifest = gpu_kit.pack_dataset(source, kit, {"imbalance_factor": 1})
    assert manifest["sizes"] == {"train": 24, "validation": 8, "test": 8}
    target = gpu_kit.unpack_dataset(kit, tmp_path / "cache" / "data")
    before, after = datasets.load_from_disk(str(source)), datasets.load_from_disk(str(target))
    for split in gpu_kit.SPLITS:
        assert after[split].features == before[split].features
        a, b = before[split].with_format("numpy"), after[split].with_format("numpy")
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        assert np.array_equal(np.asarray(a["label"]), np.asarray(b["label"]))

    data = kit / gpu_kit.DATA_FILE
    data.write_bytes(data.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="does not match its manifest's sha256"):
        gpu_kit.unpack_dataset(kit, tmp_path / "cache" / "again")
    assert not (tmp_path / "cache" / "again").exists()
    with pytest.raises(FileNotFoundError, match="gpu_kit.py pack"):
        gpu_kit.unpack_dataset(tmp_path / "nowhere", tmp_path / "cache" / "again")


def test_kit_lands_where_the_benchmark_looks(tmp_path):
    setting = lt.tier_settings("gpu")[0]
    assert setting["prepare"]["test_per_class"] == 500  # the packed data stays under the device tool's 64 MiB
    target = gpu_kit.data_target(tmp_path)
    lt.write_tiny_image_dataset(target)
    assert tiers.prepare_image_data(setting, tmp_path / "no_data", tmp_path / "gpu" / "cache") == target


def test_report_quotes_the_last_gpu_estimate_while_the_tier_is_not_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    text = "gpu tier, cifar10_lt_if100: 48 runs to do x 19,000 optimizer steps. Measured on NVIDIA H200 ..."
    estimate = {"command": "python benchmarks/long_tail.py --tier gpu --dry-run", "machine": "m", "text": text}
    (out / lt.ESTIMATE_FILENAME.format(tier="gpu")).write_text(json.dumps(estimate))
    lt.main(["--tier", "gpu", "--report-only", "--work-dir", str(tmp_path), "--out-dir", str(out)])
    report = (out / "long_tail.md").read_text()
    assert f"Last estimate (`python benchmarks/long_tail.py --tier gpu --dry-run`, m): {text}" in report
    assert f"Command: `{lt.GPU_COMMAND}`" in report
