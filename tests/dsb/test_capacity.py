"""The capacity planner (``plan_pool``, ``hf-semscale plan``) against the real pool, gather and scale batching."""

from __future__ import annotations

import json
import math

import pytest
import torch

import hf_semscale.core.scale as scale_module
from hf_semscale.cli import main
from hf_semscale.core.scale import chunk_layout, class_semantic_scales
from hf_semscale.data import long_tail_counts
from hf_semscale.dsb.capacity import ScaleTimeModel, format_bytes, plan_pool, volume_flops
from hf_semscale.dsb.comm import class_owners, gather_labelled_features
from hf_semscale.dsb.pool import FeaturePool, pool_capacities
from hf_semscale.dsb.settings import BalancerSettings

COUNTS = long_tail_counts(300, 30, 50)


class CountingComm:
    """``processes`` processes seen from rank 0: ``gather`` returns that many copies and counts the bytes sent."""

    def __init__(self, processes: int):
        self.num_processes, self.process_index, self.device, self.sent = processes, 0, torch.device("cpu"), 0

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        self.sent += tensor.numel() * tensor.element_size()
        return torch.cat([tensor] * self.num_processes)


@pytest.mark.parametrize("processes", [1, 2, 3, 8])
@pytest.mark.parametrize("capacity,dtype", [(0, "float16"), (40, "float32")])
def test_pool_memory_is_the_busiest_real_pool(processes, capacity, dtype):
    settings = BalancerSettings(pool_capacity=capacity, pool_dtype=dtype)
    caps = pool_capacities(COUNTS, capacity)
    owner = class_owners(caps.tolist(), 64, processes)
    pools = [FeaturePool(caps, 64, dtype, stored=(owner == r) if processes > 1 else None) for r in range(processes)]
    plan = plan_pool(COUNTS, 64, settings, processes)
    assert plan.pool_bytes_per_process == max(p.nbytes for p in pools)
    assert plan.pool_bytes_one_process == FeaturePool(caps, 64, dtype).nbytes
    assert plan.pool_rows == int(caps.sum()) and plan.samples == sum(COUNTS) and plan.classes == len(COUNTS)


def test_an_unsharded_pool_is_whole_on_every_process():
    plan = plan_pool(COUNTS, 64, BalancerSettings(shard_pool=False), processes=4)
    assert plan.pool_bytes_per_process == plan.pool_bytes_one_process


@pytest.mark.parametrize("processes,batch,dim", [(2, 128, 64), (8, 100, 512), (3, 7, 16)])
def test_gather_bytes_are_what_gather_labelled_features_sends(processes, batch, dim):
    comm = CountingComm(processes)
    per_rank = math.ceil(batch / processes)
    gather_labelled_features(comm, torch.randn(per_rank, dim), torch.randint(0, 10, (per_rank,)))
    plan = plan_pool([10] * 10, dim, processes=processes, global_batch_size=batch)
    assert plan.gather_bytes_sent_per_step == comm.sent
    assert plan.gather_bytes_received_per_step == processes * comm.sent
    assert plan_pool([10] * 10, dim, processes=1, global_batch_size=batch).gather_bytes_sent_per_step == 0


def test_work_is_the_gram_and_cholesky_of_each_class_split_across_processes():
    assert volume_flops(1, 64) == 0.0
    assert volume_flops(10, 64) == 2 * 10 * 10 * 64 + 10**3 / 3  # rows the smaller side: the m x m Gram
    assert volume_flops(100, 64) == 2 * 64 * 64 * 100 + 64**3 / 3
    one = plan_pool(COUNTS, 64, BalancerSettings(update_interval=10))
    assert one.flops_per_update_busiest == pytest.approx(sum(volume_flops(n, 64) for n in COUNTS))
    assert one.flops_per_step_busiest == pytest.approx(one.flops_per_update_busiest / 10)
    split = plan_pool(COUNTS, 64, processes=4)
    largest = volume_flops(max(COUNTS), 64)
    assert max(largest, one.flops_per_update_busiest / 4) <= split.flops_per_update_busiest
    assert split.flops_per_update_busiest < one.flops_per_update_busiest / 2


