"""``hf-semscale demo``: the whole product on real long-tailed text, offline, in a few minutes on a laptop CPU.

Bundled data: 30 intents of CLINC150 (banking + credit cards), training split long-tailed 100 ... 5 per intent, the
official validation and test splits (``hf_semscale/demo_data/clinc150_lt_banking/README.md``: licence and citation).
The offline all-MiniLM-L6-v2 embeds it once; then ``select`` diagnoses the regime, tunes every candidate on the
validation split (a small grid), compares them over seeds and prints the table and the configuration to train with.
"""

from __future__ import annotations

import argparse
import sys

from ..select.candidates import DEFAULT_CANDIDATES, GridSpec

DEMO_GRID = GridSpec(starts=(0.4,), gammas=(1.0, 4.0), powers=(0.5, 1.0))
"""A small grid, so that the demo fits a few minutes; ``hf-semscale select`` defaults to the study's full grid."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="outputs/demo", help="Where runs and the selection report go.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Training seeds per candidate.")
    parser.add_argument("--workers", type=int, default=2, help="Runs at once (worker processes).")


def run(args: argparse.Namespace) -> int:
    from ..data import DataArguments
    from ..demo_data.build import DEMO_DIR
    from ..select.pipeline import select_text
    from ..select.report import summary_lines
    from ..select.selection import SelectionError, SelectionSettings

    print(
        "hf_semscale demo: which method for long-tailed intents? CLINC150 banking + credit cards (30 intents, "
        "100 ... 5 training examples each), frozen all-MiniLM-L6-v2 + MLP head, candidates "
        f"{', '.join(DEFAULT_CANDIDATES)}, seeds {args.seeds}."
    )
    data = DataArguments(data_dir=str(DEMO_DIR), validation_split="validation")
    settings = SelectionSettings(seeds=tuple(args.seeds), grid=DEMO_GRID, workers=args.workers)
    try:
        result = select_text(args.output_dir, data, settings=settings)
    except SelectionError as err:
        print(f"hf-semscale demo: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(result, args.output_dir)))
    print("On your data: hf-semscale select --dataset <folder or Hub id> (README, 'Which method for my data?').")
    return 0
