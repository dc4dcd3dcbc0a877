"""The ``frozen_cached`` schedule: a frozen encoder's embeddings computed once, an MLP head trained per run.

The regime study's CPU schedule (docs/results.md): all-MiniLM-L6-v2 sentence embeddings (mean pooling over tokens,
L2-normalised), then ``MLPForClassification`` (input -> 256 -> C, dropout 0.1) trained by ``SemScaleTrainer`` with
AdamW lr 1e-3, cosine, batch 32, 10 epochs; DSB reads the head's hidden layer. Cheap enough for dozens of runs on a
laptop CPU, and the same harness as the study's tables, so a selection's numbers compare with them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..metrics import long_tail_metrics

__all__ = ["SPLITS", "HeadSchedule", "embed_splits", "quiet_library_logs"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_ARRAYS: dict[str, dict[str, np.ndarray]] = {}  # per worker process: the features file, loaded once


def embed_splits(
    splits: dict[str, Any],
    model_path: str,
    cache_dir: str | Path,
    max_length: int = 64,
    batch_size: int = 128,
) -> Path:
    """Embed the ``text`` column of each split (``datasets.Dataset`` or None) once.

    Each split's embeddings are cached under ``cache_dir`` by a hash of the model, ``max_length`` and its texts (so
    splits shared between datasets, e.g. one test split under several training subsets, are embedded once); the
    returned ``features-<key>.npz`` holds ``{split}_x [N, d] float32`` and ``{split}_y [N] int64``."""
    from ..features import sentence_embeddings

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    model_key = str(Path(model_path).resolve()) if Path(model_path).exists() else model_path
    arrays, combined = {}, hashlib.sha256()
    for name in SPLITS:
        dataset = splits.get(name)
        if dataset is None:
            continue
        texts = list(dataset["text"])
        key = hashlib.sha256("\x00".join([model_key, str(max_length), *texts]).encode("utf-8")).hexdigest()[:20]
        path = cache / f"embeddings-{key}.npy"
        if not path.is_file():
            embeddings = sentence_embeddings(model_path, texts, max_length, batch_size)
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.save(handle, embeddings)
        arrays[f"{name}_x"] = np.load(path)
        arrays[f"{name}_y"] = np.asarray(dataset["label"], dtype=np.int64)
        combined.update(f"{name}:{key}:".encode() + arrays[f"{name}_y"].tobytes())
    features = cache / f"features-{combined.hexdigest()[:20]}.npz"
    if not features.is_file():
        with atomic_path(features) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return features


@contextlib.contextmanager
def quiet_library_logs(*names: str) -> Iterator[None]:
    """Errors only from ``hf_semscale`` (and the loggers ``names``) during a run: dozens of runs' stage warnings
    would drown the table."""
    loggers = [logging.getLogger(name) for name in ("hf_semscale", *names)]
    previous = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, previous):
            log.setLevel(level)


@dataclass
class HeadSchedule:
    """Train ``MLPForClassification`` on the feature vectors of ``features_file`` (see :func:`embed_splits`) with
    ``SemScaleTrainer``; evaluate on validation and (when present) test. Picklable (paths and numbers only)."""

    features_file: str
    class_names: list[str]
    hidden_dims: tuple[int, ...] = (256,)
    dropout: float = 0.1
    epochs: float = 10.0
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    eval_batch_size: int = 512
    many_threshold: int = 100
    few_threshold: int = 20
    extra_args: dict[str, Any] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        if self.features_file not in _ARRAYS:
            with np.load(self.features_file) as npz:
                _ARRAYS[self.features_file] = {k: npz[k] for k in npz.files}
        return _ARRAYS[self.features_file]

    @property
    def feature_dim(self) -> int:
        """The dimension DSB measures: the head's last hidden layer (its classifier's input)."""
        return int(self.hidden_dims[-1]) if self.hidden_dims else int(self.arrays()["train_x"].shape[1])

    def class_counts(self) -> list[int]:
        return np.bincount(self.arrays()["train_y"], minlength=len(self.class_names)).tolist()

    def steps_per_run(self) -> int:
        return int(math.ceil(self.epochs * math.ceil(len(self.arrays()["train_y"]) / self.batch_size)))

    def _dataset(self, split: str) -> Any:
        import datasets

        a = self.arrays()
        return datasets.Dataset.from_dict({"pixel_values": a[f"{split}_x"], "labels": a[f"{split}_y"]}).with_format(
            "torch"
        )

    def train(
        self, overrides: dict[str, Any], seed: int, max_steps: int | None = None
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """One run; ``max_steps`` cuts it short (timing probes). Returns the record and the split logits."""
        from transformers import PrinterCallback, set_seed
        from transformers.utils import logging as hf_logging

        from ..modeling import MLPClassifierConfig, MLPForClassification
        from ..trainer import SemScaleConfig, SemScaleTrainer

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        a = self.arrays()
        names = list(self.class_names)
        set_seed(seed)
        model = MLPForClassification(
            MLPClassifierConfig(
                input_dim=int(a["train_x"].shape[1]),
                hidden_dims=tuple(self.hidden_dims),
                dropout=self.dropout,
                num_labels=len(names),
                id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)},
            )
        )
        counts = self.class_counts()
        with quiet_library_logs(), tempfile.TemporaryDirectory(prefix="semscale-select-") as tmp:
            args = SemScaleConfig(
                output_dir=tmp,
                num_train_epochs=self.epochs,
                max_steps=max_steps or -1,
                per_device_train_batch_size=self.batch_size,
                per_device_eval_batch_size=self.eval_batch_size,
                learning_rate=self.learning_rate,
                weight_decay=self.weight_decay,
                lr_scheduler_type="cosine",
                seed=seed,
                use_cpu=True,
                report_to=[],
                save_strategy="no",
                eval_strategy="no",
                logging_strategy="no",
                disable_tqdm=True,
                dataloader_pin_memory=False,
                **{**self.extra_args, **overrides},
            )
            trainer = SemScaleTrainer(
                model=model, args=args, train_dataset=self._dataset("train"), class_counts=counts, class_names=names
            )
            trainer.remove_callback(PrinterCallback)  # the run's summary dict, once per run
            trainer.train()
            record: dict[str, Any] = {
                "final_stage": trainer.stage,
                "final_class_weights": trainer.class_weights.tolist(),
                "final_semantic_scales": trainer.semantic_scales.tolist(),
                "steps": trainer.state.global_step,
            }
            logits = {}
            for split in ("validation", "test"):
                if f"{split}_x" not in a:
                    record[split] = None
                    continue
                out = np.asarray(trainer.predict(self._dataset(split)).predictions, dtype=np.float32)
                logits[f"{split}_logits"] = out
                record[split] = self.metrics(out, a[f"{split}_y"])
        return record, logits

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """Long-tail metrics of ``logits [N, C]`` against ``labels [N]`` (shot groups from the training counts)."""
        return long_tail_metrics(
            logits.argmax(-1).tolist(),
            labels.tolist(),
            self.class_counts(),
            many_threshold=self.many_threshold,
            few_threshold=self.few_threshold,
        )
