"""Every benchmark script runs: ``--smoke`` (a few steps, tiny sizes) as a subprocess, results in a temporary folder.

A benchmark that breaks (a renamed API, a moved helper) fails here instead of rotting until someone re-measures."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.smoke import RESULTS_DIR, parse_benchmark_args  # noqa: E402

TIMEOUT_S = 180


def run_smoke(name: str, out_dir: Path, *extra: str) -> dict:
    """``python benchmarks/<name>.py --smoke --out-dir out_dir *extra``; its ``<name>.json``, after checking the
    exit status and that the ``.md`` was written beside it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / f"{name}.py"), "--smoke", "--out-dir", str(out_dir)]
    proc = subprocess.run([*command, *extra], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (
        f"{name} --smoke failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    assert (out_dir / f"{name}.md").stat().st_size > 0
    return json.loads((out_dir / f"{name}.json").read_text())


# --------------------------------------------------------------------------- --smoke and --out-dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.py")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--classes", type=int, default=20)
    return parser


def test_smoke_sizes_replace_defaults_but_not_given_options():
    args = parse_benchmark_args(_parser(), ["--smoke", "--classes", "7"], smoke={"steps": 5, "classes": 3})
    assert (args.steps, args.classes) == (5, 7)
    assert args.out_dir != RESULTS_DIR and args.out_dir.is_dir() and not any(args.out_dir.iterdir())
    args.out_dir.rmdir()
    args = parse_benchmark_args(_parser(), [], smoke={"steps": 5})
    assert (args.steps, args.out_dir) == (3000, RESULTS_DIR)
    assert parse_benchmark_args(_parser(), ["--out", "/tmp/x"], smoke={}).out_dir == Path("/tmp/x")  # old spelling


def test_smoke_refuses_the_committed_results_folder_and_unknown_sizes(capsys):
    with pytest.raises(SystemExit):
        parse_benchmark_args(_parser(), ["--smoke", "--out-dir", str(RESULTS_DIR)], smoke={"steps": 5})
    assert "would replace the committed figures" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"does not have: \['stepz'\]"):
        parse_benchmark_args(_parser(), [], smoke={"stepz": 5})


# --------------------------------------------------------------------------- each benchmark


def test_trainer_overhead_smoke(tmp_path):
    report = run_smoke("trainer_overhead", tmp_path)
    assert [r["model"] for r in report["results"]] == ["ResNet-32", "small BERT (config: 4 layers, 256 hidden)"]
    assert all(r["data"].startswith("random") for r in report["results"])  # --smoke loads no data
    for result in report["results"]:
        trainers = result["trainers"]
        assert set(trainers) == {"plain", "semscale_every_step", "semscale_default"}
        assert trainers["semscale_every_step"]["updates"] == 2  # every step of 2 re-measures a full pool
        assert trainers["semscale_default"]["pool_rows"] == result["train_samples"]
        assert result["components"]["update_ms"] > 0


def test_soak_smoke(tmp_path):
    report = run_smoke("soak", tmp_path)
    assert report["config"]["steps"] == 80 and report["updates"] > 0
    assert report["updates"] == report["files"]["history_lines"]
    assert {"step_time_ms", "memory", "end_over_start"} <= set(report)


def test_phenomena_smoke(tmp_path, shared_data_dir, minilm_path):
    """With CIFAR-10 pixels and a cached BANKING77 embedding file (random rows) where the long-tail tier puts it."""
    from benchmarks import phenomena

    work_dir = tmp_path / "work"
    train = phenomena.banking_train_split(shared_data_dir)
    cache = phenomena.banking_cache_file(work_dir, train)
    cache.parent.mkdir(parents=True)
    np.save(cache, np.random.default_rng(0).standard_normal((len(train), 384), dtype=np.float32))
    report = run_smoke("phenomena", tmp_path / "out", "--work-dir", str(work_dir), "--data-root", str(shared_data_dir))
    assert report["cifar10_pixels"]["sizes"] == [2, 5, 10, 20]  # --cifar-per-class 20
    assert len(report["banking77_features"]["scales"]) == 77
    assert report["cifar10_lt_correlations"] == []  # no long-tail runs in work_dir
    assert (tmp_path / "out" / "phenomena.png").is_file()


def test_augmentation_smoke(tmp_path):
    report = run_smoke("augmentation", tmp_path)
    assert report["images"] < 1000  # --n-max 300
    assert set(report["median"]) == {"per_item", "batched"}
    assert all(len(r["train_step_s"]) == 1 for r in report["repeats"].values())


def test_capacity_smoke(tmp_path):
    report = run_smoke("capacity", tmp_path)
    assert {row["processes"] for row in report["table"]} == {1, 2}
    assert len(report["checks"]) == 3 and all(c["predicted"] > 0 and c["measured"] > 0 for c in report["checks"])
    assert all(row["seconds_per_update_busiest"] > 0 for row in report["table"])  # the calibrated time model


def test_scale_compute_smoke(tmp_path):
    report = run_smoke("scale_compute", tmp_path)
    (run,) = report["runs"]
    assert [case["case"] for case in run["cases"]] == ["a"] and run["cases"][0]["ours_all_finite"]


@pytest.mark.distributed
def test_distributed_smoke(tmp_path):
    report = run_smoke("distributed", tmp_path)
    assert set(report["results"]) == {"1", "2"}
    one, two = report["results"]["1"]["cases"]["a"], report["results"]["2"]["cases"]["a"]
    assert len(two["pool_bytes_per_process"]) == 2
    assert sum(two["pool_bytes_per_process"]) == one["pool_bytes_per_process"][0]  # the classes split the pool
    assert two["max_abs_diff_vs_one_process_bits"] < 1e-9 and two["gather_bytes_sent_per_process_per_step"] > 0


def test_long_tail_smoke(tmp_path):
    records = run_smoke("long_tail", tmp_path)
    assert [(r["method"], r["seeds"]) for r in records if r["seeds"]] == [("dsb_ce", [0])]  # ce: not run
    assert (tmp_path / "runs" / "tiny" / "tiny_image" / "dsb_ce" / "seed0" / "results.json").is_file()


def test_selection_smoke(tmp_path, shared_data_dir, minilm_path):
    """``select`` end to end on a tiny CLINC150-LT (embedding included), scored against the study's table."""
    report = run_smoke("selection", tmp_path / "out", "--data-root", str(shared_data_dir), "--work-dir", str(tmp_path))
    (record,) = report["records"]
    assert record["setting"] == "clinc150_lt_if10_frozen" and record["regime"] == "long_tail_below_dim"
    assert record["method"] in record["candidates"] and record["oracle_method"]
    assert 0.0 <= record["balanced_accuracy_mean"] <= 1.0
