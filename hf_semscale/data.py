"""Datasets for measuring and training: long-tailed subsets and loaders that need no download.

Every loader returns a ``datasets.Dataset`` whose label column is a ``ClassLabel`` with the real
class names. Image columns hold ``uint8`` arrays ``[H, W, C]`` (HWC; ``C = 1`` for grayscale)
stored as ``datasets.Array3D``: ``ds.with_format("numpy")[i:j]["image"]`` is one
``[B, H, W, C]`` array (datasets' numpy formatter returns it as int64: cast as you need).

Local folders in the layout of the shared data (``SOURCE.md`` in each):

- ``*.npz`` folders (cifar10, breastmnist): ``<split>.npz`` or ``<split>_part<k>.npz`` holding
  ``images`` ``[N, H, W(, C)]`` uint8, ``labels`` ``[N]`` and the class names in ``classes``;
- ``*.jsonl`` folders (banking77, clinc150, trec): ``<split>.jsonl`` lines ``{"text", "label", ...}``
  and ``labels.json`` with the class names; an integer column ``<x>_label`` gets its names from
  ``<x>_labels.json`` when that file exists (trec's ``coarse_label``).

A bare folder name such as ``"cifar10"`` is looked up under ``$HF_SEMSCALE_DATA_DIR`` before the Hub.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets.features.features import Array3DExtensionType
from datasets.fingerprint import Hasher

logger = logging.getLogger(__name__)

__all__ = [
    "DATA_DIR_ENV",
    "DatasetLoadError",
    "long_tail_counts",
    "long_tail_indices",
    "make_long_tailed",
    "limit_per_class",
    "train_validation_split",
    "carve_validation",
    "load_local_dataset",
    "load_dataset_any",
    "load_builtin_digits",
    "class_counts",
    "class_names",
    "DataArguments",
    "load_splits",
    "save_long_tailed_splits",
    "save_dataset_dict",
]

DATA_DIR_ENV = "HF_SEMSCALE_DATA_DIR"
_IMAGE_COLUMNS = ("image", "img")
_TEXT_COLUMNS = ("text", "sentence", "content")
_LABEL_COLUMNS = ("label", "labels")
_PART_SUFFIX = re.compile(r"_part\d+$")


class DatasetLoadError(ValueError):
    """A dataset that cannot be found or read, or a split / column it does not have."""


# --------------------------------------------------------------------------- long-tailed subsets


def long_tail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Per-class sizes ``n_c = int(n_max * IF ** (-c / (C - 1)))`` (Cao et al. 2019); class 0 is the head.

    ``IF = 1`` gives ``C`` classes of ``n_max``; ``C = 1`` gives ``[n_max]``.
    """
    if n_max < 1 or num_classes < 1:
        raise ValueError(f"n_max and num_classes must be positive, got {n_max} and {num_classes}")
    if imbalance_factor < 1:
        raise ValueError(f"imbalance_factor must be >= 1 (n_max / n_min), got {imbalance_factor}")
    if num_classes == 1:
        return [int(n_max)]
    # Written as Cao et al.'s code computes it, so the standard CIFAR-LT counts come out exactly.
    ratio = 1.0 / imbalance_factor
    return [int(n_max * ratio ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def long_tail_indices(
    labels: Sequence[int] | np.ndarray,
    imbalance_factor: float,
    seed: int = 0,
    n_max: int | None = None,
    num_classes: int | None = None,
    class_order: str = "index",
) -> np.ndarray:
    """Sorted indices of a long-tailed subset: the Cao et al. profile ``long_tail_counts(n_max, C', IF)``
    over the ``C'`` classes present in ``labels``.

    Classes with no sample (e.g. CLINC150's ``oos`` label, absent from its training split) are left out of
    the profile and named in a warning; they keep 0 samples.

    Args:
        labels: ``[N]`` int class ids.
        imbalance_factor: ``n_max / n_min`` (>= 1).
        seed: seeds the per-class permutation that picks the kept samples.
        n_max: size of the head class; ``None`` means the smallest class size, so that every
            class has enough samples and the imbalance factor is exact.
        num_classes: ``C``; ``None`` means ``max(labels) + 1``.
        class_order: which class gets which rank of the profile: ``"index"`` (class id order, the CIFAR-LT
            convention) or ``"count"`` (most available samples first, ties by id: every class can fill its
            quota whenever any order can).

    Returns:
        ``[sum_c n_c]`` int64, sorted ascending.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size == 0:
        raise ValueError("labels is empty: nothing to subsample")
    if class_order not in ("index", "count"):
        raise ValueError(f"class_order must be 'index' or 'count', got {class_order!r}")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    available = np.bincount(labels, minlength=num_classes)
    present = np.flatnonzero(available > 0)
    empty = np.flatnonzero(available == 0).tolist()
    if empty:
        logger.warning(
            "classes %s have no samples: left out of the long-tail profile (%d classes ranked)", empty, present.size
        )
    if class_order == "count":
        present = present[np.argsort(-available[present], kind="stable")]
    n_max = int(available[present].min()) if n_max is None else n_max
    targets = np.zeros(num_classes, dtype=np.int64)
    targets[present] = long_tail_counts(n_max, present.size, imbalance_factor)
    short = [(int(c), int(available[c]), int(targets[c])) for c in present if available[c] < targets[c]]
    if short:
        detail = ", ".join(f"class {c} has {have} < {want}" for c, have, want in short)
        hint = " or use class_order='count'" if class_order == "index" else ""
        raise ValueError(f"not enough samples for n_max={n_max}: {detail}. Fix: lower n_max or leave it None{hint}.")
    rng = np.random.default_rng(seed)
    kept = [rng.permutation(np.flatnonzero(labels == c))[: targets[c]] for c in range(num_classes)]
    return np.sort(np.concatenate(kept))


def _labels_array(dataset: datasets.Dataset, label_column: str) -> np.ndarray:
    """``[N]`` int64 labels of ``dataset`` (respects ``select`` indices)."""
    if label_column not in dataset.column_names:
        raise DatasetLoadError(
            f"no label column {label_column!r}; columns are {dataset.column_names}. Fix: pass the right label column."
        )
    column = dataset.with_format("numpy", columns=[label_column])[:][label_column]
    return np.asarray(column, dtype=np.int64).reshape(-1)


def _num_classes(dataset: datasets.Dataset, label_column: str, labels: np.ndarray) -> int:
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes
    return int(labels.max()) + 1 if labels.size else 0


def make_long_tailed(
    dataset: datasets.Dataset,
    imbalance_factor: float,
    label_column: str = "label",
    seed: int = 0,
    n_max: int | None = None,
    class_order: str = "index",
) -> datasets.Dataset:
    """The long-tailed subset of ``dataset`` (see :func:`long_tail_indices`); row order is kept."""
    labels = _labels_array(dataset, label_column)
    indices = long_tail_indices(
        labels, imbalance_factor, seed, n_max, _num_classes(dataset, label_column, labels), class_order
    )
    return dataset.select(indices)


def keep_classes(
    dataset: datasets.Dataset, keep: Sequence[int], label_column: str = "label"
) -> tuple[datasets.Dataset, int]:
    """Rows of the classes ``keep`` (old ids, ascending), relabelled ``0..len(keep)-1`` with their names.

    Returns ``(dataset, rows dropped)``. Used to drop classes a training split does not have (CLINC150's ``oos``).
    """
    keep = sorted(int(c) for c in keep)
    names = class_names(dataset, label_column)
    labels = _labels_array(dataset, label_column)
    lookup = np.full(len(names), -1, dtype=np.int64)
    lookup[keep] = np.arange(len(keep))
    rows = np.flatnonzero(lookup[labels] >= 0)
    subset = dataset.select(rows).flatten_indices()
    feature = datasets.ClassLabel(names=[names[c] for c in keep])
    new_labels = lookup[labels[rows]].tolist()
    subset = subset.remove_columns(label_column).add_column(label_column, new_labels, feature=feature)
    return subset, int(labels.size - rows.size)


def limit_per_class(
    dataset: datasets.Dataset, max_per_class: int, seed: int = 0, label_column: str = "label"
) -> datasets.Dataset:
    """At most ``max_per_class`` seeded-random rows of each class (smaller classes keep all); order kept."""
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be positive, got {max_per_class}")
    labels = _labels_array(dataset, label_column)
    rng = np.random.default_rng(seed)
    kept = [rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in np.unique(labels)]
    return dataset.select(np.sort(np.concatenate(kept)) if kept else [])


def train_validation_split(
    dataset: datasets.Dataset, validation_per_class: int, seed: int = 0, label_column: str = "label"
) -> datasets.DatasetDict:
    """Carve a class-stratified validation split off TRAINING data (for tuning; never use the test set).

    Each class gives ``validation_per_class`` seeded-random rows to ``"validation"``; the rest stay
    in ``"train"``. Raises if a class would keep no training row.
    """
    if validation_per_class < 1:
        raise ValueError(f"validation_per_class must be positive, got {validation_per_class}")
    labels = _labels_array(dataset, label_column)
    names = class_names(dataset, label_column)
    counts = np.bincount(labels, minlength=len(names))
    too_small = [f"{names[c]!r} ({n})" for c, n in enumerate(counts) if 0 < n <= validation_per_class]
    if too_small:
        raise ValueError(
            f"validation_per_class={validation_per_class} leaves no training sample for classes "
            f"{', '.join(too_small)}. Fix: lower validation_per_class, or split before making the data long-tailed."
        )
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:validation_per_class] for c in np.unique(labels)]
    validation = np.sort(np.concatenate(picked))
    train = np.setdiff1d(np.arange(labels.size), validation)
    return datasets.DatasetDict({"train": dataset.select(train), "validation": dataset.select(validation)})


def class_counts(dataset: datasets.Dataset, num_classes: int | None = None, label_column: str = "label") -> list[int]:
    """Samples per class ``[C]``; ``C`` defaults to the ClassLabel size (else ``max label + 1``)."""
    labels = _labels_array(dataset, label_column)
    num_classes = _num_classes(dataset, label_column, labels) if num_classes is None else num_classes
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels span [{labels.min()}, {labels.max()}], outside [0, {num_classes})")
    return np.bincount(labels, minlength=num_classes).tolist()


def class_names(dataset: datasets.Dataset, label_column: str = "label") -> list[str]:
    """ClassLabel names of ``label_column``; ``"0".."C-1"`` for a plain integer column."""
    if label_column not in dataset.column_names:
        raise DatasetLoadError(f"no label column {label_column!r}; columns are {dataset.column_names}")
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        labels = _labels_array(dataset, label_column)
        return [str(c) for c in range(int(labels.max()) + 1 if labels.size else 0)]
    raise DatasetLoadError(
        f"label column {label_column!r} is {feature}, not class ids. "
        f"Fix: dataset.class_encode_column({label_column!r})."
    )


# --------------------------------------------------------------------------- local shared-style folders


def _folder_kind(data_dir: Path) -> str | None:
    """``"npz"`` or ``"jsonl"`` for a shared-style folder, else None."""
    if any(data_dir.glob("*.npz")):
        return "npz"
    if (data_dir / "labels.json").is_file() and (any(data_dir.glob("*.jsonl")) or any(data_dir.glob("*.jsonl.gz"))):
        return "jsonl"
    return None


def _split_files(data_dir: Path) -> tuple[str, dict[str, list[Path]]]:
    """The folder kind and its ``{split: [files]}`` (``<split>_part<k>`` files are one split)."""
    kind = _folder_kind(data_dir)
    if kind is None:
        found = sorted(p.name for p in data_dir.iterdir())[:20]
        raise DatasetLoadError(
            f"{data_dir}: not a shared-style dataset folder (found {found}). Expected <split>.npz files with "
            "'images' and 'labels', or <split>.jsonl files with labels.json."
        )
    splits: dict[str, list[Path]] = {}
    for suffix in (f".{kind}", f".{kind}.gz") if kind == "jsonl" else (f".{kind}",):
        for path in sorted(data_dir.glob(f"*{suffix}")):
            splits.setdefault(_PART_SUFFIX.sub("", path.name.removesuffix(suffix)), []).append(path)
    return kind, splits


def _image_array(images: np.ndarray) -> pa.ExtensionArray:
    """``[N, H, W, C]`` uint8 -> a datasets ``Array3D`` arrow column, without a Python-level copy."""
    n, h, w, c = images.shape
    flat: pa.Array = pa.array(np.ascontiguousarray(images).reshape(-1))
    for size, count in ((c, n * h * w), (w, n * h), (h, n)):
        offsets = pa.array(np.arange(0, (count + 1) * size, size, dtype=np.int32))
        flat = pa.ListArray.from_arrays(offsets, flat)
    return pa.ExtensionArray.from_storage(Array3DExtensionType((h, w, c), "uint8"), flat)


def _load_npz_split(files: list[Path], data_dir: Path) -> datasets.Dataset:
    arrays = [np.load(path, allow_pickle=False) for path in files]
    missing = [f.name for f, a in zip(files, arrays) if not {"images", "labels"} <= set(a.files)]
    if missing:
        raise DatasetLoadError(f"{data_dir}: {missing} lack the 'images' / 'labels' arrays")
    images = np.concatenate([a["images"] for a in arrays])
    labels = np.concatenate([a["labels"] for a in arrays]).astype(np.int64)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DatasetLoadError(
            f"{data_dir}: images must be uint8 [N, H, W] or [N, H, W, C], got {images.dtype} {images.shape}"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.size >= 2**31:
        raise DatasetLoadError(
            f"{data_dir}: {images.size} pixel values exceed an Arrow list column (2**31); split the files"
        )
    if "classes" in arrays[0].files:
        names = [str(c) for c in arrays[0]["classes"]]
    else:
        names = _read_names(data_dir / "labels.json", data_dir)
    features = datasets.Features(
        {"image": datasets.Array3D(images.shape[1:], "uint8"), "label": datasets.ClassLabel(names=names)}
    )
    _check_label_range(labels, len(names), data_dir)
    table = pa.table({"image": _image_array(images), "label": pa.array(labels)})
    fingerprint = Hasher.hash([(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features), fingerprint=fingerprint)


def _read_names(path: Path, data_dir: Path) -> list[str]:
    if not path.is_file():
        raise DatasetLoadError(f"{data_dir}: no class names (expected {path.name} or a 'classes' array)")
    names = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetLoadError(f"{path}: expected a JSON list of class-name strings")
    return names


def _check_label_range(labels: np.ndarray, num_names: int, data_dir: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_names):
        raise DatasetLoadError(
            f"{data_dir}: labels span [{labels.min()}, {labels.max()}] but there are {num_names} class names"
        )


def _load_jsonl_split(files: list[Path], data_dir: Path) -> datasets.Dataset:
    rows = []
    for path in files:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
    if not rows or "text" not in rows[0] or "label" not in rows[0]:
        raise DatasetLoadError(f"{files[0]}: expected non-empty JSON lines with 'text' and 'label'")
    table = pa.Table.from_pylist(rows)
    features = datasets.Features.from_arrow_schema(table.schema)
    for column in table.column_names:
        names_file = data_dir / f"{column[: -len('label')]}labels.json"
        if (column == "label" or column.endswith("_label")) and names_file.is_file():
            names = _read_names(names_file, data_dir)
            _check_label_range(table.column(column).to_numpy(), len(names), data_dir)
            features[column] = datasets.ClassLabel(names=names)
    table = table.cast(features.arrow_schema)
    fingerprint = Hasher.hash([(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features), fingerprint=fingerprint)


def load_local_dataset(data_dir: str | os.PathLike, split: str) -> datasets.Dataset:
    """One split of a shared-style folder (see the module docstring) as an in-memory ``Dataset``.

    Columns: ``image`` (Array3D uint8 ``[H, W, C]``) and ``label`` for ``.npz`` folders;
    ``text``, ``label`` and any extra fields for ``.jsonl`` folders. Labels are ClassLabels.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetLoadError(
            f"{data_dir}: no such folder. Fix: pass the dataset folder (e.g. ../shared/data/cifar10)."
        )
    kind, splits = _split_files(data_dir)
    if split not in splits:
        raise DatasetLoadError(f"{data_dir}: no split {split!r}; available splits: {sorted(splits)}")
    if kind == "npz":
        return _load_npz_split(splits[split], data_dir)
    return _load_jsonl_split(splits[split], data_dir)


# --------------------------------------------------------------------------- any source


def _resolve_local(name_or_path: str) -> Path | None:
    """The local folder ``name_or_path`` names (directly or under ``$HF_SEMSCALE_DATA_DIR``), else None."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    root = os.environ.get(DATA_DIR_ENV)
    if root and (Path(root) / name_or_path).is_dir():
        return Path(root) / name_or_path
    return None


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _load_from_disk(path: Path, split: str) -> datasets.Dataset:
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DatasetLoadError(f"{path}: no split {split!r}; available splits: {sorted(loaded)}")
        return loaded[split]
    return loaded


def _load_with_datasets(name: str, split: str) -> datasets.Dataset:
    """``datasets.load_dataset``: a Hub id, or a local folder of csv / json / parquet / image files."""
    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as err:  # many types: offline, not found, gated, no data files, bad split
        raise DatasetLoadError(
            f"datasets.load_dataset({name!r}, split={split!r}) failed: {err}. Fix: pass a shared-style folder "
            "(<split>.npz or <split>.jsonl + labels.json), a datasets.save_to_disk folder, a folder of "
            "csv / json / parquet / image files, or a Hub id reachable from here (HF_HUB_OFFLINE unset)."
        ) from err
    if not isinstance(loaded, datasets.Dataset):
        raise DatasetLoadError(f"{name!r}: expected one split, got {type(loaded).__name__}; pass a split name")
    return loaded


def _pick_column(
    dataset: datasets.Dataset, given: str | None, candidates: Sequence[str], role: str, option: str
) -> str | None:
    if given is not None:
        if given not in dataset.column_names:
            raise DatasetLoadError(f"no {role} column {given!r}; columns are {dataset.column_names}. Fix: {option}.")
        return given
    return next((c for c in candidates if c in dataset.column_names), None)


def _rename(dataset: datasets.Dataset, source: str, target: str) -> datasets.Dataset:
    if source == target:
        return dataset
    if target in dataset.column_names:
        dataset = dataset.remove_columns(target)
    return dataset.rename_column(source, target)


def load_dataset_any(
    name_or_path: str | os.PathLike,
    split: str,
    text_column: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> datasets.Dataset:
    """Load a split from a shared-style folder, a ``save_to_disk`` folder, or ``datasets.load_dataset``.

    ``datasets.load_dataset`` gets Hub ids and local folders of csv / json / parquet / image files.

    Columns are renamed to ``"image"`` or ``"text"`` and ``"label"`` (a ClassLabel: integer labels
    get names ``"0".."C-1"``, string labels are class-encoded in sorted order). Without explicit
    column names, ``image``/``img``, ``text``/``sentence``/``content`` and ``label``/``labels`` are tried.
    """
    name = str(name_or_path)
    local = _resolve_local(name)
    if local is not None and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
        dataset = _load_from_disk(local, split)
    elif local is not None and _folder_kind(local) is not None:
        dataset = load_local_dataset(local, split)
    elif local is not None:
        dataset = _load_with_datasets(str(local), split)
    elif _looks_like_path(name):
        raise DatasetLoadError(
            f"dataset folder {name!r} does not exist. Fix: pass an existing folder (e.g. ../shared/data/banking77), "
            f"set {DATA_DIR_ENV}, or pass a Hub id such as 'owner/name'."
        )
    else:
        dataset = _load_with_datasets(name, split)

    image = _pick_column(dataset, image_column, _IMAGE_COLUMNS, "image", "pass --image-column")
    text = None if image else _pick_column(dataset, text_column, _TEXT_COLUMNS, "text", "pass --text-column")
    label = _pick_column(dataset, label_column, _LABEL_COLUMNS, "label", "pass --label-column")
    if image is None and text is None:
        raise DatasetLoadError(
            f"{name}: no image or text column among {dataset.column_names}. Fix: pass --image-column or --text-column."
        )
    if label is None:
        raise DatasetLoadError(f"{name}: no label column among {dataset.column_names}. Fix: pass --label-column.")
    dataset = _rename(dataset, image or text, "image" if image else "text")
    dataset = _rename(dataset, label, "label")
    feature = dataset.features["label"]
    if isinstance(feature, datasets.Value) and feature.dtype == "string":
        dataset = dataset.class_encode_column("label")
    elif not isinstance(feature, datasets.ClassLabel):
        dataset = dataset.cast_column("label", datasets.ClassLabel(names=class_names(dataset, "label")))
    return dataset


# --------------------------------------------------------------------------- built-in default data


def load_builtin_digits(
    imbalance_factor: float = 10, seed: int = 0, test_fraction: float = 0.3
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """scikit-learn's bundled digits (1,797 8x8 images, 10 classes; no download) as long-tailed train + test.

    The split is stratified and seeded; only the train split is made long-tailed (class 0 the head,
    ``n_max`` = its smallest class). Columns: ``pixel_values`` ``[64]`` float32 in ``[0, 1]`` and
    ``labels`` (ClassLabel ``"0".."9"``).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        pixels, digits.target, test_size=test_fraction, stratify=digits.target, random_state=seed
    )
    features = datasets.Features(
        {
            "pixel_values": datasets.List(datasets.Value("float32"), length=pixels.shape[1]),
            "labels": datasets.ClassLabel(names=[str(d) for d in range(10)]),
        }
    )
    train = datasets.Dataset.from_dict({"pixel_values": x_train, "labels": y_train}, features=features)
    test = datasets.Dataset.from_dict({"pixel_values": x_test, "labels": y_test}, features=features)
    return make_long_tailed(train, imbalance_factor, label_column="labels", seed=seed), test


# --------------------------------------------------------------------------- train / validation / test


@dataclass
class DataArguments:
    """Where the data comes from and how the long-tailed training set is built."""

    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Local dataset folder (shared-style, e.g. ../shared/data/cifar10, or a datasets.save_to_disk folder)."
        },
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A datasets Hub id (used when data_dir is not set)."}
    )
    train_split: str = field(
        default="train", metadata={"help": "Split the training (and carved validation) data come from."}
    )
    test_split: str = field(default="test", metadata={"help": "Held-out split; stays balanced / untouched."})
    validation_split: str | None = field(
        default=None,
        metadata={
            "help": "An existing split of TRAINING-side data to use for validation; None: carve from train_split."
        },
    )
    validation_per_class: int = field(
        default=0,
        metadata={
            "help": "Rows per class carved from the training data for validation (before the long tail); 0: none."
        },
    )
    imbalance_factor: float | None = field(
        default=None,
        metadata={"help": "n_max / n_min of the long-tailed training subset (Cao et al.); None or 1: keep as is."},
    )
    long_tail_n_max: int | None = field(
        default=None, metadata={"help": "Head-class size of the long-tailed subset; None: the smallest class's size."}
    )
    long_tail_order: str = field(
        default="index",
        metadata={
            "help": "Rank of each class in the long-tail profile: 'index' (class id order, CIFAR-LT) or 'count' "
            "(most available samples first, so every class can fill its quota).",
            "choices": ["index", "count"],
        },
    )
    subset_seed: int = field(
        default=0,
        metadata={"help": "Seeds the validation carve and the long-tailed subset (fixed across training seeds)."},
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: image / img)."})
    text_column: str | None = field(
        default=None, metadata={"help": "Text column (default: text / sentence / content)."}
    )
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: label / labels)."})
    max_train_samples_per_class: int | None = field(
        default=None, metadata={"help": "Cap rows per class of the training split before anything else (quick runs)."}
    )
    max_eval_samples_per_class: int | None = field(
        default=None, metadata={"help": "Cap rows per class of validation / test (quick runs)."}
    )

    @property
    def source(self) -> str:
        source = self.data_dir or self.dataset_name or os.environ.get("HF_SEMSCALE_DATA_SOURCE")
        if not source:
            raise ValueError("No data: pass --data_dir <folder> or --dataset_name <hub id>.")
        return source


