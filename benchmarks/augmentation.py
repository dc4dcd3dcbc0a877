"""Epoch time of the image recipe's two augmentation paths, side by side in one run (issue 13, item 3).

- ``per_item``: the per-image ``set_transform`` (``ImageTransform``: bytes -> tensor, pad, crop, flip, normalise,
  one image at a time) batched by ``transformers.default_data_collator``, as ``SemScaleTrainer`` would;
- ``batched``: the images as one uint8 tensor (``UInt8Images``) and ``BatchImageCollator``, which crops, flips and
  normalises whole batches at once (``augment_batch``).

Both draw the same augmentation distribution (``tests/helpers/test_recipes.py``). Measured on the CPU tier's data
and model: CIFAR-10-LT (IF 100, 12,406 training images; random uint8 images with the same counts when
``../shared/data/cifar10`` is absent), batch 128, one thread, ``num_workers=0``; the CPU tier's ResNet-8 with half
widths and SGD for the training epochs. Repeats alternate the two paths (A B A B ...), so machine load hits both
alike; the report gives every repeat and the median ratio.

    python benchmarks/augmentation.py                 # writes benchmarks/results/augmentation.{json,md}
    python benchmarks/augmentation.py --repeats 2 --train-steps 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.smoke import parse_benchmark_args, write_results  # noqa: E402
from hf_semscale.environment import machine_description, machine_text  # noqa: E402
from recipes.train_image import (  # noqa: E402
    BatchImageCollator,
    ImageTransform,
    UInt8Images,
    channel_stats,
    pack_images,
)

BATCH = 128


def cifar10_lt(data_dir: Path, n_max: int) -> tuple[object, np.ndarray, list[int], str]:
    """(packed HF dataset with image bytes, images [N, 32, 32, 3] uint8, labels, what the data is); IF 100 with
    ``n_max`` images in the largest class."""
    import datasets

    from hf_semscale.data import load_dataset_any, long_tail_counts, long_tail_indices

    if (data_dir / "cifar10").is_dir():
        train = load_dataset_any(str(data_dir / "cifar10"), "train")
        labels = train.with_format(None)["label"]
        train = train.select(long_tail_indices(labels, 100, seed=0, n_max=n_max, num_classes=10))
        packed, images = pack_images(train)
        return packed, images, list(packed.with_format(None)["label"]), "CIFAR-10-LT (IF 100), real images"
    counts = long_tail_counts(n_max, 10, 100)
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    features = datasets.Features({"image": datasets.Value("binary"), "label": datasets.Value("int64")})
    packed = datasets.Dataset.from_dict({"image": [x.tobytes() for x in images], "label": labels}, features=features)
    return packed, images, labels, "random uint8 images with CIFAR-10-LT's counts (../shared/data/cifar10 absent)"


def loaders(packed, images, labels, mean, std) -> dict[str, torch.utils.data.DataLoader]:
    from transformers import default_data_collator

    packed.set_transform(ImageTransform(mean, std, images.shape[1:], train=True))
    generator = {name: torch.Generator().manual_seed(0) for name in ("per_item", "batched")}
    return {
        "per_item": torch.utils.data.DataLoader(
            packed, batch_size=BATCH, shuffle=True, collate_fn=default_data_collator, generator=generator["per_item"]
        ),
        "batched": torch.utils.data.DataLoader(
            UInt8Images(images, labels, augment=True),
            batch_size=BATCH,
            shuffle=True,
            collate_fn=BatchImageCollator(mean, std),
            generator=generator["batched"],
        ),
    }


def data_epoch(loader) -> float:
    start = time.perf_counter()
    for batch in loader:
        assert batch["pixel_values"].shape[1:] == (3, 32, 32)
    return time.perf_counter() - start


def train_steps(loader, steps: int) -> float:
    """Seconds per optimizer step (data + forward + backward + SGD) of the CPU tier's ResNet-8, over ``steps``."""
    from hf_semscale.modeling import CifarResNetConfig, CifarResNetForImageClassification

    torch.manual_seed(0)
    model = CifarResNetForImageClassification(CifarResNetConfig(depth=8, widths=(8, 16, 32), num_labels=10)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    batches = iter(loader)
    next(batches)  # the first batch starts the iterator; not timed
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=batch["pixel_values"]).logits, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=os.environ.get("HF_SEMSCALE_DATA_DIR", str(REPO.parent / "shared" / "data")),
        help="folder holding cifar10/ (default $HF_SEMSCALE_DATA_DIR, else ../shared/data); random images if absent",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument(
        "--n-max", type=int, default=5000, help="images of the largest class (IF 100: n_max ... n_max/100)"
    )
    args = parse_benchmark_args(parser, argv, smoke={"repeats": 1, "train_steps": 2, "n_max": 300})
    torch.set_num_threads(1)
    packed, images, labels, what = cifar10_lt(args.data_dir, args.n_max)
    mean, std = channel_stats(images)
    paths = loaders(packed, images, labels, mean, std)
    batches_per_epoch = len(paths["batched"])
    runs = {name: {"data_epoch_s": [], "train_step_s": []} for name in paths}
    for repeat in range(args.repeats):
        order = list(paths) if repeat % 2 == 0 else list(reversed(paths))
        for name in order:
            runs[name]["data_epoch_s"].append(data_epoch(paths[name]))
        for name in order:
            runs[name]["train_step_s"].append(train_steps(paths[name], args.train_steps))
    summary = {}
    for name, r in runs.items():
        step = statistics.median(r["train_step_s"])
        summary[name] = {
            "data_epoch_s": statistics.median(r["data_epoch_s"]),
            "per_image_us": 1e6 * statistics.median(r["data_epoch_s"]) / len(labels),
            "train_step_s": step,
            "train_epoch_s": step * batches_per_epoch,
        }
    ratio = {key: summary["per_item"][key] / summary["batched"][key] for key in ("data_epoch_s", "train_epoch_s")}
    result = {
        "benchmark": "augmentation",
        "data": what,
        "images": len(labels),
        "batch_size": BATCH,
        "batches_per_epoch": batches_per_epoch,
        "threads": 1,
        "machine": machine_description(),
        "repeats": runs,
        "median": summary,
        "speedup_per_item_over_batched": ratio,
        "command": "python benchmarks/augmentation.py " + " ".join(argv or sys.argv[1:]),
    }
    lines = [
        "# Augmentation: per-image set_transform vs batched uint8 collator",
        "",
        f"{what}; {len(labels):,} images, batch {BATCH} ({batches_per_epoch} batches), 1 thread, "
        f"{machine_text(result['machine'])}. "
        f"Median of {args.repeats} alternating repeats. Command: `{result['command']}`.",
        "",
        "| path | data-only epoch (s) | per image (us) | train step (s) | train epoch (s) |",
        "|---|--:|--:|--:|--:|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['data_epoch_s']:.2f} | {s['per_image_us']:.0f} | {s['train_step_s']:.3f} | "
            f"{s['train_epoch_s']:.1f} |"
        )
    lines += [
        "",
        f"Speed-up of the batched path: data-only epoch {ratio['data_epoch_s']:.2f}x, training epoch "
        f"(data + ResNet-8 forward/backward/SGD) {ratio['train_epoch_s']:.2f}x.",
        "",
    ]
    write_results(args.out_dir, "augmentation", result, "\n".join(lines))
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
