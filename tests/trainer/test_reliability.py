"""Reliability (issue 7): interrupted runs, hostile files and numeric edge cases lose nothing.

- kill -9 at seeded random points of a real training process (some inside a checkpoint save), then
  resume: the final pool, class weights, scales, model weights and scale history equal an
  uninterrupted run's, bit for bit;
- half-written checkpoints are skipped with a warning; hostile / foreign pool files give a clear
  error naming the file and the mismatch, and nothing is ever unpickled;
- the pool memory budget is logged and enforced before training, with a suggestion that fits;
- degenerate features (identical, all zero, beyond float16) never turn into NaN weights.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import reliability_worker as worker
import torch

from hf_semscale.dsb.pool import (
    FeaturePool,
    PoolFileError,
    atomic_save_safetensors,
    estimate_pool_bytes,
    load_safetensors_checked,
    pool_capacities,
)
from hf_semscale.hub.report import SCALES_FILENAME, read_scale_report
from hf_semscale.trainer import (
    HISTORY_FILENAME,
    STATE_FILENAME,
    checkpoint_problem,
    latest_complete_checkpoint,
)

WORKER = Path(__file__).resolve().parents[1] / "support" / "reliability_worker.py"
REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINER_LOGGER = "hf_semscale.trainer"


def _step_of(path: str | Path | None) -> int:
    return -1 if path is None else int(Path(path).name.split("-")[-1])


def _load(path: Path) -> tuple[dict, dict]:
    return load_safetensors_checked(path)


# ---------------------------------------------------------------------------------------------
# kill -9 and resume, in real processes


class _Zygote:
    """``reliability_worker.py serve``: imports transformers once and forks one training process per run."""

    def __init__(self, tmp_path: Path, deadline_s: float = 900.0):
        env = dict(os.environ)
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            WANDB_DISABLED="true",
        )
        self.stderr_path = tmp_path / "worker.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=str(REPO_ROOT),
        )
        self.children: set[int] = set()
        self._buf = b""
        # A guard against a hung worker, not a timing assertion: generous on a loaded 2-core machine.
        self.deadline = time.monotonic() + deadline_s
        self._expect(lambda words: words[0] == "@@ready")

    def _next_line(self) -> list[str]:
        """The next protocol line (``@@...``) as words; other stdout lines (Trainer's printed logs) are skipped."""
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if "@@" in text:  # a protocol line, even glued to a stray partial line before it
                    return text[text.index("@@") :].split()
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"worker hung; stderr tail:\n{self.stderr_tail()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(remaining, 5.0))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"worker died (rc={self.proc.poll()}); stderr tail:\n{self.stderr_tail()}")
                self._buf += chunk

    def _expect(self, predicate) -> list[str]:
        while True:
            words = self._next_line()
            if predicate(words):
                return words

    def stderr_tail(self, n: int = 4000) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-n:]

    def start(self, output_dir: Path, result: Path, kill_in_save: str | None = None, hold_at_end: bool = False) -> int:
        cmd = {
            "output_dir": str(output_dir),
            "result": str(result),
            "kill_in_save": kill_in_save,
            "hold_at_end": hold_at_end,
        }
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        pid = int(self._expect(lambda w: w[0] == "@@started")[1])
        self.children.add(pid)
        return pid

    def wait_step(self, pid: int, step: int) -> bool:
        """Read progress until ``pid`` reports an optimizer step >= ``step``; False if it exited first."""
        while True:
            words = self._next_line()
            if words[0] == "@@step" and int(words[1]) == pid and int(words[2]) >= step:
                return True
            if words[0] == "@@exited" and int(words[1]) == pid:
                self.children.discard(pid)
                self._early_exit = int(words[2])
                return False

    def wait_exit(self, pid: int) -> int:
        if pid not in self.children:
            return self._early_exit
        status = int(self._expect(lambda w: w[0] == "@@exited" and int(w[1]) == pid)[2])
        self.children.discard(pid)
        return status

    def close(self) -> None:
        for pid in list(self.children):  # only the training processes this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def _assert_output_dir_readable(out: Path) -> None:
    """After any kill: the latest complete checkpoint is really complete and the scale report parses."""
    latest = latest_complete_checkpoint(out)
    if latest is not None:
        assert checkpoint_problem(latest) is None
        assert (Path(latest) / "model.safetensors").is_file() and (Path(latest) / "optimizer.pt").is_file()
    if (out / SCALES_FILENAME).exists():
        read_scale_report(out)  # written atomically: never half a file


