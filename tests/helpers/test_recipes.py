"""The recipes (YAML + CLI parsing, image / text entry points end to end on tiny slices) and the benchmark's bookkeeping."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from hf_semscale.select.methods import (  # noqa: E402
    BASELINES,
    COUNT_TUNED_METHODS,
    DSB_METHODS,
    METHODS,
    MIXED_METHODS,
    POSTHOC_METHODS,
    SCALE_METHODS,
    method_overrides,
)
from recipes.common import RESULTS_FILENAME, RunArguments, lr_lambda_for, parse_yaml_then_cli  # noqa: E402

CONFIGS = REPO_ROOT / "recipes" / "configs"


def image_parser():
    from recipes.train_image import make_parser

    return make_parser()


def text_parser():
    from recipes.train_text import make_parser

    return make_parser()


# --------------------------------------------------------------------------- parsing


def test_yaml_then_cli_overrides(tmp_path):
    data, model, run, args = parse_yaml_then_cli(
        image_parser(),
        [str(CONFIGS / "cifar10_lt.yaml"), "--semscale_gamma", "2", "--depth", "8", "--output_dir", str(tmp_path)],
    )
    assert args.semscale_gamma == 2.0  # CLI wins
    assert model.depth == 8
    assert data.imbalance_factor == 100  # from the YAML
    assert run.lr_milestones == [160, 180]
    assert args.weight_decay == pytest.approx(2e-4)
    assert args.semscale_weighting == "dsb"  # method: dsb_ce in the YAML
    assert args.output_dir == str(tmp_path)


def test_yaml_alone_matches_parse_yaml_file():
    path = str(CONFIGS / "cifar10_lt.yaml")
    from_file = image_parser().parse_yaml_file(path)
    from_cli = parse_yaml_then_cli(image_parser(), [path])
    for a, b in zip(from_file, from_cli):
        if hasattr(a, "semscale_settings"):
            assert a.semscale_settings() == b.semscale_settings()
            assert (a.learning_rate, a.num_train_epochs, a.per_device_train_batch_size) == (
                b.learning_rate,
                b.num_train_epochs,
                b.per_device_train_batch_size,
            )
        else:
            assert a == b


def test_method_sits_between_yaml_and_cli():
    path = str(CONFIGS / "cifar10_lt.yaml")
    *_, args = parse_yaml_then_cli(image_parser(), [path, "--method", "cb_ce"])
    assert (args.semscale_weighting, args.semscale_cb_beta, args.semscale_warmup_ratio) == (
        "effective_number",
        0.9999,
        0.8,
    )
    *_, args = parse_yaml_then_cli(image_parser(), [path, "--method", "cb_ce", "--semscale_warmup_ratio", "0.6"])
    assert args.semscale_warmup_ratio == 0.6
    *_, args = parse_yaml_then_cli(image_parser(), [path, "--method", "ldam_drw"])
    assert (args.semscale_loss, args.semscale_ldam_scale) == ("ldam", 30.0)


def test_unknown_yaml_key_and_unknown_method_raise(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data_dir: x\nnot_a_field: 3\n")
    with pytest.raises(ValueError, match="not_a_field"):
        parse_yaml_then_cli(image_parser(), [str(bad)])
    with pytest.raises(ValueError, match="unknown method"):
        parse_yaml_then_cli(image_parser(), [str(CONFIGS / "cifar10_lt.yaml"), "--method", "nope"])


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_parses(config):
    parser = text_parser() if config.startswith(("banking", "clinc", "text")) else image_parser()
    outputs = parser.parse_yaml_file(str(CONFIGS / config))
    assert outputs[0].data_dir or outputs[0].dataset_name


def test_method_table_is_valid_and_honest(tmp_path):
    from hf_semscale.trainer.config import SemScaleConfig

    for name in METHODS:
        config = SemScaleConfig(output_dir=str(tmp_path), **method_overrides(name))
        if name in DSB_METHODS:
            assert config.semscale_weighting == "dsb"  # weights from semantic scales alone
        elif name in MIXED_METHODS:
            assert config.semscale_weighting == "dsb_effective_number"  # a mix: named apart from dsb_*
        else:
            assert "dsb" not in config.semscale_weighting
            if name in SCALE_METHODS:  # scale-derived but not the paper's weights: named apart from dsb_*
                assert not name.startswith("dsb_") and config.semscale_weighting in (
                    "reverse_scale",
                    "scale_equivalent_count",
                )
            if name.endswith("_tuned"):  # count-based, start of re-weighting left to the benchmark's grid
                assert name in COUNT_TUNED_METHODS and "semscale_warmup_ratio" not in METHODS[name]
    for name, source in POSTHOC_METHODS.items():  # post-hoc: trains exactly as the method it reuses
        assert METHODS[name] == METHODS[source]
    assert set(BASELINES) | set(SCALE_METHODS) | set(COUNT_TUNED_METHODS) | set(POSTHOC_METHODS) == set(METHODS)
    assert {"ce", "cb_ce", "focal", "ldam_drw", "balanced_softmax"} <= set(BASELINES)


def test_lr_schedule_warmup_step_and_cosine():
    run = RunArguments(lr_schedule="step", warmup_epochs=5, lr_milestones=[160, 180], lr_decay=0.01)
    fn = lr_lambda_for(run, spe=10, total_steps=2000)
    assert fn(0) == pytest.approx(0.02) and fn(49) == pytest.approx(1.0)
    assert fn(1599) == 1.0 and fn(1600) == pytest.approx(0.01) and fn(1800) == pytest.approx(1e-4)
    cos = lr_lambda_for(RunArguments(lr_schedule="cosine"), spe=10, total_steps=100)
    assert cos(0) == pytest.approx(1.0) and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------- image recipe


@pytest.fixture(scope="module")
def cifar100_standin(tmp_path_factory):
    """A CIFAR-100-shaped Hub-style dataset (``img`` PIL column, ``fine_label`` of 100 classes) saved with save_to_disk."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    names = [f"class_{i}" for i in range(100)]

    def split(per_class):
        labels = np.repeat(np.arange(100), per_class)
        images = [
            Image.fromarray((rng.integers(0, 256, (32, 32, 3)) // (1 + label % 4)).astype(np.uint8)) for label in labels
        ]
        features = datasets.Features(
            {
                "img": datasets.Image(),
                "fine_label": datasets.ClassLabel(names=names),
                "coarse_label": datasets.ClassLabel(num_classes=20),
            }
        )
        return datasets.Dataset.from_dict(
            {"img": images, "fine_label": labels.tolist(), "coarse_label": (labels // 5).tolist()}, features=features
        )

    path = tmp_path_factory.mktemp("cifar100_standin") / "ds"
    datasets.DatasetDict({"train": split(4), "test": split(1)}).save_to_disk(str(path))
    return path


TINY_IMAGE = [
    "--depth",
    "8",
    "--widths",
    "4",
    "8",
    "16",
    "--num_train_epochs",
    "1",
    "--per_device_train_batch_size",
    "64",
    "--per_device_eval_batch_size",
    "256",
    "--num_threads",
    "1",
    "--lr_schedule",
    "cosine",
    "--warmup_epochs",
    "0",
]


def test_image_recipe_cifar100_code_path(cifar100_standin, tmp_path):
    from recipes.train_image import main

    record = main(
        [
            str(CONFIGS / "cifar100_lt.yaml"),
            "--data_dir",
            str(cifar100_standin),
            "--imbalance_factor",
            "3",
            "--validation_per_class",
            "1",
            "--method",
            "dsb_ce",
            "--semscale_warmup_ratio",
            "0",
            "--semscale_fill_max_steps",
            "1",
            "--semscale_update_interval",
            "1",
            "--output_dir",
            str(tmp_path),
            *TINY_IMAGE,
        ]
    )
    counts = record["train_class_counts"]
    assert len(counts) == 100 and counts[0] == 3 and counts[-1] == 1  # long-tailed after carving 1/class
    assert record["validation"]["num_samples"] == 100 and record["test"]["num_samples"] == 100
    for key in ("accuracy", "balanced_accuracy", "few_shot_accuracy"):
        assert 0.0 <= record["test"][key] <= 1.0
    assert record["final_stage"] == "reweight" and max(record["final_semantic_scales"]) > 0
    saved = json.loads((tmp_path / RESULTS_FILENAME).read_text())
    assert saved["method"] == "dsb_ce" and saved["semscale"]["semscale_weighting"] == "dsb"
    assert (tmp_path / "semantic_scales.json").is_file()


@pytest.mark.data
def test_image_recipe_breastmnist_grayscale_ldam(shared_data_dir, tmp_path):
    from recipes.train_image import main

    record = main(
        [
            str(CONFIGS / "breastmnist.yaml"),
            "--data_dir",
            str(shared_data_dir / "breastmnist"),
            "--method",
            "ldam_drw",
            "--max_train_samples_per_class",
            "24",
            "--max_eval_samples_per_class",
            "6",
            "--output_dir",
            str(tmp_path),
            "--save_final_model",
            "false",
            *TINY_IMAGE,
        ]
    )
    assert len(record["channel_mean"]) == 1  # 28x28 grayscale kept as one channel
    assert len(record["train_class_counts"]) == 2 and record["test"]["num_samples"] == 12
    assert record["semscale"]["semscale_loss"] == "ldam"


def test_timm_init_is_restored():
    timm = pytest.importorskip("timm")
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    from recipes.train_image import ImageModelArguments, build_model

    class Args:
        semscale_loss, semscale_ldam_scale = "ce", 1.0

    def last_bn_weights(model):
        return [
            block.bn2.weight.detach() for layer in ("layer1", "layer2") for block in getattr(model.timm_model, layer)
        ]

    plain = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="resnet10t", num_labels=5))
    assert any(float(w.abs().sum()) > 0 for w in last_bn_weights(plain))  # post_init undid timm's zero-init
    restored = build_model(
        ImageModelArguments(model_type="timm", timm_architecture="resnet10t"), Args, 5, 3, [str(i) for i in range(5)]
    )
    assert all(float(w.abs().sum()) == 0 for w in last_bn_weights(restored))  # timm's zero_init_last is back
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    assert restored.timm_model.fc.weight.shape == reference.fc.weight.shape


def test_image_recipe_timm_backbone_runs(cifar100_standin, tmp_path):
    from recipes.train_image import main

    record = main(
        [
            str(CONFIGS / "cifar100_lt.yaml"),
            "--data_dir",
            str(cifar100_standin),
            "--imbalance_factor",
            "1",
            "--validation_per_class",
            "0",
            "--max_train_samples_per_class",
            "1",
            "--method",
            "ce",
            "--model_type",
            "timm",
            "--timm_architecture",
            "resnet10t",
            "--output_dir",
            str(tmp_path),
            "--save_final_model",
            "false",
            *TINY_IMAGE,
        ]
    )
    assert record["model"] == "timm" and "validation" not in record and record["test"]["num_samples"] == 100


# --------------------------------------------------------------------------- text recipe


@pytest.mark.data
def test_text_recipe_frozen_cached_banking77(shared_data_dir, minilm_path, tmp_path):
    from recipes.train_text import main

    common = [
        str(CONFIGS / "banking77_frozen.yaml"),
        "--data_dir",
        str(shared_data_dir / "banking77"),
        "--max_train_samples_per_class",
        "3",
        "--validation_per_class",
        "1",
        "--max_eval_samples_per_class",
        "1",
        "--num_train_epochs",
        "2",
        "--embedding_cache_dir",
        str(tmp_path / "cache"),
        "--num_threads",
        "1",
        "--save_final_model",
        "false",
    ]
    first = main([*common, "--method", "cb_ce", "--output_dir", str(tmp_path / "a")])
    assert len(first["train_class_counts"]) == 77 and first["test"]["num_samples"] == 77
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3  # train, validation, test embedded once
    second = main([*common, "--method", "dsb_ce", "--output_dir", str(tmp_path / "b")])
    assert second["semscale"]["semscale_weighting"] == "dsb"
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3  # reused, not recomputed


@pytest.mark.data
def test_text_recipe_frozen_encoder_keeps_body(shared_data_dir, minilm_path, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    from recipes.train_text import main

    main(
        [
            str(CONFIGS / "banking77.yaml"),
            "--data_dir",
            str(shared_data_dir / "banking77"),
            "--encoder_mode",
            "frozen",
            "--max_train_samples_per_class",
            "1",
            "--validation_per_class",
            "0",
            "--max_eval_samples_per_class",
            "1",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--learning_rate",
            "0.01",
            "--method",
            "ce",
            "--output_dir",
            str(tmp_path),
            "--num_threads",
            "1",
        ]
    )
    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    original = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=77)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(dict(trained.named_parameters())[name], dict(original.named_parameters())[name])
    assert trained.config.num_labels == 77


# --------------------------------------------------------------------------- benchmark bookkeeping


def _fake_result(path: Path, method: str, seed: int, bal: float, val: float | None = None, gamma: float = 1.0):
    path.mkdir(parents=True, exist_ok=True)
    metrics = {
        "accuracy": bal,
        "balanced_accuracy": bal,
        "many_shot_accuracy": bal + 0.1,
        "medium_shot_accuracy": bal,
        "few_shot_accuracy": bal - 0.1,
        "per_class_accuracy": [bal] * 3,
    }
    record = {
        "method": method,
        "seed": seed,
        "test": metrics,
        "validation": {**metrics, "balanced_accuracy": val if val is not None else bal},
        "wall_time_s": 10.0,
        "semscale": {"semscale_gamma": gamma, "semscale_warmup_ratio": 0.3},
        "final_class_weights": [1, 1, 1],
        "final_semantic_scales": [1, 2, 3],
        "train_class_counts": [100, 10, 1],
    }
    (path / RESULTS_FILENAME).write_text(json.dumps(record))


def test_benchmark_report_records_and_targets(tmp_path):
    from benchmarks import long_tail as lt
    from benchmarks import tiers

    setting = lt.tier_settings("tiny")[0]
    for point, val in zip(tiers.grid_points(setting["grid"]), (0.4, 0.6)):
        _fake_result(
            lt.run_dir(tmp_path, "tiny", setting, "dsb_ce", 0, "_tune" + lt.grid_tag(point)),
            "dsb_ce",
            0,
            0.0,
            val,
            gamma=point["semscale_gamma"],
        )
    knobs, rows = lt.choose_knobs(tmp_path, "tiny", setting, "dsb_ce")
    assert knobs == {"semscale_gamma": 2.0, "semscale_warmup_ratio": 0.3} and len(rows) == 2
    for seed, (ce, dsb) in enumerate([(0.50, 0.51), (0.52, 0.50), (0.48, 0.52)]):
        _fake_result(lt.run_dir(tmp_path, "tiny", setting, "ce", seed), "ce", seed, ce)
        _fake_result(lt.run_dir(tmp_path, "tiny", setting, "dsb_ce", seed), "dsb_ce", seed, dsb, gamma=1.0)
    # the finished dsb_ce runs used gamma 1, not the chosen gamma 2: stale, so not reported and queued again
    records, _ = lt.collect(tmp_path, "tiny", [0, 1, 2])
    assert {r["method"]: r for r in records}["dsb_ce"]["status"] == "not yet run"
    job = lt.setting_jobs(tmp_path, "tiny", setting, [], [0], lt.chosen_knobs(tmp_path, "tiny", setting), ["dsb_ce"])[0]
    assert dict(job.knobs) == knobs and "--semscale_gamma" in job.argv
    assert not lt.knobs_match(json.loads((Path(job.folder) / RESULTS_FILENAME).read_text()), dict(job.knobs))
    assert job.record() is None  # the run queue runs it again
    for seed, dsb in enumerate([0.51, 0.50, 0.52]):
        _fake_result(lt.run_dir(tmp_path, "tiny", setting, "dsb_ce", seed), "dsb_ce", seed, dsb, gamma=2.0)
    records, tuning = lt.collect(tmp_path, "tiny", [0, 1, 2])
    by = {r["method"]: r for r in records}
    assert by["ce"]["balanced_accuracy_mean"] == pytest.approx(0.50)
    assert by["ce"]["balanced_accuracy_std"] == pytest.approx(0.02)
    assert by["dsb_ce"]["seeds"] == [0, 1, 2] and by["dsb_ce"]["status"] == "done"
    for key in (
        "method",
        "dataset",
        "imbalance_factor",
        "schedule",
        "seeds",
        "accuracy_mean",
        "few_shot_accuracy_std",
        "wall_time_s_mean",
    ):
        assert key in by["ce"]
    by["ce"]["dataset"] = by["dsb_ce"]["dataset"] = "CIFAR-10-LT"
    checks = lt.target_checks(list(by.values()))
    assert any("dsb_ce vs ce" in c and "MISSED" in c for c in checks)  # +1 point < the 2-point seed std
    gpu = lt.collect(tmp_path, "gpu", [0, 1, 2])
    assert all(r["status"] == "not yet run" and r["balanced_accuracy_mean"] is None for r in gpu[0])
    lt.write_report(tmp_path / "out", {"tiny": (records, tuning), "gpu": gpu}, [])
    saved = json.loads((tmp_path / "out" / "long_tail.json").read_text())
    assert {r["method"] for r in saved} >= {"ce", "dsb_ce", "ldam_drw"}
    text = (tmp_path / "out" / "long_tail.md").read_text()
    assert "not yet run" in text and "| dsb_ce | 0.3 | 40.00 | **60.00** |" in text  # the chosen grid cell in bold


def test_benchmark_prepares_long_tailed_split_once(cifar100_standin, tmp_path):
    import datasets

    from benchmarks import tiers

    setting = {"name": "s", "prepare": {"imbalance_factor": 3, "validation_per_class": 1, "n_max": None}}
    # the stand-in's columns are img / fine_label: give the loader a renamed copy
    dd = datasets.load_from_disk(str(cifar100_standin))
    renamed = datasets.DatasetDict(
        {k: v.rename_columns({"img": "image", "fine_label": "label"}) for k, v in dd.items()}
    )
    source = tmp_path / "src"
    renamed.save_to_disk(str(source))
    folder = tiers.prepare_image_data(setting, tmp_path, tmp_path / "cache", str(source))
    loaded = datasets.load_from_disk(str(folder))
    counts = np.bincount(loaded["train"]["label"], minlength=100)
    assert counts[0] == 3 and counts[-1] == 1 and math.isclose(counts[0] / counts[-1], 3)
    assert np.bincount(loaded["validation"]["label"], minlength=100).tolist() == [1] * 100
    assert len(loaded["test"]) == 100
    assert tiers.prepare_image_data(setting, tmp_path, tmp_path / "cache", "/nonexistent") == folder  # cached


def test_benchmark_refuses_unknown_methods_before_running(tmp_path):
    from benchmarks import long_tail as lt

    with pytest.raises(ValueError, match=r"unknown methods \['dsb_nope'\]"):
        lt.run_tier("tiny", tmp_path, tmp_path, [0], 1, None, None, ["ce", "dsb_nope"])
    assert not any(tmp_path.iterdir())  # nothing prepared, nothing run


def test_benchmark_gpu_report_keeps_the_cpu_tables(tmp_path):
    """A seed-0 GPU-tier slice rebuilds the report without dropping the CPU tier's three seeds."""
    from benchmarks import long_tail as lt

    cpu = next(s for s in lt.tier_settings("cpu") if s["dataset"] == "CIFAR-10-LT")
    gpu = lt.tier_settings("gpu")[0]
    for seed, bal in enumerate([0.30, 0.32, 0.34]):
        _fake_result(lt.run_dir(tmp_path, "cpu", cpu, "ce", seed), "ce", seed, bal)
    _fake_result(lt.run_dir(tmp_path, "gpu", gpu, "ce", 0), "ce", 0, 0.70)
    out = tmp_path / "out"
    lt.main(["--tier", "gpu", "--seeds", "0", "--report-only", "--work-dir", str(tmp_path), "--out-dir", str(out)])
    records = json.loads((out / "long_tail.json").read_text())
    by = {(r["tier"], r["dataset"], r["method"]): r for r in records}
    assert by[("cpu", "CIFAR-10-LT", "ce")]["seeds"] == [0, 1, 2]
    assert by[("cpu", "CIFAR-10-LT", "ce")]["balanced_accuracy_mean"] == pytest.approx(0.32)
    assert by[("gpu", "CIFAR-10-LT", "ce")]["seeds"] == [0] and by[("gpu", "CIFAR-10-LT", "ce")]["status"] == "done"
    assert by[("gpu", "CIFAR-10-LT", "dsb_ce")]["status"] == "not yet run"
    text = (out / "long_tail.md").read_text()
    assert "## CPU tier — CIFAR-10-LT IF=100" in text and "## GPU tier — CIFAR-10-LT IF=100" in text


def test_benchmark_starts_the_mix_weights_where_cb_ce_starts_its_own(tmp_path):
    from benchmarks import long_tail as lt
    from benchmarks import tiers
    from hf_semscale.select.methods import DRW_DEFERRAL

    setting = next(s for s in lt.tier_settings("cpu") if s["dataset"] == "CIFAR-10-LT")
    assert "mix_dsb_cb_ce" in lt.tuned_methods(setting) and "cb_ce" not in lt.tuned_methods(setting)
    jobs = lt.tuning_jobs(tmp_path, "cpu", setting, [], "mix_dsb_cb_ce")
    # warm-up ends one epoch (the pool's fill stage) before the DRW point, so re-weighting starts at the same step
    warmup = DRW_DEFERRAL - 1 / tiers.CPU_EPOCHS
    assert [dict(job.knobs) for job in jobs] == [
        {"semscale_gamma": g, "semscale_warmup_ratio": pytest.approx(warmup, abs=1e-4)}
        for g in setting["grid"]["semscale_gamma"]
    ]
    args = parse_yaml_then_cli(image_parser(), [str(CONFIGS / "cifar10_lt.yaml"), *jobs[0].argv[1:]])[-1]
    assert args.semscale_weighting == "dsb_effective_number" and args.semscale_warmup_ratio == pytest.approx(
        warmup, abs=1e-4
    )
    # a setting without its own grid for a method keeps the knobs the method fixes (the mix's DRW deferral)
    plain = {**setting, "method_grids": {}}
    assert all(
        "--semscale_warmup_ratio" not in job.argv for job in lt.tuning_jobs(tmp_path, "cpu", plain, [], "mix_dsb_cb_ce")
    )


def test_benchmark_keeps_every_invocation_of_a_tier(tmp_path):
    from benchmarks import long_tail as lt

    path = tmp_path / "cpu" / "run_info.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"wall_time_s": 60.0, "workers": 2, "seeds": [0, 1, 2]}))  # the older one-record file
    lt.append_run_info(path, {"wall_time_s": 6.0, "workers": 2, "seeds": [0, 1, 2], "methods": ["mix_dsb_cb_ce"]})
    assert [r["wall_time_s"] for r in lt.read_run_info(path)] == [60.0, 6.0]
    lt.main(["--tier", "cpu", "--report-only", "--work-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")])
    text = (tmp_path / "out" / "long_tail.md").read_text()
    assert (
        "- `--tier cpu` (all methods) took 1.0 min wall" in text
        and "`--methods mix_dsb_cb_ce` took 0.1 min wall" in text
    )


@pytest.mark.data
def test_text_recipe_finetune_top_on_clinc150_drops_the_absent_oos_class(
    shared_data_dir, minilm_path, tmp_path, caplog
):
    from recipes.train_text import main

    with caplog.at_level("WARNING", logger="recipes"):
        record = main(
            [
                str(CONFIGS / "clinc150_lt_finetune.yaml"),
                "--data_dir",
                str(shared_data_dir / "clinc150"),
                "--imbalance_factor",
                "2",
                "--max_train_samples_per_class",
                "2",
                "--max_eval_samples_per_class",
                "1",
                "--num_train_epochs",
                "1",
                "--embedding_cache_dir",
                str(tmp_path / "cache"),
                "--method",
                "dsb_ce",
                "--semscale_warmup_ratio",
                "0",
                "--output_dir",
                str(tmp_path / "run"),
                "--save_final_model",
                "false",
                "--num_threads",
                "1",
            ]
        )
    assert "classes ['oos'] have no row in the training split" in caplog.text  # labels.json has 151 names, train 150
    assert record["dropped_classes"] == ["oos"] and len(record["train_class_counts"]) == 150
    assert record["train_class_counts"][0] == 2 and record["train_class_counts"][-1] == 1  # IF 2 over the 150 present
    assert record["test"]["num_samples"] == record["validation"]["num_samples"] == 150
    assert record["feature_dim"] == 384 and record["train"]["num_samples"] == sum(record["train_class_counts"])
    assert len(list((tmp_path / "cache").glob("lower5_*.npz"))) == 3  # lower layers run once per split


@pytest.mark.data
def test_encoder_top_on_cached_lower_states_equals_the_full_encoder(minilm_path):
    """The top layer on the cached, padded lower-layer states gives the full encoder's token states: the cache,
    the padding mask and the copied weights are right."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.masking_utils import create_bidirectional_mask

    from recipes.encoder_top import build_top_model, collate_states, lower_layer_states

    texts = ["what is my balance", "please transfer fifty dollars to my savings account tomorrow morning", "hi"]
    states = lower_layer_states(minilm_path, texts, max_length=32, lower=5)
    model = build_top_model(minilm_path, 1, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}).eval()
    batch = collate_states([{"hidden_states": s, "labels": 0} for s in states])  # padded to the longest
    full, tokenizer = AutoModel.from_pretrained(minilm_path).eval(), AutoTokenizer.from_pretrained(minilm_path)
    with torch.no_grad():
        mask = create_bidirectional_mask(
            config=model.config, inputs_embeds=batch["hidden_states"], attention_mask=batch["attention_mask"]
        )
        top = model.layers[0](batch["hidden_states"], attention_mask=mask)
        for i, text in enumerate(texts):  # one text at a time: no padding in the reference
            reference = full(**tokenizer([text], return_tensors="pt")).last_hidden_state[0]
            torch.testing.assert_close(top[i, : reference.shape[0]], reference, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- the regime study


def test_study_grid_starts_count_and_scale_weights_at_the_same_step():
    from benchmarks import long_tail as lt
    from benchmarks import tiers

    setting = next(s for s in lt.tier_settings("text") if s["name"] == "clinc150_lt_if50_frozen")
    epoch = 1.0 / tiers.FROZEN_EPOCHS

    def starts(method, fill):
        return sorted({round(p["semscale_warmup_ratio"] + fill, 4) for p in lt.method_grid(setting, method)})

    assert starts("cb_ce_tuned", 0.0) == starts("if_ce_tuned", 0.0) == starts("pow_ce_tuned", 0.0) == tiers.STUDY_STARTS
    assert (
        starts("dsb_ce", epoch)
        == starts("mix_dsb_cb_ce", epoch)
        == starts("scalecount_cb_ce", epoch)
        == tiers.STUDY_STARTS
    )
    dsb = lt.method_grid(setting, "dsb_ce")
    assert {p.get("semscale_alpha") for p in dsb} == {None, 1.0}  # our constants and the authors' (alpha 1, no L2 norm)
    assert all(p["semscale_normalize_features"] is (p.get("semscale_alpha") is None) for p in dsb)
    assert {p["semscale_count_power"] for p in lt.method_grid(setting, "pow_ce_tuned")} == set(tiers.STUDY_POWERS)
    assert all(
        "semscale_gamma" not in p for p in lt.method_grid(setting, "scalecount_cb_ce")
    )  # no gamma in a count weight
    assert "cb_ce" not in lt.tuned_methods(setting)  # the literature's DRW at 80 % stays as published
    cli = tiers.grid_cli({"semscale_alpha": 1.0, "semscale_normalize_features": False})
    args = parse_yaml_then_cli(text_parser(), [str(CONFIGS / "clinc150_frozen.yaml"), *cli])[-1]
    assert args.semscale_alpha == 1.0 and args.semscale_normalize_features is False


def _fake_study_run(
    path: Path,
    method: str,
    seed: int,
    bal: float,
    counts: list[int],
    scales: list[float],
    weights: list[float],
    accuracy: list[float],
    knobs: dict | None = None,
) -> None:
    path.mkdir(parents=True, exist_ok=True)
    metrics = {
        "accuracy": bal,
        "balanced_accuracy": bal,
        "many_shot_accuracy": None,
        "medium_shot_accuracy": bal,
        "few_shot_accuracy": bal,
        "per_class_accuracy": accuracy,
    }
    record = {
        "method": method,
        "seed": seed,
        "test": metrics,
        "validation": metrics,
        "train": {**metrics, "accuracy": 0.99},
        "wall_time_s": 1.0,
        "semscale": {"semscale_gamma": 1.0, "semscale_warmup_ratio": 0.3, "semscale_pool_capacity": 0, **(knobs or {})},
        "final_class_weights": weights,
        "final_semantic_scales": scales,
        "train_class_counts": counts,
        "feature_dim": 4,
    }
    (path / RESULTS_FILENAME).write_text(json.dumps(record))
    (path / "semscale_history.jsonl").write_text(
        "".join(json.dumps({"step": s, "weights": [1.0, w]}) + "\n" for s, w in ((3, 2.0), (5, 6.0)))
    )


def test_study_report_targets_and_regime_analysis(tmp_path):
    from benchmarks import long_tail as lt
    from benchmarks.study_report import write_study_report

    setting = next(s for s in lt.tier_settings("text") if s["name"] == "banking77_lt_finetune")
    counts, scales = [100, 20, 8, 2], [20.0, 12.0, 6.0, 1.0]
    bal = {
        "ce": [0.60, 0.61, 0.62],
        "balanced_softmax": [0.70, 0.71, 0.72],
        "cb_ce_tuned": [0.69, 0.70, 0.71],
        "dsb_ce": [0.66, 0.67, 0.68],
        "dsb_balanced_softmax": [0.74, 0.75, 0.76],
    }
    for method, values in bal.items():
        knobs = lt.choose_knobs(tmp_path, "text", setting, method)[0] if method in lt.tuned_methods(setting) else None
        for seed, value in enumerate(values):
            _fake_study_run(
                lt.run_dir(tmp_path, "text", setting, method, seed),
                method,
                seed,
                value,
                counts,
                scales,
                [0.5, 1.0, 2.0, 4.0],
                [0.9, 0.8, 0.5, 0.1],
                knobs,
            )
    payload = write_study_report(
        tmp_path / "out", "text", lt.collect(tmp_path, "text", [0, 1, 2]), [], tmp_path, [0, 1, 2]
    )
    checks = payload["targets"]
    assert checks["dsb_ce_beats_ce_finetune"]["status"] == "not measured"  # CLINC150-LT's fine-tuned runs are missing
    assert any(
        "banking77_lt_finetune: dsb_ce 67.00 ± 1.00 vs ce 61.00 ± 1.00: +6.00 points" in line
        for line in checks["dsb_ce_beats_ce_finetune"]["lines"]
    )
    assert checks["scale_vs_best_tuned_count"]["status"] == "met"  # dsb_balanced_softmax 75 vs cb_ce_tuned 70
    assert checks["dsb_on_strongest_base"]["status"] == "met"  # 75 vs balanced softmax 71
    regime = payload["regimes"]["banking77_lt_finetune"]
    assert regime["fraction_m_below_d"] == pytest.approx(0.25)  # d = 4: only the 2-sample class has m < d
    assert regime["spearman_scale_count_mean"] == pytest.approx(1.0)
    assert regime["weight_ratio_max_mean"] == pytest.approx(6.0) and regime["weight_ratio_final_mean"] == pytest.approx(
        8.0
    )
    assert regime["spearman_accuracy_count_mean"] == pytest.approx(1.0)
    text = (tmp_path / "out" / "long_tail_text.md").read_text()
    assert "## banking77_lt_finetune" in text and "| dsb_balanced_softmax | 3 | 75.00 ± 1.00 |" in text
    assert (tmp_path / "out" / "regimes_scale_vs_count.png").is_file()


def _crop_outcome(out, image, mean, std, p):
    """(top, left, flipped) of an augmented ``out [C, H, W]`` of ``image [H, W, C]`` uint8."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    padded = F.pad(x, (p, p, p, p))
    raw = out * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    h, w = image.shape[:2]
    for top in range(2 * p + 1):
        for left in range(2 * p + 1):
            crop = padded[:, top : top + h, left : left + w]
            for flipped, candidate in ((False, crop), (True, crop.flip(-1))):
                if torch.allclose(raw, candidate, atol=1e-5):
                    return top, left, flipped
    raise AssertionError("not a crop of the padded image")


def test_batched_augmentation_has_the_per_item_distribution():
    """The batched collator draws the same crops and flips as the per-image transform: every one of the
    (2p+1)^2 x 2 outcomes, uniformly (chi-square on 3,000 draws each); without training both are identical."""
    import torch
    from scipy import stats

    from recipes.train_image import BatchImageCollator, ImageTransform, UInt8Images

    p, h, w = 2, 5, 5
    image = (np.arange(h * w * 3).reshape(h, w, 3) + 10).astype(np.uint8)  # distinct pixels, none 0 (the padding)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    draws = 3000
    per_item = ImageTransform(mean, std, image.shape, train=True, crop_padding=p)
    torch.manual_seed(0)
    old = per_item({"image": [image.tobytes()] * draws, "label": [0] * draws})["pixel_values"]
    dataset = UInt8Images(np.repeat(image[None], draws, axis=0), [0] * draws, augment=True)
    collate = BatchImageCollator(mean, std, crop_padding=p)
    torch.manual_seed(0)
    new = collate([dataset[i] for i in range(draws)])["pixel_values"]
    assert new.shape == old.shape == (draws, 3, h, w) and new.dtype == old.dtype == torch.float32
    cells = [(t, left, f) for t in range(2 * p + 1) for left in range(2 * p + 1) for f in (False, True)]
    counts = {}
    for name, batch in (("per_item", old), ("batched", new)):
        outcomes = [_crop_outcome(batch[i], image, mean, std, p) for i in range(draws)]
        counts[name] = [outcomes.count(c) for c in cells]
        assert min(counts[name]) > 0  # every crop and flip is reachable
        assert stats.chisquare(counts[name]).pvalue > 1e-3, name  # uniform
    assert stats.chi2_contingency([counts["per_item"], counts["batched"]]).pvalue > 1e-3  # the same distribution
    plain = ImageTransform(mean, std, image.shape, train=False)({"image": [image.tobytes()], "label": [0]})
    evaluated = collate([dataset.view(augment=False)[0]])
    torch.testing.assert_close(evaluated["pixel_values"], plain["pixel_values"], rtol=0, atol=1e-6)


def test_image_recipe_with_images_on_the_training_device(cifar100_standin, tmp_path):
    """--images_on_device (the GPU tier's setting; the CPU here): it needs in-process, unpinned loading, and runs."""
    from recipes.train_image import main

    common = [str(CONFIGS / "cifar100_lt.yaml"), "--data_dir", str(cifar100_standin), "--imbalance_factor", "3",
              "--validation_per_class", "1", "--method", "ce", "--output_dir", str(tmp_path), *TINY_IMAGE,
              "--images_on_device", "true"]  # fmt: skip
    with pytest.raises(ValueError, match="--dataloader_num_workers 0 --dataloader_pin_memory false"):
        main([*common, "--dataloader_pin_memory", "true"])
    record = main([*common, "--dataloader_num_workers", "0", "--dataloader_pin_memory", "false"])
    assert record["test"]["num_samples"] == 100 and 0.0 <= record["test"]["balanced_accuracy"] <= 1.0


def test_gpu_tier_keeps_data_on_the_device():
    from benchmarks import long_tail as lt

    overrides = lt.tier_settings("gpu")[0]["overrides"]
    flags = {flag: overrides[i + 1] for i, flag in enumerate(overrides) if flag.startswith("--")}
    assert flags["--augmentation"] == "batched" and flags["--images_on_device"] == "true"
    assert flags["--dataloader_num_workers"] == "0" and flags["--dataloader_pin_memory"] == "false"
    with pytest.raises(SystemExit):
        lt.main(["--tier", "text", "--dry-run"])  # only the CIFAR-10-LT tiers are estimated
