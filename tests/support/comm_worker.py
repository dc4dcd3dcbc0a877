"""Worker for the torch.distributed tests of ``tests/dsb/test_balancer.py``: a plain loop (no Trainer, no Accelerate)
where each of ``world_size`` gloo processes observes its share of every global batch through ``TorchDistributedComm``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

COUNTS = [12, 10, 8, 6, 5, 4, 3, 2]
STEPS = 12
SETTINGS = dict(warmup_steps=2, update_interval=2, pool_capacity=5, fill_max_steps=3)
BATCH = 9


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])
    spread = torch.linspace(0.2, 1.2, len(COUNTS))[labels, None]
    return torch.randn(len(labels), 6, generator=g) * spread + labels[:, None], labels


def shares(step: int, world_size: int) -> list[torch.Tensor]:
    """Rows of each rank at ``step``: a global batch of 9 split unevenly (rank 0 takes one more)."""
    rows = (torch.arange(BATCH) + BATCH * step) % sum(COUNTS)
    cut = BATCH // world_size + 1
    return [rows[:cut], *rows[cut:].tensor_split(world_size - 1)] if world_size > 1 else [rows]


def run_loop(balancer, rank: int, world_size: int, steps: range = range(STEPS), start: bool = True) -> None:
    features, labels = data()
    if start:
        balancer.start(STEPS + 6, steps_per_epoch=3)
    for step in steps:
        balancer.begin_step(step)
        mine = shares(step, world_size)[rank]
        balancer.observe(features[mine] * (1 + 0.02 * step), labels[mine])


def rank_main(rank: int, world_size: int, init_file: str, out_dir: str, shard_pool: bool) -> None:
    import torch.distributed as dist

    from hf_semscale import BalancerSettings, SemanticScaleBalancer, TorchDistributedComm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        settings = BalancerSettings(**SETTINGS, shard_pool=shard_pool)
        balancer = SemanticScaleBalancer(COUNTS, settings, comm=TorchDistributedComm())
        run_loop(balancer, rank, world_size)
        torch.save(balancer.state_dict(), Path(out_dir) / f"rank{rank}.pt")  # every rank: the pool is gathered
        info = {"pool_nbytes": balancer.pool.nbytes, "sharded": balancer.pool.is_sharded}
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(info))
    finally:
        dist.destroy_process_group()
