"""``hf-semscale select``: input it cannot work with ends in one clear line naming the problem and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_semscale.cli import main


def _text_folder(root: Path, counts: list[int]) -> Path:
    """A shared-style jsonl folder with ``counts[c]`` training texts of class c and 2 test texts per class."""
    root.mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps([f"intent{c}" for c in range(len(counts))]))
    for split, per_class in (("train", counts), ("test", [2] * len(counts))):
        lines = [json.dumps({"text": f"text {c} {i}", "label": c}) for c, n in enumerate(per_class) for i in range(n)]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize(
    ("counts", "message"),
    [([0, 6, 0], "only .* nothing to balance"), ([1, 1, 1], "at most one training sample")],
)
def test_data_no_method_can_be_validated_on(tmp_path, capsys, counts, message):
    data = _text_folder(tmp_path / "data", counts)
    assert main(["select", "--dataset", str(data), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "hf-semscale select: error:" in err and "Fix:" in err
    assert __import__("re").search(message, err)
    assert not (tmp_path / "out" / "cache").exists()  # refused before the embedding pass


def test_a_model_that_is_no_text_encoder(tmp_path, capsys):
    from hf_semscale.modeling import MLPClassifierConfig, MLPForClassification

    MLPForClassification(MLPClassifierConfig(input_dim=4, num_labels=3)).save_pretrained(tmp_path / "mlp")
    data = _text_folder(tmp_path / "data", [6, 6, 6])
    rc = main(["select", "--dataset", str(data), "--model", str(tmp_path / "mlp"), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not load as a text encoder with a tokenizer" in err and "--model minilm" in err
