"""SemanticScaleBalancer: the framework-neutral engine, in a plain loop, in Accelerate, and against the Trainer."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_semscale import BalancerSettings, SemanticScaleBalancer
from hf_semscale.core.scale import class_semantic_scales
from hf_semscale.core.weighting import semantic_scale_weights
from hf_semscale.dsb.pool import PoolFileError

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "examples"))
import accelerate_loop  # noqa: E402

COUNTS = [12, 6, 3]


def _blobs(seed: int = 0, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])
    spread = torch.tensor([0.2, 0.6, 1.2])[labels, None]
    return torch.randn(len(labels), d, generator=g) * spread + labels[:, None], labels


def _run(balancer: SemanticScaleBalancer, features, labels, steps: range, batch: int = 7) -> list:
    records = []
    for step in steps:
        record = balancer.begin_step(step)
        if record is not None:
            records.append(record)
        rows = torch.arange(step * batch, (step + 1) * batch) % len(labels)
        balancer.observe(features[rows] * (1 + 0.01 * step), labels[rows])  # features drift as a model trains
    return records


def test_importing_the_math_and_the_balancer_loads_no_transformers_datasets_or_accelerate():
    code = (
        "import sys, hf_semscale, hf_semscale.dsb.balancer, hf_semscale.dsb.settings, hf_semscale.core.scale, hf_semscale.dsb.pool\n"
        "b = hf_semscale.SemanticScaleBalancer([3, 2], hf_semscale.BalancerSettings())\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'transformers', 'datasets', 'accelerate'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"


def test_stages_updates_and_weights_follow_the_settings_in_a_plain_loop():
    features, labels = _blobs()
    balancer = SemanticScaleBalancer(COUNTS, BalancerSettings(warmup_steps=2, update_interval=3, fill_max_steps=10))
    balancer.start(max_steps=20, steps_per_epoch=3)
    assert balancer.fill_max_steps == 10 and balancer.warmup_steps == 2
    records = _run(balancer, features, labels, range(11))
    records.append(balancer.begin_step(11))
    # warm-up 0-1, fill from 2 until the pool holds min(n_c, K) = n_c rows (21 rows in 3 steps of 7), then every 3
    assert [(r.step, r.stage, r.stage_changed, r.measured) for r in records] == [
        (2, "fill", True, False),
        (5, "reweight", True, True),
        (8, "reweight", False, True),
        (11, "reweight", False, True),
    ]
    pool_features, pool_labels = balancer.pool.contents()
    scales = class_semantic_scales(pool_features, pool_labels, 3)
    torch.testing.assert_close(balancer.semantic_scales, scales.double(), rtol=0, atol=0)
    expected = semantic_scale_weights(scales, 1.0, torch.tensor(COUNTS), "mean", 0.05)
    torch.testing.assert_close(balancer.class_weights, expected)
    assert records[-1].history_line() == {
        "step": 11,
        "stage": "reweight",
        "scales": scales.tolist(),
        "weights": expected.tolist(),
        "pool_counts": COUNTS,
    }
    assert set(records[-1].logs) == {
        "semscale/weight_min",
        "semscale/weight_max",
        "semscale/scale_min",
        "semscale/scale_mean",
        "semscale/scale_max",
        "semscale/updates",
    }
    assert balancer.begin_step(11) is None  # once per step


def test_loss_is_weighted_only_in_the_reweight_stage_and_when_asked():
    balancer = SemanticScaleBalancer(
        [4, 1], BalancerSettings(weighting="static", class_weights=[1.0, 3.0], warmup_steps=1)
    )
    balancer.start(max_steps=4, steps_per_epoch=2)
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 1, -100])
    per_sample = torch.nn.functional.cross_entropy(logits[:2], labels[:2], reduction="none")
    balancer.begin_step(0)
    torch.testing.assert_close(balancer.loss(logits, labels), per_sample.mean())
    balancer.begin_step(1)  # static weights from the end of warm-up, normalised to mean 1 over the samples
    w = torch.tensor([1.0, 3.0]) / ((torch.tensor([1.0, 3.0]) * torch.tensor([4.0, 1.0])).sum() / 5)
    assert balancer.stage == "reweight" and balancer.pool is None
    torch.testing.assert_close(balancer.loss(logits, labels), (w * per_sample).sum() / 2)
    torch.testing.assert_close(balancer.loss(logits, labels, weighted=False), per_sample.mean())
    torch.testing.assert_close(balancer.loss(logits, labels, num_items_in_batch=4), (w * per_sample).sum() / 4)


@pytest.mark.parametrize("weighting, normalization", [("dsb", "mean"), ("inverse_frequency", "sum")])
def test_a_class_without_training_samples_has_no_weight_and_no_share_in_the_summaries(weighting, normalization):
    features, labels = _blobs()  # classes 0-2; class 3 has no sample
    settings = BalancerSettings(weighting=weighting, normalization=normalization, warmup_steps=1, update_interval=1)
    balancer = SemanticScaleBalancer(COUNTS + [0], settings)
    balancer.start(max_steps=6, steps_per_epoch=3)
    assert math.isnan(balancer.class_weights[3]) and balancer.class_weights[:3].tolist() == [1.0] * 3
    records = _run(balancer, features, labels, range(6))
    weights = balancer.class_weights
    assert math.isnan(weights[3]) and bool((torch.isfinite(weights[:3]) & (weights[:3] > 0)).all())
    if weighting == "dsb":  # the present classes weigh as in a run without the absent class
        expected = semantic_scale_weights(balancer.semantic_scales[:3], 1.0, torch.tensor(COUNTS), "mean", 0.05)
    else:  # 'sum' over the present classes: sum_c w_c = 3
        expected = torch.tensor([1 / 12, 1 / 6, 1 / 3], dtype=torch.float64)
        expected = expected * 3 / expected.sum()
    torch.testing.assert_close(weights[:3], expected)
    logs = [r.logs for r in records if "semscale/weight_max" in r.logs][-1]
    assert logs["semscale/weight_max"] == float(weights[:3].max()) and logs["semscale/weight_min"] == float(
        weights[:3].min()
    )
    line = records[-1].history_line()
    assert line["weights"][:3] == weights[:3].tolist() and line["weights"][3] is None
    json.dumps(line, allow_nan=False)
    # the loss never sees the NaN: finite with an ignored row, refused for a label that class_counts says is absent
    logits = torch.randn(3, 4)
    assert math.isfinite(float(balancer.loss(logits, torch.tensor([0, 2, -100]))))
    assert math.isfinite(float(balancer.loss(logits, torch.tensor([3, 3, 0]), weighted=False)))  # evaluation
    with pytest.raises(
        ValueError, match=r"labels \[3\], but class_counts gives these classes 0.*Fix: pass class_counts"
    ):
        balancer.loss(logits, torch.tensor([0, 3, 3]))
    # a state keeps the NaN; a state saved with a finite weight there (older versions) loads as NaN
    state = balancer.state_dict()
    state["semscale.class_weights"] = state["semscale.class_weights"].nan_to_num(14.23)
    restored = SemanticScaleBalancer(COUNTS + [0], settings)
    restored.start(max_steps=6, steps_per_epoch=3, reset=False)
    restored.load_state_dict(state)
    assert torch.equal(restored.class_weights[:3], weights[:3]) and math.isnan(restored.class_weights[3])


def test_observing_a_label_without_training_samples_is_refused():
    balancer = SemanticScaleBalancer([4, 0, 2], BalancerSettings(warmup_steps=0))
    balancer.start(max_steps=4, steps_per_epoch=2)
    balancer.begin_step(0)
    with pytest.raises(ValueError, match=r"labels \[1\], but class_counts gives these classes 0"):
        balancer.observe(torch.randn(3, 5), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize(
    "weighting, expected",
    [("dsb", [(1, "fill", 2.0), (4, "reweight", 3.0)]), ("effective_number", [(1, "reweight", 3.0)])],
)
def test_logged_stage_numbers_are_the_docs_1_2_3(weighting, expected):
    features, labels = _blobs()
    balancer = SemanticScaleBalancer(COUNTS, BalancerSettings(weighting=weighting, warmup_steps=1))
    balancer.start(max_steps=6, steps_per_epoch=3)
    records = _run(balancer, features, labels, range(6))
    assert [(r.step, r.stage, r.logs["semscale/stage"]) for r in records if r.stage_changed] == expected


def test_state_dict_mid_run_resumes_identically():
    features, labels = _blobs(seed=1)
    settings = BalancerSettings(warmup_steps=1, update_interval=2, pool_capacity=4, fill_max_steps=2)
    reference = SemanticScaleBalancer(COUNTS, settings)
    reference.start(max_steps=16, steps_per_epoch=3)
    _run(reference, features, labels, range(16))

    first = SemanticScaleBalancer(COUNTS, settings)
    first.start(max_steps=16, steps_per_epoch=3)
    _run(first, features, labels, range(7))
    state = {k: v.clone() for k, v in first.state_dict().items()}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    resumed = SemanticScaleBalancer(COUNTS, settings)
    resumed.start(max_steps=16, steps_per_epoch=3)
    resumed.load_state_dict(state)
    _run(resumed, features, labels, range(7, 16))
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert resumed.num_updates == reference.num_updates >= 4


def test_a_refused_state_leaves_the_balancer_as_it_was():
    features, labels = _blobs()
    balancer = SemanticScaleBalancer(COUNTS, BalancerSettings(warmup_steps=0, update_interval=1, fill_max_steps=1))
    balancer.start(max_steps=5, steps_per_epoch=3)
    _run(balancer, features, labels, range(3))
    before = {k: v.clone() for k, v in balancer.state_dict().items()}
    bad = dict(before, **{"semscale.class_counts": torch.tensor([1, 2, 3])})
    with pytest.raises(PoolFileError, match="class counts differ"):
        balancer.load_state_dict(bad, source="bad.pt")
    assert all(torch.equal(balancer.state_dict()[k], v) for k, v in before.items())


def test_start_is_required_and_fill_needs_an_epoch_length():
    balancer = SemanticScaleBalancer(COUNTS)
    with pytest.raises(RuntimeError, match=r"call start\(max_steps"):
        balancer.begin_step(0)
    with pytest.raises(ValueError, match="steps_per_epoch nor global_batch_size.*fill_max_steps"):
        balancer.start(max_steps=10)
    balancer.start(max_steps=10, global_batch_size=4)
    assert balancer.fill_max_steps == 6 and balancer.warmup_steps == 3  # ceil(21 / 4); 0.3 * 10


@pytest.mark.parametrize(
    "weighting, pool_capacity, max_steps, warmup_steps, first_weighted_step",
    [
        ("inverse_frequency", 0, 20, 8, 8),  # static: the warm-up ends at round(0.4 * 20)
        ("inverse_frequency", 0, 7, 3, 3),  # round(2.8)
        ("dsb", 0, 20, 5, 8),  # pool: the fill (one epoch = 3 steps) just before step 8; full after 3 batches
        ("dsb", 2, 20, 5, 7),  # K = 2 fills in 2 batches: weights from one step earlier
        ("dsb", 0, 5, 0, 3),  # round(2) < one epoch: the fill starts at step 0 and re-weighting after it
    ],
)
def test_reweight_start_places_the_first_weights_at_that_fraction_of_training(
    weighting, pool_capacity, max_steps, warmup_steps, first_weighted_step
):
    features, labels = _blobs()
    settings = BalancerSettings(weighting=weighting, reweight_start=0.4, pool_capacity=pool_capacity)
    balancer = SemanticScaleBalancer(COUNTS, settings)
    balancer.start(max_steps=max_steps, steps_per_epoch=3)
    assert balancer.warmup_steps == warmup_steps
    assert balancer.reweight_start_step == (8 if max_steps == 20 else first_weighted_step)
    records = _run(balancer, features, labels, range(max_steps))
    assert [r.step for r in records if r.stage_changed and r.stage == "reweight"] == [first_weighted_step]
    if weighting == "dsb" and warmup_steps > 0:
        assert [r.step for r in records if r.stage == "fill"] == [warmup_steps]
    assert not torch.allclose(balancer.class_weights, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "settings, max_steps, steps_per_epoch, final_stage, needles",
    [
        (  # the run: max_steps 3 (gradient accumulation already counted in), a warm-up of 10 steps
            dict(warmup_steps=10),
            3,
            1,
            "warmup",
            ["max_steps=3", "warm-up ends at step 10", "stage 'warmup'", "reweight_start=0.4 in place of warmup_steps"],
        ),
        (  # the default warm-up on a run shorter than warm-up + one fill epoch
            dict(),
            4,
            3,
            "fill",
            ["warm-up ends at step 1", "fill stage (up to 3 steps) at step 4", "stage 'fill'", "reweight_start=0.75"],
        ),
        (
            dict(weighting="effective_number", reweight_start=1.0),
            10,
            8,
            "warmup",
            ["warm-up ends at step 10.", "stage 'warmup'", "effective_number", "Fix: set reweight_start=0.4 (weights"],
        ),
        (  # the fill alone is longer than the run: no reweight_start can help
            dict(warmup_steps=0),
            3,
            3,
            "fill",
            ["fill stage (up to 3 steps) at step 3", "Fix: a shorter fill (fill_max_steps"],
        ),
    ],
)
def test_reweighting_that_can_never_start_warns_at_start(
    caplog, settings, max_steps, steps_per_epoch, final_stage, needles
):
    features, labels = _blobs()
    balancer = SemanticScaleBalancer(COUNTS, BalancerSettings(**settings))
    with caplog.at_level("WARNING", logger="hf_semscale.dsb.balancer"):
        balancer.start(max_steps=max_steps, steps_per_epoch=steps_per_epoch)
    assert "re-weighting can never start" in caplog.text and "every class weight 1" in caplog.text
    for needle in needles:
        assert needle in caplog.text, needle
    assert balancer.reweight_start_step >= max_steps
    _run(balancer, features, labels, range(max_steps))  # the warning's prediction holds
    assert balancer.stage == final_stage and balancer.num_updates == 0


@pytest.mark.parametrize(
    "settings, max_steps",
    [
        (dict(weighting="none", warmup_steps=10), 3),  # never re-weights by design
        (dict(reweight_start=0.4), 20),
        (dict(weighting="count_power", warmup_steps=2), 3),
    ],
)
def test_reweighting_that_starts_in_the_run_does_not_warn(caplog, settings, max_steps):
    balancer = SemanticScaleBalancer(COUNTS, BalancerSettings(**settings))
    with caplog.at_level("WARNING", logger="hf_semscale.dsb.balancer"):
        balancer.start(max_steps=max_steps, steps_per_epoch=3)
    assert caplog.text == ""


@pytest.mark.parametrize(
    "bad, needle",
    [
        (dict(gamma=-1.0), "gamma must be finite and >= 0"),
        (dict(weighting="dsb", class_weights=[1.0, 2.0, 3.0]), "class_weights is only used with weighting='static'"),
        (dict(weighting="static"), "weighting='static' needs class_weights"),
        (dict(weighting="static", class_weights=[1.0, 0.0, 2.0]), "one finite positive weight per class"),
        (dict(pool_dtype="int8"), r"pool_dtype='int8' is not one of"),
        (dict(reweight_start=1.5), r"reweight_start must be a fraction of training in \[0, 1\]"),
        (dict(reweight_start=0.4, warmup_steps=5), "reweight_start=0.4 and warmup_steps=5 both say.*Fix: set only"),
        (dict(reweight_start=0.4, warmup_ratio=0.5), "reweight_start=0.4 and warmup_ratio=0.5 both say"),
    ],
)
def test_bad_settings_name_the_knob(bad, needle):
    with pytest.raises(ValueError, match=needle):
        BalancerSettings(**bad)


def test_static_weights_need_one_per_class():
    with pytest.raises(ValueError, match="class_weights has 2 entries but there are 3 classes"):
        SemanticScaleBalancer(COUNTS, BalancerSettings(weighting="static", class_weights=[1.0, 2.0]))


def test_config_fields_share_the_settings_defaults_help_and_rules():
    from hf_semscale.core.losses import DEFAULT_LOSS_SETTINGS, build_base_loss
    from hf_semscale.trainer.config import SemScaleConfig

    fields = SemScaleConfig.__dataclass_fields__
    for name, knob in BalancerSettings.__dataclass_fields__.items():
        if name == "label_smoothing":  # TrainingArguments.label_smoothing_factor
            continue
        assert fields[f"semscale_{name}"].default == knob.default, name
        assert fields[f"semscale_{name}"].metadata["help"] == knob.metadata["help"], name
    assert (
        fields["semscale_ldam_scale"].default
        == DEFAULT_LOSS_SETTINGS["ldam_scale"]
        == build_base_loss("ldam", class_counts=[2, 1]).logit_scale
    )
    with pytest.raises(ValueError, match="semscale_gamma must be finite"):  # the same rule, with the field's name
        SemScaleConfig(output_dir="unused", semscale_gamma=-1.0)
    with pytest.raises(ValueError, match="semscale_reweight_start=0.4 and semscale_warmup_steps=3"):
        SemScaleConfig(output_dir="unused", semscale_reweight_start=0.4, semscale_warmup_steps=3)
    assert SemScaleConfig(output_dir="unused", semscale_reweight_start=0.4).balancer_settings().reweight_start == 0.4


# ------------------------------------------------------------------ Accelerate and the Trainer


def _trainer_run(tmp_path: Path, max_steps: int):
    from hf_semscale import SemScaleConfig, SemScaleTrainer

    args = SemScaleConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        seed=1234,
        semscale_warmup_steps=10,
        semscale_update_interval=5,
        semscale_pool_capacity=16,
    )
    trainer = SemScaleTrainer(
        model=accelerate_loop.make_model(), args=args, train_dataset=accelerate_loop.make_dataset()
    )
    trainer.train()
    return trainer


@pytest.mark.slow
def test_plain_accelerate_loop_and_trainer_end_with_the_same_class_weights(tmp_path):
    torch.set_num_threads(1)
    trainer = _trainer_run(tmp_path / "trainer", max_steps=40)
    settings = BalancerSettings(warmup_steps=10, update_interval=5, pool_capacity=16)
    balancer = accelerate_loop.train(
        accelerate_loop.make_model(), accelerate_loop.make_dataset(), settings, max_steps=40
    )
    assert balancer.num_updates == trainer.balancer.num_updates >= 4 and balancer.stage == trainer.stage == "reweight"
    torch.testing.assert_close(balancer.pool.filled, trainer.pool.filled, rtol=0, atol=0)
    torch.testing.assert_close(balancer.semantic_scales, trainer.semantic_scales, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(balancer.class_weights, trainer.class_weights, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(balancer.class_weights, torch.ones(5, dtype=torch.float64))


@pytest.mark.slow
def test_accelerate_save_state_mid_run_resumes_identically(tmp_path):
    torch.set_num_threads(1)
    settings = BalancerSettings(warmup_steps=10, update_interval=5, pool_capacity=16)
    data = accelerate_loop.make_dataset()
    full = accelerate_loop.train(accelerate_loop.make_model(), data, settings, max_steps=40)
    full_state = {k: v.clone() for k, v in full.state_dict().items()}
    # a run that stops after step 23 (saves at 12 and 24 would follow; the latest save it made is step 12) ...
    accelerate_loop.train(
        accelerate_loop.make_model(), data, settings, max_steps=23, output_dir=tmp_path, save_every=12
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_12"]
    # ... then resumes from step 12 to the end
    resumed = accelerate_loop.train(
        accelerate_loop.make_model(seed=99),
        data,
        settings,
        max_steps=40,
        output_dir=tmp_path,
        save_every=12,
        resume=True,
    )
    for key, value in full_state.items():
        assert torch.equal(resumed.state_dict()[key], value), key


@pytest.mark.distributed
@pytest.mark.parametrize("shard_pool", [True, False])
def test_torch_distributed_comm_gives_every_rank_the_weights_of_one_process(tmp_path, shard_pool):
    """2 gloo processes, uneven shares of every batch, the pool class-sharded (each rank stores about half the rows)
    or replicated: both ranks end bit-identical, equal to one process that observed each whole batch (<= 1e-12), and
    the saved state resumes on one process as if the run had been one process all along."""
    import json

    import comm_worker
    import torch.multiprocessing as mp

    mp.spawn(comm_worker.rank_main, args=(2, str(tmp_path / "init"), str(tmp_path), shard_pool), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    settings = BalancerSettings(**comm_worker.SETTINGS)
    single = SemanticScaleBalancer(comm_worker.COUNTS, settings)
    comm_worker.run_loop(single, rank=0, world_size=1)
    assert single.num_updates >= 4 and not torch.allclose(single.class_weights, torch.ones(8, dtype=torch.float64))
    for key, value in single.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-12, atol=1e-12, msg=key)
    if shard_pool:
        assert all(info["sharded"] for info in infos)
        assert max(info["pool_nbytes"] for info in infos) <= 0.55 * single.pool.nbytes
        assert sum(info["pool_nbytes"] for info in infos) == single.pool.nbytes
    else:
        assert all(info["pool_nbytes"] == single.pool.nbytes for info in infos)
    # resume the 2-process state on 1 process: the same as continuing the 1-process run
    resumed = SemanticScaleBalancer(comm_worker.COUNTS, settings)
    resumed.start(comm_worker.STEPS + 6, steps_per_epoch=3)
    resumed.load_state_dict(ranks[0])
    more = range(comm_worker.STEPS, comm_worker.STEPS + 6)
    comm_worker.run_loop(resumed, 0, 1, more, start=False)
    comm_worker.run_loop(single, 0, 1, more, start=False)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=1e-12, atol=1e-12, msg=key)
