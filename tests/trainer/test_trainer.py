"""SemScaleTrainer / SemScaleConfig end to end on a tiny MLP and synthetic data (issue 3).

Every run is a few optimizer steps of ``MLPForClassification`` on 48 Gaussian points, so the
whole file takes seconds. Callbacks record what the trainer did at each optimizer step; the
expected values are computed independently (the scale / weighting functions, plain
``F.cross_entropy``, ``transformers.Trainer``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from hf_semscale.core.scale import class_semantic_scales
from hf_semscale.core.weighting import (
    count_power_weights,
    effective_number_weights,
    inverse_frequency_weights,
    semantic_scale_weights,
)
from hf_semscale.dsb.balancer import SemanticScaleBalancer
from hf_semscale.dsb.pool import PoolFileError
from hf_semscale.hub.report import SCALES_FILENAME
from hf_semscale.modeling import (
    CifarResNetConfig,
    CifarResNetForImageClassification,
    MLPClassifierConfig,
    MLPForClassification,
)
from hf_semscale.trainer import HISTORY_FILENAME, STATE_FILENAME, SemScaleTrainer
from hf_semscale.trainer.config import BASE_LOSSES, DYNAMIC_WEIGHTING_MODES, WEIGHTING_MODES, SemScaleConfig

COUNTS = [20, 12, 8, 8]  # 48 samples: 6 batches of 8 per epoch
NAMES = ["ant", "bee", "cat", "dog"]
DIM = 8
IGNORE = -100


pytestmark = pytest.mark.usefixtures("fast_tiny_runs")


# ---------------------------------------------------------------- helpers


def make_dataset(counts=COUNTS, seed: int = 0, extra_labels: list[int] | None = None) -> datasets.Dataset:
    """Class ``c`` is ``counts[c]`` points around ``c / 2``; ``extra_labels`` appends one point per label."""
    rng = np.random.default_rng(seed)
    labels = [c for c, n in enumerate(counts) for _ in range(n)] + list(extra_labels or [])
    x = rng.normal(0.0, 1.0, (len(labels), DIM)) + np.array([max(y, 0) / 2 for y in labels])[:, None]
    order = rng.permutation(len(labels))  # mix the -100 rows in
    return datasets.Dataset.from_dict({"pixel_values": x[order].astype(np.float32), "labels": np.array(labels)[order]})


def make_model(num_labels: int = 4, seed: int = 0, dropout: float = 0.0, **config_kwargs) -> MLPForClassification:
    torch.manual_seed(seed)
    names = {i: NAMES[i] if i < len(NAMES) else f"c{i}" for i in range(num_labels)}
    config = MLPClassifierConfig(
        input_dim=DIM,
        hidden_dims=(16, 8),
        dropout=dropout,
        id2label=names,
        label2id={v: k for k, v in names.items()},
        **config_kwargs,
    )
    return MLPForClassification(config)


def make_args(out: Path, cls=SemScaleConfig, **overrides):
    base = dict(
        output_dir=str(out),
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        seed=0,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=0.05,
        optim="sgd",
        lr_scheduler_type="constant",
        max_steps=6,
        save_strategy="no",
        logging_steps=1,
    )
    if cls is SemScaleConfig:
        base.update(semscale_warmup_steps=2, semscale_update_interval=2)
    base.update(overrides)
    return cls(**base)


class Recorder(TrainerCallback):
    """Per optimizer step: the stage and weights the step's loss used, gradients; and every log."""

    def __init__(self, record_grads: bool = False, raise_at_step: int | None = None):
        self.trainer: SemScaleTrainer | None = None
        self.record_grads = record_grads
        self.raise_at_step = raise_at_step
        self.stages: list[str] = []
        self.weights: list[torch.Tensor] = []
        self.grads: list[dict[str, torch.Tensor]] = []
        self.logs: list[dict] = []
        self.metric_predictions: list = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.record_grads:
            self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer is not None:  # stage transitions happen at the start of a step: this is the step's stage
            self.stages.append(self.trainer.stage)
            self.weights.append(self.trainer.class_weights.clone())
        if self.raise_at_step is not None and state.global_step == self.raise_at_step:
            raise KeyboardInterrupt(f"simulated kill after step {state.global_step}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append({**logs, "_step": state.global_step})

    def compute_metrics(self, eval_pred):
        self.metric_predictions.append(eval_pred.predictions)
        return {"accuracy": float((np.argmax(eval_pred.predictions, -1) == eval_pred.label_ids).mean())}


def build(tmp_path: Path, dataset=None, model=None, recorder: Recorder | None = None, trainer_kwargs=None, **overrides):
    recorder = recorder or Recorder()
    trainer = SemScaleTrainer(
        model=model or make_model(),
        args=make_args(tmp_path, **overrides),
        train_dataset=make_dataset() if dataset is None else dataset,
        callbacks=[recorder],
        **(trainer_kwargs or {}),
    )
    recorder.trainer = trainer
    return trainer, recorder


def train(tmp_path: Path, **kwargs):
    trainer, recorder = build(tmp_path, **kwargs)
    trainer.train()
    return trainer, recorder


def step_losses(recorder: Recorder) -> list[float]:
    return [log["loss"] for log in recorder.logs if "loss" in log]


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def model_features(model, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised classifier inputs of the whole dataset and its labels (the model is not trained)."""
    x = torch.tensor(np.asarray(dataset["pixel_values"]), dtype=torch.float32)
    with torch.no_grad():
        features = model.body(x)
    return F.normalize(features, dim=-1), torch.tensor(dataset["labels"])


# ---------------------------------------------------------------- 1. SemScaleConfig


def test_every_semscale_knob_has_help_and_parses_from_the_command_line(tmp_path):
    fields = {f.name: f for f in dataclasses.fields(SemScaleConfig) if f.name.startswith("semscale_")}
    for required in (
        "semscale_warmup_steps",
        "semscale_update_interval",
        "semscale_weighting",
        "semscale_loss",
        "semscale_gamma",
        "semscale_pool_capacity",
        "semscale_alpha",
        "semscale_feature_module",
    ):
        assert required in fields
    for name, f in fields.items():
        assert len(f.metadata.get("help", "")) > 15, f"{name} has no help text"
    (config,) = HfArgumentParser(SemScaleConfig).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "--semscale_warmup_steps",
            "7",
            "--semscale_update_interval",
            "3",
            "--semscale_weighting",
            "effective_number",
            "--semscale_loss",
            "focal",
            "--semscale_gamma",
            "2.5",
        ]
    )
    assert (config.semscale_warmup_steps, config.semscale_update_interval) == (7, 3)
    assert (config.semscale_weighting, config.semscale_loss, config.semscale_gamma) == (
        "effective_number",
        "focal",
        2.5,
    )
    settings = config.semscale_settings()
    assert set(settings) == set(fields)
    json.dumps(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("semscale_weighting", "cb"),
        ("semscale_loss", "mse"),
        ("semscale_pool_dtype", "int8"),
        ("semscale_normalization", "max"),
        ("semscale_update_interval", 0),
        ("semscale_warmup_steps", -2),
        ("semscale_warmup_ratio", 1.5),
        ("semscale_weight_floor", 0.0),
        ("semscale_gamma", -1.0),
        ("semscale_alpha", 0.0),
        ("semscale_pool_capacity", -1),
        ("semscale_cb_beta", 1.0),
        ("semscale_fill_max_steps", -2),
        ("semscale_max_pool_memory_mb", 0.0),
        ("semscale_focal_gamma", -1.0),
        ("semscale_ldam_scale", 0.0),
        ("semscale_gamma", 20.0),
    ],
)
def test_config_rejects_invalid_knobs(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        SemScaleConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **{name: value})


def test_trainer_needs_semscale_config_and_refuses_compute_loss_func(tmp_path):
    with pytest.raises(TypeError, match="SemScaleConfig"):
        SemScaleTrainer(
            model=make_model(),
            args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]),
            train_dataset=make_dataset(),
        )
    with pytest.raises(ValueError, match="compute_loss_func.*semscale_loss"):
        SemScaleTrainer(
            model=make_model(),
            args=make_args(tmp_path),
            train_dataset=make_dataset(),
            compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum(),
        )


def test_initial_attributes(tmp_path):
    trainer, _ = build(tmp_path)
    assert trainer.class_weights.dtype == trainer.semantic_scales.dtype == torch.float64
    assert torch.equal(trainer.class_weights, torch.ones(4, dtype=torch.float64))
    assert torch.equal(trainer.semantic_scales, torch.zeros(4, dtype=torch.float64))
    assert trainer.class_counts.tolist() == COUNTS
    assert trainer.class_names == NAMES
    assert trainer.stage == "warmup" and trainer.pool is None


# ---------------------------------------------------------------- 2 + 3. a DSB run on a frozen model (lr = 0)


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
    """12 steps = 2 epochs with lr 0: features never change, so every value has a closed-form check.

    warm-up steps 0-1, fill from step 2 (at most one epoch), re-weighting every 2 steps, a checkpoint
    at step 6 and 12, evaluation at step 6 and 12.
    """
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("frozen")
    dataset = make_dataset()
    recorder = Recorder()
    trainer, _ = build(
        out,
        dataset=dataset,
        recorder=recorder,
        learning_rate=0.0,
        max_steps=12,
        save_strategy="steps",
        save_steps=6,
        eval_strategy="steps",
        eval_steps=6,
        trainer_kwargs={"eval_dataset": dataset, "compute_metrics": recorder.compute_metrics},
    )
    updates = []  # (pool contents when the weights were re-measured, scales, weights)
    original_update = SemanticScaleBalancer._update_weights

    def spy(balancer, step, logs):
        snapshot = tuple(t.clone() for t in balancer.pool.contents())
        original_update(balancer, step, logs)
        updates.append((step, snapshot, balancer.semantic_scales.clone(), balancer.class_weights.clone()))

    with pytest.MonkeyPatch.context() as patch:  # the balancer is built when training starts
        patch.setattr(SemanticScaleBalancer, "_update_weights", spy)
        trainer.train()
    return trainer, recorder, updates, dataset, out


def test_stages_follow_warmup_fill_reweight(frozen_run):
    trainer, recorder, updates, _, _ = frozen_run
    stages = recorder.stages
    assert stages[:2] == ["warmup", "warmup"]
    fill = stages.index("reweight") - 2
    assert 1 <= fill <= 6 and stages[2 : 2 + fill] == ["fill"] * fill  # fill ends when full or after one epoch
    assert stages[2 + fill :] == ["reweight"] * (12 - 2 - fill)
    start = 2 + fill
    assert [step for step, *_ in updates] == list(range(start, 12, 2))
    # before re-weighting the loss used weights of one
    assert all(torch.equal(w, torch.ones(4, dtype=torch.float64)) for w in recorder.weights[:start])
    history = [json.loads(line) for line in (Path(trainer.args.output_dir) / HISTORY_FILENAME).read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(start, 12, 2))


def test_weights_come_from_the_scales_of_the_whole_pool(frozen_run):
    trainer, _, updates, _, _ = frozen_run
    a = trainer.args
    for _, (features, labels), scales, weights in updates:
        expected = class_semantic_scales(features, labels, 4, normalize=True, alpha=None)
        torch.testing.assert_close(scales, expected, rtol=1e-9, atol=1e-9)
        expected_w = semantic_scale_weights(
            scales, a.semscale_gamma, torch.tensor(COUNTS), "mean", a.semscale_weight_floor
        )
        torch.testing.assert_close(weights, expected_w)
        assert not torch.allclose(weights, torch.ones(4, dtype=torch.float64))
    assert torch.equal(trainer.semantic_scales, updates[-1][2])
    assert torch.equal(trainer.class_weights, updates[-1][3])
    assert trainer.semantic_scales.shape == trainer.class_weights.shape == (4,)


def test_pool_holds_the_latest_feature_of_every_sample_at_an_epoch_end(frozen_run):
    trainer, _, _, dataset, _ = frozen_run
    pool = trainer.pool
    assert pool.capacities.tolist() == COUNTS and pool.filled.tolist() == COUNTS
    expected, labels = model_features(trainer.model, dataset)
    stored, stored_labels = pool.contents()
    for c in range(4):
        rows = stored[stored_labels == c].float()
        distance = torch.cdist(rows, expected[labels == c])
        # each stored row is one sample's feature, and every sample is stored exactly once
        assert float(distance.min(dim=1).values.max()) < 2e-3
        assert sorted(distance.argmin(dim=1).tolist()) == list(range(COUNTS[c]))


def test_stage_changes_and_summaries_reach_the_loggers(frozen_run):
    trainer, recorder, updates, _, _ = frozen_run
    train_logs = [log for log in recorder.logs if "loss" in log]
    stage_logs = [(log["_step"], log["semscale/stage"]) for log in train_logs if "semscale/stage" in log]
    start = updates[0][0]
    assert stage_logs == [(3, 2.0), (start + 1, 3.0)]  # the docs' stage numbers, logged with the step entering it
    last = [log for log in train_logs if "semscale/weight_max" in log][-1]
    assert last["semscale/weight_max"] == pytest.approx(float(trainer.class_weights.max()))
    assert last["semscale/weight_min"] == pytest.approx(float(trainer.class_weights.min()))
    assert last["semscale/scale_min"] == pytest.approx(float(trainer.semantic_scales.min()))
    assert last["semscale/scale_mean"] == pytest.approx(float(trainer.semantic_scales.mean()))
    assert last["semscale/scale_max"] == pytest.approx(float(trainer.semantic_scales.max()))
    assert last["semscale/updates"] == len(updates)
    assert sum("semscale/scale_max" in log for log in train_logs) == len(updates)  # each update logged once
    for log in recorder.logs:  # evaluation and the final summary carry no training statistics
        if "loss" not in log:
            assert not any(key.startswith("semscale/") for key in log)
    # the Trainer's own history holds them too (what TensorBoard / W&B callbacks receive)
    assert any("semscale/stage" in entry for entry in trainer.state.log_history)


def test_semantic_scales_json_at_each_save(frozen_run):
    trainer, recorder, _, _, out = frozen_run
    report = json.loads((out / SCALES_FILENAME).read_text())
    assert (report["step"], report["stage"]) == (12, "reweight")
    assert [c["id"] for c in report["classes"]] == [0, 1, 2, 3]
    assert [c["name"] for c in report["classes"]] == NAMES
    assert [c["count"] for c in report["classes"]] == trainer.pool.filled.tolist()
    assert [c["scale"] for c in report["classes"]] == pytest.approx(trainer.semantic_scales.tolist())
    assert [c["weight"] for c in report["classes"]] == pytest.approx(trainer.class_weights.tolist())
    assert report["settings"]["semscale_update_interval"] == 2
    early = json.loads((out / "checkpoint-6" / SCALES_FILENAME).read_text())
    assert early["step"] == 6 and early["stage"] == recorder.stages[5]
    assert json.loads((out / "checkpoint-12" / SCALES_FILENAME).read_text())["classes"] == report["classes"]
    assert (out / "checkpoint-6" / STATE_FILENAME).is_file()


def test_evaluation_sees_logits_only_and_never_touches_the_pool(frozen_run):
    trainer, recorder, _, dataset, _ = frozen_run
    assert len(recorder.metric_predictions) == 2  # evaluations during training
    for predictions in recorder.metric_predictions:
        assert isinstance(predictions, np.ndarray) and predictions.shape == (48, 4)
    before = {k: v.clone() for k, v in trainer.pool.state_dict().items()}
    weights = trainer.class_weights.clone()
    output = trainer.predict(dataset)
    metrics = trainer.evaluate()
    assert isinstance(output.predictions, np.ndarray) and output.predictions.shape == (48, 4)
    for key, value in trainer.pool.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(trainer.class_weights, weights)
    # the evaluation loss is the unweighted mean, although training weights are far from uniform
    x = torch.tensor(np.asarray(dataset["pixel_values"], dtype=np.float32))
    with torch.no_grad():
        plain = F.cross_entropy(trainer.model(pixel_values=x).logits, torch.tensor(dataset["labels"]))
    assert metrics["eval_loss"] == pytest.approx(float(plain), rel=1e-5)
    torch.testing.assert_close(torch.from_numpy(output.predictions), trainer.model(pixel_values=x).logits.detach())


# ---------------------------------------------------------------- 2. the loss itself and gradient accumulation


def test_compute_loss_is_the_weighted_sum_over_labelled_samples(tmp_path):
    trainer, _ = train(  # one step starts the run: re-weighting from step 0
        tmp_path,
        semscale_weighting="inverse_frequency",
        semscale_warmup_steps=0,
        label_smoothing_factor=0.1,
        max_steps=1,
    )
    model = trainer.model.train()
    generator = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 1, IGNORE, 3, 2, 0, IGNORE, 3])
    batch = {"pixel_values": torch.randn(8, DIM, generator=generator), "labels": labels}
    loss = trainer.compute_loss(model, batch)
    assert trainer.stage == "reweight"
    weights = inverse_frequency_weights(torch.tensor(COUNTS)).float()
    assert torch.equal(trainer.class_weights.float(), weights)
    valid = labels != IGNORE
    logits = model(pixel_values=batch["pixel_values"]).logits
    per_sample = F.cross_entropy(logits[valid], labels[valid], reduction="none", label_smoothing=0.1)
    expected = (weights[labels[valid]] * per_sample).sum() / valid.sum()  # not divided by the sum of weights
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(
        trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(12)), expected * 6 / 12
    )
    model.eval()
    with torch.no_grad():
        eval_loss = trainer.compute_loss(model, batch)
    torch.testing.assert_close(eval_loss, F.cross_entropy(logits[valid], labels[valid], label_smoothing=0.1).detach())


def test_int32_labels_from_a_custom_collator(tmp_path):
    def collate(rows):
        return {
            "pixel_values": torch.tensor([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.int32),
        }

    trainer, recorder = train(tmp_path, max_steps=4, trainer_kwargs={"data_collator": collate})
    assert trainer.stage == "fill" and int(trainer.pool.total_added.sum()) == 16
    assert all(math.isfinite(x) for x in step_losses(recorder))


def test_gradient_accumulation_2x4_equals_1x8_while_reweighting_with_label_smoothing(tmp_path):
    # 8 of the 56 rows are unlabelled (-100), so the two micro-batches of a step hold different
    # numbers of labelled samples: a per-micro-batch mean would differ from the 8-sample mean.
    dataset = make_dataset(extra_labels=[IGNORE] * 8)
    common = dict(
        dataset=dataset,
        max_steps=6,
        label_smoothing_factor=0.1,
        learning_rate=0.2,
        semscale_warmup_steps=0,
        semscale_fill_max_steps=1,
        semscale_update_interval=1,
    )
    big, rec_big = train(
        tmp_path / "big", recorder=Recorder(record_grads=True), per_device_train_batch_size=8, **common
    )
    small, rec_small = train(
        tmp_path / "small",
        recorder=Recorder(record_grads=True),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        **common,
    )
    assert big.class_counts.tolist() == COUNTS  # -100 rows are not a class
    assert rec_big.stages == rec_small.stages == ["fill"] + ["reweight"] * 5
    for w in rec_big.weights[1:]:
        assert float(w.max() / w.min()) > 1.2, "weights must be active for this test to mean anything"
    for w_big, w_small in zip(rec_big.weights, rec_small.weights):
        torch.testing.assert_close(w_big, w_small, rtol=1e-5, atol=1e-7)
    assert step_losses(rec_big) == pytest.approx(step_losses(rec_small), rel=1e-5)
    assert len(rec_big.grads) == len(rec_small.grads) == 6
    for g_big, g_small in zip(rec_big.grads, rec_small.grads):
        for name in g_big:
            torch.testing.assert_close(g_big[name], g_small[name], rtol=1e-4, atol=1e-6)
    for name, p in params(big.model).items():
        torch.testing.assert_close(p, params(small.model)[name], rtol=1e-4, atol=1e-6)
    assert torch.equal(big.pool.filled, small.pool.filled) and torch.equal(big.pool.total_added, small.pool.total_added)


# ---------------------------------------------------------------- 4. checkpoint and resume


RESUME = dict(
    max_steps=10,
    save_strategy="steps",
    save_steps=4,
    learning_rate=0.01,
    optim="adamw_torch",
    lr_scheduler_type="linear",
    semscale_warmup_steps=2,
    semscale_fill_max_steps=2,
    semscale_update_interval=3,
)


def assert_same_run(a: SemScaleTrainer, b: SemScaleTrainer) -> None:
    assert a.stage == b.stage == "reweight"
    assert torch.equal(a.class_weights, b.class_weights)
    assert torch.equal(a.semantic_scales, b.semantic_scales)
    for key, value in a.pool.state_dict().items():
        assert torch.equal(value, b.pool.state_dict()[key]), key
    for name, p in params(a.model).items():
        assert torch.equal(p, params(b.model)[name]), name
    assert a.balancer.num_updates == b.balancer.num_updates


def test_interrupted_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    # dropout makes the result depend on the restored RNG state too
    full, _ = train(tmp_path / "full", model=make_model(dropout=0.2), **RESUME)
    checkpoint_4 = tmp_path / "full" / "checkpoint-4"
    assert json.loads((checkpoint_4 / SCALES_FILENAME).read_text())["stage"] == "fill"  # saved mid-fill

    # killed after step 6: checkpoint-4 is the latest one, and the history file has lines after it
    killed, _ = build(tmp_path / "killed", model=make_model(dropout=0.2), recorder=Recorder(raise_at_step=6), **RESUME)
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    assert not (tmp_path / "killed" / "checkpoint-8").exists()
    resumed, _ = build(tmp_path / "killed", model=make_model(dropout=0.2), **RESUME)
    resumed.train(resume_from_checkpoint=True)
    assert_same_run(full, resumed)
    history = HISTORY_FILENAME
    assert (tmp_path / "killed" / history).read_text() == (tmp_path / "full" / history).read_text()

    # resuming from a checkpoint saved while re-weighting, by path, in a fresh output_dir
    checkpoint_8 = tmp_path / "full" / "checkpoint-8"
    assert json.loads((checkpoint_8 / SCALES_FILENAME).read_text())["stage"] == "reweight"
    late, _ = build(tmp_path / "late", model=make_model(dropout=0.2), **RESUME)
    late.train(resume_from_checkpoint=str(checkpoint_8))
    assert_same_run(full, late)


def test_resume_refuses_another_training_set_or_a_broken_state_file(tmp_path):
    trainer, _ = train(tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=4, semscale_fill_max_steps=1)
    checkpoint = tmp_path / "run" / "checkpoint-4"
    other, _ = build(tmp_path / "other", dataset=make_dataset(counts=[20, 12, 8, 9]), max_steps=6)
    with pytest.raises(PoolFileError, match="class counts differ.*Fix"):
        other.train(resume_from_checkpoint=str(checkpoint))
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / STATE_FILENAME).write_bytes((broken / STATE_FILENAME).read_bytes()[:100])
    fresh, _ = build(tmp_path / "fresh", max_steps=6)
    with pytest.raises(ValueError, match="Cannot resume.*truncated"):
        fresh.train(resume_from_checkpoint=str(broken))


# ---------------------------------------------------------------- 5. bad input


@pytest.mark.parametrize("bad_label", [4, -1, 17])
def test_label_outside_the_classes_in_the_training_set(tmp_path, bad_label):
    with pytest.raises(ValueError, match=r"num_labels=4.*Fix"):
        build(tmp_path, dataset=make_dataset(extra_labels=[bad_label]))


def test_label_outside_the_classes_in_a_batch(tmp_path):
    # class_counts given: the training set is not scanned, the batch check catches it
    dataset = make_dataset(extra_labels=[5] * 48)
    trainer, _ = build(tmp_path, dataset=dataset, trainer_kwargs={"class_counts": COUNTS})
    with pytest.raises(ValueError, match=r"labels \[5\] are outside \[0, 4\) and not -100.*Fix"):
        trainer.train()


@pytest.mark.parametrize(
    ("config_kwargs", "match"),
    [
        ({"problem_type": "multi_label_classification"}, "single-label.*Fix"),
        ({"problem_type": "regression"}, "single-label.*Fix"),
    ],
)
def test_multi_label_and_regression_models_are_refused(tmp_path, config_kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(tmp_path, model=make_model(**config_kwargs))


def test_a_one_output_regression_head_is_refused(tmp_path):
    torch.manual_seed(0)
    model = MLPForClassification(MLPClassifierConfig(input_dim=DIM, num_labels=1))
    with pytest.raises(ValueError, match="num_labels=1 is regression.*Fix"):
        build(tmp_path, model=model)


def test_multi_hot_or_float_labels_are_refused(tmp_path):
    multi_hot = datasets.Dataset.from_dict(
        {"pixel_values": np.zeros((8, DIM), np.float32), "labels": np.eye(4)[np.arange(8) % 4]}
    )
    with pytest.raises(ValueError, match="1-D integer class id.*single-label"):
        build(tmp_path, dataset=multi_hot)
    trainer, _ = build(tmp_path, dataset=multi_hot, trainer_kwargs={"class_counts": [2, 2, 2, 2]})
    with pytest.raises(ValueError, match="integer class ids.*transformers.Trainer"):
        trainer.train()


def test_training_set_without_a_label_column_needs_class_counts(tmp_path):
    unlabelled = datasets.Dataset.from_dict({"pixel_values": np.zeros((8, DIM), np.float32), "target": [0] * 8})
    with pytest.raises(ValueError, match="class_counts="):
        build(tmp_path, dataset=unlabelled)


def test_a_head_that_cannot_be_found_is_an_error_at_construction_and_the_override_fixes_it(tmp_path):
    config = CifarResNetConfig(depth=8, widths=(4, 8, 16), normed_head=True, num_labels=4)  # cosine head: no nn.Linear
    torch.manual_seed(0)
    images = datasets.Dataset.from_dict(
        {
            "pixel_values": np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32),
            "labels": [0, 1, 2, 3] * 4,
        }
    )
    with pytest.raises(ValueError, match="cannot be found.*Fix: pass feature_module="):
        build(tmp_path, model=CifarResNetForImageClassification(config), dataset=images)
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        build(tmp_path, model=CifarResNetForImageClassification(config), dataset=images, semscale_feature_module="nope")
    trainer, _ = train(
        tmp_path,
        model=CifarResNetForImageClassification(config),
        dataset=images,
        max_steps=3,
        semscale_warmup_steps=0,
        semscale_feature_module="classifier",
    )
    assert trainer.pool.feature_dim == 16 and int(trainer.pool.total_added.sum()) == 16 + 8


def test_feature_module_by_name_and_feature_pool_fn(tmp_path):
    dataset = make_dataset()
    # the input of the whole body is the raw sample: its volume is the sample volume
    by_name, _ = train(
        tmp_path / "a",
        dataset=dataset,
        learning_rate=0.0,
        max_steps=6,
        semscale_warmup_steps=0,
        semscale_fill_max_steps=100,
        trainer_kwargs={"feature_module": "body"},
    )
    assert by_name.pool.feature_dim == DIM
    stored, labels = by_name.pool.contents()
    x = F.normalize(torch.tensor(np.asarray(dataset["pixel_values"], dtype=np.float32)), dim=-1)
    y = torch.tensor(dataset["labels"])
    for c in range(4):
        distance = torch.cdist(stored[labels == c].float(), x[y == c])
        assert float(distance.min(dim=1).values.max()) < 2e-3
        assert sorted(distance.argmin(dim=1).tolist()) == list(range(COUNTS[c]))
    # a callable gets (head input, batch) and returns [B, d]
    calls = []

    def first_half(head_input, batch):
        calls.append(sorted(batch))
        return head_input[:, :4]

    by_fn, _ = train(
        tmp_path / "b",
        dataset=dataset,
        max_steps=2,
        semscale_warmup_steps=0,
        trainer_kwargs={"feature_pool_fn": first_half},
    )
    assert by_fn.pool.feature_dim == 4 and calls == [["pixel_values"]] * 2  # labels never reach the pool fn


@pytest.mark.parametrize("weighting", ["dsb", "inverse_frequency"])
def test_a_class_absent_from_the_data_is_handled_and_reported(tmp_path, caplog, weighting):
    dataset = make_dataset(counts=[20, 12, 0, 16])
    with caplog.at_level(logging.WARNING, logger="hf_semscale.trainer"):
        trainer, recorder = train(
            tmp_path,
            dataset=dataset,
            max_steps=8,
            semscale_weighting=weighting,
            semscale_warmup_steps=0,
            semscale_fill_max_steps=100,
            semscale_update_interval=1,
            trainer_kwargs={"eval_dataset": make_dataset(counts=[2, 2, 2, 2])},  # evaluation does hold class 2
        )
    assert "Classes [2] have no training samples" in caplog.text
    present = [0, 1, 3]
    if weighting == "dsb":  # the empty class does not hold the fill stage open: one epoch fills the others
        assert recorder.stages == ["fill"] * 6 + ["reweight"] * 2
        assert trainer.pool.filled.tolist() == [20, 12, 0, 16]
        assert trainer.semantic_scales[2] == 0 and all(trainer.semantic_scales[present] > 0)
    # the absent class has no weight (NaN); the present ones are finite and positive, and alone in the summaries
    weights = trainer.class_weights
    assert math.isnan(weights[2]) and bool((torch.isfinite(weights[present]) & (weights[present] > 0)).all())
    last = [log for log in recorder.logs if "semscale/weight_max" in log][-1]
    assert last["semscale/weight_max"] == pytest.approx(float(weights[present].max()))
    assert last["semscale/weight_min"] == pytest.approx(float(weights[present].min()))
    assert all(math.isfinite(x) for x in step_losses(recorder))
    assert math.isfinite(trainer.evaluate()["eval_loss"])
    if weighting == "dsb":  # one history line per re-measurement
        history = [json.loads(line) for line in (tmp_path / HISTORY_FILENAME).read_text().splitlines()]
        assert history and all(h["weights"][2] is None for h in history)  # null, not NaN (strict JSON)
    trainer.save_model()
    report = json.loads((tmp_path / SCALES_FILENAME).read_text())  # allow_nan=False: no NaN anywhere
    assert report["classes"][2]["count"] == 0 and report["classes"][2]["scale"] == 0
    assert report["classes"][2]["weight"] is None


def test_nan_features_stop_training_with_a_clear_error(tmp_path):
    dataset = make_dataset()
    rows = dataset.to_dict()
    first_of_class_1 = rows["labels"].index(1)
    rows["pixel_values"][first_of_class_1][0] = float("nan")
    with pytest.raises(ValueError, match=r"At step \d+: Non-finite.*class 1: 1 row.*Fix"):
        train(tmp_path, dataset=datasets.Dataset.from_dict(rows), max_steps=12, semscale_warmup_steps=0)


# ---------------------------------------------------------------- 6. every base loss x every weighting mode


@pytest.mark.parametrize("weighting", WEIGHTING_MODES)
@pytest.mark.parametrize("loss", BASE_LOSSES)
def test_every_base_loss_and_weighting_mode_trains(tmp_path, loss, weighting):
    static = [4.0, 1.0, 2.0, 3.0]  # the user's weights for weighting='static'
    trainer, recorder = train(
        tmp_path,
        max_steps=4,
        semscale_loss=loss,
        semscale_weighting=weighting,
        semscale_fill_max_steps=1,
        semscale_update_interval=1,
        semscale_class_weights=static if weighting == "static" else None,
    )
    losses = step_losses(recorder)
    assert len(losses) == 4 and all(math.isfinite(x) and x > 0 for x in losses)
    ones = torch.ones(4, dtype=torch.float64)
    assert all(torch.equal(w, ones) for w in recorder.weights[:2])  # warm-up: unweighted in every mode
    counts = torch.tensor(COUNTS)
    if weighting in DYNAMIC_WEIGHTING_MODES:
        assert recorder.stages == ["warmup", "warmup", "fill", "reweight"]
        expected = semantic_scale_weights(
            trainer.semantic_scales, 1.0, counts, "mean", 0.05, reverse=weighting == "reverse_scale"
        )
        if weighting == "dsb_effective_number":  # the mix: the dsb weights times the count weights, renormalised
            mixed = expected * effective_number_weights(counts, 0.9999)
            expected = mixed / ((mixed * counts).sum() / counts.sum())
            assert not torch.allclose(
                expected, semantic_scale_weights(trainer.semantic_scales, 1.0, counts, "mean", 0.05)
            )
        if weighting == "reverse_scale":  # the control: the class of largest scale gets the largest weight
            assert int(trainer.class_weights.argmax()) == int(trainer.semantic_scales.argmax())
        if weighting == "scale_equivalent_count":  # count weights of the counts the scales stand for
            assert trainer.balancer.equivalent_counts is not None and bool(
                (trainer.balancer.equivalent_counts >= 1).all()
            )
            expected = effective_number_weights(trainer.balancer.equivalent_counts, 0.9999, "none")
            expected = expected / ((expected * counts).sum() / counts.sum())
            order = torch.argsort(trainer.balancer.equivalent_counts)
            assert bool((trainer.class_weights[order].diff() <= 1e-12).all())  # fewer equivalent samples, larger weight
        assert trainer.pool is not None and not torch.equal(trainer.class_weights, ones)
    else:
        assert recorder.stages == ["warmup", "warmup", "reweight", "reweight"] and trainer.pool is None
        expected = {
            "none": ones,
            "inverse_frequency": inverse_frequency_weights(counts),
            "effective_number": effective_number_weights(counts, 0.9999),
            "count_power": count_power_weights(counts, 1.0),
            "static": torch.tensor(static, dtype=torch.float64)
            / ((torch.tensor(static) * counts).sum() / counts.sum()),
        }[weighting]
        assert torch.equal(recorder.weights[2], expected)
    torch.testing.assert_close(recorder.weights[-1], expected)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_weighting_none_is_the_plain_trainer(tmp_path, label_smoothing):
    common = dict(max_steps=5, label_smoothing_factor=label_smoothing)
    ours, rec_ours = train(tmp_path / "ours", semscale_weighting="none", **common)
    recorder = Recorder()
    plain = Trainer(
        model=make_model(),
        args=make_args(tmp_path / "plain", cls=TrainingArguments, **common),
        train_dataset=make_dataset(),
        callbacks=[recorder],
    )
    plain.train()
    assert step_losses(rec_ours) == pytest.approx(step_losses(recorder), rel=1e-6)
    for name, p in params(plain.model).items():
        torch.testing.assert_close(params(ours.model)[name], p, rtol=1e-6, atol=1e-7)


def test_tuple_outputs_keep_their_logits_in_predictions(tmp_path):
    class TupleMLP(MLPForClassification):
        def forward(self, pixel_values, labels=None, **kwargs):
            return (super().forward(pixel_values).logits,)

    torch.manual_seed(0)
    model = TupleMLP(make_model().config)
    trainer, _ = train(tmp_path, model=model, max_steps=3, semscale_warmup_steps=0)
    output = trainer.predict(make_dataset())
    assert isinstance(output.predictions, np.ndarray) and output.predictions.shape == (48, 4)


# ---------------------------------------------------------------- 7. a run's life: repeated train(), epochs, streams


def test_a_second_train_starts_from_warmup_and_ends_like_the_first(tmp_path):
    """model_init / hyperparameter_search call train() once per trial: no pool, stage or weights may carry over."""
    recorder = Recorder()
    trainer = SemScaleTrainer(
        model_init=lambda: make_model(seed=3),
        args=make_args(tmp_path, max_steps=12),
        train_dataset=make_dataset(),
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    trainer.train()
    first_weights, first_stages = trainer.class_weights.clone(), list(recorder.stages)
    assert first_stages[:2] == ["warmup", "warmup"] and first_stages[-1] == "reweight"
    recorder.stages.clear()
    trainer.train()
    assert recorder.stages == first_stages  # warm-up and fill again, not re-weighting from step 3
    assert torch.equal(trainer.class_weights, first_weights)
    history = [json.loads(line)["step"] for line in (tmp_path / HISTORY_FILENAME).read_text().splitlines()]
    assert history == sorted(set(history))  # the second run replaced the first's lines


def test_fill_stage_lasts_one_epoch_of_optimizer_steps_with_max_steps(tmp_path):
    # 48 samples, batch 8, accumulation 2: 3 optimizer steps per epoch; max_steps 20 is 6.67 epochs
    trainer, recorder = train(
        tmp_path,
        max_steps=20,
        gradient_accumulation_steps=2,
        semscale_warmup_steps=2,
        learning_rate=0.0,
        semscale_pool_capacity=0,
    )
    assert trainer.balancer.fill_max_steps == 3
    assert recorder.stages[2:5] == ["fill"] * 3 and recorder.stages[5] == "reweight"


def test_reweighting_that_can_never_start_is_announced_at_train_start(tmp_path, caplog):
    # the run: max_steps 3 with gradient accumulation 4 and a warm-up of 10 optimizer steps
    with caplog.at_level("WARNING", logger="hf_semscale.dsb.balancer"):
        trainer, recorder = train(
            tmp_path, max_steps=3, gradient_accumulation_steps=4, semscale_warmup_steps=10, semscale_weighting="dsb"
        )
    text = caplog.text
    assert "re-weighting can never start in this run of max_steps=3" in text and "warm-up ends at step 10" in text
    assert "stage 'warmup' with every class weight 1" in text
    # one epoch is 2 optimizer steps here: the suggested start leaves the fill room before it
    assert "semscale_reweight_start=0.667 in place of semscale_warmup_steps" in text and "from step 2)" in text
    assert recorder.stages == ["warmup"] * 3 and trainer.balancer.reweight_start_step >= 3


@pytest.mark.parametrize(
    "weighting, expected_stages",
    [
        ("inverse_frequency", ["warmup"] * 9 + ["reweight"] * 3),  # weights from round(0.75 * 12) = 9
        ("dsb", ["warmup"] * 3 + ["fill"] * 6 + ["reweight"] * 3),  # one epoch (6 steps) of fill before step 9
    ],
)
def test_reweight_start_is_when_the_weights_start(tmp_path, weighting, expected_stages):
    trainer, recorder = train(
        tmp_path,
        max_steps=12,
        learning_rate=0.0,
        semscale_weighting=weighting,
        semscale_warmup_steps=-1,
        semscale_reweight_start=0.75,
    )
    assert recorder.stages == expected_stages and trainer.balancer.reweight_start_step == 9
    assert torch.equal(recorder.weights[8], torch.ones(4, dtype=torch.float64))
    assert not torch.equal(recorder.weights[9], torch.ones(4, dtype=torch.float64))
    assert trainer.scale_report()["settings"]["semscale_reweight_start"] == 0.75


def test_streamed_training_set_needs_class_counts_and_fills_one_pass(tmp_path, caplog):
    stream = make_dataset().to_iterable_dataset()
    with pytest.raises(ValueError, match=r"IterableDataset \(streamed.*Fix: pass class_counts="):
        build(tmp_path, dataset=stream)
    trainer, recorder = build(tmp_path, dataset=stream, trainer_kwargs={"class_counts": COUNTS}, max_steps=12)
    with caplog.at_level("WARNING", logger="hf_semscale.trainer"):
        trainer.train()
    assert trainer.balancer.fill_max_steps == 6  # sum(class_counts) = 48 samples at a global batch of 8, not 1 step
    assert "fill" in recorder.stages and recorder.stages.count("fill") <= 6


def test_reweighting_that_starts_under_filled_warns_naming_the_classes(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="hf_semscale.dsb.balancer"):
        train(tmp_path, max_steps=5, semscale_fill_max_steps=1)
    assert (
        "re-weighting starts at step 3 with" in caplog.text
        and "ant" in caplog.text
        and "semscale_fill_max_steps" in caplog.text
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_semscale.dsb.balancer"):
        train(tmp_path / "full", max_steps=12, semscale_warmup_steps=0)  # fills exactly epoch 1: every sample seen
    assert "under-filled" not in caplog.text


def test_semantic_scales_json_is_written_without_any_save(tmp_path):
    trainer, _ = train(tmp_path, max_steps=12, save_strategy="no")
    report = json.loads((tmp_path / SCALES_FILENAME).read_text())
    assert report["step"] == 12 and report["num_updates"] == trainer.balancer.num_updates > 0
    assert [row["weight"] for row in report["classes"]] == pytest.approx(trainer.class_weights.tolist())


def test_logs_report_and_card_agree_on_classes_without_volume(tmp_path, caplog):
    """An absent class (0 samples) and a one-sample class: no part of the output averages their 0 scale in, the
    absent class's weight is reported as null, and the one-sample class's largest weight is announced."""
    from hf_semscale.hub import build_model_card

    with caplog.at_level("WARNING"):
        trainer, recorder = train(
            tmp_path,
            dataset=make_dataset(counts=[20, 12, 1, 0]),
            max_steps=12,
            semscale_warmup_steps=0,
            semscale_update_interval=1,
        )
    assert "1 classes have no measurable volume" in caplog.text and "cat" in caplog.text
    assert "Classes [3] have no training samples" in caplog.text
    measured = [0, 1]
    last = [log for log in recorder.logs if "semscale/scale_mean" in log][-1]
    assert last["semscale/scale_mean"] == pytest.approx(float(trainer.semantic_scales[measured].mean()))
    assert last["semscale/scale_min"] == pytest.approx(float(trainer.semantic_scales[measured].min()))
    trainer.save_model()
    report = json.loads((tmp_path / SCALES_FILENAME).read_text())
    summary = report["summary"]
    assert summary["scale_mean"] == pytest.approx(last["semscale/scale_mean"])
    assert summary["classes_without_volume"] == [2, 3] and summary["num_classes_with_volume"] == 2
    rows = report["classes"]
    assert [r["has_volume"] for r in rows] == [True, True, False, False]
    assert rows[3]["weight"] is None and rows[2]["weight"] == pytest.approx(float(trainer.class_weights[:3].max()))
    card = str(build_model_card(tmp_path))
    assert "| 3 | dog | 0 | 0 | 0.0000 | — |" in card  # id, name, train samples, measured on, scale, weight
    assert f"| scale_mean | {summary['scale_mean']:.6g} |" in card


# ---------------------------------------------------------------- 8. issue 18: hyper-parameter search, labels, names


def test_hyperparameter_search_trials_train_with_their_own_semscale_settings(tmp_path):
    optuna = pytest.importorskip("optuna")
    dataset = make_dataset()
    trainer = SemScaleTrainer(
        model_init=lambda: make_model(seed=1),
        args=make_args(tmp_path, max_steps=8, semscale_warmup_steps=0, semscale_fill_max_steps=100),
        train_dataset=dataset,
        eval_dataset=dataset,
    )
    assert trainer.args.semscale_gamma == 1.0 and trainer.args.semscale_weighting == "dsb"
    grid = {"semscale_weighting": ["none", "dsb"], "semscale_gamma": [4.0]}
    trials = []  # what each trial ended with: settings used, weights, scales, report

    def objective(metrics):
        report = json.loads((tmp_path / SCALES_FILENAME).read_text())
        trials.append((trainer.balancer.settings, trainer.class_weights.clone(), trainer.semantic_scales, report))
        return -metrics["eval_loss"]

    trainer.hyperparameter_search(
        hp_space=lambda trial: {name: trial.suggest_categorical(name, values) for name, values in grid.items()},
        compute_objective=objective,
        n_trials=2,
        direction="maximize",
        backend="optuna",
        sampler=optuna.samplers.GridSampler(grid, seed=0),
    )
    assert sorted(settings.weighting for settings, *_ in trials) == ["dsb", "none"]
    for settings, weights, scales, report in trials:
        assert settings.gamma == 4.0 and report["settings"]["semscale_gamma"] == 4.0
        assert report["settings"]["semscale_weighting"] == settings.weighting
        assert [row["weight"] for row in report["classes"]] == pytest.approx(weights.tolist())
        if settings.weighting == "none":
            assert torch.equal(weights, torch.ones(4, dtype=torch.float64)) and report["num_updates"] == 0
        else:  # re-measured scales, weighted with gamma 4 (not the arguments' gamma 1)
            assert report["num_updates"] > 0 and bool((scales > 0).all())
            expected = semantic_scale_weights(scales, 4.0, torch.tensor(COUNTS), "mean", 0.05)
            torch.testing.assert_close(weights, expected)
            assert not torch.allclose(weights, semantic_scale_weights(scales, 1.0, torch.tensor(COUNTS), "mean", 0.05))


@pytest.mark.parametrize(
    ("trial_values", "match"),
    [
        ({"semscale_gama": 2.0}, r"'semscale_gama'.*did you mean 'semscale_gamma'.*Fix"),
        ({"semscale_gamma": -1.0}, r"semscale_gamma must be finite and >= 0"),
        ({"semscale_weighting": "dbs"}, r"semscale_weighting='dbs' is not one of"),
    ],
)
def test_a_trial_value_of_an_unknown_knob_or_an_invalid_value_raises(tmp_path, trial_values, match):
    pytest.importorskip("optuna")
    trainer = SemScaleTrainer(
        model_init=lambda: make_model(), args=make_args(tmp_path, max_steps=2), train_dataset=make_dataset()
    )
    with pytest.raises(ValueError, match=match):
        trainer.hyperparameter_search(
            hp_space=lambda trial: trial_values, n_trials=1, direction="maximize", backend="optuna"
        )


def test_string_labels_are_refused_naming_the_mapping(tmp_path):
    rows = make_dataset().to_dict()
    rows["labels"] = [NAMES[y] for y in rows["labels"]]
    with pytest.raises(
        ValueError, match=r"holds strings \(e.g. '\w+'\).*integer class ids.*class_encode_column.*label2id"
    ):
        build(tmp_path, dataset=datasets.Dataset.from_dict(rows))


def test_an_empty_training_set_is_named_empty(tmp_path):
    empty = datasets.Dataset.from_dict({"pixel_values": np.zeros((0, DIM), np.float32), "labels": np.zeros(0, int)})
    with pytest.raises(ValueError, match=r"training set is empty \(0 rows\)"):
        build(tmp_path, dataset=empty)


def test_token_classification_is_refused_at_construction(tmp_path):
    from transformers import BertConfig, BertForTokenClassification

    per_token = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "labels": [[0, 1, 2], [3, -100]]})
    with pytest.raises(ValueError, match=r"sequence of labels per sample.*per-sample single-label classification"):
        build(tmp_path, dataset=per_token)
    config = BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    config.num_labels = 4
    model = BertForTokenClassification(config)
    with pytest.raises(ValueError, match=r"token classifier.*per-sample single-label classification"):
        build(tmp_path, model=model, dataset=per_token, trainer_kwargs={"class_counts": COUNTS})


def test_class_label_names_reach_the_report_and_card_over_generic_config_names(tmp_path):
    from hf_semscale.hub import build_model_card

    dataset = make_dataset().cast_column("labels", datasets.ClassLabel(names=["owl", "yak", "emu", "gnu"]))
    torch.manual_seed(0)
    model = MLPForClassification(MLPClassifierConfig(input_dim=DIM, hidden_dims=(16, 8), num_labels=4))
    assert model.config.id2label[0] == "LABEL_0"
    trainer, _ = train(tmp_path, model=model, dataset=dataset, max_steps=2)
    assert trainer.class_names == ["owl", "yak", "emu", "gnu"]
    report = json.loads((tmp_path / SCALES_FILENAME).read_text())
    assert [row["name"] for row in report["classes"]] == ["owl", "yak", "emu", "gnu"]
    card = str(build_model_card(tmp_path))
    assert "| 3 | gnu |" in card and "LABEL_" not in card
    with pytest.raises(ValueError, match="ClassLabel has 3 names but the model has num_labels=4"):
        build(
            tmp_path, dataset=make_dataset(counts=[20, 12, 8]).cast_column("labels", datasets.ClassLabel(num_classes=3))
        )


def test_a_batch_s_labels_are_validated_once(tmp_path, monkeypatch):
    import hf_semscale.core.losses as losses_module
    import hf_semscale.dsb.balancer as balancer_module
    import hf_semscale.dsb.pool as pool_module
    import hf_semscale.trainer.balancing as balancing_module

    trainer, recorder = build(tmp_path, max_steps=4, semscale_warmup_steps=1, semscale_fill_max_steps=1)
    checked = []
    original = losses_module.check_class_labels

    def counting_check(labels, num_classes):
        checked.append(labels.numel())
        original(labels, num_classes)

    for module in (losses_module, balancer_module, pool_module, balancing_module):
        monkeypatch.setattr(module, "check_class_labels", counting_check)
    trainer.train()
    assert recorder.stages == ["warmup", "fill", "reweight", "reweight"]  # every code path: plain, pool, weights
    assert checked == [8] * 4  # one check per training batch


def test_a_users_callback_sees_the_started_balancer_at_train_begin(tmp_path):
    """The library's callback runs before the user's: on_train_begin already finds this run's balancer started."""
    from transformers import TrainerCallback

    seen = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen["started"], seen["warmup"] = trainer.balancer.started, trainer.balancer.warmup_steps
            seen["balancer"] = trainer.balancer

    trainer = SemScaleTrainer(
        model=make_model(), args=make_args(tmp_path, max_steps=4, semscale_warmup_steps=2), train_dataset=make_dataset(),
        callbacks=[Probe()],
    )  # fmt: skip
    trainer.train()
    assert seen["started"] and seen["warmup"] == 2 and seen["balancer"] is trainer.balancer
