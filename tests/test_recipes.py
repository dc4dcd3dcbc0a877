"""The recipes (YAML + CLI parsing, image / text entry points end to end on tiny slices) and the benchmark's bookkeeping."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from recipes.common import RESULTS_FILENAME, lr_lambda_for, parse_yaml_then_cli, RunArguments  # noqa: E402
from recipes.methods import BASELINES, DSB_METHODS, METHODS, MIXED_METHODS, method_overrides  # noqa: E402

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
        image_parser(), [str(CONFIGS / "cifar10_lt.yaml"), "--semscale_gamma", "2", "--depth", "8", "--output_dir", str(tmp_path)]
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
            assert (a.learning_rate, a.num_train_epochs, a.per_device_train_batch_size) == (b.learning_rate, b.num_train_epochs, b.per_device_train_batch_size)
        else:
            assert a == b


def test_method_sits_between_yaml_and_cli():
    path = str(CONFIGS / "cifar10_lt.yaml")
    *_, args = parse_yaml_then_cli(image_parser(), [path, "--method", "cb_ce"])
    assert (args.semscale_weighting, args.semscale_cb_beta, args.semscale_warmup_ratio) == ("effective_number", 0.9999, 0.8)
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
    parser = text_parser() if config.startswith(("banking", "text")) else image_parser()
    outputs = parser.parse_yaml_file(str(CONFIGS / config))
    assert outputs[0].data_dir or outputs[0].dataset_name


def test_method_table_is_valid_and_honest(tmp_path):
    from hf_semscale.config import SemScaleConfig

    for name in METHODS:
        config = SemScaleConfig(output_dir=str(tmp_path), **method_overrides(name))
        if name in DSB_METHODS:
            assert config.semscale_weighting == "dsb"  # weights from semantic scales alone
        elif name in MIXED_METHODS:
            assert config.semscale_weighting == "dsb_effective_number"  # a mix: named apart from dsb_*
        else:
            assert "dsb" not in config.semscale_weighting
    assert set(BASELINES) | set(DSB_METHODS) | set(MIXED_METHODS) == set(METHODS)
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
        images = [Image.fromarray((rng.integers(0, 256, (32, 32, 3)) // (1 + label % 4)).astype(np.uint8)) for label in labels]
        features = datasets.Features(
            {"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=names), "coarse_label": datasets.ClassLabel(num_classes=20)}
        )
        return datasets.Dataset.from_dict(
            {"img": images, "fine_label": labels.tolist(), "coarse_label": (labels // 5).tolist()}, features=features
        )

    path = tmp_path_factory.mktemp("cifar100_standin") / "ds"
    datasets.DatasetDict({"train": split(4), "test": split(1)}).save_to_disk(str(path))
    return path


TINY_IMAGE = ["--depth", "8", "--widths", "4", "8", "16", "--num_train_epochs", "1", "--per_device_train_batch_size", "64",
              "--per_device_eval_batch_size", "256", "--num_threads", "1", "--lr_schedule", "cosine", "--warmup_epochs", "0"]


def test_image_recipe_cifar100_code_path(cifar100_standin, tmp_path):
    from recipes.train_image import main

    record = main([
        str(CONFIGS / "cifar100_lt.yaml"), "--data_dir", str(cifar100_standin), "--imbalance_factor", "3",
        "--validation_per_class", "1", "--method", "dsb_ce", "--semscale_warmup_ratio", "0", "--semscale_fill_max_steps", "1",
        "--semscale_update_interval", "1", "--output_dir", str(tmp_path), *TINY_IMAGE,
    ])
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

    record = main([
        str(CONFIGS / "breastmnist.yaml"), "--data_dir", str(shared_data_dir / "breastmnist"), "--method", "ldam_drw",
        "--max_train_samples_per_class", "24", "--max_eval_samples_per_class", "6", "--output_dir", str(tmp_path),
        "--save_final_model", "false", *TINY_IMAGE,
    ])
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
        return [block.bn2.weight.detach() for layer in ("layer1", "layer2") for block in getattr(model.timm_model, layer)]

    plain = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="resnet10t", num_labels=5))
    assert any(float(w.abs().sum()) > 0 for w in last_bn_weights(plain))  # post_init undid timm's zero-init
    restored = build_model(ImageModelArguments(model_type="timm", timm_architecture="resnet10t"), Args, 5, 3, [str(i) for i in range(5)])
    assert all(float(w.abs().sum()) == 0 for w in last_bn_weights(restored))  # timm's zero_init_last is back
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    assert restored.timm_model.fc.weight.shape == reference.fc.weight.shape


def test_image_recipe_timm_backbone_runs(cifar100_standin, tmp_path):
    from recipes.train_image import main

    record = main([
        str(CONFIGS / "cifar100_lt.yaml"), "--data_dir", str(cifar100_standin), "--imbalance_factor", "1",
        "--validation_per_class", "0", "--max_train_samples_per_class", "1", "--method", "ce", "--model_type", "timm",
        "--timm_architecture", "resnet10t", "--output_dir", str(tmp_path), "--save_final_model", "false", *TINY_IMAGE,
    ])
    assert record["model"] == "timm" and "validation" not in record and record["test"]["num_samples"] == 100


# --------------------------------------------------------------------------- text recipe


@pytest.mark.data
def test_text_recipe_frozen_cached_banking77(shared_data_dir, minilm_path, tmp_path):
    from recipes.train_text import main

    common = [
        str(CONFIGS / "banking77_frozen.yaml"), "--data_dir", str(shared_data_dir / "banking77"),
        "--max_train_samples_per_class", "3", "--validation_per_class", "1", "--max_eval_samples_per_class", "1",
        "--num_train_epochs", "2", "--embedding_cache_dir", str(tmp_path / "cache"), "--num_threads", "1", "--save_final_model", "false",
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

    main([
        str(CONFIGS / "banking77.yaml"), "--data_dir", str(shared_data_dir / "banking77"), "--encoder_mode", "frozen",
        "--max_train_samples_per_class", "1", "--validation_per_class", "0", "--max_eval_samples_per_class", "1",
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--learning_rate", "0.01", "--method", "ce",
        "--output_dir", str(tmp_path), "--num_threads", "1",
    ])
    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    original = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=77)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(dict(trained.named_parameters())[name], dict(original.named_parameters())[name])
    assert trained.config.num_labels == 77


# --------------------------------------------------------------------------- benchmark bookkeeping


def _fake_result(path: Path, method: str, seed: int, bal: float, val: float | None = None, gamma: float = 1.0):
    path.mkdir(parents=True, exist_ok=True)
    metrics = {"accuracy": bal, "balanced_accuracy": bal, "many_shot_accuracy": bal + 0.1, "medium_shot_accuracy": bal,
               "few_shot_accuracy": bal - 0.1, "per_class_accuracy": [bal] * 3}
    record = {"method": method, "seed": seed, "test": metrics, "validation": {**metrics, "balanced_accuracy": val if val is not None else bal},
              "wall_time_s": 10.0, "semscale": {"semscale_gamma": gamma, "semscale_warmup_ratio": 0.3},
              "final_class_weights": [1, 1, 1], "final_semantic_scales": [1, 2, 3], "train_class_counts": [100, 10, 1]}
    (path / RESULTS_FILENAME).write_text(json.dumps(record))


def test_benchmark_report_records_and_targets(tmp_path):
    from benchmarks import long_tail as lt

    setting = lt.tier_settings("tiny")[0]
    for point, val in zip(lt.grid_points(setting["grid"]), (0.4, 0.6)):
        _fake_result(lt.run_dir(tmp_path, "tiny", setting, "dsb_ce", 0, "_tune" + lt.grid_tag(point)), "dsb_ce", 0, 0.0, val,
                     gamma=point["semscale_gamma"])
    knobs, rows = lt.choose_knobs(tmp_path, "tiny", setting, "dsb_ce")
    assert knobs == {"semscale_gamma": 2.0, "semscale_warmup_ratio": 0.3} and len(rows) == 2
    for seed, (ce, dsb) in enumerate([(0.50, 0.51), (0.52, 0.50), (0.48, 0.52)]):
        _fake_result(lt.run_dir(tmp_path, "tiny", setting, "ce", seed), "ce", seed, ce)
        _fake_result(lt.run_dir(tmp_path, "tiny", setting, "dsb_ce", seed), "dsb_ce", seed, dsb, gamma=1.0)
    # the finished dsb_ce runs used gamma 1, not the chosen gamma 2: stale, so not reported and queued again
    records, _ = lt.collect(tmp_path, "tiny", [0, 1, 2])
    assert {r["method"]: r for r in records}["dsb_ce"]["status"] == "not yet run"
    job = lt.setting_jobs(tmp_path, "tiny", setting, [], [0], lt.chosen_knobs(tmp_path, "tiny", setting), ["dsb_ce"])[0]
    assert job["knobs"] == knobs and "--semscale_gamma" in job["argv"]
    assert not lt.knobs_match(json.loads((Path(job["out"]) / RESULTS_FILENAME).read_text()), job["knobs"])
    for seed, dsb in enumerate([0.51, 0.50, 0.52]):
        _fake_result(lt.run_dir(tmp_path, "tiny", setting, "dsb_ce", seed), "dsb_ce", seed, dsb, gamma=2.0)
    records, tuning = lt.collect(tmp_path, "tiny", [0, 1, 2])
    by = {r["method"]: r for r in records}
    assert by["ce"]["balanced_accuracy_mean"] == pytest.approx(0.50)
    assert by["ce"]["balanced_accuracy_std"] == pytest.approx(0.02)
    assert by["dsb_ce"]["seeds"] == [0, 1, 2] and by["dsb_ce"]["status"] == "done"
    for key in ("method", "dataset", "imbalance_factor", "schedule", "seeds", "accuracy_mean", "few_shot_accuracy_std", "wall_time_s_mean"):
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

    from benchmarks import long_tail as lt

    setting = {"name": "s", "prepare": {"imbalance_factor": 3, "validation_per_class": 1, "n_max": None}}
    # the stand-in's columns are img / fine_label: give the loader a renamed copy
    dd = datasets.load_from_disk(str(cifar100_standin))
    renamed = datasets.DatasetDict({k: v.rename_columns({"img": "image", "fine_label": "label"}) for k, v in dd.items()})
    source = tmp_path / "src"
    renamed.save_to_disk(str(source))
    folder = lt.prepare_image_data(setting, tmp_path, tmp_path / "cache", str(source))
    loaded = datasets.load_from_disk(str(folder))
    counts = np.bincount(loaded["train"]["label"], minlength=100)
    assert counts[0] == 3 and counts[-1] == 1 and math.isclose(counts[0] / counts[-1], 3)
    assert np.bincount(loaded["validation"]["label"], minlength=100).tolist() == [1] * 100
    assert len(loaded["test"]) == 100
    assert lt.prepare_image_data(setting, tmp_path, tmp_path / "cache", "/nonexistent") == folder  # cached


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
    from recipes.methods import DRW_DEFERRAL

    setting = next(s for s in lt.tier_settings("cpu") if s["dataset"] == "CIFAR-10-LT")
    assert "mix_dsb_cb_ce" in lt.tuned_methods(setting) and "cb_ce" not in lt.tuned_methods(setting)
    jobs = lt.tuning_jobs(tmp_path, "cpu", setting, [], "mix_dsb_cb_ce")
    # warm-up ends one epoch (the pool's fill stage) before the DRW point, so re-weighting starts at the same step
    warmup = DRW_DEFERRAL - 1 / lt.CPU_EPOCHS
    assert [job["knobs"] for job in jobs] == [{"semscale_gamma": g, "semscale_warmup_ratio": pytest.approx(warmup, abs=1e-4)}
                                             for g in setting["grid"]["semscale_gamma"]]
    args = parse_yaml_then_cli(image_parser(), [str(CONFIGS / "cifar10_lt.yaml"), *jobs[0]["argv"][1:]])[-1]
    assert args.semscale_weighting == "dsb_effective_number" and args.semscale_warmup_ratio == pytest.approx(warmup, abs=1e-4)
    # a setting without its own grid for a method keeps the knobs the method fixes (the mix's DRW deferral)
    plain = {**setting, "method_grids": {}}
    assert all("--semscale_warmup_ratio" not in job["argv"] for job in lt.tuning_jobs(tmp_path, "cpu", plain, [], "mix_dsb_cb_ce"))


def test_benchmark_keeps_every_invocation_of_a_tier(tmp_path):
    from benchmarks import long_tail as lt

    path = tmp_path / "cpu" / "run_info.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"wall_time_s": 60.0, "workers": 2, "seeds": [0, 1, 2]}))  # the older one-record file
    lt.append_run_info(path, {"wall_time_s": 6.0, "workers": 2, "seeds": [0, 1, 2], "methods": ["mix_dsb_cb_ce"]})
    assert [r["wall_time_s"] for r in lt.read_run_info(path)] == [60.0, 6.0]
    lt.main(["--tier", "cpu", "--report-only", "--work-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")])
    text = (tmp_path / "out" / "long_tail.md").read_text()
    assert "- `--tier cpu` (all methods) took 1.0 min wall" in text and "`--methods mix_dsb_cb_ce` took 0.1 min wall" in text
