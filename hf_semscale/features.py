"""Penultimate features of a dataset: load a model, run it in batches, capture the head's input.

Models: a local folder or Hub id of a transformers ``*ForSequenceClassification`` (with its
tokenizer) or ``*ForImageClassification`` (with its image processor, if it has one), including the
project's own models in :mod:`hf_semscale.modeling`; or a timm architecture name, built with random
weights (``pretrained=False``: nothing is downloaded). The features are the INPUT of the
classification head (:class:`hf_semscale.dsb.capture.HeadInputCapture`).

Datasets are those of :func:`hf_semscale.data.load_dataset_any`: an ``image`` (HWC uint8 arrays or
PIL images) or ``text`` column, and an integer ``label`` column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .dsb.capture import HeadInputCapture

__all__ = [
    "ModelLoadError",
    "FeatureModel",
    "load_model_for_features",
    "extract_features",
    "extract_sample_vectors",
    "resolve_device",
    "sentence_embeddings",
    "POOLINGS",
]

Modality = Literal["text", "image"]
POOLINGS = {
    "head": "the input of the classification head (what the trained classifier reads; BERT: the pooler output)",
    "mean": "the mean of the last hidden states over non-pad tokens (how sentence-transformers encoders are trained)",
    "cls": "the last hidden state of the first token ([CLS])",
}
"""``pooling`` of :func:`extract_features` -> what the feature is, in words (printed and saved with a report)."""
_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


class ModelLoadError(ValueError):
    """A model that cannot be found or built, or that does not fit the dataset."""


@dataclass
class FeatureModel:
    """A model ready for feature extraction.

    Attributes:
        model: the ``nn.Module`` (eval mode during extraction).
        modality: ``"text"`` or ``"image"``.
        name: what it was loaded from.
        num_labels: outputs of its classification head.
        head_name: dotted name of the head whose input are the features.
        head_is_trained: the head's weights came from the checkpoint (False for a new or resized head,
            and for timm architectures, which are built with random weights).
        processor: tokenizer or image processor; None for timm and processor-less image models.
        label_names: the checkpoint's ``id2label`` names, None when they are generic (``LABEL_0``...).
        image_mean, image_std: per-channel normalisation of ``[0, 1]`` pixels for processor-less images.
        image_size: ``(H, W)`` the model requires, or None when any size works.
        preprocessing_saved: the input preprocessing comes with the model (tokenizer, image processor,
            ``image_mean`` / ``image_std`` in its config, timm's data config); False when pixels are only
            assumed to be ``[0, 1]``, which a model trained on normalised pixels misreads.
        num_channels: input channels the model expects.
        source: ``"transformers"`` (called with keyword inputs) or ``"timm"`` (called with the pixel tensor).
        notes: caveats for the report (random weights, new head, padding with EOS, ...).
    """

    model: nn.Module
    modality: Modality
    name: str
    num_labels: int
    head_name: str
    head_is_trained: bool
    processor: Any | None = None
    label_names: list[str] | None = None
    image_mean: tuple[float, ...] = (0.0,)
    image_std: tuple[float, ...] = (1.0,)
    image_size: tuple[int, int] | None = None
    preprocessing_saved: bool = True
    num_channels: int = 3
    source: Literal["transformers", "timm"] = "transformers"
    notes: list[str] = field(default_factory=list)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _head_name(model: nn.Module, num_labels: int | None, module: nn.Module | None = None) -> str:
    with HeadInputCapture(model, num_labels=num_labels, module=module) as capture:
        return capture.head_name


def _load_timm(name: str, num_labels: int | None) -> FeatureModel:
    import timm
    from timm.data import resolve_model_data_config

    kwargs = {} if num_labels is None else {"num_classes": num_labels}
    model = timm.create_model(name, pretrained=False, **kwargs)
    data_config = resolve_model_data_config(model)
    fixed = bool(model.pretrained_cfg.get("fixed_input_size", False))
    return FeatureModel(
        model=model,
        modality="image",
        name=name,
        num_labels=int(model.num_classes),
        head_name=_head_name(model, None, model.get_classifier()),
        head_is_trained=False,
        image_mean=tuple(data_config["mean"]),
        image_std=tuple(data_config["std"]),
        image_size=tuple(data_config["input_size"][1:]) if fixed else None,
        num_channels=int(data_config["input_size"][0]),
        source="timm",
        notes=[f"timm architecture {name!r} built with random weights (pretrained=False)"],
    )


def _modality(config: Any) -> Modality:
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    in_text = type(config) in AutoModelForSequenceClassification._model_mapping
    if type(config) in AutoModelForImageClassification._model_mapping and not in_text:
        return "image"
    if in_text:
        return "text"
    raise ModelLoadError(
        f"model type {config.model_type!r} has neither a sequence- nor an image-classification class in transformers. "
        "Fix: pass a *ForSequenceClassification / *ForImageClassification checkpoint or a timm architecture name."
    )


def _tokenizer_with_padding(tokenizer: Any, model: nn.Module, notes: list[str]) -> Any:
    """Give a tokenizer without a pad token (GPT-2, Llama) its EOS token as padding, in the model's config too.

    Decoder classifiers find each row's last real token through ``config.pad_token_id``.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                "the tokenizer has neither a pad nor an EOS token, so batches cannot be padded. "
                "Fix: set tokenizer.pad_token and save it with the model."
            )
        tokenizer.pad_token = tokenizer.eos_token
        notes.append(f"tokenizer has no pad token: padding with its EOS token {tokenizer.eos_token!r}")
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def _checked_normalisation(name: str, config: Any, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``config.image_mean`` / ``image_std`` (``[C]`` or ``[1]``, in ``[0, 1]`` pixel units), or a clear error."""
    mean, std = tuple(float(v) for v in config.image_mean), tuple(float(v) for v in config.image_std)
    if len(mean) != len(std) or len(mean) not in (1, channels) or min(std) <= 0:
        raise ModelLoadError(
            f"{name}: config.json's image_mean {list(mean)} / image_std {list(std)} do not fit a model with {channels} "
            "input channels (one value per channel, or one for all; every std > 0). Fix: save the per-channel "
            "mean / std the model was trained with."
        )
    return mean, std


def _load_transformers(name: str, num_labels: int | None) -> FeatureModel:
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from . import modeling  # noqa: F401  (registers the project's models with the Auto classes)

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load model {name!r}: not a local model folder, not a timm architecture name, and not "
            f"loadable from the Hugging Face Hub ({err}). Fix: pass a folder saved with save_pretrained, a timm "
            "name such as 'resnet18', or a Hub id reachable from here."
        ) from err
    modality = _modality(config)
    auto = AutoModelForImageClassification if modality == "image" else AutoModelForSequenceClassification
    resize = (
        {} if num_labels in (None, config.num_labels) else {"num_labels": num_labels, "ignore_mismatched_sizes": True}
    )
    model, info = auto.from_pretrained(name, output_loading_info=True, **resize)
    head_name = _head_name(model, model.config.num_labels)
    not_loaded = set(info["missing_keys"]) | {entry[0] for entry in info["mismatched_keys"]}
    head_is_trained = not any(key.startswith(f"{head_name}.") for key in not_loaded)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    real_names = None if all(_GENERIC_LABEL.match(str(n)) for n in names) else [str(n) for n in names]
    fm = FeatureModel(
        model=model,
        modality=modality,
        name=name,
        num_labels=int(model.config.num_labels),
        head_name=head_name,
        head_is_trained=head_is_trained,
        label_names=real_names,
        num_channels=int(getattr(model.config, "num_channels", 3)),
    )
    if modality == "text":
        fm.processor = _tokenizer_with_padding(AutoTokenizer.from_pretrained(name), model, fm.notes)
    else:
        try:
            fm.processor = AutoImageProcessor.from_pretrained(name)
        except (OSError, ValueError):
            if getattr(config, "image_mean", None) is not None and getattr(config, "image_std", None) is not None:
                fm.image_mean, fm.image_std = _checked_normalisation(name, config, fm.num_channels)
                fm.notes.append("no image processor: pixels normalised with the config's image_mean / image_std")
            else:
                fm.preprocessing_saved = False
                fm.notes.append(
                    "no image processor and no image_mean / image_std in config.json: pixels scaled to [0, 1] and "
                    "passed at their own size (not what a model trained on normalised pixels saw)"
                )
    if not head_is_trained:
        fm.notes.append(f"head {head_name!r} is newly initialised: its predictions are meaningless")
    return fm


def load_model_for_features(name_or_path: str, num_labels: int | None = None) -> FeatureModel:
    """Load a local folder / Hub id through transformers, or build a timm architecture with random weights.

    Args:
        name_or_path: a folder saved with ``save_pretrained``, a Hub id, or a timm name (``"resnet10t"``).
        num_labels: resize the head to this many classes (a resized head is untrained); None keeps the
            checkpoint's head (timm: its default of 1000). The features do not depend on it.
    """
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_transformers(str(path), num_labels)
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelLoadError(
            f"model folder {name!r} does not exist (or is not a folder). Fix: pass a folder saved with save_pretrained."
        )
    import timm

    if timm.is_model(name):
        return _load_timm(name, num_labels)
    return _load_transformers(name, num_labels)


# --------------------------------------------------------------------------- batches


def _input_column(fm: FeatureModel, dataset: datasets.Dataset) -> str:
    column = "image" if fm.modality == "image" else "text"
    if column not in dataset.column_names:
        raise ModelLoadError(
            f"{fm.name!r} reads {fm.modality} input but the dataset has no {column!r} column "
            f"(columns: {dataset.column_names}). Fix: pair text models with text data and image models with images."
        )
    return column


def _batches(dataset: datasets.Dataset, columns: list[str], batch_size: int) -> Iterator[dict[str, Any]]:
    """Slices of ``dataset``: numpy arrays when the first column holds arrays, else lists (text, PIL images)."""
    view = dataset.select_columns(columns)
    if not isinstance(view.features[columns[0]], (datasets.Image, datasets.Value)):
        view = view.with_format("numpy")
    for start in range(0, len(view), batch_size):
        yield view[start : start + batch_size]


def _hwc_uint8(image: Any) -> np.ndarray:
    """One image (PIL or array) -> ``[H, W, C]`` uint8."""
    if hasattr(image, "convert"):  # PIL
        image = image.convert("RGB") if image.mode not in ("L", "RGB") else image
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array


def _to_channels(pixels: Tensor, channels: int) -> Tensor:
    """``[B, c, H, W]`` -> ``[B, channels, H, W]`` (gray repeated to RGB, RGB averaged to gray)."""
    if pixels.shape[1] == channels:
        return pixels
    if pixels.shape[1] == 1:
        return pixels.expand(-1, channels, -1, -1)
    if channels == 1:
        return pixels.mean(dim=1, keepdim=True)
    raise ModelLoadError(f"images have {pixels.shape[1]} channels but the model expects {channels}")


def _image_inputs(fm: FeatureModel, images: Any) -> dict[str, Tensor]:
    arrays = [_hwc_uint8(image) for image in images]
    if fm.processor is not None:
        rgb = [np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a for a in arrays]
        return {"pixel_values": fm.processor(images=rgb, return_tensors="pt")["pixel_values"]}
    tensors = [torch.from_numpy(a).permute(2, 0, 1).float().div_(255.0) for a in arrays]
    if fm.image_size is not None:
        tensors = [F.interpolate(t[None], size=fm.image_size, mode="bilinear", align_corners=False)[0] for t in tensors]
    if len({tuple(t.shape) for t in tensors}) > 1:
        raise ModelLoadError("images differ in size and the model has no image processor to resize them")
    pixels = _to_channels(torch.stack(tensors), fm.num_channels)
    mean = torch.tensor(fm.image_mean).view(1, -1, 1, 1)
    std = torch.tensor(fm.image_std).view(1, -1, 1, 1)
    return {"pixel_values": (pixels - mean) / std}


def _model_inputs(fm: FeatureModel, batch: dict[str, Any], max_length: int) -> dict[str, Tensor]:
    if fm.modality == "image":
        return _image_inputs(fm, batch["image"])
    encoded = fm.processor(
        list(batch["text"]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return dict(encoded)


def _logits(output: Any) -> Tensor:
    return output if isinstance(output, Tensor) else output.logits


def _pool_tokens(output: Any, inputs: dict[str, Tensor], pooling: str) -> Tensor:
    """``[B, d]`` from the last hidden states ``[B, T, d]``: the masked mean, or the first token."""
    hidden = output.hidden_states[-1]
    if pooling == "cls":
        return hidden[:, 0]
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def extract_features(
    fm: FeatureModel,
    dataset: datasets.Dataset,
    batch_size: int = 32,
    *,
    device: str | torch.device = "auto",
    with_predictions: bool = False,
    max_length: int = 128,
    show_progress: bool = True,
    pooling: str = "head",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Features of every row (``pooling``, see :data:`POOLINGS`), in dataset order, under ``torch.no_grad()`` in eval
    mode.

    Args:
        fm: from :func:`load_model_for_features`.
        dataset: an ``image`` or ``text`` column (matching ``fm.modality``) and a ``label`` column.
        batch_size: rows per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        with_predictions: also return ``argmax`` of the logits (meaningful only for a trained head).
        max_length: tokenizer truncation, in tokens.
        pooling: ``"head"`` (the head's input), ``"mean"`` or ``"cls"`` (of the last hidden states; text models).

    Returns:
        ``features [N, d]`` float32, ``labels [N]`` int64, ``predictions [N]`` int64 or None.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not one of {sorted(POOLINGS)}")
    if pooling != "head" and (fm.modality != "text" or fm.source != "transformers"):
        raise ModelLoadError(
            f"pooling={pooling!r} pools token states, but {fm.name!r} is an image model. Fix: use pooling='head'."
        )
    column = _input_column(fm, dataset)
    device = resolve_device(device)
    model = fm.model.to(device)
    was_training = model.training
    model.eval()
    features, labels, predictions = [], [], []
    capture = HeadInputCapture(model, module=fm.head_name)
    try:
        with (
            torch.no_grad(),
            tqdm(total=len(dataset), desc="features", unit="sample", disable=not show_progress) as bar,
        ):
            for batch in _batches(dataset, [column, "label"], batch_size):
                inputs = {k: v.to(device) for k, v in _model_inputs(fm, batch, max_length).items()}
                capture.arm()
                if fm.source == "timm":
                    output = model(inputs["pixel_values"])
                else:
                    output = model(**inputs, output_hidden_states=pooling != "head")
                pooled = capture.take(inputs) if pooling == "head" else _pool_tokens(output, inputs, pooling)
                if pooled is None:
                    raise RuntimeError(f"the head {fm.head_name!r} did not run in the forward pass of {fm.name!r}")
                features.append(pooled.float().cpu().numpy())
                labels.append(np.asarray(batch["label"], dtype=np.int64))
                if with_predictions:
                    predictions.append(_logits(output).argmax(-1).cpu().numpy())
                bar.update(len(labels[-1]))
    finally:
        capture.remove()
        model.train(was_training)
    if not features:
        raise ValueError("the dataset is empty: no features to extract")
    predicted = np.concatenate(predictions).astype(np.int64) if with_predictions else None
    return np.concatenate(features), np.concatenate(labels), predicted


def extract_sample_vectors(
    dataset: datasets.Dataset,
    batch_size: int = 256,
    *,
    fm: FeatureModel | None = None,
    device: str | torch.device = "auto",
    max_length: int = 128,
    show_progress: bool = True,
) -> np.ndarray:
    """Flattened inputs ``[N, D]`` float32, for the *sample* volume.

    Images: raw pixels scaled to ``[0, 1]``, flattened HWC (``D = H * W * C``; all images one size).
    Text: the mean of the model's input token embeddings over the attention mask (``D`` = hidden size;
    needs ``fm``, a text model).
    """
    if "image" in dataset.column_names:
        vectors = []
        for batch in _batches(dataset, ["image"], batch_size):
            arrays = [_hwc_uint8(image) for image in batch["image"]]
            if len({a.shape for a in arrays}) > 1:
                raise ValueError("sample-space vectors need images of one size; resize the dataset first")
            vectors.append(np.stack(arrays).reshape(len(arrays), -1).astype(np.float32) / 255.0)
        return np.concatenate(vectors)
    if fm is None or fm.modality != "text":
        raise ValueError("text sample vectors are mean token embeddings: pass fm=<a text FeatureModel>")
    column = _input_column(fm, dataset)
    device = resolve_device(device)
    embedding = fm.model.get_input_embeddings().to(device)
    vectors = []
    with torch.no_grad():
        for batch in tqdm(_batches(dataset, [column], batch_size), desc="samples", disable=not show_progress):
            encoded = fm.processor(
                list(batch[column]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            mask = encoded["attention_mask"].to(device).unsqueeze(-1).float()
            tokens = embedding(encoded["input_ids"].to(device)).float()
            vectors.append(((tokens * mask).sum(1) / mask.sum(1).clamp_min(1.0)).cpu().numpy())
    return np.concatenate(vectors)


def sentence_embeddings(model_path: str, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """Mean-pooled (over non-pad tokens), L2-normalised last hidden states ``[N, d]`` float32."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    encoder = AutoModel.from_pretrained(model_path).eval()
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out
