"""Pushing to the Hub end to end, against the local fake Hub in ``fake_hub.py`` (nothing leaves 127.0.0.1)."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch
import transformers
from fake_hub import DISCONNECT, FakeHub
from huggingface_hub import ModelCard, constants

from hf_semscale.commands import push as push_command
from hf_semscale.hub import PushError, build_model_card, push_analysis, push_output_dir
from hf_semscale.hub.report import SCALES_FILENAME, build_scale_report, write_json_atomic

TOKEN = "hf_fake_write_token"
REPO = "fake-user/tiny-semscale"
MODEL_FILES = {"config.json", "model.safetensors", SCALES_FILENAME, "marginal_effect.png", "scale_vs_count.png"}
# Pushes without dataset_name warn that metrics stay out of model-index; one test checks that warning.
pytestmark = pytest.mark.filterwarnings("ignore:metrics are shown in the card text:UserWarning")
SETTINGS = {"alpha": 8.0, "gamma": 1.0, "weighting": "dsb", "update_interval": 20, "normalize": True}


def tiny_png() -> bytes:
    """A valid 1x1 grey PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x80")  # filter byte + one grey pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file's SHA-256 and every folder, by relative path: equal snapshots mean a byte-identical tree."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        for path in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SemScaleTrainer-like output_dir: a tiny BERT, a report with metrics, plots, and files a push must skip."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("trained")
    names = ["airplane", "bird", "cat|lynx"]
    config = BertConfig(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=3,
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    report = build_scale_report(
        source="trainer",
        scales=[5.5, 4.25, 3.125],
        counts=[50, 12, 3],
        class_names=names,
        weights=[0.8, 1.1, 1.6],
        feature_dim=8,
        step=120,
        stage="reweight",
        settings=SETTINGS,
        summary={"max_min_ratio": 1.76},
        extra_per_class={"train_count": [500, 120, 30]},
        metrics={"eval_accuracy": 0.61, "balanced_accuracy": 0.52, "per_class_accuracy": [0.9, 0.5, 0.2]},
    )
    write_json_atomic(folder / SCALES_FILENAME, report)
    (folder / "marginal_effect.png").write_bytes(tiny_png())
    (folder / "scale_vs_count.png").write_bytes(tiny_png())
    (folder / "checkpoint-100").mkdir()
    (folder / "checkpoint-100" / "model.safetensors").write_bytes(b"old weights")
    (folder / "checkpoint-100" / "old_plot.png").write_bytes(tiny_png())
    (folder / "_scratch.txt").write_text("scratch")
    (folder / f".{SCALES_FILENAME}.tmp-123").write_text("{")
    (folder / "README.md").write_text("stale card written by an earlier run")
    return folder


@pytest.fixture
def output_dir(trained_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained_template, tmp_path / "output"))


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The fake Hub, with huggingface_hub pointed at it, online, and without any saved or env token."""
    with FakeHub(tokens=(TOKEN,)) as fake:
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        # huggingface_hub reads these at import time: patch the module values it uses.
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", fake.url)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_saved_token"))
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
        # transformers keeps one HfApi (with the endpoint of its creation) for Trainer.push_to_hub: a fresh one.
        import transformers.utils.hub

        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
        yield fake
    assert fake.unrouted == [], "the client called endpoints the fake Hub does not serve"


def card_of(uploaded: dict[str, bytes]) -> tuple[ModelCard, str]:
    text = uploaded["README.md"].decode("utf-8")
    return ModelCard(text), text


# ---------------------------------------------------------------------------------------------- card


def test_card_has_metadata_table_plots_settings_and_citation(output_dir: Path) -> None:
    card = build_model_card(
        output_dir,
        repo_id=REPO,
        base_model="google-bert/bert-base-uncased",
        dataset_name="fake-user/cifar10-lt",
        dataset_split="test",
    )
    card = ModelCard(str(card))  # what the Hub parses back
    assert set(card.data.tags) >= {"hf_semscale", "semantic-scale"}
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.base_model == "google-bert/bert-base-uncased"
    assert card.data.datasets == ["fake-user/cifar10-lt"]
    results = {r.metric_type: r for r in card.data.eval_results}
    assert {name: r.metric_value for name, r in results.items()} == {"accuracy": 0.61, "balanced_accuracy": 0.52}
    assert {(r.task_type, r.dataset_type, r.dataset_split) for r in results.values()} == {
        ("text-classification", "fake-user/cifar10-lt", "test")
    }
    text = card.text
    assert "| id | name | train samples | measured on | scale | weight |" in text
    assert "| 0 | airplane | 500 | 50 | 5.5000 | 0.8000 |" in text
    assert "| 2 | cat\\|lynx | 30 | 3 | 3.1250 | 1.6000 |" in text
    assert "| gamma | 1 |" in text and "| alpha | 8 |" in text and "| weighting | dsb |" in text
    assert "| max_min_ratio | 1.76 |" in text
    assert "![Marginal effect](marginal_effect.png)" in text and "![Scale vs count](scale_vs_count.png)" in text
    assert "old_plot" not in text
    assert "| Balanced accuracy (mean per-class) | 0.5200 |" in text
    versions = text.split("### Framework versions", 1)[1].split("##", 1)[0]
    assert "- hf_semscale: " in versions and f"- torch: {torch.__version__}" in versions
    assert f"- transformers: {transformers.__version__}" in versions
    assert "@inproceedings{ma2023delving," in text
    assert "title={Delving into Semantic Scale Imbalance}" in text
    assert "author={Ma, Yanbiao and Jiao, Licheng and Liu, Fang and Li, Yuxin and Yang, Shuyuan and Liu, Xu}" in text
    assert "booktitle={International Conference on Learning Representations}" in text


def test_card_metric_argument_overrides_report_and_missing_metrics_are_omitted(output_dir: Path) -> None:
    metrics = {
        "eval_accuracy": 0.7,
        "many_shot_accuracy": 0.9,
        "few_shot_accuracy": float("nan"),
        "medium_shot_accuracy": None,
    }
    card = ModelCard(str(build_model_card(output_dir, dataset_name="fake-user/cifar10-lt", metrics=metrics)))
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {"accuracy": 0.7, "balanced_accuracy": 0.52, "many_shot_accuracy": 0.9}
    assert not re.search(r"\bnan\b", str(card), re.IGNORECASE)
    assert "Few-shot" not in str(card) and "Medium-shot" not in str(card)


def test_card_without_dataset_keeps_metrics_out_of_model_index_and_says_why(output_dir: Path) -> None:
    with pytest.warns(UserWarning, match="dataset_name"):
        card = ModelCard(str(build_model_card(output_dir)))
    assert not card.data.eval_results
    assert "model-index" not in str(card)
    assert "| Accuracy | 0.6100 |" in card.text


def test_card_rejects_non_numeric_metric_and_local_base_model(output_dir: Path) -> None:
    with pytest.raises(ValueError, match="metric 'accuracy' must be a number"):
        build_model_card(output_dir, metrics={"accuracy": "high"})
    with pytest.raises(ValueError, match="base_model must be a model id on the Hub"):
        build_model_card(output_dir, base_model=str(output_dir))


# ---------------------------------------------------------------------------------------------- push


def test_push_uploads_model_report_plots_and_card_in_one_commit(hub: FakeHub, output_dir: Path) -> None:
    before = snapshot(output_dir)
    url = push_output_dir(output_dir, REPO, token=TOKEN, dataset_name="fake-user/cifar10-lt", commit_message="first")

    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert re.fullmatch(rf"{re.escape(hub.url)}/{REPO}/commit/[0-9a-f]{{40}}", url)
    assert (commit.repo_type, commit.repo_id, commit.revision, commit.summary) == ("model", REPO, "main", "first")
    assert set(commit.files) == MODEL_FILES | {"README.md"}
    for name in MODEL_FILES:
        assert commit.files[name] == (output_dir / name).read_bytes(), name
    card, text = card_of(commit.files)
    assert text == str(build_model_card(output_dir, repo_id=REPO, dataset_name="fake-user/cifar10-lt"))
    assert {r.metric_type for r in card.data.eval_results} == {"accuracy", "balanced_accuracy"}
    assert hub.files(REPO) == commit.files
    assert snapshot(output_dir) == before  # a successful push writes nothing locally either
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in hub.api_requests())
    create = next(r for r in hub.api_requests() if r.path == "/api/repos/create")
    assert create.json() == {"name": "tiny-semscale", "organization": "fake-user", "type": "model"}


def test_push_private_repo_to_a_new_branch(hub: FakeHub, output_dir: Path) -> None:
    push_output_dir(output_dir, REPO, token=TOKEN, private=True, revision="dsb-gamma-4")
    create = next(r for r in hub.api_requests() if r.path == "/api/repos/create")
    assert create.json()["visibility"] == "private"
    assert [c.revision for c in hub.commits] == ["dsb-gamma-4"]
    assert set(hub.files(REPO, branch="dsb-gamma-4")) == MODEL_FILES | {"README.md"}
    assert hub.files(REPO, branch="main") == {}


def test_push_takes_the_token_from_hf_token(hub: FakeHub, output_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push_output_dir(output_dir, REPO)
    assert len(hub.commits) == 1


def test_push_without_token_fails_before_any_request(hub: FakeHub, output_dir: Path) -> None:
    with pytest.raises(PushError, match="No Hugging Face token") as err:
        push_output_dir(output_dir, REPO)
    assert "hf auth login" in str(err.value) and "HF_TOKEN" in str(err.value) and "--token" in str(err.value)
    assert hub.requests == []


def test_push_with_rejected_token_says_so(hub: FakeHub, output_dir: Path) -> None:
    with pytest.raises(PushError, match=r"\(401\): the token was rejected"):
        push_output_dir(output_dir, REPO, token="hf_not_a_valid_token")
    assert hub.commits == []


@pytest.mark.parametrize("failure", [500, DISCONNECT])
def test_failed_commit_leaves_output_dir_byte_for_byte_unchanged(hub: FakeHub, output_dir: Path, failure) -> None:
    before = snapshot(output_dir)
    hub.fail_commit = failure
    expected = r"\(500\): the Hub answered with an error" if failure == 500 else "network error"
    with pytest.raises(PushError, match=expected) as err:
        push_output_dir(output_dir, REPO, token=TOKEN)
    assert "local folder was not changed" in str(err.value)
    assert snapshot(output_dir) == before
    assert hub.commits == [] and hub.files(REPO) == {}
    assert sum(r.path.endswith("/commit/main") for r in hub.requests) == 1  # commits are not retried blindly


def test_existing_repo_with_exist_ok_false_is_a_clear_error(hub: FakeHub, output_dir: Path) -> None:
    hub.add_repo(REPO, files={"old.txt": b"old"})
    with pytest.raises(PushError, match="already exists on the Hub and exist_ok=False"):
        push_output_dir(output_dir, REPO, token=TOKEN, exist_ok=False)
    assert hub.commits == [] and hub.files(REPO) == {"old.txt": b"old"}


def test_existing_repo_with_exist_ok_true_gets_a_new_commit(hub: FakeHub, output_dir: Path) -> None:
    hub.add_repo(REPO, files={"old.txt": b"old"})
    push_output_dir(output_dir, REPO, token=TOKEN)
    assert set(hub.files(REPO)) == MODEL_FILES | {"README.md", "old.txt"}


def test_output_dir_without_report_or_weights_names_what_is_missing(hub: FakeHub, output_dir: Path) -> None:
    (output_dir / SCALES_FILENAME).unlink()
    (output_dir / "model.safetensors").unlink()
    with pytest.raises(PushError) as err:
        push_output_dir(output_dir, REPO, token=TOKEN)
    message = str(err.value)
    assert SCALES_FILENAME in message and "model.safetensors" in message and "save_pretrained" in message
    assert "the model config" not in message  # config.json is there
    assert hub.requests == []


def test_push_analysis_goes_to_a_dataset_repo(hub: FakeHub, tmp_path: Path) -> None:
    analysis = tmp_path / "analysis"
    report = build_scale_report(source="measure", scales=[4.0, 2.5], counts=[30, 8], class_names=["neg", "pos"])
    write_json_atomic(analysis / SCALES_FILENAME, report)
    (analysis / "marginal_effect.png").write_bytes(tiny_png())
    (analysis / "features.npy").write_bytes(b"\x00" * 64)  # not part of an analysis: stays local
    (analysis / f".{SCALES_FILENAME}.tmp-7").write_text("{")
    before = snapshot(analysis)

    url = push_analysis(
        analysis, "fake-user/bert-scales", model_id="google-bert/bert-base-uncased", dataset_name="imdb", token=TOKEN
    )

    commit = hub.commits[0]
    assert (commit.repo_type, commit.repo_id) == ("dataset", "fake-user/bert-scales")
    assert url.startswith(f"{hub.url}/datasets/fake-user/bert-scales/commit/")
    assert set(commit.files) == {SCALES_FILENAME, "marginal_effect.png", "README.md"}
    text = commit.files["README.md"].decode()
    assert "[`google-bert/bert-base-uncased`](https://huggingface.co/google-bert/bert-base-uncased)" in text
    assert (
        "on `imdb`" in text
        and "| id | name | count | scale | weight |" in text
        and "| 1 | pos | 8 | 2.5000 | — |" in text
    )
    assert "![Marginal effect](marginal_effect.png)" in text and "@inproceedings{ma2023delving," in text
    assert re.search(r"tags:\n- hf_semscale\n- semantic-scale", text)
    assert snapshot(analysis) == before


# ---------------------------------------------------------------------------------------------- CLI


def parse_push_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    push_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_push_prints_the_commit_url(hub: FakeHub, output_dir: Path, tmp_path: Path, capsys) -> None:
    metrics_file = tmp_path / "eval_results.json"
    metrics_file.write_text(json.dumps({"eval_accuracy": 0.75, "eval_few_shot_accuracy": 0.25, "epoch": 3.0}))
    args = parse_push_args(
        [str(output_dir), "--repo-id", REPO, "--token", TOKEN, "--dataset-name", "fake-user/cifar10-lt",
         "--metrics-file", str(metrics_file), "--commit-message", "from the CLI"]
    )  # fmt: skip
    assert push_command.run(args) == 0
    assert re.fullmatch(rf"{re.escape(hub.url)}/{REPO}/commit/[0-9a-f]{{40}}", capsys.readouterr().out.strip())
    card, _ = card_of(hub.commits[0].files)
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {"accuracy": 0.75, "balanced_accuracy": 0.52, "few_shot_accuracy": 0.25}
    assert hub.commits[0].summary == "from the CLI"


def test_cli_push_dry_run_writes_the_card_and_file_list_without_a_token_or_request(
    hub: FakeHub, output_dir: Path, capsys
) -> None:
    args = parse_push_args([str(output_dir), "--repo-id", REPO, "--dataset-name", "fake-user/cifar10-lt", "--dry-run"])
    assert push_command.run(args) == 0
    preview = Path(capsys.readouterr().out.strip())
    assert preview == output_dir / "_hub_preview" and hub.requests == [] and hub.commits == []
    card = ModelCard.load(preview / "README.md")
    assert "hf_semscale" in card.data.tags and f'from_pretrained("{REPO}")' in card.text
    listed = [line.split("\t")[0] for line in (preview / "files.txt").read_text().splitlines()[1:]]
    assert SCALES_FILENAME in listed and "config.json" in listed and "README.md" in listed
    assert not any(name.startswith(("checkpoint-", "_")) for name in listed)
    # what a real push then uploads is what the preview listed
    assert (
        push_command.run(
            parse_push_args(
                [str(output_dir), "--repo-id", REPO, "--token", TOKEN, "--dataset-name", "fake-user/cifar10-lt"]
            )
        )
        == 0
    )
    assert sorted(hub.commits[0].files) == sorted(listed)


def test_cli_push_reports_errors_without_a_traceback(hub: FakeHub, output_dir: Path, capsys) -> None:
    assert push_command.run(parse_push_args([str(output_dir), "--repo-id", REPO])) == 1
    assert "No Hugging Face token" in capsys.readouterr().err


def test_push_arguments_are_reusable_as_an_optional_push_flag() -> None:
    parser = argparse.ArgumentParser()
    push_command.add_push_arguments(parser, repo_option="--push", required=False)
    assert parser.parse_args([]).repo_id is None
    args = parser.parse_args(["--push", "me/scales", "--private", "--no-exist-ok", "--revision", "v2"])
    assert args.repo_id == "me/scales"
    assert push_command.push_kwargs(args) == {
        "token": None,
        "private": True,
        "revision": "v2",
        "commit_message": None,
        "exist_ok": False,
    }


# ---------------------------------------------------------------------------------------------- integrations


def test_trainer_push_to_hub_uploads_model_report_and_last_eval_metrics(hub: FakeHub, tmp_path: Path) -> None:
    import datasets
    import numpy as np
    import torch

    from hf_semscale import SemScaleConfig, SemScaleTrainer
    from hf_semscale.modeling import MLPClassifierConfig, MLPForClassification

    rng = np.random.default_rng(0)
    labels = [0] * 24 + [1] * 12 + [2] * 6
    data = datasets.Dataset.from_dict(
        {
            "pixel_values": rng.normal(size=(len(labels), 8)).astype("float32") + np.array(labels)[:, None],
            "labels": labels,
        }
    )
    torch.manual_seed(0)
    model = MLPForClassification(MLPClassifierConfig(input_dim=8, hidden_dims=(16,), num_labels=3))
    args = SemScaleConfig(
        output_dir=str(tmp_path / "run"), max_steps=12, per_device_train_batch_size=8, use_cpu=True, report_to=[],
        save_strategy="no", disable_tqdm=True, hub_model_id=REPO, hub_token=TOKEN,
        semscale_warmup_steps=2, semscale_update_interval=2,
    )  # fmt: skip
    trainer = SemScaleTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    trainer.train()
    trainer.evaluate()
    before = snapshot(tmp_path / "run") if (tmp_path / "run").exists() else {}

    url = trainer.push_to_hub(dataset_name="fake-user/toy", task_type="image-classification")

    assert url.startswith(f"{hub.url}/{REPO}/commit/")
    files = hub.commits[0].files
    assert {"config.json", "model.safetensors", SCALES_FILENAME, "README.md"} <= set(files)
    report = json.loads(files[SCALES_FILENAME])
    assert report["source"] == "trainer" and report["stage"] == "reweight"
    assert [row["weight"] for row in report["classes"]] == pytest.approx(trainer.class_weights.tolist())
    card, text = card_of(files)
    assert "hf_semscale" in card.data.tags
    assert all(f"| {c} | LABEL_{c} |" in text for c in range(3))  # the per-class table names every class
    # usage snippet for this architecture and the run's hyper-parameters
    assert (
        "import hf_semscale.modeling" in text and f'AutoModelForImageClassification.from_pretrained("{REPO}")' in text
    )
    assert (
        "| learning_rate | 5e-05 |" in text
        and "| max_steps | 12 |" in text
        and "| total_train_batch_size | 8 |" in text
    )
    assert (tmp_path / "run" / "README.md").read_text(encoding="utf-8") == files[
        "README.md"
    ].decode()  # create_model_card
    assert before == {} or set(before) <= set(snapshot(tmp_path / "run"))


def test_measure_push_publishes_the_analysis_to_a_dataset_repo(hub: FakeHub, tmp_path: Path) -> None:
    import numpy as np

    from hf_semscale.cli import main
    from hf_semscale.modeling import CifarResNetConfig, CifarResNetForImageClassification

    data = tmp_path / "rgb"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.savez(
        data / "test.npz",
        images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8),
        labels=np.arange(12) % 2,
        classes=np.array(["neg", "pos"]),
    )
    model_dir = tmp_path / "model"
    CifarResNetForImageClassification(CifarResNetConfig(depth=8, widths=(4, 8, 16), num_labels=2)).save_pretrained(
        model_dir
    )

    rc = main(
        ["measure", "--quiet", "--model", str(model_dir), "--dataset", str(data), "--split", "test",
         "--output-dir", str(tmp_path / "out"), "--push", "fake-user/scales", "--token", TOKEN]
    )  # fmt: skip

    assert rc == 0
    commit = hub.commits[0]
    assert (commit.repo_type, commit.repo_id) == ("dataset", "fake-user/scales")
    assert SCALES_FILENAME in commit.files and "README.md" in commit.files
    report = json.loads(commit.files[SCALES_FILENAME])
    assert [row["count"] for row in report["classes"]] == [6, 6]
