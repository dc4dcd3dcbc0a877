"""Publish trained output directories and scale analyses to the Hugging Face Hub.

Both pushes make ONE commit and never write into the local folder: the card is rendered in memory and sent
as bytes, so a failed or interrupted push leaves the folder exactly as it was (nothing to clean up, nothing
half-written to confuse the next try), and a retry is simply the same call again. (A dry run writes only its
preview, ``output_dir/_hub_preview/``, which no push uploads. ``SemScaleTrainer.push_to_hub`` goes through the
Trainer's own ``create_model_card``, which writes ``output_dir/README.md``, as transformers does.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from huggingface_hub import (
    CommitOperationAdd,
    DatasetCard,
    DatasetCardData,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    get_token,
)
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

from .. import __version__
from .report import SCALES_FILENAME, read_scale_report

try:  # the HTTP client of huggingface_hub: httpx2 from 2.x, httpx in 1.x
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    from httpx import TransportError

__all__ = [
    "PushError",
    "build_model_card",
    "build_analysis_card",
    "push_output_dir",
    "push_analysis",
    "saved_metrics",
    "last_evaluation",
    "missing_card_parts",
]

logger = logging.getLogger(__name__)

CARD_TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
CARD_FILENAME = "README.md"
PREVIEW_DIRNAME = "_hub_preview"
"""Where ``push_output_dir(..., dry_run=True)`` writes the card and file list (``_*`` is never pushed)."""
HUB_URL = "https://huggingface.co"
TAGS = ["hf_semscale", "semantic-scale"]
# Trainer.push_to_hub's patterns, plus temporary and hidden files; README.md is replaced by the generated card.
IGNORE_PATTERNS = ["_*", "checkpoint-*", "*.tmp*", ".*", "*/.*", CARD_FILENAME]
ANALYSIS_PATTERNS = [SCALES_FILENAME, "*.png"]
CONFIG_FILENAMES = ("config.json", "adapter_config.json")
WEIGHT_FILENAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
LONG_TAIL_METRICS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy (mean per-class)",
    "many_shot_accuracy": "Many-shot accuracy (>100 training samples)",
    "medium_shot_accuracy": "Medium-shot accuracy (20-100 training samples)",
    "few_shot_accuracy": "Few-shot accuracy (<20 training samples)",
}
METRIC_PREFIXES = ("", "eval_", "test_")
METRICS_FILENAMES = ("eval_results.json", "all_results.json")  # what Trainer.save_metrics writes
TRAINER_STATE_FILENAME = "trainer_state.json"
TASK_BY_HEAD_SUFFIX = {
    "ForSequenceClassification": "text-classification",
    "ForImageClassification": "image-classification",
    "ForAudioClassification": "audio-classification",
    "ForVideoClassification": "video-classification",
}
COLLAPSE_TABLE_ABOVE = 20
CITATION = (
    "@inproceedings{ma2023delving,\n"
    "  title={Delving into Semantic Scale Imbalance},\n"
    "  author={Ma, Yanbiao and Jiao, Licheng and Liu, Fang and Li, Yuxin and Yang, Shuyuan and Liu, Xu},\n"
    "  booktitle={International Conference on Learning Representations},\n"
    "  year={2023}\n"
    "}"
)
NO_TOKEN_MESSAGE = (
    "No Hugging Face token found, and pushing needs one with write access. Fix: run `hf auth login` "
    "(formerly `huggingface-cli login`), or set the HF_TOKEN environment variable, or pass token=... "
    "(CLI: --token)."
)


class PushError(RuntimeError):
    """A push that cannot start (bad folder, no token, repo exists) or that the Hub did not complete."""


# ---------------------------------------------------------------------------------------------- cards


def build_model_card(
    output_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    dataset_name: str | None = None,
    dataset_split: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    task_type: str | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
    tags: str | list[str] | None = None,
) -> ModelCard:
    """The model card of a trained ``output_dir``: method, how to load it, per-class scales, DSB settings,
    training hyper-parameters, plots, metrics, citation. Nothing is written or uploaded (``card.save(path)``
    writes it; ``hf-semscale push --dry-run`` previews a push).

    ``metrics`` (e.g. ``trainer.evaluate()``'s dict, ``eval_`` prefixes allowed) override the report's
    ``metrics`` section; without them, the metrics the run saved in ``output_dir`` are used (:func:`saved_metrics`).
    The long-tail metrics present and finite go to ``model-index``, which needs
    ``dataset_name`` (the Hub id of the dataset trained and evaluated on); missing ones are left out.
    ``task_type`` defaults to the one of the head in ``config.json`` (``*ForSequenceClassification`` ->
    ``text-classification``, ...). ``tags`` are added to the library's own (``hf_semscale``, ``semantic-scale``).
    """
    output_dir = Path(output_dir)
    report = read_scale_report(output_dir)
    if base_model is not None:
        _check_hub_id(base_model, "base_model")
    values = _card_metrics(output_dir, report, metrics)
    config = _model_config(output_dir)
    task_type = task_type or _task_from_config(config)
    title = repo_id.split("/")[-1] if repo_id else output_dir.resolve().name
    eval_results = None
    if values and dataset_name:
        if task_type is None:
            raise ValueError(
                f"cannot tell the task of {output_dir / 'config.json'} (its `architectures` has no known "
                "classification head), and model-index needs it. Fix: pass task_type='text-classification' "
                "(or image-classification, ...; CLI: --task-type)."
            )
        eval_results = [
            EvalResult(
                task_type=task_type,
                dataset_type=dataset_name,
                dataset_name=dataset_name,
                dataset_split=dataset_split,
                metric_type=name,
                metric_name=LONG_TAIL_METRICS[name],
                metric_value=value,
            )
            for name, value in values.items()
        ]
    elif values:
        warnings.warn(
            "metrics are shown in the card text but not in model-index, which needs the evaluation dataset. "
            "Fix: pass dataset_name='<hub dataset id>' (CLI: --dataset-name).",
            stacklevel=2,
        )
    card_data = ModelCardData(
        base_model=base_model,
        datasets=[dataset_name] if dataset_name else None,
        eval_results=eval_results,
        library_name="transformers",
        language=language,
        license=license,
        model_name=title if eval_results else None,
        pipeline_tag=task_type,
        tags=list(dict.fromkeys([*TAGS, *([tags] if isinstance(tags, str) else tags or [])])),
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        analysis=False,
        title=title,
        base_model=base_model,
        dataset_name=dataset_name,
        dataset_split=dataset_split,
        metric_rows=[(LONG_TAIL_METRICS[name], f"{value:.4f}") for name, value in values.items()],
        report=_report_context(report),
        usage=_usage(config, repo_id or title),
        collapse_above=COLLAPSE_TABLE_ABOVE,
        plots=_plots(output_dir),
        citation=CITATION,
    )


def build_analysis_card(
    analysis_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    model_id: str | None = None,
    dataset_name: str | None = None,
) -> DatasetCard:
    """The card of a published scale analysis: which model and data, per-class scales, plots, citation."""
    analysis_dir = Path(analysis_dir)
    report = read_scale_report(analysis_dir)
    title = repo_id.split("/")[-1] if repo_id else f"Semantic scales of {model_id or analysis_dir.resolve().name}"
    card_data = DatasetCardData(pretty_name=title, tags=list(TAGS))
    return DatasetCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        analysis=True,
        title=title,
        model_id=model_id,
        model_url=f"{HUB_URL}/{model_id}" if model_id and "/" in model_id and _is_hub_id(model_id) else None,
        dataset_name=dataset_name,
        metric_rows=[],
        report=_report_context(report),
        collapse_above=COLLAPSE_TABLE_ABOVE,
        plots=_plots(analysis_dir),
        citation=CITATION,
    )


def saved_metrics(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The evaluation metrics a Trainer run left in ``output_dir`` (None without any).

    Looks at ``eval_results.json`` and ``all_results.json`` (``Trainer.save_metrics``), then the last evaluation
    (:func:`last_evaluation`) in ``trainer_state.json``'s ``log_history``: ``output_dir``'s (``trainer.save_state()``),
    else the latest complete checkpoint's.
    """
    from ..trainer.checkpoints import latest_complete_checkpoint

    output_dir = Path(output_dir)
    for path in (output_dir / name for name in METRICS_FILENAMES):
        if path.is_file():
            metrics = read_json_object(path)
            if _long_tail_metrics(metrics):
                return metrics
    checkpoint = latest_complete_checkpoint(output_dir, needs_semscale_state=False)
    states = [output_dir / TRAINER_STATE_FILENAME] + ([Path(checkpoint) / TRAINER_STATE_FILENAME] if checkpoint else [])
    for path in states:
        if path.is_file():
            evaluation = last_evaluation(read_json_object(path).get("log_history") or [])
            if evaluation is not None:
                return evaluation
    return None


def last_evaluation(log_history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The last entry of a Trainer's ``state.log_history`` that holds a long-tail metric (``eval_accuracy``, ...)."""
    return next((dict(logs) for logs in reversed(log_history) if _long_tail_metrics(logs)), None)


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file holding one object (a metrics file, ``trainer_state.json``); a clear ``ValueError`` otherwise."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}). Fix: delete or rewrite the file.") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}. Fix: delete or rewrite it.")
    return value


