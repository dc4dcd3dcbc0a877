"""Worker for ``tests/dsb/test_distributed.py`` (and ``benchmarks/distributed.py``): short SemScaleTrainer runs.

A tiny ``MLPForClassification`` on synthetic long-tailed data (96 samples, 8 of them labelled -100, 5 classes), sequential
sampling (no shuffling, so a 2-process run with per-device batch ``b`` sees exactly the global batches
of a 1-process run with batch ``2b``: accelerate gives batch ``2k`` to rank 0 and ``2k+1`` to rank 1),
SGD, no dropout, one thread: deterministic. DSB stages: warm-up 2 steps, fill at most 3, then the
weights are re-measured every 2 steps (10 updates in 24 steps).

Run under ``torchrun --nproc_per_node 2`` (or plain ``python`` for one process)::

    python tests/support/distributed_worker.py --out DIR --phases train,resume,mismatch,stall [--per-device-batch 4]

Phases, in one process per rank (the expensive imports are paid once):

- ``train``: 24 steps, checkpoint every 10; every rank writes ``DIR/train/rank{r}.safetensors`` (final
  class weights, scales, pool, model weights and the weights/scales after EVERY update; nothing
  rank-specific, so the ranks' files must be byte-identical) and ``rank{r}.json``.
- ``resume``: a fresh model and trainer resume from ``DIR/train/checkpoint-10`` and train to 24;
  writes ``DIR/resume/rank{r}.*`` the same way.
- ``plain``: the same run as ``train`` (no checkpoints) with a plain ``transformers.Trainer`` and
  ``SemScaleBalancing`` (``compute_loss_func=balancing.loss``, ``callbacks=[balancing.callback]``): the route for users
  who do not subclass; written like ``train``.
- ``mismatch``: rank 1 builds its model with ``num_labels + 1``; ``train()`` must raise on EVERY rank (the
  message goes to ``DIR/mismatch/expected_error_rank{r}.txt``; in a real script that error ends every
  process with exit code 1); the process group stays usable, so later phases run in the same processes.
- ``stall``: rank 1 stops calling the feature gather at step 3 (sleeps until torchrun stops it); rank 0
  must give up after ``ddp_timeout`` (``--ddp-timeout``, default 10 s) with a message naming the
  cause, and exit 1. Must be the last phase.

An exception in a phase is written to ``DIR/<phase>/error_rank{r}.txt`` and re-raised (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

NUM_LABELS = 5
CLASS_SIZES = [40, 24, 16, 10, 6]  # 96 samples: a multiple of every global batch used (8, 16)
IGNORED_POSITIONS = (17, 18, 29, 40, 41, 42, 43, 50)  # labelled -100 (positions in the sampling order)
INPUT_DIM = 16
HIDDEN_DIMS = (32, 16)
MAX_STEPS = 24
SAVE_STEPS = 10
RESUME_STEP = 10
PER_DEVICE_BATCH = 4  # 2 processes x 4 == 1 process x 8
SEED = 0
STALL_STEP = 3


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def make_dataset() -> tuple[list[dict], list[int]]:
    """Synthetic long-tailed set in a fixed order: ``{"pixel_values", "labels"}`` dicts and the per-class counts.

    The samples at :data:`IGNORED_POSITIONS` are labelled -100, so the two ranks contribute different
    numbers of rows to some gathers (rank 0 none at all in step 5): the padding path runs for real,
    and the loss normaliser differs between the ranks.
    """
    import torch

    g = torch.Generator().manual_seed(1234)
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(CLASS_SIZES)])
    centres = torch.randn(NUM_LABELS, INPUT_DIM, generator=g) * 1.5
    spread = torch.linspace(0.4, 1.4, NUM_LABELS)[labels].unsqueeze(1)
    x = centres[labels] + spread * torch.randn(labels.numel(), INPUT_DIM, generator=g)
    order = torch.randperm(labels.numel(), generator=g)  # classes mixed within every batch
    x, labels = x[order], labels[order].clone()
    labels[list(IGNORED_POSITIONS)] = -100
    counts = torch.bincount(labels[labels >= 0], minlength=NUM_LABELS).tolist()
    return [{"pixel_values": x[i], "labels": labels[i]} for i in range(labels.numel())], counts


def make_model(num_labels: int = NUM_LABELS, hidden_dims: tuple[int, ...] = HIDDEN_DIMS):
    import torch

    from hf_semscale.modeling import MLPClassifierConfig, MLPForClassification

    torch.manual_seed(SEED)
    return MLPForClassification(
        MLPClassifierConfig(input_dim=INPUT_DIM, hidden_dims=hidden_dims, num_labels=num_labels)
    )


def _record_updates(trainer, balancing) -> None:
    """Wrap ``balancing.begin_step`` so ``trainer.update_log`` holds (step, weights, scales) after every update."""
    trainer.update_log = []
    begin_step = balancing.begin_step

    def recorded(args, step):
        updates = balancing.balancer.num_updates
        begin_step(args, step)
        if balancing.balancer.num_updates > updates:
            trainer.update_log.append(
                (step, balancing.balancer.class_weights.clone(), balancing.balancer.semantic_scales.clone())
            )

    balancing.begin_step = recorded


def make_plain_trainer(output_dir: str | Path, per_device_batch: int):
    """A plain ``transformers.Trainer`` with :class:`SemScaleBalancing`, the settings of :func:`make_trainer`."""
    from transformers import Trainer

    from hf_semscale import SemScaleBalancing

    args = make_trainer(output_dir, per_device_batch, save=False).args
    rows, counts = make_dataset()
    model = make_model()
    balancing = SemScaleBalancing(model, args, class_counts=counts)
    trainer = Trainer(
        model=model, args=args, train_dataset=rows, compute_loss_func=balancing.loss, callbacks=[balancing.callback]
    )
    trainer.balancing = balancing
    _record_updates(trainer, balancing)
    return trainer


def make_trainer(
    output_dir: str | Path,
    per_device_batch: int,
    *,
    num_labels: int = NUM_LABELS,
    save: bool = True,
    ddp_timeout: int = 1800,
    stall_rank: int = -1,
    max_steps: int = MAX_STEPS,
    **overrides,
):
    """A ``SemScaleTrainer`` subclass that records the weights after every update (and can stall one rank)."""
    from hf_semscale import SemScaleConfig, SemScaleTrainer

    class RecordingTrainer(SemScaleTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            _record_updates(self, self.balancing)
            self._recorded_begin_step = self.balancing.begin_step
            self.balancing.begin_step = self._begin_step

        def _begin_step(self, args, step):
            self._recorded_begin_step(args, step)
            if self.balancer.capturing and self.args.process_index == stall_rank and step >= STALL_STEP:
                # This rank "hangs" before the gather (as a stuck data loader would) until torchrun
                # stops it once the other rank has failed (exit 3 after 5 minutes otherwise).
                time.sleep(300)
                os._exit(3)

    settings = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        seed=SEED,
        max_steps=max_steps,
        per_device_train_batch_size=per_device_batch,
        train_sampling_strategy="sequential",
        optim="sgd",
        learning_rate=0.05,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        save_strategy="steps" if save else "no",
        save_steps=SAVE_STEPS,
        logging_steps=1000,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_timeout=ddp_timeout,
        semscale_warmup_steps=2,
        semscale_fill_max_steps=3,
        semscale_update_interval=2,
        semscale_pool_dtype="float32",
    )
    settings.update(overrides)
    rows, counts = make_dataset()
    counts = counts + [0] * (num_labels - NUM_LABELS)
    return RecordingTrainer(
        model=make_model(num_labels), args=SemScaleConfig(**settings), train_dataset=rows, class_counts=counts
    )


def dump(trainer, folder: Path) -> None:
    """``rank{r}.safetensors`` (rank-independent content) and ``rank{r}.json`` (with the rank) in ``folder``."""
    import torch
    from safetensors.torch import save_file

    rank, world = rank_and_world()
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}
    balancer = trainer.balancing.balancer  # SemScaleTrainer or a plain Trainer with SemScaleBalancing
    tensors["class_weights"] = balancer.class_weights
    tensors["semantic_scales"] = balancer.semantic_scales
    state = balancer.state_dict()  # every rank: a class-sharded pool is gathered whole
    tensors.update({k: v.contiguous() for k, v in state.items() if k.startswith("pool.")})
    if trainer.update_log:
        tensors["history.steps"] = torch.tensor([s for s, _, _ in trainer.update_log], dtype=torch.long)
        tensors["history.weights"] = torch.stack([w for _, w, _ in trainer.update_log])
        tensors["history.scales"] = torch.stack([s for _, _, s in trainer.update_log])
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu() for k, v in tensors.items()}, str(folder / f"rank{rank}.safetensors"))
    info = {
        "rank": rank,
        "world_size": world,
        "num_processes": trainer.accelerator.num_processes,
        "global_step": trainer.state.global_step,
        "stage": balancer.stage,
        "num_updates": balancer.num_updates,
        "pool_nbytes": balancer.pool.nbytes if balancer.pool is not None else 0,
        "pool_sharded": balancer.pool.is_sharded if balancer.pool is not None else False,
        "update_steps": [s for s, _, _ in trainer.update_log],
    }
    (folder / f"rank{rank}.json").write_text(json.dumps(info), encoding="utf-8")


def run_phase(phase: str, out: Path, per_device_batch: int, ddp_timeout: int) -> None:
    rank, _ = rank_and_world()
    folder = out / phase
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if phase == "train":
            trainer = make_trainer(folder, per_device_batch)
            trainer.train()
            dump(trainer, folder)
        elif phase == "plain":
            trainer = make_plain_trainer(folder, per_device_batch)
            trainer.train()
            dump(trainer, folder)
        elif phase == "resume":
            trainer = make_trainer(folder, per_device_batch, save=False)
            trainer.train(resume_from_checkpoint=str(out / "train" / f"checkpoint-{RESUME_STEP}"))
            dump(trainer, folder)
        elif phase == "mismatch":
            trainer = make_trainer(
                folder,
                per_device_batch,
                num_labels=NUM_LABELS + (1 if rank == 1 else 0),
                save=False,
                ddp_timeout=ddp_timeout,
            )
            try:
                trainer.train()
            except RuntimeError as err:  # expected on every rank; the process group stays usable
                (folder / f"expected_error_rank{rank}.txt").write_text(f"{type(err).__name__}: {err}\n")
                return
            raise AssertionError("train() with num_labels differing between the processes did not fail")
        elif phase == "stall":
            trainer = make_trainer(folder, per_device_batch, save=False, ddp_timeout=ddp_timeout, stall_rank=1)
            trainer.train()
        else:
            raise ValueError(f"unknown phase {phase!r}")
    except BaseException as err:
        (folder / f"error_rank{rank}.txt").write_text(f"{type(err).__name__}: {err}\n\n{traceback.format_exc()}")
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--phases", default="train")
    parser.add_argument("--per-device-batch", type=int, default=PER_DEVICE_BATCH)
    parser.add_argument("--ddp-timeout", type=int, default=10)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    for phase in args.phases.split(","):
        run_phase(phase, args.out, args.per_device_batch, args.ddp_timeout)
        print(f"@@phase-done {phase} rank {rank_and_world()[0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
