"""Rebuild the bundled demo dataset from a CLINC150 folder (``python -m hf_semscale.demo_data.build <clinc150 dir>``).

The 30 intents of CLINC150's ``banking`` and ``credit_cards`` domains (in the order of its labels.json). Training: the
official train split (100 per intent) made long-tailed with Cao et al.'s profile, IF = 20 (100 ... 5 per intent, intents
ranked by id, seed 0); validation and test: the official splits as they are (20 and 30 per intent). Written as
``{train,validation,test}.jsonl.gz`` + ``labels.json`` (gzip without a timestamp: the bytes are reproducible).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from ..data import long_tail_indices

__all__ = ["DEMO_DIR", "DOMAINS", "IMBALANCE_FACTOR", "build"]

DEMO_DIR = Path(__file__).resolve().parent / "clinc150_lt_banking"
DOMAINS = ("banking", "credit_cards")
IMBALANCE_FACTOR = 20.0


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build(clinc150_dir: str | Path, target: str | Path = DEMO_DIR) -> Path:
    """Write the demo folder from ``clinc150_dir`` (train/validation/test.jsonl, labels.json, domains.json)."""
    import numpy as np

    source, target = Path(clinc150_dir), Path(target)
    names = json.loads((source / "labels.json").read_text(encoding="utf-8"))
    domains = json.loads((source / "domains.json").read_text(encoding="utf-8"))
    keep = [names.index(intent) for domain in DOMAINS for intent in domains[domain]]
    keep.sort()
    new_id = {old: new for new, old in enumerate(keep)}
    target.mkdir(parents=True, exist_ok=True)
    (target / "labels.json").write_text(json.dumps([names[c] for c in keep], indent=0) + "\n", encoding="utf-8")
    for split in ("train", "validation", "test"):
        rows = [
            {"text": r["text"], "label": new_id[r["label"]], "domain": r["domain"]}
            for r in _rows(source / f"{split}.jsonl")
            if r["label"] in new_id
        ]
        if split == "train":
            labels = np.array([r["label"] for r in rows])
            rows = [rows[i] for i in long_tail_indices(labels, IMBALANCE_FACTOR, 0, None, len(keep), "index")]
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        with open(target / f"{split}.jsonl.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(payload)
    return target


if __name__ == "__main__":
    print(build(sys.argv[1]))