def test_chunk_layout_is_how_class_semantic_scales_batches(monkeypatch):
    seen = []
    real = scale_module._scales_of_row_sets

    def recording(features, rows, lengths, normalize, alpha):
        seen.append((len(lengths), rows.shape[1]))
        return real(features, rows, lengths, normalize, alpha)

    monkeypatch.setattr(scale_module, "_scales_of_row_sets", recording)
    counts = [1, 0, 2, 3, 9, 40, 41, 300, 5]
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    class_semantic_scales(torch.randn(len(labels), 32), labels, len(counts))
    assert sorted(seen) == sorted(chunk_layout(counts, 32))
    assert sum(n for n, _ in seen) == sum(c >= 2 for c in counts)


def test_time_model_is_calibrated_and_grows_with_the_work(one_torch_thread):
    model = ScaleTimeModel(repeats=1, sides=(4, 16))
    assert set(model.rate) == {(rows, side, a) for rows in (True, False) for side in (4, 16) for a in model.ASPECTS}
    assert all(r > 0 for r in model.rate.values()) and model.overhead >= 0
    assert 0 < model.seconds([20] * 4, 16) < model.seconds([20] * 40, 16)
    plan = plan_pool([20] * 8, 16, processes=2, time_model=model)
    assert plan.seconds_per_update_busiest == pytest.approx(model.seconds([20] * 4, 16))
    assert plan.seconds_per_step_busiest == pytest.approx(plan.seconds_per_update_busiest / 20)
    assert plan_pool([20] * 8, 16).seconds_per_update_busiest is None


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: plan_pool([], 64), "class_counts"),
        (lambda: plan_pool([3, -1], 64), "class_counts"),
        (lambda: plan_pool([3, 4], 0), "feature_dim"),
        (lambda: plan_pool([3, 4], 8, processes=0), "processes"),
        (lambda: plan_pool([3, 4], 8, global_batch_size=0), "global_batch_size"),
        (lambda: ScaleTimeModel(sides=(1, 4)), "sides"),
        (lambda: ScaleTimeModel(repeats=0), "repeats"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1536, 3 * 2**20, 2**31)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "3.0 MiB",
        "2.0 GiB",
    ]


def test_cli_plans_a_dataset_and_given_counts(tmp_path, capsys):
    folder = tmp_path / "intents"
    folder.mkdir()
    rows = [{"text": f"t{i}", "label": c} for c, n in enumerate([5, 3, 1]) for i in range(n)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["plan", "--dataset", str(folder), "--feature-dim", "8", "--processes", "1", "2", "--json"]) == 0
    plans = json.loads(capsys.readouterr().out)
    assert plans["1"] == plan_pool([5, 3, 1], 8, processes=1).to_dict()
    assert plans["2"] == plan_pool([5, 3, 1], 8, processes=2).to_dict()
    assert main(["plan", "--class-counts", "50", "20", "--feature-dim", "16", "--pool-capacity", "10",
                 "--pool-dtype", "float32", "--time"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "2 classes, 70 samples, d=16; pool capacity min(n_c, 10), float32" in out
    assert format_bytes(20 * 16 * 4) in out and " s)" in out


def test_cli_refuses_bad_numbers_and_a_missing_device(monkeypatch):
    with pytest.raises(SystemExit, match="feature_dim must be >= 1"):
        main(["plan", "--class-counts", "5", "4", "--feature-dim", "0"])
    with pytest.raises(SystemExit, match="class_counts must be"):  # before any --time calibration
        main(["plan", "--class-counts", "5", "-4", "--feature-dim", "8", "--time"])
    with pytest.raises(SystemExit, match="update_interval must be >= 1"):
        main(["plan", "--class-counts", "5", "4", "--feature-dim", "8", "--update-interval", "0"])
    with pytest.raises(SystemExit, match="pool_capacity must be >= 0"):
        main(["plan", "--class-counts", "5", "4", "--feature-dim", "8", "--pool-capacity", "-3"])
    with pytest.raises(SystemExit, match="--split and --label-column choose what --dataset counts"):
        main(["plan", "--class-counts", "5", "4", "--feature-dim", "8", "--label-column", "intent"])
    with pytest.raises(SystemExit, match="is where --time measures. Fix: add --time"):
        main(["plan", "--class-counts", "5", "4", "--feature-dim", "8", "--device", "cuda"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device here. Fix: --device cpu"):
        main(["plan", "--class-counts", "5", "4", "--feature-dim", "8", "--time", "--device", "cuda"])
