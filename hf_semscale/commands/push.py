"""``hf-semscale push <output_dir> --repo-id ...``: publish a trained output directory to the Hub."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def add_push_arguments(
    parser: argparse.ArgumentParser, *, repo_option: str = "--repo-id", required: bool = True
) -> None:
    """Add the Hub options; ``measure`` reuses them with ``repo_option="--push", required=False``.

    The repo id lands in ``args.repo_id`` whatever the option is called; :func:`push_kwargs` turns the
    rest into keyword arguments of :func:`hf_semscale.hub.push_output_dir` / ``push_analysis``.
    """
    group = parser.add_argument_group("Hugging Face Hub")
    group.add_argument(
        repo_option,
        dest="repo_id",
        required=required,
        metavar="REPO_ID",
        help="Hub repo to push to, 'namespace/name' (created if missing).",
    )
    group.add_argument(
        "--token",
        default=None,
        help="Hub token with write access (default: HF_TOKEN, else the one saved by `hf auth login`).",
    )
    group.add_argument(
        "--private",
        action="store_true",
        default=None,
        help="Create the repo private (default: the namespace's default visibility). Ignored if it exists.",
    )
    group.add_argument("--revision", default=None, help="Branch to commit to (created from main if missing).")
    group.add_argument("--commit-message", default=None, help="Commit message.")
    group.add_argument(
        "--exist-ok",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Add a commit to the repo if it already exists (default); --no-exist-ok fails instead.",
    )


def push_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of a push, from options added by :func:`add_push_arguments`."""
    return {
        "token": args.token,
        "private": args.private,
        "revision": args.revision,
        "commit_message": args.commit_message,
        "exist_ok": args.exist_ok,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="Output directory of a SemScaleTrainer run (model + semantic_scales.json).")
    add_push_arguments(parser)
    card = parser.add_argument_group("model card")
    card.add_argument("--base-model", default=None, help="Hub id of the model it was fine-tuned from.")
    card.add_argument(
        "--dataset-name", default=None, help="Hub id of the dataset trained and evaluated on (needed for model-index)."
    )
    card.add_argument("--dataset-split", default=None, help="Split the metrics were computed on, e.g. 'test'.")
    card.add_argument(
        "--task-type", default=None, help="Pipeline task, e.g. text-classification (default: from config.json)."
    )
    card.add_argument("--license", default=None, help="License id, e.g. apache-2.0.")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Contact nobody (no token needed): write the card and the list of files the push would upload to "
        "OUTPUT_DIR/_hub_preview/ and print that folder.",
    )
    card.add_argument(
        "--metrics-file",
        default=None,
        help="JSON dict of evaluation metrics (overrides the report's 'metrics' section). Default: what the run "
        "saved in OUTPUT_DIR: eval_results.json / all_results.json (trainer.save_metrics), else the last evaluation "
        "in trainer_state.json (OUTPUT_DIR's, else the latest checkpoint's).",
    )


def run(args: argparse.Namespace) -> int:
    from hf_semscale.hub import PushError, push_output_dir
    from hf_semscale.hub.publish import read_json_object

    try:
        metrics = read_json_object(args.metrics_file) if args.metrics_file else None
        with _warnings_printed("hf_semscale.hub.publish"):
            url = push_output_dir(
                args.output_dir,
                args.repo_id,
                base_model=args.base_model,
                dataset_name=args.dataset_name,
                dataset_split=args.dataset_split,
                task_type=args.task_type,
                license=args.license,
                metrics=metrics,
                dry_run=args.dry_run,
                **push_kwargs(args),
            )
    except (PushError, ValueError, OSError) as err:
        print(f"hf-semscale push: error: {err}", file=sys.stderr)
        return 1
    print(url)
    return 0


@contextmanager
def _warnings_printed(logger_name: str) -> Iterator[None]:
    """Print the warnings of ``logger_name`` to stderr as ``hf-semscale push: warning: ...`` lines meanwhile."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("hf-semscale push: warning: %(message)s"))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
