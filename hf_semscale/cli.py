"""``hf-semscale``: ``measure`` (scales of a dataset + model), ``select`` (a method for it), ``plan`` (DSB's cost at
scale), ``push``, ``demo``.

Each subcommand lives in ``hf_semscale/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; they are imported only when chosen.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "measure": "Measure per-class semantic scales of a dataset with a model; write JSON, plots and a table.",
    "select": "Which method suits this dataset: regime diagnosis and a validated comparison on its own training data.",
    "plan": "What DSB's feature pool and re-measurements will cost per process (memory, traffic, work, seconds).",
    "push": "Publish a trained output directory (model, semantic_scales.json, model card) to the Hub.",
    "demo": "The main job on bundled long-tailed intents (offline): regime, validated comparison, recommendation.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-semscale", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, help_text in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(f"hf_semscale.commands.{name}").add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"hf_semscale.commands.{args.command}")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
