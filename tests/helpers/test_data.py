"""Long-tailed subsets, splits and loaders (synthetic folders always; the shared data when present)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from hf_semscale.data import (
    DATA_DIR_ENV,
    DatasetLoadError,
    class_counts,
    class_names,
    keep_classes,
    limit_per_class,
    load_builtin_digits,
    load_dataset_any,
    load_local_dataset,
    long_tail_counts,
    long_tail_indices,
    make_long_tailed,
    save_long_tailed_splits,
    train_validation_split,
)

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _text_dataset(per_class: list[int]) -> datasets.Dataset:
    """Rows ``"c<class>-<k>"``, classes interleaved, ClassLabel names ``a``, ``b``, ..."""
    rows = [(c, k) for k in range(max(per_class)) for c, n in enumerate(per_class) if k < n]
    names = [chr(ord("a") + c) for c in range(len(per_class))]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict(
        {"text": [f"c{c}-{k}" for c, k in rows], "label": [c for c, _ in rows]}, features=features
    )


# --------------------------------------------------------------------------- long-tailed subsets


def test_long_tail_counts_match_cifar10_lt_of_cao_et_al():
    assert long_tail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert long_tail_counts(5000, 10, 10)[-1] == 500
    assert long_tail_counts(500, 100, 100)[-1] == 5  # CIFAR-100-LT tail


def test_long_tail_counts_balanced_and_single_class():
    assert long_tail_counts(7, 4, 1) == [7, 7, 7, 7]
    assert long_tail_counts(7, 1, 50) == [7]
    with pytest.raises(ValueError, match="imbalance_factor must be >= 1"):
        long_tail_counts(10, 3, 0.5)


def test_long_tail_indices_counts_sorted_and_seeded():
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(np.arange(5), 40))
    idx = long_tail_indices(labels, 8, seed=3)
    assert np.all(np.diff(idx) > 0)  # sorted, no duplicates
    assert np.bincount(labels[idx], minlength=5).tolist() == long_tail_counts(40, 5, 8)
    assert np.array_equal(idx, long_tail_indices(labels, 8, seed=3))
    assert not np.array_equal(idx, long_tail_indices(labels, 8, seed=4))


def test_long_tail_indices_default_head_is_smallest_class():
    labels = np.array([0] * 30 + [1] * 12 + [2] * 20)
    idx = long_tail_indices(labels, 4)
    assert np.bincount(labels[idx]).tolist() == long_tail_counts(12, 3, 4) == [12, 6, 3]


def test_long_tail_indices_errors_name_the_problem():
    with pytest.raises(ValueError, match="class 0 has 10 < 20.*class_order='count'"):
        long_tail_indices(np.array([0] * 10 + [1] * 30), 2, n_max=20)
    with pytest.raises(ValueError, match="class_order"):
        long_tail_indices(np.array([0, 1]), 2, class_order="size")


def test_long_tail_profile_skips_a_class_without_samples(caplog):
    """A label set with a class absent from the data (CLINC150's oos): the profile runs over the present classes."""
    labels = np.array([0] * 10 + [2] * 10 + [3] * 10)
    with caplog.at_level("WARNING", logger="hf_semscale.data"):
        idx = long_tail_indices(labels, 4, n_max=8)
    assert np.bincount(labels[idx], minlength=4).tolist() == [
        8,
        0,
        4,
        2,
    ]  # long_tail_counts(8, 3, 4) over classes 0, 2, 3
    assert "classes [1] have no samples" in caplog.text


def test_long_tail_class_order_by_count_fills_every_quota():
    labels = np.array([0] * 6 + [1] * 30 + [2] * 12)  # by id, class 0 could not be the head
    idx = long_tail_indices(labels, 4, n_max=24, class_order="count")
    assert np.bincount(labels[idx]).tolist() == [6, 24, 12]  # ranks: class 1, class 2, class 0


def test_keep_classes_relabels_and_keeps_names():
    ds = _text_dataset([3, 2, 4])
    kept, dropped = keep_classes(ds, [0, 2])
    assert dropped == 2 and kept.features["label"].names == ["a", "c"]
    assert class_counts(kept) == [3, 4]
    assert all(text.startswith("c0-" if label == 0 else "c2-") for text, label in zip(kept["text"], kept["label"]))


def test_make_long_tailed_keeps_rows_and_classlabel():
    ds = _text_dataset([20, 20, 20])
    lt = make_long_tailed(ds, 4, seed=0)
    assert class_counts(lt) == [20, 10, 5]
    assert lt.features["label"].names == ["a", "b", "c"]
    assert all(text.startswith(f"c{label}-") for text, label in zip(lt["text"], lt["label"]))


def test_limit_per_class_caps_and_keeps_small_classes():
    ds = _text_dataset([9, 2, 5])
    assert class_counts(limit_per_class(ds, 4, seed=1)) == [4, 2, 4]


def test_train_validation_split_is_stratified_and_disjoint():
    ds = _text_dataset([12, 8, 5])
    parts = train_validation_split(ds, 3, seed=0)
    assert class_counts(parts["validation"]) == [3, 3, 3]
    assert class_counts(parts["train"]) == [9, 5, 2]
    train_text, val_text = set(parts["train"]["text"]), set(parts["validation"]["text"])
    assert not train_text & val_text and len(train_text | val_text) == len(ds)
    with pytest.raises(ValueError, match=r"leaves no training sample for classes 'c' \(5\)"):
        train_validation_split(ds, 5)


def test_class_names_and_counts_without_classlabel():
    ints = datasets.Dataset.from_dict({"label": [0, 2, 2]})
    assert class_names(ints) == ["0", "1", "2"] and class_counts(ints) == [1, 0, 2]
    strings = datasets.Dataset.from_dict({"label": ["x", "y"]})
    with pytest.raises(DatasetLoadError, match="class_encode_column"):
        class_names(strings)
    with pytest.raises(DatasetLoadError, match="no label column 'y'"):
        class_counts(ints, label_column="y")


# --------------------------------------------------------------------------- built-in digits


def test_builtin_digits_long_tailed_train_balanced_test():
    train, test = load_builtin_digits(imbalance_factor=10, seed=0)
    counts = class_counts(train, label_column="labels")
    assert counts == long_tail_counts(counts[0], 10, 10) and counts[0] / counts[-1] >= 10 * 0.9
    test_counts = class_counts(test, label_column="labels")
    assert len(test) == 540 and max(test_counts) - min(test_counts) <= 3  # stratified 30 % of 1,797
    assert train.features["labels"].names == [str(d) for d in range(10)]
    pixels = np.asarray(train.with_format("numpy")[:]["pixel_values"])
    assert pixels.shape == (len(train), 64) and pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() == 1.0
    again, _ = load_builtin_digits(imbalance_factor=10, seed=0)
    assert np.array_equal(pixels, np.asarray(again.with_format("numpy")[:]["pixel_values"]))


# --------------------------------------------------------------------------- local folders (synthetic)


@pytest.fixture()
def npz_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, n in (("train_part0", 6), ("train_part1", 4), ("test", 3)):
        np.savez(
            tmp_path / f"{name}.npz",
            images=rng.integers(0, 256, (n, 5, 4), dtype=np.uint8),  # grayscale [N, H, W]
            labels=np.arange(n) % 2,
            classes=np.array(["neg", "pos"]),
        )
    return tmp_path


def test_npz_folder_parts_concatenated_as_hwc_uint8(npz_folder: Path):
    ds = load_local_dataset(npz_folder, "train")
    assert len(ds) == 10 and ds.features["label"].names == ["neg", "pos"]
    assert ds.features["image"] == datasets.Array3D((5, 4, 1), "uint8")
    batch = ds.with_format("numpy")[:]["image"]
    expected = np.concatenate([np.load(npz_folder / f"train_part{i}.npz")["images"] for i in range(2)])
    assert batch.shape == (10, 5, 4, 1) and np.array_equal(batch[..., 0], expected)


def test_unknown_split_and_folder_list_what_is_there(npz_folder: Path, tmp_path_factory):
    with pytest.raises(DatasetLoadError, match=r"no split 'val'; available splits: \['test', 'train'\]"):
        load_local_dataset(npz_folder, "val")
    odd = tmp_path_factory.mktemp("odd")
    (odd / "notes.txt").write_text("x")
    with pytest.raises(DatasetLoadError, match=r"not a shared-style dataset folder \(found \['notes.txt'\]\)"):
        load_local_dataset(odd, "train")
    with pytest.raises(DatasetLoadError, match="no such folder"):
        load_local_dataset(odd / "missing", "train")


def test_jsonl_folder_with_names_for_label_columns(tmp_path: Path):
    rows = [{"text": f"q{i}", "label": i % 3, "coarse_label": i % 2, "domain": "d"} for i in range(6)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "labels.json").write_text(json.dumps(["x", "y", "z"]))
    (tmp_path / "coarse_labels.json").write_text(json.dumps(["A", "B"]))
    ds = load_local_dataset(tmp_path, "train")
    assert ds.features["label"].names == ["x", "y", "z"]
    assert ds.features["coarse_label"].names == ["A", "B"]
    coarse = load_dataset_any(tmp_path, "train", label_column="coarse_label")
    assert coarse.column_names == ["text", "label", "domain"] and class_names(coarse) == ["A", "B"]
    (tmp_path / "labels.json").write_text(json.dumps(["x", "y"]))
    with pytest.raises(DatasetLoadError, match=r"labels span \[0, 2\] but there are 2 class names"):
        load_local_dataset(tmp_path, "train")


# --------------------------------------------------------------------------- load_dataset_any


def test_save_to_disk_folder_columns_normalised(tmp_path: Path):
    ds = datasets.Dataset.from_dict({"sentence": ["a", "b", "c"], "intent": ["stop", "go", "stop"]})
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(tmp_path / "dd")
    loaded = load_dataset_any(tmp_path / "dd", "train", text_column="sentence", label_column="intent")
    assert loaded.column_names == ["text", "label"] and class_names(loaded) == ["go", "stop"]
    assert loaded["label"] == [1, 0, 1]
    with pytest.raises(DatasetLoadError, match=r"no split 'validation'; available splits: \['test', 'train'\]"):
        load_dataset_any(tmp_path / "dd", "validation")
    with pytest.raises(DatasetLoadError, match="no label column among"):
        load_dataset_any(tmp_path / "dd", "train")  # 'intent' is not a default label name
    with pytest.raises(DatasetLoadError, match="no text column 'question'.*--text-column"):
        load_dataset_any(tmp_path / "dd", "train", text_column="question")


def test_long_tailed_splits_are_carved_cut_saved_once(tmp_path: Path):
    source = tmp_path / "source"
    datasets.DatasetDict({"train": _text_dataset([12, 12, 12]), "test": _text_dataset([5, 5, 5])}).save_to_disk(source)
    target = save_long_tailed_splits(str(source), tmp_path / "prepared", 4, validation_per_class=2, test_per_class=3)
    saved = datasets.load_from_disk(str(target))
    assert class_counts(saved["validation"]) == [2, 2, 2] and class_counts(saved["test"]) == [3, 3, 3]
    assert class_counts(saved["train"]) == long_tail_counts(10, 3, 4)  # 10 per class left after the validation rows
    assert set(saved["train"]["text"]).isdisjoint(saved["validation"]["text"])
    assert save_long_tailed_splits("/nonexistent", target, 4, 2) == target  # built once: the saved copy is kept


def test_data_files_folder_goes_through_datasets_load_dataset(tmp_path: Path):
    (tmp_path / "train.csv").write_text("img_text,labels\nhello,1\nworld,0\nagain,1\n")
    loaded = load_dataset_any(tmp_path, "train", text_column="img_text")
    assert loaded["text"] == ["hello", "world", "again"]
    assert isinstance(loaded.features["label"], datasets.ClassLabel) and class_counts(loaded) == [1, 2]


def test_missing_folder_and_unreachable_hub_id_say_how_to_fix(tmp_path: Path):
    with pytest.raises(DatasetLoadError, match="does not exist.*Fix"):
        load_dataset_any(str(tmp_path / "nope" / "cifar10"), "train")
    with pytest.raises(DatasetLoadError, match="load_dataset.*failed.*Fix"):
        load_dataset_any("no-such-owner/no-such-dataset", "train")  # HF_HUB_OFFLINE=1 (conftest)


def test_bare_name_found_under_data_dir_env(npz_folder: Path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(npz_folder.parent))
    assert len(load_dataset_any(npz_folder.name, "test")) == 3


# --------------------------------------------------------------------------- the shared data


@pytest.mark.data
def test_shared_cifar10(shared_data_dir: Path):
    test = load_dataset_any(shared_data_dir / "cifar10", "test")
    assert class_names(test) == CIFAR10_NAMES and class_counts(test) == [1000] * 10
    first = np.load(shared_data_dir / "cifar10" / "test.npz")["images"][:2]
    assert np.array_equal(test.with_format("numpy")[:2]["image"], first)
    train = load_local_dataset(shared_data_dir / "cifar10", "train")
    assert class_counts(train) == [5000] * 10
    assert class_counts(make_long_tailed(train, 100)) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.data
def test_shared_breastmnist_and_text_folders(shared_data_dir: Path):
    breast = load_local_dataset(shared_data_dir / "breastmnist", "train")
    assert class_names(breast) == ["malignant", "normal, benign"] and class_counts(breast) == [147, 399]
    assert breast.features["image"].shape == (28, 28, 1)
    banking = load_local_dataset(shared_data_dir / "banking77", "train")
    counts = class_counts(banking)
    assert len(banking) == 10003 and len(counts) == 77 and (min(counts), max(counts)) == (35, 187)
    assert class_names(banking)[0] == "activate_my_card"
    trec = load_dataset_any(shared_data_dir / "trec", "train", label_column="coarse_label")
    assert class_counts(trec) == [86, 1162, 1250, 1223, 835, 896]
    clinc = load_local_dataset(shared_data_dir / "clinc150", "train_imbalanced")
    assert len(clinc) == 10525 and class_names(clinc)[150] == "oos"


# --------------------------------------------------------------------------- validation carved for a selection


def _labelled(counts: list[int]) -> datasets.Dataset:
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    names = [f"c{c}" for c in range(len(counts))]
    return datasets.Dataset.from_dict(
        {"text": [str(i) for i in range(len(labels))], "label": labels},
        features=datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}),
    )


