"""Multi-process DSB: the gathered pool, the split volume computation, identical weights on every rank.

Two kinds of tests:

- Fast, in one process: the helpers of ``hf_semscale.dsb.comm`` run on N threads that play N ranks
  through a fake accelerator whose ``gather`` behaves like ``all_gather`` (every rank blocks until all
  have called it, and differing shapes are an error, as on gloo / NCCL).
- ``@pytest.mark.distributed``: ONE real ``torchrun --nproc_per_node 2`` launch over gloo on the CPU
  (``tests/support/distributed_worker.py``, phases train, plain, resume, mismatch, stall; one launch because importing
  transformers costs ~15 s of CPU per process), checked against a 1-process run of the same global
  batches that this test process trains meanwhile. About 40-60 s of wall time on 2 idle cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hf_semscale.core.scale import class_semantic_scales
from hf_semscale.dsb.comm import (
    DistributedSyncError,
    assert_same_on_all_processes,
    gather_labelled_features,
    shard_classes_by_cost,
    sharded_class_scales,
)
from hf_semscale.trainer import trainer as trainer_module

SUPPORT_DIR = Path(__file__).resolve().parents[1] / "support"
REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = SUPPORT_DIR / "distributed_worker.py"
LAUNCH_TIMEOUT_S = 300  # a hang must fail the test, not the CI job
DDP_TIMEOUT_S = 10


# ---------------------------------------------------------------- N ranks on N threads


class _ThreadGroup:
    def __init__(self, size: int):
        self.size = size
        self.slots: list = [None] * size
        self.barrier = threading.Barrier(size, timeout=20)


class _FakeAccelerator:
    """``num_processes`` / ``process_index`` / ``device`` / ``gather`` of one rank of a thread group."""

    def __init__(self, group: _ThreadGroup, rank: int, fail_with: Exception | None = None):
        self.group, self.num_processes, self.process_index = group, group.size, rank
        self.device = torch.device("cpu")
        self.fail_with = fail_with
        self.gathers: list[tuple[int, ...]] = []

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.fail_with is not None:
            raise self.fail_with
        g = self.group
        self.gathers.append(tuple(tensor.shape))
        g.slots[self.process_index] = tensor.clone()
        g.barrier.wait()
        shapes = {(tuple(t.shape), t.dtype) for t in g.slots}
        result = torch.cat(g.slots) if len(shapes) == 1 else None
        g.barrier.wait()
        if result is None:
            raise AssertionError(f"all_gather called with different shapes/dtypes on the ranks: {shapes}")
        return result


def _on_ranks(size: int, fn) -> list:
    """Run ``fn(accelerator)`` on ``size`` threads; each result or raised exception, by rank."""
    group = _ThreadGroup(size)
    results: list = [None] * size

    def body(rank: int) -> None:
        try:
            results[rank] = fn(_FakeAccelerator(group, rank))
        except BaseException as err:
            results[rank] = err

    threads = [threading.Thread(target=body, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a simulated rank hung"
    return results


def test_gather_pads_uneven_batches_and_cuts_the_padding():
    g = torch.Generator().manual_seed(0)
    per_rank = [
        (torch.randn(3, 4, generator=g), torch.tensor([0, -100, 2])),
        (torch.randn(0, 4, generator=g), torch.zeros(0, dtype=torch.long)),  # an empty batch
        (torch.randn(5, 4, generator=g), torch.tensor([1, 1, -100, 4, 3])),
    ]
    seen_shapes: list = [None] * 3

    def fn(acc):
        feats, labels = per_rank[acc.process_index]
        out = gather_labelled_features(acc, feats, labels, step=4)
        seen_shapes[acc.process_index] = acc.gathers
        return out

    results = _on_ranks(3, fn)
    expected_feats = torch.cat([f[lab >= 0] for f, lab in per_rank])
    expected_labels = torch.cat([lab[lab >= 0] for _, lab in per_rank])
    for feats, labels in results:
        assert torch.equal(labels, expected_labels)
        assert torch.equal(feats, expected_feats)
    # every rank sent the same shapes: [1, 2] sizes, then [max valid rows = 4, d + 1]
    assert seen_shapes[0] == seen_shapes[1] == seen_shapes[2] == [(1, 2), (4, 5)]


def test_gather_with_one_process_is_local_and_drops_ignored_rows():
    acc = SimpleNamespace(num_processes=1, gather=lambda t: pytest.fail("no communication with one process"))
    feats, labels = gather_labelled_features(acc, torch.arange(6.0).reshape(3, 2), torch.tensor([2, -100, 0]))
    assert labels.tolist() == [2, 0] and feats.tolist() == [[0.0, 1.0], [4.0, 5.0]]


def test_feature_size_mismatch_raises_the_same_error_on_every_rank():
    def fn(acc):
        d = 3 if acc.process_index == 1 else 4
        return gather_labelled_features(acc, torch.ones(2, d), torch.tensor([0, 1]), step=9)

    errors = _on_ranks(2, fn)
    for err in errors:
        assert isinstance(err, RuntimeError) and not isinstance(err, AssertionError), err
        assert "feature size (rank 0: 4, rank 1: 3)" in str(err) and "step 9" in str(err)


def test_shards_cover_each_measurable_class_once_and_balance_cost():
    sizes = [400, 300, 200, 100, 50, 1, 0, 2]
    shards = shard_classes_by_cost(sizes, feature_dim=64, num_shards=3)
    flat = sorted(c for shard in shards for c in shard)
    assert flat == [0, 1, 2, 3, 4, 7]  # classes with < 2 rows have no volume: nobody computes them
    cost = lambda m: min(m, 64) ** 2 * max(m, 64)
    loads = [sum(cost(sizes[c]) for c in shard) for shard in shards]
    assert max(loads) <= 1.5 * cost(400)  # greedy: no shard above the largest class plus the rest's share
    assert shard_classes_by_cost(sizes, 64, 3) == shards  # deterministic: every process computes the same


def test_sharded_scales_are_bit_identical_on_every_rank_and_match_one_process():
    g = torch.Generator().manual_seed(3)
    sizes = [30, 12, 7, 3, 1, 0, 20]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    feats = torch.randn(labels.numel(), 8, generator=g)
    reference = class_semantic_scales(feats, labels, len(sizes))
    results = _on_ranks(3, lambda acc: sharded_class_scales(acc, feats, labels, len(sizes), step=2))
    assert all(isinstance(r, torch.Tensor) for r in results), results
    assert all(r.numpy().tobytes() == results[0].numpy().tobytes() for r in results)
    torch.testing.assert_close(results[0], reference, rtol=1e-12, atol=1e-12)
    assert results[0][4] == 0 and results[0][5] == 0 and bool((results[0][[0, 1, 2, 3, 6]] > 0).all())


def test_disagreeing_values_are_named_with_every_rank():
    errors = _on_ranks(2, lambda acc: assert_same_on_all_processes(acc, "Check", num_labels=5 + acc.process_index, d=8))
    for err in errors:
        assert isinstance(err, RuntimeError)
        assert "num_labels (rank 0: 5, rank 1: 6)" in str(err) and "d (" not in str(err)


@pytest.mark.parametrize(
    "backend_error, kind",
    [
        (
            "[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 10000ms for recv operation to complete",
            "timed out",
        ),
        (
            "[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500",
            "connection to another process",
        ),
    ],
)
def test_a_failed_collective_names_the_operation_step_and_causes(backend_error, kind):
    acc = _FakeAccelerator(_ThreadGroup(2), rank=1, fail_with=RuntimeError(backend_error))
    with pytest.raises(DistributedSyncError) as info:
        gather_labelled_features(acc, torch.ones(2, 4), torch.tensor([0, 1]), step=7)
    message = str(info.value)
    for part in (
        "gather of the feature-batch sizes",
        "rank 1",
        "optimizer step 7",
        kind,
        "crashed",
        "different numbers of batches",
        "drop_last",
        "ddp_timeout",
        backend_error[:20],
    ):
        assert part in message, part
    assert isinstance(info.value.__cause__, RuntimeError)


def test_dsb_refuses_data_parallel(tmp_path):
    sys.path.insert(0, str(SUPPORT_DIR))
    try:
        import distributed_worker as worker
    finally:
        sys.path.remove(str(SUPPORT_DIR))
    trainer = worker.make_trainer(tmp_path, 8, save=False)
    trainer.args._n_gpu = 2  # what TrainingArguments sets for `python train.py` on a 2-GPU machine
    with pytest.raises(ValueError, match="DataParallel.*accelerate launch"):
        trainer_module._check_processes_agree(trainer, None)


@pytest.mark.parametrize("reweight_start, expected", [(None, -1), (0.4, 400_000)])
def test_processes_are_checked_to_agree_on_when_reweighting_starts(tmp_path, monkeypatch, reweight_start, expected):
    sys.path.insert(0, str(SUPPORT_DIR))
    try:
        import distributed_worker as worker
    finally:
        sys.path.remove(str(SUPPORT_DIR))
    trainer = worker.make_trainer(
        tmp_path, 8, save=False, semscale_warmup_steps=-1, semscale_reweight_start=reweight_start
    )
    checked: dict = {}
    monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda self: 2))
    monkeypatch.setattr(trainer_module, "apply_process_group_timeout", lambda accelerator, timeout: None)
    monkeypatch.setattr(
        trainer_module, "assert_same_on_all_processes", lambda acc, what, step=None, **values: checked.update(values)
    )
    trainer_module._check_processes_agree(trainer, None)
    assert checked["reweight_start_ppm"] == expected and checked["warmup_ratio_ppm"] == 300_000


@pytest.mark.parametrize(
    "name, distributed_type, processes",
    [
        ("single_gpu", "NO", 1),
        ("multi_gpu", "MULTI_GPU", 8),
        ("fsdp", "FSDP", 8),
        ("deepspeed_zero2", "DEEPSPEED", 8),
        ("multi_cpu", "MULTI_CPU", 2),
    ],
)
def test_accelerate_configs_load_with_this_accelerate(name, distributed_type, processes):
    from accelerate.commands.config.config_args import ClusterConfig

    path = REPO_ROOT / "recipes" / "accelerate_configs" / f"{name}.yaml"
    config = ClusterConfig.from_yaml_file(str(path))  # unknown keys raise
    assert config.distributed_type.value == distributed_type and config.num_processes == processes
    assert config.use_cpu == (name == "multi_cpu")
    readme = path.with_name("README.md").read_text()
    assert f"--config_file recipes/accelerate_configs/{name}.yaml" in readme


# ---------------------------------------------------------------- 2 real processes over gloo


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher was started in its own session: only its tree
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """torchrun --nproc_per_node 2 over gloo (train, resume, mismatch, stall) + a 1-process reference."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("dist")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_DISABLED": "true",
    }
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(WORKER),
        "--out",
        str(out / "two"),
        "--phases",
        "train,plain,resume,mismatch,stall",
        "--per-device-batch",
        "4",
        "--ddp-timeout",
        str(DDP_TIMEOUT_S),
    ]
    log_path = out / "torchrun.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    timed_out = False
    try:
        # Meanwhile, the 1-process reference: per-device batch 8 == 2 x 4, the same sample order.
        sys.path.insert(0, str(SUPPORT_DIR))
        threads = torch.get_num_threads()
        try:
            import distributed_worker as worker

            torch.set_num_threads(1)
            worker.run_phase("train", out / "one", per_device_batch=8, ddp_timeout=1800)
        finally:
            torch.set_num_threads(threads)
            sys.path.remove(str(SUPPORT_DIR))
        try:
            proc.wait(timeout=max(1.0, LAUNCH_TIMEOUT_S - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        _kill_group(proc)
    log_text = log_path.read_text(errors="replace")
    return SimpleNamespace(
        two=out / "two",
        one=out / "one",
        returncode=proc.returncode,
        timed_out=timed_out,
        log=log_text,
        wall_s=time.monotonic() - started,
    )


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    assert path.is_file(), f"{path} was not written"
    return load_file(str(path))


def _phase_result(run, phase: str, rank: int) -> tuple[dict, dict]:
    folder = run.two / phase
    if not (folder / f"rank{rank}.safetensors").is_file():
        pytest.fail(
            f"phase {phase!r} wrote no result for rank {rank} (timed out: {run.timed_out}). torchrun log tail:\n"
            + run.log[-4000:]
        )
    return _load(folder / f"rank{rank}.safetensors"), json.loads((folder / f"rank{rank}.json").read_text())


def _rows_per_class(state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Each class's pool rows, in a canonical order (sorted by a fixed random projection): order-robust."""
    caps, filled, storage = state["pool.capacities"], state["pool.filled"], state["pool.storage"].double()
    offsets = torch.cumsum(caps, 0) - caps
    key = torch.randn(storage.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = []
    for o, f in zip(offsets.tolist(), filled.tolist()):
        rows = storage[o : o + f]
        out.append(rows[torch.argsort(rows @ key)])
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_every_rank_holds_bit_identical_weights_pool_and_model(two_process_run):
    for phase in ("train", "resume"):
        files = [two_process_run.two / phase / f"rank{r}.safetensors" for r in (0, 1)]
        state, info = _phase_result(two_process_run, phase, 0)
        assert info["num_processes"] == 2 and info["global_step"] == 24
        assert files[0].read_bytes() == files[1].read_bytes(), f"{phase}: the ranks' weights/pool/model differ"
        # the weights after EVERY update are in the files; DSB really re-weighted
        assert state["history.weights"].shape[0] >= 5
        assert not torch.allclose(state["class_weights"], torch.ones_like(state["class_weights"]))


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_match_one_process_on_the_same_global_batches(two_process_run):
    two, info2 = _phase_result(two_process_run, "train", 0)
    one = _load(two_process_run.one / "train" / "rank0.safetensors")
    info1 = json.loads((two_process_run.one / "train" / "rank0.json").read_text())
    assert info1["num_processes"] == 1
    assert info2["update_steps"] == info1["update_steps"] and len(info1["update_steps"]) == 10
    # each rank stored only its classes' rows (the default class-sharded pool); the saved pool is whole
    info2_rank1 = _phase_result(two_process_run, "train", 1)[1]
    assert info2["pool_sharded"] and info2_rank1["pool_sharded"] and not info1["pool_sharded"]
    assert max(info2["pool_nbytes"], info2_rank1["pool_nbytes"]) < info1["pool_nbytes"]
    assert info2["pool_nbytes"] + info2_rank1["pool_nbytes"] == info1["pool_nbytes"]
    # the pool saw the global batch: the same rows per class (order-robust), the same counts
    for key in ("pool.filled", "pool.total_added", "pool.capacities"):
        assert torch.equal(two[key], one[key]), key
    for c, (rows2, rows1) in enumerate(zip(_rows_per_class(two), _rows_per_class(one))):
        torch.testing.assert_close(rows2, rows1, rtol=1e-5, atol=1e-5, msg=f"pool rows of class {c}")
    # the weights depend only on the pool: equal after every update
    torch.testing.assert_close(two["history.scales"], one["history.scales"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(two["history.weights"], one["history.weights"], rtol=1e-6, atol=1e-6)
    # the model: DDP averages gradients, compute_loss scales by num_processes / global item count
    init = _init_model_state()
    for name, value in one.items():
        if name.startswith("model."):
            torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-5, msg=name)
            assert (value - init[name]).abs().max() > 1e-2, f"{name} barely moved: the comparison would be vacuous"


def _init_model_state() -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(SUPPORT_DIR))
    try:
        import distributed_worker as worker
    finally:
        sys.path.remove(str(SUPPORT_DIR))
    return {f"model.{k}": v.detach().clone() for k, v in worker.make_model().state_dict().items()}


@pytest.mark.distributed
@pytest.mark.slow
def test_a_plain_trainer_with_semscale_balancing_matches_semscale_trainer_on_two_processes(two_process_run):
    """The plain-Trainer route (compute_loss_func + callback) over 2 real processes: the same weights after every
    update, the same pool and model as SemScaleTrainer's run, bit-identical on both ranks."""
    ours, info = _phase_result(two_process_run, "train", 0)
    plain, plain_info = _phase_result(two_process_run, "plain", 0)
    files = [two_process_run.two / "plain" / f"rank{r}.safetensors" for r in (0, 1)]
    assert files[0].read_bytes() == files[1].read_bytes(), "the plain route's ranks differ"
    assert plain_info["num_processes"] == 2 and plain_info["update_steps"] == info["update_steps"]
    for name, value in ours.items():
        torch.testing.assert_close(plain[name], value, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_resume_ends_like_the_uninterrupted_run(two_process_run):
    full, _ = _phase_result(two_process_run, "train", 0)
    resumed, info = _phase_result(two_process_run, "resume", 0)
    assert info["update_steps"] and min(info["update_steps"]) > 10  # it really started from checkpoint-10
    for name, value in full.items():
        if name.startswith("history."):
            continue
        assert torch.equal(resumed[name], value), f"{name} differs after resuming"
    n = len(info["update_steps"])
    assert torch.equal(resumed["history.weights"], full["history.weights"][-n:])


@pytest.mark.distributed
@pytest.mark.slow
def test_num_labels_mismatch_fails_on_every_rank_naming_it(two_process_run):
    folder = two_process_run.two / "mismatch"
    for rank in (0, 1):
        path = folder / f"expected_error_rank{rank}.txt"
        assert path.is_file(), f"rank {rank} did not fail on the num_labels mismatch:\n" + two_process_run.log[-4000:]
        message = path.read_text()
        assert message.startswith("RuntimeError") and "num_labels (rank 0: 5, rank 1: 6)" in message


@pytest.mark.distributed
@pytest.mark.slow
def test_a_stalled_rank_makes_the_other_exit_with_the_cause(two_process_run):
    run = two_process_run
    assert not run.timed_out, "the stalled run hung instead of timing out:\n" + run.log[-4000:]
    assert run.returncode not in (0, None)
    path = run.two / "stall" / "error_rank0.txt"
    assert path.is_file(), "rank 0 recorded no error:\n" + run.log[-4000:]
    message = path.read_text().split("\n\nTraceback")[0]
    assert message.startswith("DistributedSyncError")
    for part in (
        "gather of the feature-batch sizes",
        "rank 0",
        "optimizer step 3",
        "timed out",
        "crashed",
        "different numbers of batches",
        "ddp_timeout",
        f"{DDP_TIMEOUT_S * 1000}ms",
    ):
        assert part in message, part
