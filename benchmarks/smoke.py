"""What every benchmark script shares: ``--out-dir`` (where its ``<name>.json`` / ``.md`` go) and ``--smoke``.

``--smoke`` runs the script for a few steps at tiny sizes, to check that it still works (CI runs each one:
``tests/test_benchmarks_smoke.py``); its numbers mean nothing, so they go to a new temporary folder, never
over the committed figures in ``benchmarks/results/``.

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    args = parse_benchmark_args(parser, argv, smoke={"steps": 80})
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from hf_semscale.atomic import atomic_path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_benchmark_args(
    parser: argparse.ArgumentParser, argv: list[str] | None, smoke: dict[str, Any]
) -> argparse.Namespace:
    """Add ``--out-dir`` (alias ``--out``) and ``--smoke`` to ``parser``, then parse ``argv``.

    With ``--smoke``, the values of ``smoke`` (option dest -> value) replace those options' defaults (options
    given on the command line still win) and ``--out-dir`` defaults to a new temporary folder; ``--smoke`` with
    ``--out-dir benchmarks/results`` is refused."""
    sizes = " ".join(f"--{dest.replace('_', '-')} {_shown(value)}" for dest, value in smoke.items())
    parser.add_argument(
        "--out-dir",
        "--out",
        dest="out_dir",
        type=Path,
        default=RESULTS_DIR,
        help="folder for the results (.json / .md); default benchmarks/results, with --smoke a new temporary folder",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"check that the script runs: a few steps at tiny sizes ({sizes}; options you give still win), "
        "results in a temporary folder",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(smoke) - set(vars(args)))
    if unknown:
        raise ValueError(f"smoke sizes name options that {parser.prog} does not have: {unknown}")
    if not args.smoke:
        return args
    parser.set_defaults(**smoke, out_dir=None)
    args = parser.parse_args(argv)
    if args.out_dir is None:
        args.out_dir = Path(tempfile.mkdtemp(prefix=f"{Path(parser.prog).stem}-smoke-"))
    elif args.out_dir.resolve() == RESULTS_DIR.resolve():
        parser.error(
            "--smoke numbers would replace the committed figures in benchmarks/results. "
            "Fix: pass another --out-dir, or none (a new temporary folder)."
        )
    print(f"smoke run ({sizes}): results go to {args.out_dir}", flush=True)
    return args


def write_results(
    out_dir: Path, name: str, payload: dict[str, Any] | list[Any], markdown: str, indent: int = 2
) -> None:
    """Write ``out_dir/<name>.json`` (``payload``, indented JSON) and ``out_dir/<name>.md`` (``markdown``), each atomically."""
    files = {f"{name}.json": json.dumps(payload, indent=indent) + "\n", f"{name}.md": markdown}
    for filename, text in files.items():
        with atomic_path(Path(out_dir) / filename) as tmp:
            tmp.write_text(text, encoding="utf-8")


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