@pytest.mark.slow
def test_kill9_during_training_and_checkpoint_saves_then_resume_matches_uninterrupted(tmp_path):
    rng = random.Random(20230501)
    zygote = _Zygote(tmp_path)
    try:
        ref_dir, ref_result = tmp_path / "reference", tmp_path / "reference.safetensors"
        pid = zygote.start(ref_dir, ref_result)
        assert zygote.wait_exit(pid) == 0, zygote.stderr_tail()

        out, result = tmp_path / "killed", tmp_path / "killed.safetensors"
        plan = [
            "save:before_trainer_state",
            "time",
            "save:mid_trainer_state",
            "save:mid_semscale_state",
            "time",
            "save:after_semscale_state",
            "save:mid_rotation",
            "time",
            "save:before_trainer_state",
            "time",
        ]
        kills, in_save_kills = [], 0
        for item in plan:
            resumed_from = _step_of(latest_complete_checkpoint(out))
            if item == "time":  # SIGKILL from outside, at a random instant after a random step
                target = max(resumed_from, 0) + rng.randint(2, 8)
                if target > worker.MAX_STEPS - 5:  # leave it far more than the <= 50 ms below to live
                    continue
                # hold_at_end: on a loaded machine the progress lines can be read late; the run must not finish first.
                pid = zygote.start(out, result, hold_at_end=True)
                assert zygote.wait_step(pid, target), zygote.stderr_tail()
                time.sleep(rng.uniform(0.0, 0.05))
                os.kill(pid, signal.SIGKILL)
                assert zygote.wait_exit(pid) == -signal.SIGKILL
                kills.append(f"time@{target}")
            else:  # the worker SIGKILLs itself at a chosen point of a checkpoint save
                phase = item.split(":")[1]
                saves_ahead = 2 if phase == "mid_rotation" else rng.randint(1, 3)  # rotation needs 3 checkpoints
                step = (max(resumed_from, 0) // worker.SAVE_STEPS + saves_ahead) * worker.SAVE_STEPS
                if step > worker.MAX_STEPS:
                    continue
                pid = zygote.start(out, result, kill_in_save=f"{step}:{phase}")
                assert zygote.wait_exit(pid) == -signal.SIGKILL, zygote.stderr_tail()
                kills.append(f"{phase}@{step}")
                in_save_kills += 1
                latest = latest_complete_checkpoint(out)
                if phase == "mid_rotation":  # the new checkpoint was complete before rotation began
                    assert _step_of(latest) == step
                else:
                    assert checkpoint_problem(out / f"checkpoint-{step}") is not None
                    assert _step_of(latest) == (step - worker.SAVE_STEPS if step > worker.SAVE_STEPS else -1)
            _assert_output_dir_readable(out)
        assert len(kills) >= 6 and in_save_kills >= 4, kills
        assert max(int(k.split("@")[1]) for k in kills) >= worker.MAX_STEPS // 2, kills  # spread over the run

        pid = zygote.start(out, result)
        assert zygote.wait_exit(pid) == 0, zygote.stderr_tail()
        log = zygote.stderr_tail(n=10**7)
        assert "Skipping incomplete checkpoint" in log  # the half-written ones were skipped with a warning
    finally:
        zygote.close()

    expected, expected_meta = _load(ref_result)
    got, got_meta = _load(result)
    assert got_meta == expected_meta
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), f"{key} differs after {kills}"
    assert int(expected_meta["num_updates"]) >= 10  # the weights really changed many times
    assert not torch.equal(expected["class_weights"], torch.ones_like(expected["class_weights"]))
    # semscale_history.jsonl: lines a killed run wrote after its checkpoint were dropped on resume.
    assert (out / HISTORY_FILENAME).read_text() == (ref_dir / HISTORY_FILENAME).read_text()
    assert read_scale_report(out)["classes"] == read_scale_report(ref_dir)["classes"]


# ---------------------------------------------------------------------------------------------
# half-written checkpoints, in process


