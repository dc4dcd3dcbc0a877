"""A plain ``transformers.Trainer`` with ``SemScaleBalancing`` (issue 18, item 4): the callback + ``compute_loss_func``
route trains like ``SemScaleTrainer``, exactly under gradient accumulation, and refuses what it cannot do."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from test_trainer import COUNTS, IGNORE, Recorder, make_args, make_dataset, make_model, params, step_losses
from transformers import Trainer, TrainingArguments

from hf_semscale import SemScaleBalancing
from hf_semscale.hub.report import SCALES_FILENAME
from hf_semscale.trainer import HISTORY_FILENAME, SemScaleTrainer

pytestmark = pytest.mark.usefixtures("fast_tiny_runs")

RUN = dict(
    max_steps=8, learning_rate=0.2, semscale_warmup_steps=1, semscale_fill_max_steps=1, semscale_update_interval=2
)


class StageRecorder(Recorder):
    """Recorder for a plain Trainer: the weights and stage of each step come from the balancing."""

    def __init__(self, balancing: SemScaleBalancing, **kwargs):
        super().__init__(**kwargs)
        self.balancing = balancing

    def on_step_end(self, args, state, control, **kwargs):
        self.stages.append(self.balancing.balancer.stage)
        self.weights.append(self.balancing.balancer.class_weights.clone())


def plain_run(out, dataset=None, model=None, record_grads=False, **overrides):
    dataset = make_dataset() if dataset is None else dataset
    model = model or make_model()
    args = make_args(out, **{**RUN, **overrides})
    balancing = SemScaleBalancing(model, args, train_dataset=dataset)
    recorder = StageRecorder(balancing, record_grads=record_grads)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        compute_loss_func=balancing.loss,
        callbacks=[balancing.callback, recorder],
    )
    trainer.train()
    return trainer, balancing, recorder


def test_plain_trainer_ends_with_the_semscale_trainer_weights_and_model(tmp_path):
    plain, balancing, rec_plain = plain_run(tmp_path / "plain")
    ours_recorder = Recorder()
    ours = SemScaleTrainer(
        model=make_model(),
        args=make_args(tmp_path / "ours", **RUN),
        train_dataset=make_dataset(),
        callbacks=[ours_recorder],
    )
    ours_recorder.trainer = ours
    ours.train()
    assert rec_plain.stages == ours_recorder.stages == ["warmup", "fill"] + ["reweight"] * 6
    assert balancing.balancer.num_updates == ours.balancer.num_updates == 3
    assert not torch.allclose(balancing.balancer.class_weights, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(balancing.balancer.class_weights, ours.class_weights)
    assert step_losses(rec_plain) == pytest.approx(step_losses(ours_recorder), rel=1e-6)
    for name, p in params(ours.model).items():
        torch.testing.assert_close(params(plain.model)[name], p)
    # the report, the history and the logged summaries come out of the plain route too
    report = json.loads((tmp_path / "plain" / SCALES_FILENAME).read_text())
    assert [row["name"] for row in report["classes"]] == ["ant", "bee", "cat", "dog"]
    assert [row["weight"] for row in report["classes"]] == pytest.approx(balancing.balancer.class_weights.tolist())
    assert len((tmp_path / "plain" / HISTORY_FILENAME).read_text().splitlines()) == 3
    assert any("semscale/weight_max" in entry for entry in plain.state.log_history)


def test_plain_trainer_gradient_accumulation_2x4_equals_1x8(tmp_path):
    dataset = make_dataset(extra_labels=[IGNORE] * 8)  # uneven labelled counts per micro-batch
    common = dict(dataset=dataset, record_grads=True, max_steps=6, label_smoothing_factor=0.1)
    big, b_big, rec_big = plain_run(tmp_path / "big", per_device_train_batch_size=8, **common)
    small, b_small, rec_small = plain_run(
        tmp_path / "small", per_device_train_batch_size=4, gradient_accumulation_steps=2, **common
    )
    assert rec_big.stages[-1] == "reweight" and float(rec_big.weights[-1].max() / rec_big.weights[-1].min()) > 1.2
    for w_big, w_small in zip(rec_big.weights, rec_small.weights):
        torch.testing.assert_close(w_big, w_small, rtol=1e-5, atol=1e-7)
    assert step_losses(rec_big) == pytest.approx(step_losses(rec_small), rel=1e-5)
    for name, p in params(big.model).items():
        torch.testing.assert_close(p, params(small.model)[name], rtol=1e-4, atol=1e-6)
    assert torch.equal(b_big.balancer.pool.total_added, b_small.balancer.pool.total_added)


def test_plain_trainer_without_the_callback_or_the_loss_or_the_config_fails_clearly(tmp_path):
    dataset = make_dataset()
    model = make_model()
    args = make_args(tmp_path, **RUN)
    balancing = SemScaleBalancing(model, args, train_dataset=dataset)
    no_callback = Trainer(model=model, args=args, train_dataset=dataset, compute_loss_func=balancing.loss)
    with pytest.raises(RuntimeError, match=r"before training started.*callbacks=\[balancing.callback\]"):
        no_callback.train()
    no_loss = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[balancing.callback])
    with pytest.raises(RuntimeError, match=r"step 0 trained without SemScaleBalancing.loss.*compute_loss_func"):
        no_loss.train()
    plain_args = make_args(tmp_path, cls=TrainingArguments, max_steps=2)
    wrong_args = Trainer(
        model=model,
        args=plain_args,
        train_dataset=dataset,
        compute_loss_func=balancing.loss,
        callbacks=[balancing.callback],
    )
    with pytest.raises(TypeError, match="pass the SemScaleConfig given to SemScaleBalancing"):
        wrong_args.train()
    with pytest.raises(TypeError, match="SemScaleConfig"):
        SemScaleBalancing(model, plain_args, train_dataset=dataset)


def test_plain_trainer_follows_model_init_and_refuses_resume_naming_semscale_trainer(tmp_path):
    dataset = make_dataset()
    balancing = SemScaleBalancing(make_model(), make_args(tmp_path, **RUN), train_dataset=dataset)
    rebuilt = Trainer(
        model_init=lambda: make_model(seed=2),
        args=make_args(tmp_path, **RUN),
        train_dataset=dataset,
        compute_loss_func=balancing.loss,
        callbacks=[balancing.callback],
    )
    rebuilt.train()  # the capture moved to the model model_init built for the run
    assert balancing.model is rebuilt.model and balancing.balancer.num_updates == 3
    assert int(balancing.balancer.pool.total_added.sum()) > 0
    trainer, _, _ = plain_run(tmp_path / "saved", save_strategy="steps", save_steps=4)
    assert json.loads((tmp_path / "saved" / "checkpoint-4" / SCALES_FILENAME).read_text())["step"] == 4
    with pytest.raises(ValueError, match=r"Resuming at step 4: a plain transformers.Trainer.*SemScaleTrainer"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "saved" / "checkpoint-4"))


def test_semscale_trainer_stays_a_thin_adapter():
    lines, _ = inspect.getsourcelines(SemScaleTrainer)
    assert len(lines) < 350
    assert COUNTS  # the shared helpers above come from test_trainer
