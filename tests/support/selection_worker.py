"""A selection in its own process, for the kill -9 test: ``python selection_worker.py <features.npz> <output_dir>``.

Tiny synthetic features, one worker, one torch thread: deterministic, so an interrupted and resumed selection must
end with exactly the table of an uninterrupted one. Prints the result's JSON on its last line."""

from __future__ import annotations

import json
import sys

import numpy as np


def make_features(path: str, seed: int = 0) -> None:
    """4 classes (40 / 16 / 8 / 4 training rows) of 6-d Gaussian blobs; 5 validation and 5 test rows per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 6)) * 1.5
    arrays = {}
    for split, counts in (("train", [40, 16, 8, 4]), ("validation", [5] * 4), ("test", [5] * 4)):
        y = np.repeat(np.arange(4), counts)
        arrays[f"{split}_x"] = (centres[y] + rng.normal(size=(y.size, 6))).astype(np.float32)
        arrays[f"{split}_y"] = y.astype(np.int64)
    np.savez(path, **arrays)


def schedule(path: str):
    from hf_semscale.select.frozen import HeadSchedule

    return HeadSchedule(path, ["a", "b", "c", "d"], hidden_dims=(8,), epochs=2.0, batch_size=8)


def settings():
    from hf_semscale.select.candidates import GridSpec
    from hf_semscale.select.selection import SelectionSettings

    return SelectionSettings(
        candidates=("ce", "ce_posthoc_la", "pow_ce_tuned", "dsb_ce"),
        seeds=(0, 1),
        grid=GridSpec(starts=(0.5,), gammas=(1.0,), powers=(0.5, 1.0)),
        workers=1,
    )


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    from hf_semscale.select.selection import select_method

    result = select_method(schedule(sys.argv[1]), sys.argv[2], settings(), log=lambda line: print(line, flush=True))
    print(json.dumps(result), flush=True)