SHORT = dict(
    max_steps=8,
    save_steps=4,
    save_total_limit=None,
    semscale_warmup_steps=1,
    semscale_fill_max_steps=1,
    semscale_update_interval=2,
)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """An uninterrupted 8-step run with checkpoints at 4 and 8 (pool filled and re-weighting at both)."""
    out = tmp_path_factory.mktemp("short_run")
    trainer = worker.make_trainer(str(out), **SHORT)
    trainer.train()
    assert trainer.balancer.num_updates >= 3 and (out / "checkpoint-4" / STATE_FILENAME).is_file()
    return {
        "dir": out,
        "class_weights": trainer.class_weights.clone(),
        "pool": {k: v.clone() for k, v in trainer.pool.state_dict().items()},
        "model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "history": (out / HISTORY_FILENAME).read_text(),
    }


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


CORRUPTIONS = {
    "trainer_state_missing": lambda ck: (ck / "trainer_state.json").unlink(),
    "trainer_state_truncated": lambda ck: _truncate(ck / "trainer_state.json"),
    "semscale_state_truncated": lambda ck: _truncate(ck / STATE_FILENAME, 0.9),
    "semscale_state_missing": lambda ck: (ck / STATE_FILENAME).unlink(),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_half_written_checkpoint_is_skipped_with_warning(short_run, tmp_path, caplog, corruption):
    out = tmp_path / "run"
    shutil.copytree(short_run["dir"], out)
    CORRUPTIONS[corruption](out / "checkpoint-8")
    caplog.set_level(logging.WARNING, logger=TRAINER_LOGGER)
    assert latest_complete_checkpoint(out) == str(out / "checkpoint-4")
    warnings = [r.getMessage() for r in caplog.records if "Skipping incomplete checkpoint" in r.getMessage()]
    assert len(warnings) == 1 and "checkpoint-8" in warnings[0]
    assert ("trainer_state.json" if "trainer_state" in corruption else STATE_FILENAME) in warnings[0]

    trainer = worker.make_trainer(str(out), **SHORT)
    loaded = []
    original = trainer.balancing.resume
    trainer.balancing.resume = lambda d: (loaded.append(d), original(d))[1]
    trainer.train(resume_from_checkpoint=True)
    assert loaded == [str(out / "checkpoint-4"), None]  # restored for the run, cleared after it
    # The resumed run ends where the uninterrupted one did (same process, same thread count).
    assert torch.equal(trainer.class_weights, short_run["class_weights"])
    for key, value in trainer.pool.state_dict().items():
        assert torch.equal(value, short_run["pool"][key]), key
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, short_run["model"][key]), key
    assert (out / HISTORY_FILENAME).read_text() == short_run["history"]
    assert checkpoint_problem(out / "checkpoint-8") is None  # re-saved, complete


def test_explicit_incomplete_checkpoint_is_refused_with_the_reason(short_run, tmp_path):
    ck = tmp_path / "checkpoint-8"
    shutil.copytree(short_run["dir"] / "checkpoint-8", ck)
    (ck / "trainer_state.json").unlink()
    trainer = worker.make_trainer(str(tmp_path / "run"), max_steps=8)
    with pytest.raises(ValueError, match=r"Cannot resume from .*checkpoint-8.*trainer_state\.json"):
        trainer.train(resume_from_checkpoint=str(ck))
    assert trainer.state.global_step == 0


def test_fresh_start_drops_history_of_a_run_killed_before_its_first_checkpoint(short_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / HISTORY_FILENAME).write_text('{"step": 99, "stage": "reweight"}\n{"step": 100, "sta')
    trainer = worker.make_trainer(str(out), **SHORT)
    trainer.train()
    assert (out / HISTORY_FILENAME).read_text() == short_run["history"]


def test_rotation_never_leaves_only_incomplete_checkpoints(short_run, tmp_path, caplog):
    """save_total_limit=1 with a stale, incomplete higher-numbered checkpoint (a killed run's leftover).

    Transformers' rotation protects the highest-numbered / newest checkpoint; without the clean-up at
    train start it would keep the stale half-written one and delete both complete ones.
    """
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(short_run["dir"] / "checkpoint-4", out / "checkpoint-4")
    stale = out / "checkpoint-12"
    shutil.copytree(short_run["dir"] / "checkpoint-8", stale)
    (stale / "trainer_state.json").write_text('{"global_st')
    future = time.time() + 3600
    os.utime(stale, (future, future))  # the newest by mtime too, whichever order rotation uses
    caplog.set_level(logging.WARNING, logger=TRAINER_LOGGER)
    trainer = worker.make_trainer(str(out), **{**SHORT, "save_total_limit": 1})
    trainer.train(resume_from_checkpoint=True)
    assert latest_complete_checkpoint(out) == str(out / "checkpoint-8")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-8"]
    assert "Removing incomplete checkpoint" in caplog.text and "checkpoint-12" in caplog.text


