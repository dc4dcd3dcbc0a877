"""atomic_path / atomic_folder: the one atomic-write rule (report, state files, history, recipe caches, prepared data)."""

from __future__ import annotations

import pytest

from hf_semscale.atomic import atomic_folder, atomic_path


def test_a_clean_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "report.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".json" and not tmp.exists()
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.safetensors"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]


def test_two_writers_never_share_a_temporary(tmp_path):
    target = tmp_path / "cache.npy"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("a")
        second.write_text("b")
    assert target.read_text() == "a"  # the outer block renames last


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "prepared"
    with atomic_folder(target) as tmp:
        assert tmp.is_dir() and tmp.parent == target.parent and not target.exists()
        (tmp / "part.arrow").write_text("rows")
    assert (target / "part.arrow").read_text() == "rows" and [p.name for p in target.parent.iterdir()] == ["prepared"]
    with pytest.raises(RuntimeError, match="interrupted"), atomic_folder(tmp_path / "other") as tmp:
        (tmp / "half").write_text("h")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    with pytest.raises(OSError), atomic_folder(target) as tmp:  # a complete folder is never replaced
        (tmp / "part.arrow").write_text("other rows")
    assert (target / "part.arrow").read_text() == "rows" and [p.name for p in target.parent.iterdir()] == ["prepared"]
