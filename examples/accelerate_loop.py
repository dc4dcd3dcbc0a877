"""DSB re-weighting in a plain Accelerate loop: ``SemanticScaleBalancer`` + ``HeadInputCapture``, no Trainer.

    python examples/accelerate_loop.py --output_dir runs/accelerate_loop
    accelerate launch --cpu --num_processes 2 examples/accelerate_loop.py --output_dir runs/accelerate_loop_2p
    python examples/accelerate_loop.py --output_dir runs/accelerate_loop --resume   # from the latest save

The data are built in (long-tailed Gaussian classes of growing spread, 12 features, 5 classes), so it runs
offline in seconds. The balancer is registered for checkpointing: ``accelerator.save_state`` stores its pool,
weights and stage beside the model and optimizer, and ``--resume`` continues from the latest save as if the
run had not stopped. What differs from ``SemScaleTrainer``: nothing of the method; the loop, optimiser,
clipping and schedule are yours. With the same settings, data order and optimiser the two end with the same
class weights (``tests/dsb/test_balancer.py``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from hf_semscale import BalancerSettings, HeadInputCapture, SemanticScaleBalancer
from hf_semscale.dsb.balancer import json_weights
from hf_semscale.modeling import MLPClassifierConfig, MLPForClassification

CLASS_COUNTS = (48, 24, 12, 6, 3)
INPUT_DIM = 12


def make_dataset(seed: int = 7):
    """A ``datasets.Dataset`` of ``pixel_values`` [12] floats and ``labels``, long-tailed (``CLASS_COUNTS``)."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(CLASS_COUNTS)])
    centres = torch.randn(len(CLASS_COUNTS), INPUT_DIM, generator=g) * 2.0
    spread = torch.linspace(0.3, 1.5, len(CLASS_COUNTS))[labels].unsqueeze(1)
    x = centres[labels] + spread * torch.randn(labels.numel(), INPUT_DIM, generator=g)
    return Dataset.from_dict({"pixel_values": x.tolist(), "labels": labels.tolist()})


def make_model(num_labels: int = len(CLASS_COUNTS), seed: int = 1234) -> MLPForClassification:
    set_seed(seed)
    return MLPForClassification(MLPClassifierConfig(input_dim=INPUT_DIM, hidden_dims=(24, 16), num_labels=num_labels))


def train(
    model,
    dataset,
    settings: BalancerSettings,
    *,
    max_steps: int,
    batch_size: int = 8,
    learning_rate: float = 5e-3,
    max_grad_norm: float = 1.0,
    output_dir: str | Path | None = None,
    save_every: int = 0,
    resume: bool = False,
    accelerator: Accelerator | None = None,
) -> SemanticScaleBalancer:
    """Train ``model`` for ``max_steps`` optimizer steps (data in order, AdamW, constant learning rate) with DSB.

    ``save_every`` > 0 saves the whole state (model, optimizer, RNG, balancer) to ``output_dir/step_N`` every
    that many steps; ``resume`` continues from the latest one. Returns the balancer (its ``class_weights``,
    ``semantic_scales``, ``stage``). ``dataset`` holds the whole training set on every process.
    """
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    class_counts = torch.bincount(torch.as_tensor(dataset["labels"]), minlength=model.config.num_labels)
    balancer = SemanticScaleBalancer(class_counts, settings, comm=accelerator, device=accelerator.device)
    capture = HeadInputCapture(model)  # the classifier head's input, found from model.config.num_labels
    loader = DataLoader(dataset.with_format("torch"), batch_size=batch_size, shuffle=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(balancer)
    balancer.start(max_steps, steps_per_epoch=len(loader))

    step = 0
    if resume:
        saves = sorted(Path(output_dir).glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        if saves:
            accelerator.load_state(str(saves[-1]))  # model, optimizer, RNG and the balancer's state
            step = int(saves[-1].name.split("_")[1])
    model.train()
    while step < max_steps:
        epoch_step = step % len(loader)
        batches = accelerator.skip_first_batches(loader, epoch_step) if epoch_step else loader
        for batch in batches:
            record = balancer.begin_step(step)  # stage changes and weight updates
            if record is not None and record.measured and accelerator.is_main_process:
                accelerator.print(json.dumps({"step": step, **{k: round(v, 4) for k, v in record.logs.items()}}))
            labels = batch.pop("labels")
            if balancer.capturing:
                capture.arm()
            logits = model(**batch).logits
            if balancer.capturing:
                balancer.observe(capture.take(batch), labels)
            loss = balancer.loss(logits, labels)
            accelerator.backward(loss)
            if max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if output_dir is not None and save_every > 0 and step % save_every == 0:
                accelerator.save_state(str(Path(output_dir) / f"step_{step}"))
            if step >= max_steps:
                break
    capture.remove()
    return balancer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=8, help="per process")
    parser.add_argument("--save_every", type=int, default=20)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    settings = BalancerSettings(warmup_steps=10, update_interval=5, pool_capacity=16)
    per_epoch = math.ceil(sum(CLASS_COUNTS) / (args.batch_size * accelerator.num_processes))
    accelerator.print(
        f"{sum(CLASS_COUNTS)} samples, {per_epoch} steps per epoch, {accelerator.num_processes} process(es)"
    )
    balancer = train(
        make_model(),
        make_dataset(),
        settings,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        output_dir=args.output_dir,
        save_every=args.save_every,
        resume=args.resume,
        accelerator=accelerator,
    )
    if accelerator.is_main_process:
        summary = {
            "stage": balancer.stage,
            "updates": balancer.num_updates,
            "scales": [round(s, 3) for s in balancer.semantic_scales.tolist()],
            "weights": json_weights(balancer.class_weights.round(decimals=3)),  # null: a class without samples
        }
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "balancer_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