def test_train_start_removes_only_half_written_checkpoints(tmp_path, caplog):
    out = tmp_path / "run"
    (out / "checkpoint-50").mkdir(parents=True)
    (out / "checkpoint-50" / "model.safetensors").write_bytes(b"half")  # no trainer_state.json: interrupted save
    (out / "checkpoint-100").mkdir()
    (out / "checkpoint-100" / "trainer_state.json").write_text("{}")  # complete, another trainer's: not ours to delete
    caplog.set_level(logging.WARNING, logger=TRAINER_LOGGER)
    worker.make_trainer(str(out), max_steps=1, save_strategy="no").train()
    assert not (out / "checkpoint-50").exists() and (out / "checkpoint-100" / "trainer_state.json").exists()
    assert "Removing incomplete checkpoint" in caplog.text and "checkpoint-50" in caplog.text


# ---------------------------------------------------------------------------------------------
# hostile and foreign files


class _CreatesMarker:
    """Unpickling this object creates ``path``: proof that a loader unpickled."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _hostile_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    real = tmp_path / "real.safetensors"
    atomic_save_safetensors(FeaturePool(torch.tensor([3, 2]), 4).state_dict(), real)
    data = real.read_bytes()
    files = {}
    for cut in (0, 1, 7, 8, 20, len(data) // 2, len(data) - 1):
        files[f"truncated_{cut}"] = tmp_path / f"truncated_{cut}.safetensors"
        files[f"truncated_{cut}"].write_bytes(data[:cut])
    files["torch_save_pickle"] = tmp_path / "torch_save.safetensors"
    torch.save({"pool.storage": _CreatesMarker(marker)}, files["torch_save_pickle"])
    files["plain_pickle"] = tmp_path / "plain.safetensors"
    files["plain_pickle"].write_bytes(pickle.dumps({"pool.storage": _CreatesMarker(marker)}))
    files["random_bytes"] = tmp_path / "random.safetensors"
    files["random_bytes"].write_bytes(bytes(random.Random(0).randrange(256) for _ in range(512)))
    files["huge_header_length"] = tmp_path / "huge_header.safetensors"
    files["huge_header_length"].write_bytes((2**62).to_bytes(8, "little") + b"{}")
    files["directory"] = tmp_path / "a_directory.safetensors"
    files["directory"].mkdir()
    files["missing"] = tmp_path / "missing.safetensors"
    return files


def test_hostile_file_payloads_would_really_run_if_unpickled(tmp_path):
    """Guards the test below: the crafted pickles do create the marker when unpickled."""
    marker = tmp_path / "proof"
    files = _hostile_files(tmp_path, marker)
    pickle.loads(files["plain_pickle"].read_bytes())
    assert marker.exists()
    marker.unlink()
    as_pt = shutil.copy(
        files["torch_save_pickle"], tmp_path / "same_bytes.pt"
    )  # torch.load reads *.safetensors as safetensors
    torch.load(as_pt, weights_only=False)
    assert marker.exists()


def test_unreadable_pool_files_raise_naming_the_file_and_never_unpickle(tmp_path):
    marker = tmp_path / "UNPICKLED"
    files = _hostile_files(tmp_path, marker)
    pool = FeaturePool(torch.tensor([3, 2]), 4)
    for name, path in files.items():
        with pytest.raises(PoolFileError) as err:
            tensors, _ = load_safetensors_checked(path)
            pool.load_state_dict(tensors, source=str(path))
        assert str(path) in str(err.value), name
        assert not marker.exists(), name
    assert torch.equal(pool.filled, torch.zeros(2, dtype=torch.long))  # untouched


def _pool_with_data(capacities=(3, 2), d=4, seed=0) -> FeaturePool:
    pool = FeaturePool(torch.tensor(capacities), d, "float32")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(capacities)).repeat(4)
    pool.add(torch.randn(labels.numel(), d, generator=g), labels)
    return pool


@pytest.mark.parametrize(
    "name, edit, needle",
    [
        ("other_num_labels", lambda s: _pool_with_data((3, 2, 2)).state_dict(), r"3 classes but this model has 2"),
        ("other_feature_size", lambda s: _pool_with_data(d=8).state_dict(), r"size \(8,\) but this model's are 4"),
        ("other_capacity", lambda s: _pool_with_data((5, 2)).state_dict(), r"capacities differ"),
        ("not_a_pool", lambda s: {"weight": torch.zeros(2)}, r"missing"),
        ("storage_rows", lambda s: {**s, "pool.storage": torch.zeros(9, 4)}, r"inconsistent"),
        ("filled_over_capacity", lambda s: {**s, "pool.filled": torch.tensor([7, 2])}, r"inconsistent"),
        ("write_pos_out_of_range", lambda s: {**s, "pool.write_pos": torch.tensor([0, 5])}, r"inconsistent"),
        ("counter_shape", lambda s: {**s, "pool.total_added": torch.zeros(3, dtype=torch.long)}, r"inconsistent"),
        ("integer_storage", lambda s: {**s, "pool.storage": torch.zeros(5, 4, dtype=torch.int32)}, r"dtype"),
        ("non_finite_storage", lambda s: {**s, "pool.storage": torch.full((5, 4), float("nan"))}, r"NaN or inf"),
    ],
)
def test_foreign_or_inconsistent_pool_state_is_refused(tmp_path, name, edit, needle):
    state = _pool_with_data().state_dict()
    path = tmp_path / f"{name}.safetensors"
    atomic_save_safetensors(edit({k: v.clone() for k, v in state.items()}), path)
    pool = FeaturePool(torch.tensor([3, 2]), 4, "float32")
    before = {k: v.clone() for k, v in pool.state_dict().items()}
    tensors, _ = load_safetensors_checked(path)
    with pytest.raises(PoolFileError, match=needle) as err:
        pool.load_state_dict(tensors, source=str(path))
    assert str(path) in str(err.value)
    for key, value in pool.state_dict().items():  # a refused load changes nothing
        assert torch.equal(value, before[key]), key


def test_pool_state_round_trips_through_a_file(tmp_path):
    pool = _pool_with_data()
    atomic_save_safetensors(pool.state_dict(), tmp_path / "pool.safetensors")
    other = FeaturePool(torch.tensor([3, 2]), 4, "float32")
    other.load_state_dict(_load(tmp_path / "pool.safetensors")[0])
    for key, value in pool.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)
    assert [p.name for p in tmp_path.iterdir()] == ["pool.safetensors"]  # no temporary file left


def _replace_state(ck: Path, tensors: dict, metadata: dict) -> None:
    """A crafted state file with a VALID checksum: the content checks, not the checksum, must refuse it."""
    (ck / STATE_FILENAME).unlink()
    atomic_save_safetensors(tensors, ck / STATE_FILENAME, metadata=metadata)


def _foreign_state(kind: str, tensors: dict, metadata: dict) -> tuple[dict, dict]:
    tensors, metadata = dict(tensors), dict(metadata)
    caps = tensors["pool.capacities"]
    d = tensors["pool.storage"].shape[1]
    if kind == "other_num_labels":
        pool = FeaturePool(caps[:3], d)
        tensors.update(pool.state_dict())
        for key in ("semscale.class_weights", "semscale.semantic_scales", "semscale.class_counts"):
            tensors[key] = tensors[key][:3].clone()
        metadata["num_labels"] = "3"
    elif kind == "other_num_labels_metadata_lies":
        for key in ("semscale.class_weights", "semscale.semantic_scales", "semscale.class_counts"):
            tensors[key] = tensors[key][:3].clone()
    elif kind == "other_feature_size":
        tensors.update(FeaturePool(caps, d // 2).state_dict())
        metadata["feature_dim"] = str(d // 2)
    elif kind == "other_training_set":
        tensors["semscale.class_counts"] = tensors["semscale.class_counts"] * 2
    elif kind == "nan_weights":
        tensors["semscale.class_weights"] = torch.full_like(tensors["semscale.class_weights"], float("nan"))
    elif kind == "negative_weights":
        tensors["semscale.class_weights"] = -tensors["semscale.class_weights"]
    elif kind == "pool_filled_over_capacity":
        tensors["pool.filled"] = tensors["pool.capacities"] + 1
    elif kind == "bad_stage":
        counters = tensors["semscale.counters"].clone()
        counters[-1] = 7
        tensors["semscale.counters"] = counters
    elif kind == "wrong_format":
        metadata["format"] = "something.else"
    return tensors, metadata


FOREIGN = {
    "other_num_labels": r"num_labels=3 but this model has 5",
    "other_num_labels_metadata_lies": r"class_(counts|weights)",
    "other_feature_size": r"size 8 but this model's head takes 16",
    "other_training_set": r"class counts differ",
    "nan_weights": r"class_weights",
    "negative_weights": r"class_weights",
    "pool_filled_over_capacity": r"inconsistent",
    "bad_stage": r"stage",
    "wrong_format": r"not a SemScaleTrainer state file",
}


@pytest.mark.parametrize("kind", sorted(FOREIGN) + ["truncated", "torch_save_pickle", "plain_pickle"])
def test_resume_from_a_foreign_or_hostile_state_file_fails_clearly(short_run, tmp_path, kind):
    ck = tmp_path / "checkpoint-8"
    shutil.copytree(short_run["dir"] / "checkpoint-8", ck)
    state_file = ck / STATE_FILENAME
    marker = tmp_path / "UNPICKLED"
    if kind == "truncated":
        _truncate(state_file, 0.7)
        needle = r"not a readable safetensors file"
    elif kind == "torch_save_pickle":
        state_file.unlink()
        torch.save({"pool.storage": _CreatesMarker(marker)}, state_file)
        needle = r"not a readable safetensors file"
    elif kind == "plain_pickle":
        state_file.write_bytes(pickle.dumps(_CreatesMarker(marker)))
        needle = r"not a readable safetensors file"
    else:
        _replace_state(ck, *_foreign_state(kind, *_load(state_file)))
        needle = FOREIGN[kind]
    trainer = worker.make_trainer(str(tmp_path / "run"), max_steps=8)
    weights_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(ValueError, match=needle) as err:
        trainer.train(resume_from_checkpoint=str(ck))
    assert str(state_file) in str(err.value)
    assert not marker.exists()
    assert trainer.state.global_step == 0
    assert torch.equal(trainer.class_weights, torch.ones(worker.NUM_LABELS, dtype=torch.float64))
    for key, value in trainer.model.state_dict().items():  # nothing was loaded
        assert torch.equal(value, weights_before[key]), key


# ---------------------------------------------------------------------------------------------
# memory budget


def _pool_log_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "SemanticScaleBalancer pool:" in r.getMessage()]


def test_pool_memory_is_estimated_and_logged_before_training(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hf_semscale.dsb.balancer")
    trainer = worker.make_trainer(str(tmp_path), max_steps=6, save_strategy="no", semscale_pool_capacity=16)
    rows = int(pool_capacities(torch.tensor(worker.CLASS_COUNTS), 16).sum())  # 16+16+12+6+3
    expected = estimate_pool_bytes(torch.tensor([rows]), worker.HIDDEN_DIMS[-1], "float16")
    assert expected == rows * worker.HIDDEN_DIMS[-1] * 2
    lines = _pool_log_lines(caplog)  # logged when the trainer is built, before train()
    assert len(lines) == 1, lines
    assert f"5 classes, {rows} rows" in lines[0] and "d=16" in lines[0] and "float16" in lines[0]
    assert f"{expected} bytes" in lines[0] and "budget 4096 MiB" in lines[0]
    trainer.train()
    assert trainer.pool is not None and trainer.pool.nbytes == expected  # the estimate is the real size
    assert len(_pool_log_lines(caplog)) == 1  # not repeated when the pool is created


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_pool_over_budget_stops_before_training_with_a_capacity_that_fits(tmp_path, dtype):
    itemsize = 2 if dtype == "float16" else 4
    d = worker.HIDDEN_DIMS[-1]
    budget_bytes = 31 * d * itemsize + 10  # room for 31 rows
    with pytest.raises(MemoryError) as err:  # at construction: before any training
        worker.make_trainer(
            str(tmp_path),
            semscale_pool_dtype=dtype,
            semscale_pool_capacity=0,
            semscale_max_pool_memory_mb=budget_bytes / 2**20,
        )
    message = str(err.value)
    assert not list(tmp_path.glob("checkpoint-*"))
    assert "semscale_max_pool_memory_mb" in message
    k = int(re.search(r"semscale_pool_capacity=(\d+)", message).group(1))
    counts = torch.tensor(worker.CLASS_COUNTS)
    assert estimate_pool_bytes(pool_capacities(counts, k), d, dtype) <= budget_bytes  # the suggestion fits
    assert estimate_pool_bytes(pool_capacities(counts, k + 1), d, dtype) > budget_bytes  # and is the largest that does
    assert k == 7  # 7+7+7+6+3 = 30 rows <= 31 < 8+8+8+6+3
    assert ("semscale_pool_dtype=" in message) == (dtype == "float32")  # a smaller dtype only when there is one

    if dtype == "float16":  # the suggested capacity really runs (once is enough)
        fixed = worker.make_trainer(
            str(tmp_path),
            max_steps=6,
            save_strategy="no",
            semscale_pool_dtype=dtype,
            semscale_pool_capacity=k,
            semscale_max_pool_memory_mb=budget_bytes / 2**20,
        )
        fixed.train()
        assert fixed.pool.nbytes <= budget_bytes


def test_pool_over_budget_even_at_one_row_per_class_says_so(tmp_path):
    with pytest.raises(MemoryError) as err:
        worker.make_trainer(str(tmp_path), semscale_pool_dtype="float16", semscale_max_pool_memory_mb=1e-6)
    message = str(err.value)
    assert "semscale_pool_capacity=" not in message  # no capacity fits: none is suggested
    assert "one row per class" in message and "semscale_max_pool_memory_mb" in message


def test_capacity_suggestion_bisects_for_huge_classes(monkeypatch):
    """The largest fitting capacity is found by bisection, not by trying every k from n_max down."""
    import hf_semscale.dsb.balancer as balancer_mod

    calls = []
    real = balancer_mod.pool_capacities
    monkeypatch.setattr(balancer_mod, "pool_capacities", lambda *a: (calls.append(a), real(*a))[1])
    counts = torch.tensor([10**9, 10**6, 10])
    k = balancer_mod._largest_fitting_capacity(counts, 8, 2, 10_000 * 8 * 2)
    assert int(real(counts, k).sum()) <= 10_000 < int(real(counts, k + 1).sum())
    assert len(calls) <= 64  # log2(10**9) ~ 30 probes; a linear scan would make ~10**9
    assert balancer_mod._largest_fitting_capacity(counts, 8, 2, 3 * 8 * 2 - 1) is None  # not even 1 row each


# ---------------------------------------------------------------------------------------------
# numeric edge cases


def _degenerate_dataset(kind: str):
    from datasets import Dataset

    base = worker.make_dataset()
    x = torch.tensor(base["pixel_values"])
    y = torch.tensor(base["labels"])
    if kind == "some_classes":
        x[y == 2] = x[y == 2][0]  # every sample of class 2 is the same point
        x[y == 3] = 0.0  # all-zero inputs: with zero biases at init, all-zero features for class 3
    else:  # "all_identical"
        x[:] = x[0]
    return Dataset.from_dict({"pixel_values": x.tolist(), "labels": y.tolist()})


@pytest.mark.parametrize("kind, normalize", [("some_classes", True), ("some_classes", False), ("all_identical", True)])
def test_degenerate_class_features_give_finite_positive_weights(tmp_path, kind, normalize):
    trainer = worker.make_trainer(
        str(tmp_path),
        max_steps=8,
        save_strategy="no",
        dataset=_degenerate_dataset(kind),
        semscale_warmup_steps=0,
        semscale_fill_max_steps=2,
        semscale_update_interval=1,
        semscale_normalize_features=normalize,
        learning_rate=0.0,  # frozen model: pooled features stay identical
    )
    trainer.train()
    assert trainer.balancer.num_updates >= 4
    history = [json.loads(line) for line in (tmp_path / HISTORY_FILENAME).read_text().splitlines()]
    assert len(history) == trainer.balancer.num_updates
    for record in history:
        weights = torch.tensor(record["weights"], dtype=torch.float64)
        assert torch.isfinite(weights).all() and (weights > 0).all(), record
        assert all(s >= 0 for s in record["scales"])
    scales, weights = trainer.semantic_scales, trainer.class_weights
    if kind == "some_classes":
        assert trainer.pool.filled[2] >= 2 and trainer.pool.filled[3] >= 2
        assert scales[2] < 1e-3 and scales[3] < 1e-3 and scales.max() > 0.1
        assert weights[2] == weights.max() and weights[3] == weights.max()  # the floor: largest, finite weight
    else:
        assert (scales < 1e-3).all()
        assert torch.allclose(weights, torch.ones(worker.NUM_LABELS, dtype=torch.float64))


def test_all_zero_features_with_normalize_give_uniform_weights(tmp_path):
    trainer = worker.make_trainer(str(tmp_path), semscale_normalize_features=True)
    balancer = trainer.balancer
    balancer.start(max_steps=10, steps_per_epoch=5)
    balancer.stage = "fill"
    labels = torch.arange(worker.NUM_LABELS).repeat(20)
    balancer.observe(torch.zeros(labels.numel(), 16), labels)  # F.normalize(0) stays 0: no division by zero
    balancer.stage = "reweight"
    balancer._update_weights(step=5, logs={})
    assert torch.equal(trainer.semantic_scales, torch.zeros(worker.NUM_LABELS, dtype=torch.float64))
    assert torch.isfinite(trainer.class_weights).all() and (trainer.class_weights > 0).all()
    assert torch.allclose(trainer.class_weights, torch.ones(worker.NUM_LABELS, dtype=torch.float64))


def _blow_up_features(model, factor: float) -> None:
    with torch.no_grad():
        model.body[-3].weight.mul_(factor)  # the last hidden Linear: features of size ~factor


def test_float16_pool_overflow_without_normalize_fails_clearly_not_with_nan(tmp_path):
    trainer = worker.make_trainer(
        str(tmp_path),
        max_steps=8,
        save_strategy="no",
        semscale_warmup_steps=0,
        semscale_fill_max_steps=2,
        semscale_update_interval=1,
        semscale_normalize_features=False,
        semscale_pool_dtype="float16",
        learning_rate=0.0,
    )
    _blow_up_features(trainer.model, 1e5)
    with pytest.raises(ValueError, match=r"float16.*(65504|range).*semscale_pool_dtype") as err:
        trainer.train()
    assert "step" in str(err.value)
    assert torch.isfinite(trainer.class_weights).all() and (trainer.class_weights > 0).all()
    assert torch.isfinite(trainer.pool.storage).all()  # nothing infinite entered the pool


@pytest.mark.parametrize("dtype, normalize", [("bfloat16", False), ("float16", True)])
def test_huge_features_train_with_a_wide_dtype_or_normalisation(tmp_path, dtype, normalize):
    trainer = worker.make_trainer(
        str(tmp_path),
        max_steps=8,
        save_strategy="no",
        semscale_warmup_steps=0,
        semscale_fill_max_steps=2,
        semscale_update_interval=1,
        semscale_normalize_features=normalize,
        semscale_pool_dtype=dtype,
        learning_rate=0.0,
    )
    _blow_up_features(trainer.model, 1e5)
    trainer.train()
    assert trainer.balancer.num_updates >= 3
    assert torch.isfinite(trainer.semantic_scales).all() and (trainer.semantic_scales >= 0).all()
    assert torch.isfinite(trainer.class_weights).all() and (trainer.class_weights > 0).all()


def test_pool_add_refuses_values_beyond_its_dtype():
    pool = FeaturePool(torch.tensor([2, 2]), 3, "float16")
    with pytest.raises(ValueError, match=r"class\(es\) \[1\].*float16"):
        pool.add(torch.tensor([[1.0, 2.0, 3.0], [7e4, 0.0, 0.0]]), torch.tensor([0, 1]))
    assert torch.equal(pool.filled, torch.zeros(2, dtype=torch.long))  # the batch was not half stored
    pool.add(torch.tensor([[6e4, -6e4, 1.0]]), torch.tensor([1]))  # within range: fine
    assert torch.isfinite(pool.storage).all()
