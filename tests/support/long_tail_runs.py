"""A synthetic work dir of finished long-tail runs (``results.json`` files only), for the report-regeneration test:
``build(work_dir, lt)`` lays the runs out with ``lt`` (the benchmark's tier helpers: ``tier_settings``, ``run_dir``,
``method_grid``, ``grid_tag``, ``tuned_methods``), so an old and a new benchmark build the same folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

TIERS = ("tiny", "cifar_balanced")
METRICS = ("accuracy", "balanced_accuracy", "many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy")


def _value(*key: Any) -> float:
    """A deterministic number in [0.3, 0.9) from ``key``."""
    digest = hashlib.sha256(json.dumps(key, default=str).encode()).digest()
    return 0.3 + 0.6 * int.from_bytes(digest[:4], "big") / 2**32


def _metrics(classes: int, *key: Any) -> dict[str, Any]:
    out = {m: _value(m, *key) for m in METRICS}
    out["per_class_accuracy"] = [_value("class", c, *key) for c in range(classes)]
    return out


def _result(method: str, seed: int, knobs: dict[str, Any], counts: list[int], tag: str, test: bool) -> dict[str, Any]:
    classes = len(counts)
    return {
        "method": method,
        "seed": seed,
        "semscale": {"semscale_gamma": 1.0, "semscale_warmup_ratio": 0.3, **knobs},
        "train_class_counts": counts,
        "feature_dim": 16,
        "wall_time_s": 10 + 50 * _value("wall", method, seed, tag),
        "final_class_weights": [0.5 + _value("w", c, method, seed, tag) for c in range(classes)],
        "final_semantic_scales": [1 + 5 * _value("s", c, method, seed, tag) for c in range(classes)],
        "validation": _metrics(classes, "validation", method, seed, tag),
        "train": {"accuracy": _value("train", method, seed, tag)},
        **({"test": _metrics(classes, "test", method, seed, tag)} if test else {}),
    }


def _write(folder: Path, record: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(record), encoding="utf-8")


def build(work_dir: Path, lt: ModuleType, seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    """Tuning runs at every grid point (seed 0, validation only), then final runs at the chosen-by-score point of
    every method and seed (a dsb_ce seed left unfinished, so a partial row shows too), for the tiers ``TIERS``."""
    for tier in TIERS:
        for setting in lt.tier_settings(tier):
            counts = [40, 20, 10, 5] if tier == "tiny" else [1000] * 10
            chosen: dict[str, dict[str, Any]] = {}
            for method in lt.tuned_methods(setting):
                points = lt.method_grid(setting, method)
                for point in points:
                    tag = "_tune" + lt.grid_tag(point)
                    _write(
                        lt.run_dir(work_dir, tier, setting, method, 0, tag),
                        _result(method, 0, point, counts, tag, False),
                    )
                chosen[method] = max(
                    points, key=lambda p: _value("balanced_accuracy", "validation", method, 0, "_tune" + lt.grid_tag(p))
                )
            for method in setting["methods"]:
                for seed in seeds:
                    if method == "dsb_ce" and seed == seeds[-1] and tier == "tiny":
                        continue
                    knobs = chosen.get(method, {})
                    _write(
                        lt.run_dir(work_dir, tier, setting, method, seed),
                        _result(method, seed, knobs, counts, "", True),
                    )
