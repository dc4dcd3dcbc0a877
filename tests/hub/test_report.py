"""semantic_scales.json: building, atomic writing and validated reading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hf_semscale.hub.report import (
    SCALES_FILENAME,
    ReportError,
    build_scale_report,
    read_scale_report,
    write_json_atomic,
)


def test_round_trip_keeps_types_and_turns_non_finite_into_null(tmp_path):
    report = build_scale_report(
        source="trainer",
        scales=[3.5, 1.25],
        counts=[10, 2],
        class_names=["cat", "dog"],
        weights=[np.float32(0.5), torch.tensor(float("inf"))],
        extra_per_class={"train_count": [100, 20], "accuracy": [None, 0.75]},
        step=7,
        stage="reweight",
        metrics={"accuracy": 0.5},
    )
    write_json_atomic(tmp_path / SCALES_FILENAME, report)
    loaded = read_scale_report(tmp_path)  # a folder is accepted
    assert loaded["classes"] == [
        {"id": 0, "name": "cat", "count": 10, "scale": 3.5, "weight": 0.5, "train_count": 100, "accuracy": None},
        {"id": 1, "name": "dog", "count": 2, "scale": 1.25, "weight": None, "train_count": 20, "accuracy": 0.75},
    ]
    assert (loaded["step"], loaded["stage"], loaded["metrics"]) == (7, "reweight", {"accuracy": 0.5})
    assert [p.name for p in tmp_path.iterdir()] == [SCALES_FILENAME]  # no temporary file left


def test_per_class_columns_must_match_the_number_of_classes():
    with pytest.raises(ValueError, match="'weight' has 1 entries, expected 2"):
        build_scale_report(source="measure", scales=[1.0, 2.0], counts=[3, 4], weights=[1.0])


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        (json.dumps({"format_version": 99, "classes": []}), "unknown format_version 99"),
        (json.dumps({"format_version": 1, "classes": []}), "non-empty list"),
        (json.dumps({"format_version": 1, "classes": [{"id": 0, "name": "a", "count": 1}]}), r"lacks \['scale'\]"),
    ],
)
def test_reading_a_bad_report_names_the_problem(tmp_path, content, message):
    path = tmp_path / SCALES_FILENAME
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReportError, match=message):
        read_scale_report(path)