def _card_metrics(output_dir: Path, report: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The long-tail metrics of the card: ``metrics`` (else the saved ones) over the report's."""
    if metrics is None:
        metrics = saved_metrics(output_dir)
    return {**_long_tail_metrics(report.get("metrics") or {}), **_long_tail_metrics(metrics or {})}


def missing_card_parts(output_dir: str | os.PathLike, metrics: Mapping[str, Any] | None = None) -> list[str]:
    """What the model card of ``output_dir`` will lack, each as a sentence with its fix: evaluation metrics
    (given, saved, or in the report) and PNG plots. Empty when it has both."""
    output_dir = Path(output_dir)
    missing = []
    if not _card_metrics(output_dir, read_scale_report(output_dir), metrics):
        missing.append(
            f"{output_dir} has no evaluation metrics (no long-tail metric such as eval_accuracy in "
            f"{' / '.join(METRICS_FILENAMES)}, in the log_history of {TRAINER_STATE_FILENAME} or in the report), "
            "so the card has no Evaluation section and no model-index. Fix: evaluate with a compute_metrics that "
            "returns accuracy, then trainer.save_metrics('eval', metrics) or trainer.save_state(); or pass the "
            "metrics (CLI: --metrics-file)."
        )
    if not _plots(output_dir):
        missing.append(
            f"{output_dir} has no PNG plots, so the card shows none. Fix: draw them from its {SCALES_FILENAME}: "
            f"python -c \"from hf_semscale.plotting import write_report_plots; write_report_plots('{output_dir}')\" "
            "(SemScaleTrainer writes them when training ends)."
        )
    return missing


def _long_tail_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The long-tail metrics in ``metrics`` (plain or ``eval_``/``test_``-prefixed); missing or NaN ones omitted."""
    found: dict[str, float] = {}
    for name in LONG_TAIL_METRICS:
        key = next((prefix + name for prefix in METRIC_PREFIXES if prefix + name in metrics), None)
        if key is None or metrics[key] is None:
            continue
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metric '{key}' must be a number, got {value!r}. Fix: pass the value as a float.")
        if math.isfinite(value):
            found[name] = float(value)
    return found


def _model_config(model_dir: Path) -> dict[str, Any]:
    """``model_dir/config.json`` as a dict (empty without one)."""
    config_path = model_dir / "config.json"
    return json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}


def _task_from_config(config: Mapping[str, Any]) -> str | None:
    """The pipeline task of the head named in the config's ``architectures``, if it is a known one."""
    for architecture in config.get("architectures") or []:
        for suffix, task in TASK_BY_HEAD_SUFFIX.items():
            if architecture.endswith(suffix):
                return task
    return None


def _usage(config: Mapping[str, Any], repo_id: str) -> dict[str, Any]:
    """What the card's "How to use" snippet needs: the Auto class of the head in the model config, whether it
    needs a tokenizer, and whether the architecture is one of hf_semscale's own (registered on import)."""
    architectures = config.get("architectures") or []
    text = any(a.endswith("ForSequenceClassification") for a in architectures)
    return {
        "repo_id": repo_id,
        "auto_class": "AutoModelForSequenceClassification" if text else "AutoModelForImageClassification",
        "tokenizer": text,
        "own_architecture": str(config.get("model_type", "")).startswith("semscale_"),
    }


def _report_context(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report's fields as the template shows them (formatted strings, Markdown-safe)."""
    source_text = "Last report of the trainer" if report.get("source") == "trainer" else "Measured"
    return {
        "source_text": source_text,
        "space": report.get("space", "feature"),
        "feature_dim": report.get("feature_dim"),
        "step": report.get("step"),
        "stage": report.get("stage"),
        "classes": [
            {
                "id": row["id"],
                "name": _cell(row["name"]),
                "train_count": _format(row.get("train_count"), ".0f"),  # the report stores extras as floats
                "count": row["count"],
                "scale": _format(row["scale"]),
                "weight": _format(row.get("weight")),
            }
            for row in report["classes"]
        ],
        "has_train_count": any("train_count" in row for row in report["classes"]),
        "summary": [(_cell(k), _format(v, ".6g")) for k, v in (report.get("summary") or {}).items() if _is_scalar(v)],
        "settings": [(_cell(k), _format(v, ".6g")) for k, v in (report.get("settings") or {}).items() if _is_scalar(v)],
        "training": [(_cell(k), _format(v, ".6g")) for k, v in (report.get("training") or {}).items() if _is_scalar(v)],
        "versions": [(_cell(k), _cell(v)) for k, v in (report.get("framework_versions") or {}).items()],
    }


def _plots(folder: Path) -> list[dict[str, str]]:
    """The PNG files of ``folder`` that a push uploads, with a title and a URL-safe relative path."""
    return [
        {"title": Path(path).stem.replace("_", " ").capitalize(), "path": quote(path)}
        for path in _local_files(folder, allow_patterns=["*.png"], ignore_patterns=IGNORE_PATTERNS)
    ]


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _format(value: Any, float_spec: str = ".4f") -> str:
    """A report value as table text; missing and non-finite numbers show as a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return format(value, float_spec) if math.isfinite(value) else "—"
    return _cell(value)


def _cell(value: Any) -> str:
    """A value as one Markdown table cell: no line breaks, pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _is_hub_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return not Path(name).exists()


def _check_hub_id(name: str, what: str) -> None:
    if not _is_hub_id(name):
        raise ValueError(
            f"{what} must be a model id on the Hub such as 'google-bert/bert-base-uncased', got {name!r} "
            f"(a local path or an invalid id). Fix: pass the Hub id the model was fine-tuned from, or leave {what} out."
        )


# ---------------------------------------------------------------------------------------------- pushes


def push_output_dir(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    exist_ok: bool = True,
    dry_run: bool = False,
    **card_kwargs: Any,
) -> str:
    """Upload a trained ``output_dir`` in one commit: model files, ``semantic_scales.json``, plots, generated README.md.

    Creates the model repo if needed (``exist_ok=False``: fail if it exists; ``private=None``: the
    namespace's default visibility) and the branch ``revision`` if given. Files matching
    ``IGNORE_PATTERNS`` (checkpoints, ``_*``, temporary and hidden files, an old README.md) stay local.
    ``card_kwargs`` go to :func:`build_model_card`. Returns the commit URL. Logs a warning for each part the
    card will lack (:func:`missing_card_parts`: metrics, plots).

    ``dry_run=True`` contacts nobody and needs no token: it writes the card and the list of files the push
    would upload to ``output_dir/_hub_preview/`` (``README.md``, ``files.txt``; a ``_`` folder is never
    pushed) and returns that folder.
    """
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    if not dry_run:
        token = _resolve_token(token)
    card = build_model_card(output_dir, repo_id=repo_id, **card_kwargs)
    for problem in missing_card_parts(output_dir, card_kwargs.get("metrics")):
        logger.warning(problem)
    files = _local_files(output_dir, ignore_patterns=IGNORE_PATTERNS)
    if dry_run:
        preview = output_dir / PREVIEW_DIRNAME
        preview.mkdir(exist_ok=True)
        card.save(str(preview / CARD_FILENAME))
        listing = [f"{path}\t{local.stat().st_size}" for path, local in files.items()] + [
            f"{CARD_FILENAME}\t(generated)"
        ]
        (preview / "files.txt").write_text(f"# would push to {repo_id}: path, bytes\n" + "\n".join(listing) + "\n")
        return str(preview)
    return _push(
        repo_id,
        files,
        card,
        repo_type="model",
        token=token,
        private=private,
        revision=revision,
        commit_message=commit_message or "Upload model trained with hf_semscale (SemScaleTrainer)",
        exist_ok=exist_ok,
    )


def push_analysis(
    analysis_dir: str | os.PathLike,
    repo_id: str,
    *,
    model_id: str | None = None,
    dataset_name: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    exist_ok: bool = True,
) -> str:
    """Publish a scale analysis of an existing model (``hf-semscale measure --push``) as a Hub *dataset* repo.

    Uploads ``semantic_scales.json``, the PNG plots (``ANALYSIS_PATTERNS``) and a card naming
    ``model_id`` and ``dataset_name``, in one commit. Why a dataset repo in the user's namespace rather
    than a ``semscale/`` folder in the model repo: most people measure models they do not own, so they
    cannot commit there, and a pull request waits for the owner's merge (often forever), stays invisible on
    the model page until then, and clutters other people's repos; an analysis is also data about a
    (model, dataset) pair, versioned independently of the weights. The dataset repo is always writable
    by its creator and the card links back to the model. Returns the commit URL.
    """
    analysis_dir = Path(analysis_dir)
    if not (analysis_dir / SCALES_FILENAME).is_file():
        raise PushError(
            f"{analysis_dir} cannot be pushed: it lacks {SCALES_FILENAME}. "
            "Fix: run `hf-semscale measure` with this folder as its output first."
        )
    token = _resolve_token(token)
    card = build_analysis_card(analysis_dir, repo_id=repo_id, model_id=model_id, dataset_name=dataset_name)
    files = _local_files(analysis_dir, allow_patterns=ANALYSIS_PATTERNS, ignore_patterns=IGNORE_PATTERNS)
    return _push(
        repo_id,
        files,
        card,
        repo_type="dataset",
        token=token,
        private=private,
        revision=revision,
        commit_message=commit_message or f"Upload semantic-scale analysis{f' of {model_id}' if model_id else ''}",
        exist_ok=exist_ok,
    )


def _check_output_dir(output_dir: Path) -> None:
    """Fail before any network call if ``output_dir`` lacks the report, the config or the weights."""
    if not output_dir.is_dir():
        raise PushError(f"{output_dir} is not a directory. Fix: pass the output_dir of a finished training run.")
    save_fix = "save the model with trainer.save_model(output_dir) or model.save_pretrained(output_dir)"
    missing = []
    if not (output_dir / SCALES_FILENAME).is_file():
        missing.append(f"{SCALES_FILENAME} (train with SemScaleTrainer, which writes it, or run `hf-semscale measure`)")
    if not any((output_dir / name).is_file() for name in CONFIG_FILENAMES):
        missing.append(f"the model config, one of {', '.join(CONFIG_FILENAMES)} ({save_fix})")
    if not any((output_dir / name).is_file() for name in WEIGHT_FILENAMES):
        missing.append(f"the model weights, one of {', '.join(WEIGHT_FILENAMES)} ({save_fix})")
    if missing:
        raise PushError(f"{output_dir} cannot be pushed: it lacks " + "; ".join(missing) + ".")


def _resolve_token(token: str | None) -> str:
    token = token or get_token()
    if not token:
        raise PushError(NO_TOKEN_MESSAGE)
    return token


def _local_files(
    folder: Path, *, allow_patterns: Sequence[str] | None = None, ignore_patterns: Sequence[str] | None = None
) -> dict[str, Path]:
    """Files under ``folder`` by POSIX path relative to it, filtered like ``upload_folder`` does."""
    by_path = {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}
    kept = filter_repo_objects(
        list(by_path),
        allow_patterns=list(allow_patterns) if allow_patterns else None,
        ignore_patterns=list(ignore_patterns) if ignore_patterns else None,
    )
    return {path: by_path[path] for path in kept}


def _push(
    repo_id: str,
    files: Mapping[str, Path],
    card: ModelCard | DatasetCard,
    *,
    repo_type: str,
    token: str,
    private: bool | None,
    revision: str | None,
    commit_message: str,
    exist_ok: bool,
) -> str:
    """Create the repo (and branch) if needed, then commit ``files`` plus the in-memory card at once."""
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local)) for path, local in files.items()]
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILENAME, path_or_fileobj=str(card).encode("utf-8")))
    api = HfApi(token=token, library_name="hf_semscale", library_version=__version__)
    with _explained_hub_errors(repo_id):
        try:
            repo_url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=exist_ok)
        except HfHubHTTPError as err:
            if err.response is not None and err.response.status_code == 409:
                raise PushError(
                    f"The {repo_type} repo {repo_id} already exists on the Hub and exist_ok=False. Fix: pass "
                    "exist_ok=True (CLI: drop --no-exist-ok) to add a commit to it, or choose another repo id."
                ) from err
            raise
        if revision:
            api.create_branch(repo_url.repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        commit = api.create_commit(
            repo_url.repo_id,
            operations,
            commit_message=commit_message,
            repo_type=repo_type,
            revision=revision,
        )
    return commit.commit_url


@contextmanager
def _explained_hub_errors(repo_id: str) -> Iterator[None]:
    """Turn the Hub client's HTTP and network errors into a :class:`PushError` that says what to do."""
    unchanged = "Your local folder was not changed; rerun the same push to retry."
    try:
        yield
    except OfflineModeIsEnabled as err:
        raise PushError(
            f"HF_HUB_OFFLINE=1 is set, so nothing can be pushed. Fix: unset HF_HUB_OFFLINE. ({err})"
        ) from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        first_line = str(err).splitlines()[0]
        if status == 401:
            hint = "the token was rejected. Fix: `hf auth login` again or pass a valid token (HF_TOKEN / --token)."
        elif status == 403:
            hint = f"the token has no write access to {repo_id}. Fix: use a token with write access to that namespace."
        elif status == 404:
            hint = f"{repo_id} or the revision was not found. Fix: check the repo id and --revision."
        else:
            hint = "the Hub answered with an error (5xx and 429 answers are usually transient: retry later)."
        raise PushError(f"Push to {repo_id} failed ({status}): {hint} {unchanged} [{first_line}]") from err
    except TransportError as err:
        raise PushError(
            f"Push to {repo_id} failed: network error ({type(err).__name__}: {err}). "
            "huggingface_hub already retried the file uploads with backoff; it does not retry the commit request "
            f"itself (a lost answer could mean a duplicate commit), so check the repo's history first. {unchanged}"
        ) from err
