"""What a SemScaleTrainer run leaves for publishing and monitoring: scale plots, the logged evaluation in the card,
push warnings for what is missing, and the ``semscale/*`` scalars in TensorBoard (the ``tensorboard`` extra)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from hf_semscale import SemScaleConfig, SemScaleTrainer
from hf_semscale.cli import main
from hf_semscale.hub import build_model_card
from hf_semscale.hub.report import build_scale_report
from hf_semscale.modeling import MLPClassifierConfig, MLPForClassification
from hf_semscale.plotting import SCALE_PLOT_FILENAME, write_report_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAIN_COUNTS = [24, 12, 6]
DATASET = "fake-user/toy"
TASK = "image-classification"  # MLPForClassification is not a known *For<Task> head


def _accuracy(eval_pred) -> dict[str, float]:
    predictions = np.asarray(eval_pred.predictions).argmax(-1)
    labels = np.asarray(eval_pred.label_ids)
    per_class = [float((predictions[labels == c] == c).mean()) for c in range(len(TRAIN_COUNTS))]
    return {"accuracy": float((predictions == labels).mean()), "balanced_accuracy": float(np.mean(per_class))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fast_tiny_runs) -> tuple[SemScaleTrainer, Path]:
    """12 steps of a tiny MLP logging to TensorBoard, evaluated and checkpointed at step 12, then save_model():
    no metrics file and no trainer_state.json in output_dir (only in checkpoint-12)."""
    output_dir = tmp_path_factory.mktemp("outputs") / "run"
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), TRAIN_COUNTS)
    data = datasets.Dataset.from_dict(
        {"pixel_values": rng.normal(size=(len(labels), 8)).astype("float32") + labels[:, None], "labels": labels}
    )
    torch.manual_seed(0)
    model = MLPForClassification(MLPClassifierConfig(input_dim=8, hidden_dims=(16,), num_labels=3))
    args = SemScaleConfig(
        output_dir=str(output_dir), max_steps=12, per_device_train_batch_size=8, learning_rate=0.05, use_cpu=True,
        report_to=["tensorboard"], logging_steps=2, eval_strategy="steps", eval_steps=12, save_strategy="steps",
        save_steps=12, disable_tqdm=True, semscale_warmup_steps=2, semscale_update_interval=2,
    )  # fmt: skip
    trainer = SemScaleTrainer(model=model, args=args, train_dataset=data, eval_dataset=data, compute_metrics=_accuracy)
    trainer.train()
    trainer.save_model()
    return trainer, output_dir


def _logged(trainer: SemScaleTrainer, key: str) -> dict[int, float]:
    return {logs["step"]: logs[key] for logs in trainer.state.log_history if key in logs}


# ---------------------------------------------------------------------------------------------- plots


def test_training_writes_the_scale_plot_against_training_counts(trained, tmp_path: Path, monkeypatch) -> None:
    trainer, output_dir = trained
    assert (output_dir / SCALE_PLOT_FILENAME).read_bytes()[:8] == PNG_MAGIC
    drawn = []
    monkeypatch.setattr("hf_semscale.plotting.plot_scale_count_accuracy", lambda rows, path, title: drawn.append(rows))
    write_report_plots(tmp_path, trainer.scale_report())
    assert [row["count"] for row in drawn[0]] == TRAIN_COUNTS  # not the pool rows the scales were measured on
    assert [row["scale"] for row in drawn[0]] == pytest.approx(trainer.semantic_scales.tolist())


def test_report_without_a_measurement_draws_nothing_and_removes_a_stale_plot(tmp_path: Path) -> None:
    (tmp_path / SCALE_PLOT_FILENAME).write_bytes(PNG_MAGIC)  # from an earlier run in the same folder
    report = build_scale_report(
        source="trainer",
        scales=[0.0, 0.0],
        counts=[0, 0],
        extra_per_class={"train_count": [5, 3], "has_volume": [False, False]},
        num_updates=0,
    )
    assert write_report_plots(tmp_path, report) == []
    assert not (tmp_path / SCALE_PLOT_FILENAME).exists()


# ---------------------------------------------------------------------------------------------- card


def test_card_takes_the_logged_evaluation_without_a_metrics_file(trained) -> None:
    trainer, output_dir = trained
    assert not (output_dir / "eval_results.json").exists() and not (output_dir / "trainer_state.json").exists()
    accuracy = _logged(trainer, "eval_accuracy")[12]
    card = ModelCard(str(build_model_card(output_dir, dataset_name=DATASET, task_type=TASK)))
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {"accuracy": accuracy, "balanced_accuracy": _logged(trainer, "eval_balanced_accuracy")[12]}
    assert f"| Accuracy | {accuracy:.4f} |" in card.text
    assert f"![Scale count accuracy]({SCALE_PLOT_FILENAME})" in card.text
    # the Trainer's own card (push_to_hub) too, from its in-memory log_history
    trainer.create_model_card(dataset=DATASET, tasks=TASK)
    written = ModelCard.load(output_dir / "README.md")
    assert {r.metric_type: r.metric_value for r in written.data.eval_results} == values
    assert f"![Scale count accuracy]({SCALE_PLOT_FILENAME})" in written.text


def test_saved_metrics_file_comes_before_the_log_history(trained, tmp_path: Path) -> None:
    _, output_dir = trained
    folder = Path(shutil.copytree(output_dir, tmp_path / "run"))
    (folder / "eval_results.json").write_text('{"eval_accuracy": 0.125, "epoch": 3.0}')
    card = ModelCard(str(build_model_card(folder, dataset_name=DATASET, task_type=TASK)))
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["accuracy"] == 0.125
    (folder / "eval_results.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="eval_results.json: expected a JSON object"):
        build_model_card(folder, dataset_name=DATASET, task_type=TASK)


def test_push_dry_run_warns_when_the_folder_has_no_metrics_or_plots(trained, tmp_path: Path, capsys, caplog) -> None:
    _, output_dir = trained
    folder = Path(shutil.copytree(output_dir, tmp_path / "run"))
    argv = [
        "push",
        str(folder),
        "--repo-id",
        "fake-user/tiny",
        "--dataset-name",
        DATASET,
        "--task-type",
        TASK,
        "--dry-run",
    ]
    assert main(argv) == 0
    assert "warning" not in capsys.readouterr().err  # the run's plot and logged evaluation are there

    shutil.rmtree(folder / "checkpoint-12")  # the only trainer_state.json
    (folder / SCALE_PLOT_FILENAME).unlink()
    with caplog.at_level(logging.WARNING, logger="hf_semscale.hub.publish"):
        assert main(argv) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hf-semscale push: warning: ")]
    assert len(lines) == 2 and "no evaluation metrics" in lines[0] and "no PNG plots" in lines[1]
    assert "--metrics-file" in lines[0] and "write_report_plots" in lines[1]
    assert [record.getMessage()[:60] for record in caplog.records] == [line[27:87] for line in lines]


# ---------------------------------------------------------------------------------------------- TensorBoard


def test_tensorboard_events_hold_the_semscale_scalars(trained) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, output_dir = trained
    (run_dir,) = {path.parent for path in (output_dir / "runs").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    keys = ["semscale/stage", "semscale/weight_min", "semscale/weight_max", "semscale/scale_min", "semscale/updates"]
    assert {f"train/{key}" for key in keys} <= tags
    for key in keys:
        scalars = {event.step: event.value for event in events.Scalars(f"train/{key}")}
        assert scalars == pytest.approx(_logged(trainer, key)), key
    stages = [event.value for event in events.Scalars("train/semscale/stage")]
    assert set(stages) <= {1.0, 2.0, 3.0} and stages[-1] == 3.0  # 1 warmup, 2 fill, 3 reweight (docs/method.md)
    weights_min = [event.value for event in events.Scalars("train/semscale/weight_min")]
    weights_max = [event.value for event in events.Scalars("train/semscale/weight_max")]
    assert all(0 < low <= high for low, high in zip(weights_min, weights_max))
    assert all(event.value > 0 for event in events.Scalars("train/semscale/scale_min"))
    assert "eval/accuracy" in tags


def test_report_to_tensorboard_without_tensorboard_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr("hf_semscale.trainer.config.is_tensorboard_available", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "hf_semscale\[tensorboard\]"'):
        SemScaleConfig(output_dir=str(tmp_path), use_cpu=True, report_to=["tensorboard"])
    SemScaleConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])  # nothing asked, nothing needed