def test_carve_validation_is_stratified_and_keeps_tiny_classes_whole():
    from hf_semscale.data import carve_validation

    train, validation, kept = carve_validation(_labelled([40, 10, 3, 2, 1]), fraction=0.25, seed=0)
    assert class_counts(validation) == [10, 2, 1, 0, 0]
    assert class_counts(train) == [30, 8, 2, 2, 1]  # two rows always stay in training
    assert kept == ["c3", "c4"]
    assert not set(train["text"]) & set(validation["text"])
    again = carve_validation(_labelled([40, 10, 3, 2, 1]), fraction=0.25, seed=0)[1]
    assert again["text"] == validation["text"]  # seeded
    with pytest.raises(ValueError, match="3 training rows"):
        carve_validation(_labelled([2, 1]), fraction=0.5)
    with pytest.raises(ValueError, match="fraction"):
        carve_validation(_labelled([5, 5]), fraction=1.0)


def test_bundled_demo_data_loads_and_rebuilds_byte_for_byte(tmp_path, shared_data_dir):
    from hf_semscale.demo_data.build import DEMO_DIR, build

    train = load_local_dataset(DEMO_DIR, "train")  # .jsonl.gz splits
    counts = class_counts(train)
    assert len(counts) == 30 and counts[0] == 100 and counts[-1] == 5 and len(train) == 961
    assert class_counts(load_local_dataset(DEMO_DIR, "test")) == [30] * 30
    rebuilt = build(shared_data_dir / "clinc150", tmp_path / "demo")
    for path in sorted(DEMO_DIR.glob("*.json*")):
        assert (rebuilt / path.name).read_bytes() == path.read_bytes(), path.name
