"""``benchmarks/long_tail.py --report-only`` regenerates the committed tables unchanged from unchanged runs.

``tests/fixtures/long_tail_report/`` holds the reports the benchmark BEFORE its rebuild on the library's run queue
(integ 1ea4f60) wrote for the synthetic work dir of ``tests/support/long_tail_runs.py`` (tiers ``tiny`` and
``cifar_balanced``, the study report); today's benchmark must write them byte for byte."""

from __future__ import annotations

import sys
from pathlib import Path

import long_tail_runs
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import long_tail, tiers  # noqa: E402

EXPECTED = Path(__file__).resolve().parent / "fixtures" / "long_tail_report"


@pytest.mark.parametrize("tier", long_tail_runs.TIERS)
def test_report_only_tables_are_byte_identical_to_the_old_harness(tier, tmp_path):
    long_tail_runs.build(tmp_path / "runs", tiers)
    out = tmp_path / "out"
    long_tail.main(["--tier", tier, "--report-only", "--work-dir", str(tmp_path / "runs"), "--out-dir", str(out)])
    written = sorted(p.name for p in out.iterdir() if p.suffix in (".md", ".json"))
    stem = "long_tail" if tier == "tiny" else f"long_tail_{tier}"
    assert written == [f"{stem}.json", f"{stem}.md"]
    for name in written:
        assert (out / name).read_bytes() == (EXPECTED / name).read_bytes(), name
