"""FeaturePool ring buffers against a per-class Python list; state files through safetensors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError

from hf_semscale.dsb.pool import (
    CHECKSUM_KEY,
    FeaturePool,
    PoolFileError,
    atomic_save_safetensors,
    estimate_pool_bytes,
    load_safetensors_checked,
    pool_capacities,
    tensors_checksum,
)

IGNORE = -100


class ReferencePool:
    """The specification: per class, the newest ``capacity`` rows in arrival order."""

    def __init__(self, capacities: list[int]):
        self.capacities = capacities
        self.rows: list[list[list[float]]] = [[] for _ in capacities]
        self.total_added = [0] * len(capacities)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        for row, label in zip(features.tolist(), labels.tolist()):
            if label == IGNORE:
                continue
            self.rows[label] = (self.rows[label] + [row])[-self.capacities[label] :]
            self.total_added[label] += 1

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [row for class_rows in self.rows for row in class_rows]
        labels = [c for c, class_rows in enumerate(self.rows) for _ in class_rows]
        return torch.tensor(rows, dtype=torch.float64).reshape(-1, 2), torch.tensor(labels, dtype=torch.long)


class RowIds:
    """Feature rows that identify their insertion: row ``i`` is ``[i, -i]``."""

    def __init__(self):
        self.next_id = 0

    def rows(self, count: int) -> torch.Tensor:
        ids = torch.arange(self.next_id, self.next_id + count, dtype=torch.float64)
        self.next_id += count
        return torch.stack([ids, -ids], dim=1)


def assert_same_as_reference(pool: FeaturePool, reference: ReferencePool) -> None:
    features, labels = pool.contents()
    expected_features, expected_labels = reference.contents()
    torch.testing.assert_close(features, expected_features, rtol=0, atol=0)
    assert torch.equal(labels, expected_labels)
    assert pool.filled.tolist() == [len(rows) for rows in reference.rows]
    assert pool.total_added.tolist() == reference.total_added


# ---------------------------------------------------------------- capacities and ring-buffer semantics


def test_capacity_is_min_of_count_and_k_and_at_least_one():
    assert pool_capacities([5, 100, 0, 10], 10).tolist() == [5, 10, 1, 10]
    assert pool_capacities([5, 100, 0], None).tolist() == [5, 100, 1]
    assert pool_capacities(torch.tensor([5, 100, 0]), 0).tolist() == [5, 100, 1]


def test_one_at_a_time_keeps_the_newest_rows_oldest_first():
    pool = FeaturePool(torch.tensor([3, 2]), 2, dtype="float64")
    ids = RowIds()
    inserted = []
    for _ in range(7):
        row = ids.rows(1)
        inserted.append(row)
        pool.add(row, torch.tensor([0]))
    features, labels = pool.contents()
    torch.testing.assert_close(features, torch.cat(inserted[-3:]))
    assert labels.tolist() == [0, 0, 0]
    assert pool.filled.tolist() == [3, 0] and pool.total_added.tolist() == [7, 0]


def test_a_batch_with_more_rows_than_capacity_keeps_its_newest_rows():
    pool = FeaturePool(torch.tensor([3, 2]), 2, dtype="float64")
    pool.add(RowIds().rows(1) + 1000, torch.tensor([0]))  # an older row that must be overwritten
    labels = torch.tensor([0, 1, 0, 0, IGNORE, 1, 0, 0, 1])
    features = RowIds().rows(9)
    pool.add(features, labels)
    stored, stored_labels = pool.contents()
    # class 0 got rows 0, 2, 3, 6, 7: the newest three are 3, 6, 7; class 1 got 1, 5, 8: newest two 5, 8
    torch.testing.assert_close(stored, features[[3, 6, 7, 5, 8]])
    assert stored_labels.tolist() == [0, 0, 0, 1, 1]


def test_ignored_labels_are_skipped():
    pool = FeaturePool(torch.tensor([2, 2]), 2, dtype="float64")
    features = RowIds().rows(4)
    pool.add(features, torch.tensor([IGNORE, 1, IGNORE, IGNORE]))
    stored, labels = pool.contents()
    torch.testing.assert_close(stored, features[[1]])
    assert labels.tolist() == [1] and pool.total_added.tolist() == [0, 1]
    pool.add(features, torch.full((4,), IGNORE))
    assert pool.filled.tolist() == [0, 1]


def test_full_only_when_every_class_reaches_its_capacity():
    pool = FeaturePool(torch.tensor([2, 1, 3]), 2)
    ids = RowIds()
    pool.add(ids.rows(3), torch.tensor([0, 0, 1]))
    assert not pool.is_full
    pool.add(ids.rows(2), torch.tensor([2, 2]))
    assert not pool.is_full
    pool.add(ids.rows(1), torch.tensor([2]))
    assert pool.is_full and pool.filled.tolist() == [2, 1, 3]


def test_empty_pool_contents():
    features, labels = FeaturePool(torch.tensor([2, 3]), 5).contents()
    assert features.shape == (0, 5) and labels.shape == (0,)


def test_features_are_stored_detached_in_the_storage_dtype():
    pool = FeaturePool(torch.tensor([2]), 3, dtype="bfloat16")
    features = torch.randn(2, 3, requires_grad=True)
    pool.add(features * 2, torch.tensor([0, 0]))
    stored, _ = pool.contents()
    assert stored.dtype == torch.bfloat16 and not stored.requires_grad
    torch.testing.assert_close(stored, (features * 2).detach().bfloat16())


batches = st.lists(
    st.lists(st.integers(min_value=-1, max_value=3), min_size=0, max_size=9),  # -1 stands for -100
    min_size=1,
    max_size=8,
)


@settings(max_examples=30, deadline=None)
@given(capacities=st.lists(st.integers(min_value=1, max_value=4), min_size=4, max_size=4), label_batches=batches)
def test_matches_a_per_class_list_on_random_insert_sequences(capacities, label_batches):
    pool = FeaturePool(torch.tensor(capacities), 2, dtype="float64")
    reference = ReferencePool(capacities)
    ids = RowIds()
    for batch_labels in label_batches:
        labels = torch.tensor([IGNORE if y < 0 else y for y in batch_labels], dtype=torch.long)
        features = ids.rows(len(batch_labels))
        pool.add(features, labels)
        reference.add(features, labels)
        assert_same_as_reference(pool, reference)
    assert pool.is_full == all(len(rows) == cap for rows, cap in zip(reference.rows, capacities))


# ---------------------------------------------------------------- memory


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", torch.float64])
def test_estimate_pool_bytes_equals_the_real_storage(dtype):
    capacities = pool_capacities([7, 300, 1, 40], 50)
    pool = FeaturePool(capacities, 24, dtype=dtype)
    assert estimate_pool_bytes(capacities, 24, dtype) == pool.nbytes == pool.storage.untyped_storage().nbytes()
    assert pool.nbytes == (7 + 50 + 1 + 40) * 24 * pool.storage.element_size()


# ---------------------------------------------------------------- state and files


def filled_pool(seed: int = 0, dtype: str = "float32") -> FeaturePool:
    generator = torch.Generator().manual_seed(seed)
    pool = FeaturePool(torch.tensor([3, 1, 4]), 5, dtype=dtype)
    for _ in range(3):
        pool.add(torch.randn(6, 5, generator=generator), torch.randint(0, 3, (6,), generator=generator))
    return pool


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_state_round_trips_through_safetensors(tmp_path: Path, dtype):
    pool = filled_pool(dtype=dtype)
    path = tmp_path / "pool.safetensors"
    atomic_save_safetensors(pool.state_dict(), path, metadata={"format": "test"})
    assert [p.name for p in tmp_path.iterdir()] == ["pool.safetensors"]  # no temporary file left
    tensors, metadata = load_safetensors_checked(path)
    assert metadata == {"format": "test", CHECKSUM_KEY: tensors_checksum(pool.state_dict())}
    restored = FeaturePool(torch.tensor([3, 1, 4]), 5, dtype=dtype)
    restored.load_state_dict(tensors, source=str(path))
    for key, value in pool.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
        assert restored.state_dict()[key].dtype == value.dtype, key
    # The restored pool carries on exactly as the original.
    more, labels = torch.randn(5, 5), torch.tensor([0, 2, 2, 1, 0])
    pool.add(more, labels)
    restored.add(more, labels)
    for original, copy in zip(pool.contents(), restored.contents()):
        assert torch.equal(original, copy)


def test_failed_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path):
    path = tmp_path / "pool.safetensors"
    atomic_save_safetensors({"a": torch.ones(2)}, path)
    with pytest.raises(TypeError):
        atomic_save_safetensors({"a": torch.ones(2)}, path, metadata={"step": 3})  # metadata values must be str
    assert [p.name for p in tmp_path.iterdir()] == ["pool.safetensors"]
    assert torch.equal(load_safetensors_checked(path)[0]["a"], torch.ones(2))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_a_flipped_bit_in_the_stored_features_is_refused_by_the_checksum(tmp_path: Path, dtype):
    path = tmp_path / "pool.safetensors"
    atomic_save_safetensors(filled_pool(dtype=dtype).state_dict(), path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # one bit of the last tensor's bytes (the header is at the front): still parses
    path.write_bytes(bytes(data))
    with pytest.raises(
        PoolFileError, match=r"pool\.safetensors: the tensors do not match the file's sha256 checksum.*Fix"
    ):
        load_safetensors_checked(path)


def test_checksum_covers_names_dtypes_shapes_and_values():
    base = {"a": torch.arange(4, dtype=torch.float32), "b": torch.zeros(2, 2)}
    variants = [
        {"a2": base["a"], "b": base["b"]},
        {"a": base["a"].double(), "b": base["b"]},
        {"a": base["a"], "b": base["b"].reshape(4)},
        {"a": base["a"] + torch.tensor([0, 0, 0, 1e-6]), "b": base["b"]},
    ]
    assert len({tensors_checksum(base), *(tensors_checksum(v) for v in variants)}) == 5
    assert tensors_checksum(dict(reversed(list(base.items())))) == tensors_checksum(base)  # order-free


def test_truncated_file_is_a_pool_file_error(tmp_path: Path):
    path = tmp_path / "pool.safetensors"
    atomic_save_safetensors(filled_pool().state_dict(), path)
    data = path.read_bytes()
    for cut in (len(data) - 16, 40, 3, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(PoolFileError, match=r"pool\.safetensors: not a readable safetensors file.*Fix") as excinfo:
            load_safetensors_checked(path)
        assert isinstance(excinfo.value.__cause__, SafetensorError)


UNPICKLED: list[str] = []


def record_unpickling() -> str:
    UNPICKLED.append("unpickled")
    return "payload"


class Payload:
    """Runs :func:`record_unpickling` when unpickled."""

    def __reduce__(self):
        return record_unpickling, ()


def test_pickle_file_is_rejected_without_unpickling(tmp_path: Path):
    path = tmp_path / "pool.safetensors"
    torch.save({"pool.storage": torch.zeros(2, 2), "payload": Payload()}, path)
    UNPICKLED.clear()
    with pytest.raises(PoolFileError, match="pool.safetensors: not a readable safetensors file") as excinfo:
        load_safetensors_checked(path)
    assert isinstance(excinfo.value.__cause__, SafetensorError)
    assert UNPICKLED == []
    # The file really would run code if unpickled (a file handle: torch.load dispatches on the suffix).
    with path.open("rb") as handle:
        assert torch.load(handle, weights_only=False)["payload"] == "payload"
    assert UNPICKLED == ["unpickled"]
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(PoolFileError):
        load_safetensors_checked(path)
    assert UNPICKLED == ["unpickled"]


def test_missing_file(tmp_path: Path):
    with pytest.raises(PoolFileError, match="absent.safetensors: file not found"):
        load_safetensors_checked(tmp_path / "absent.safetensors")


def saved_state(tmp_path: Path, pool: FeaturePool) -> tuple[dict[str, torch.Tensor], str]:
    path = tmp_path / "pool.safetensors"
    atomic_save_safetensors(pool.state_dict(), path)
    return load_safetensors_checked(path)[0], str(path)


def test_pool_of_another_number_of_classes(tmp_path: Path):
    state, source = saved_state(tmp_path, filled_pool())
    other = FeaturePool(torch.tensor([3, 1, 4, 2]), 5)
    with pytest.raises(PoolFileError, match=rf"{source}: pool is for 3 classes but this model has 4.*Fix"):
        other.load_state_dict(state, source=source)


def test_pool_of_another_feature_size(tmp_path: Path):
    state, source = saved_state(tmp_path, filled_pool())
    other = FeaturePool(torch.tensor([3, 1, 4]), 8)
    with pytest.raises(PoolFileError, match=rf"{source}: pool features have size \(5,\) but this model's are 8.*Fix"):
        other.load_state_dict(state, source=source)


def test_pool_with_other_capacities(tmp_path: Path):
    state, source = saved_state(tmp_path, filled_pool())
    with pytest.raises(PoolFileError, match=rf"{source}: per-class capacities differ.*Fix"):
        FeaturePool(torch.tensor([3, 2, 4]), 5).load_state_dict(state, source=source)


def test_not_a_pool_state_and_inconsistent_counters(tmp_path: Path):
    state, source = saved_state(tmp_path, filled_pool())
    target = FeaturePool(torch.tensor([3, 1, 4]), 5)
    with pytest.raises(PoolFileError, match=rf"{source}: not a feature-pool state \(missing \['pool.filled'\]\)"):
        target.load_state_dict({k: v for k, v in state.items() if k != "pool.filled"}, source=source)
    for key, bad in (
        ("pool.filled", torch.tensor([9, 1, 4])),
        ("pool.write_pos", state["pool.write_pos"] + 1),
        ("pool.storage", torch.zeros(7, 5)),
    ):
        with pytest.raises(PoolFileError, match=rf"{source}: pool counters or storage size are inconsistent.*Fix"):
            target.load_state_dict({**state, key: bad}, source=source)
    assert target.filled.tolist() == [0, 0, 0]  # a failed load changes nothing


# ---------------------------------------------------------------- bad input


def test_bad_construction():
    with pytest.raises(ValueError, match="unsupported pool dtype 'float8'.*float16"):
        FeaturePool(torch.tensor([2]), 3, dtype="float8")
    with pytest.raises(ValueError, match="unsupported pool dtype"):
        estimate_pool_bytes(torch.tensor([2]), 3, torch.int8)
    with pytest.raises(ValueError, match="positive integers"):
        FeaturePool(torch.tensor([2, 0]), 3)
    with pytest.raises(ValueError, match="feature_dim must be positive"):
        FeaturePool(torch.tensor([2]), 0)


def test_bad_add():
    pool = FeaturePool(torch.tensor([2, 2]), 3)
    with pytest.raises(ValueError, match=r"features of size 3; got shape \(2, 4\)"):
        pool.add(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="2 feature rows but 3 labels"):
        pool.add(torch.zeros(2, 3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"labels \[.*\] are outside \[0, 2\) and not -100"):
        pool.add(torch.zeros(2, 3), torch.tensor([0, 2]))
    assert pool.filled.tolist() == [0, 0]


def test_a_class_sharded_pool_keeps_only_its_classes_and_reassembles_exactly():
    caps = torch.tensor([3, 2, 4, 1])
    stored = torch.tensor([True, False, True, False])
    full, shard = FeaturePool(caps, 5, "float32"), FeaturePool(caps, 5, "float32", stored=stored)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        features, labels = torch.randn(6, 5, generator=generator), torch.randint(0, 4, (6,), generator=generator)
        full.add(features, labels)
        shard.add(features, labels)
    for name in ("filled", "total_added", "write_pos"):  # every class is counted
        assert torch.equal(getattr(shard, name), getattr(full, name)), name
    assert shard.is_sharded and shard.nbytes == int((caps * stored).sum()) * 5 * 4 < full.nbytes
    full_features, full_labels = full.contents()
    mine = stored[full_labels]
    shard_features, shard_labels = shard.contents()
    assert torch.equal(shard_labels, full_labels[mine]) and torch.equal(shard_features, full_features[mine])
    with pytest.raises(RuntimeError, match="gather the whole pool"):
        shard.state_dict()
    # the rows of every class (as gathered from all shards) give back the whole pool, bit for bit
    whole = shard.resharded(None, (full_features, full_labels))
    for key, value in full.state_dict().items():
        assert torch.equal(whole.state_dict()[key], value), key
    # and a whole pool gives any shard
    again = full.resharded(stored)
    assert torch.equal(again.contents()[0], shard_features)
