"""Worker for the torch.distributed test of ``tests/dsb/test_balancer.py``: a plain loop (no Trainer, no Accelerate)
where each of ``world_size`` gloo processes observes its share of every global batch through ``TorchDistributedComm``."""

from __future__ import annotations

from pathlib import Path

import torch

COUNTS = [12, 6, 3]
STEPS = 12
SETTINGS = dict(warmup_steps=2, update_interval=2, pool_capacity=5, fill_max_steps=3)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])
    spread = torch.tensor([0.2, 0.6, 1.2])[labels, None]
    return torch.randn(len(labels), 6, generator=g) * spread + labels[:, None], labels


def shares(step: int, world_size: int) -> list[torch.Tensor]:
    """Rows of each rank at ``step``: a global batch of 7 split unevenly (rank 0 takes one more)."""
    rows = (torch.arange(7) + 7 * step) % sum(COUNTS)
    cut = 7 // world_size + 1
    return [rows[:cut], *rows[cut:].tensor_split(world_size - 1)] if world_size > 1 else [rows]


def run_loop(balancer, rank: int, world_size: int) -> None:
    features, labels = data()
    balancer.start(STEPS, steps_per_epoch=3)
    for step in range(STEPS):
        balancer.begin_step(step)
        mine = shares(step, world_size)[rank]
        balancer.observe(features[mine] * (1 + 0.02 * step), labels[mine])


def rank_main(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from hf_semscale import BalancerSettings, SemanticScaleBalancer, TorchDistributedComm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        balancer = SemanticScaleBalancer(COUNTS, BalancerSettings(**SETTINGS), comm=TorchDistributedComm())
        run_loop(balancer, rank, world_size)
        torch.save(balancer.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