def load_splits(data: DataArguments, kind: str) -> dict[str, Any]:
    """Load train / validation / test, carve validation from TRAIN data, then make train long-tailed.

    Classes of the label set with no training row (CLINC150's ``oos``) are dropped from every split, with a
    warning; they are listed in ``"dropped_classes"``.

    Returns ``{"train", "validation" (or None), "test", "class_names", "train_class_counts", "dropped_classes"}``
    with columns renamed to ``image``/``text`` and ``label``.
    """

    columns = {"label_column": data.label_column}
    columns["image_column" if kind == "image" else "text_column"] = (
        data.image_column if kind == "image" else data.text_column
    )
    train = load_dataset_any(data.source, data.train_split, **columns)
    test = load_dataset_any(data.source, data.test_split, **columns)
    if data.max_train_samples_per_class:
        train = limit_per_class(train, data.max_train_samples_per_class, seed=data.subset_seed)
    validation = None
    if data.validation_split:
        validation = load_dataset_any(data.source, data.validation_split, **columns)
    all_names = class_names(train)
    counts = class_counts(train, len(all_names))
    present = [c for c, n in enumerate(counts) if n > 0]
    dropped = [all_names[c] for c, n in enumerate(counts) if n == 0]
    if dropped:
        train, _ = keep_classes(train, present)
        test, test_rows = keep_classes(test, present)
        val_rows = 0
        if validation is not None:
            validation, val_rows = keep_classes(validation, present)
        logger.warning(
            "classes %s have no row in the training split %r: dropped from the label set (and %d test / %d "
            "validation rows of them); %d classes remain",
            dropped,
            data.train_split,
            test_rows,
            val_rows,
            len(present),
        )
    elif data.validation_per_class > 0:
        parts = train_validation_split(train, data.validation_per_class, seed=data.subset_seed)
        train, validation = parts["train"], parts["validation"]
    if data.imbalance_factor is not None and data.imbalance_factor > 1:
        train = make_long_tailed(
            train,
            data.imbalance_factor,
            label_column="label",
            seed=data.subset_seed,
            n_max=data.long_tail_n_max,
            class_order=data.long_tail_order,
        )
    if data.max_eval_samples_per_class:
        test = limit_per_class(test, data.max_eval_samples_per_class, seed=data.subset_seed)
        if validation is not None:
            validation = limit_per_class(validation, data.max_eval_samples_per_class, seed=data.subset_seed)
    names = class_names(train)
    return {
        "train": train,
        "validation": validation,
        "test": test,
        "class_names": names,
        "train_class_counts": class_counts(train, len(names)),
        "dropped_classes": dropped,
    }


def carve_validation(
    dataset: datasets.Dataset, fraction: float = 0.15, seed: int = 0, label_column: str = "label"
) -> tuple[datasets.Dataset, datasets.Dataset, list[str]]:
    """A stratified validation split carved off TRAINING data, for a dataset that has none.

    Each class gives ``floor(fraction * n_c)`` seeded-random rows, at least one, as long as two stay in training; a
    class of fewer than 3 rows gives none: it stays whole in training and is left out of the validation metric (no
    validation row). Returns ``(train, validation, names of the classes kept whole in training)``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    labels = _labels_array(dataset, label_column)
    names = class_names(dataset, label_column)
    rng = np.random.default_rng(seed)
    picked, kept_whole = [], []
    for c in range(len(names)):
        rows = np.flatnonzero(labels == c)
        if rows.size == 0:
            continue
        take = min(max(1, int(fraction * rows.size)), rows.size - 2)
        if take < 1:
            kept_whole.append(names[c])
            continue
        picked.append(rng.permutation(rows)[:take])
    if not picked:
        raise ValueError(
            "no class has the 3 training rows needed to give one to validation. Fix: pass a validation split of your own."
        )
    validation = np.sort(np.concatenate(picked))
    train = np.setdiff1d(np.arange(labels.size), validation)
    return dataset.select(train), dataset.select(validation), kept_whole


def save_dataset_dict(dd: datasets.DatasetDict, target: str | os.PathLike) -> Path:
    """``dd.save_to_disk(target)`` through :func:`~hf_semscale.atomic.atomic_folder`: concurrent or interrupted
    writers never leave a half-written ``target``; a complete copy another process put there first is kept."""
    from .atomic import atomic_folder

    target = Path(target)
    try:
        with atomic_folder(target) as tmp:
            dd.save_to_disk(str(tmp))
    except OSError:
        if not (target / "dataset_dict.json").is_file():
            raise
    return target


def save_long_tailed_splits(
    source: str,
    target: str | os.PathLike,
    imbalance_factor: float,
    validation_per_class: int,
    n_max: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
) -> Path:
    """Build once and save at ``target`` (a ``DatasetDict`` folder) the splits of ``source`` (any
    :func:`load_dataset_any` source with train and test splits): validation ``validation_per_class`` rows per class
    carved from train, train then long-tailed (:func:`long_tail_indices`: ``imbalance_factor``, at most ``n_max``
    per class), test cut to ``test_per_class`` per class (None: all). An existing complete ``target`` is returned
    as it is."""
    target = Path(target)
    if (target / "dataset_dict.json").is_file():
        return target
    parts = train_validation_split(load_dataset_any(source, "train"), validation_per_class, seed=seed)
    train = parts["train"]
    num_classes = len(train.features["label"].names)
    kept = long_tail_indices(
        train.with_format(None)["label"], imbalance_factor, seed=seed, n_max=n_max, num_classes=num_classes
    )
    train = train.select(kept)
    test = load_dataset_any(source, "test")
    if test_per_class:
        test = limit_per_class(test, test_per_class, seed=seed)
    splits = {"train": train.flatten_indices(), "validation": parts["validation"].flatten_indices(), "test": test}
    save_dataset_dict(datasets.DatasetDict(splits), target)
    logger.info("prepared %s: train counts %s", target, class_counts(train))
    return target
