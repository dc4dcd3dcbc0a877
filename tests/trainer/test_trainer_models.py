"""SemScaleTrainer on every architecture family of issue 3, with tiny random-init configs.

Each model trains two steps with learning rate 0 on 6 samples (2 per class, one batch), so the
pool must end up holding, per class, exactly the classifier inputs the model computes for those
samples: BERT's pooler output, RoBERTa's ``tanh(dense(<s>))``, ViT's [CLS] token, ConvNeXt's pooled
features, timm's pre-logits, a decoder's hidden state at the last non-pad token. ``test_capture.py``
checks the capture itself on single forwards; this file checks the trainer wiring (hook found at
construction, batch passed for pooling, training mode, gathering, pool order) per family.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from hf_semscale import SemScaleConfig, SemScaleTrainer  # noqa: E402

NUM_LABELS = 3
PER_CLASS = 2
LABELS = [c for c in range(NUM_LABELS) for _ in range(PER_CLASS)]
TINY_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=100)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
PAD = 0
SEQ_LEN = 7
LENGTHS = [7, 4, 2, 5, 3, 6]  # right padding of different lengths


pytestmark = pytest.mark.usefixtures("fast_tiny_runs")


# ---------------------------------------------------------------- data


def text_columns() -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, TINY_TEXT["vocab_size"], (len(LABELS), SEQ_LEN), generator=generator)
    input_ids = torch.full_like(ids, PAD)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(LENGTHS):
        input_ids[row, :length] = ids[row, :length]
        mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def image_columns(size: int) -> dict:
    return {"pixel_values": torch.randn(len(LABELS), 3, size, size, generator=torch.Generator().manual_seed(0))}


# ---------------------------------------------------------------- models and their expected features


def last_non_pad(hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    positions = [max(i for i, t in enumerate(row) if t != PAD) for row in input_ids.tolist()]
    return hidden[torch.arange(len(positions)), torch.tensor(positions)]


def bert():
    return transformers.BertForSequenceClassification(
        transformers.BertConfig(**TINY_TEXT, **NO_DROPOUT, num_labels=NUM_LABELS)
    )


def roberta():
    config = transformers.RobertaConfig(
        **TINY_TEXT, **NO_DROPOUT, num_labels=NUM_LABELS, max_position_embeddings=16, pad_token_id=1
    )
    return transformers.RobertaForSequenceClassification(config)


def vit():
    config = transformers.ViTConfig(
        **{k: v for k, v in TINY_TEXT.items() if k != "vocab_size"}, image_size=16, patch_size=8, num_labels=NUM_LABELS
    )
    return transformers.ViTForImageClassification(config)


def convnext():
    config = transformers.ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32, num_labels=NUM_LABELS
    )
    return transformers.ConvNextForImageClassification(config)


def timm(architecture):
    def build():
        pytest.importorskip("timm")
        config = transformers.TimmWrapperConfig(architecture=architecture, num_labels=NUM_LABELS)
        return transformers.TimmWrapperForImageClassification(config)

    return build


def qwen2():
    config = transformers.Qwen2Config(**TINY_TEXT, num_key_value_heads=1, pad_token_id=PAD, num_labels=NUM_LABELS)
    return transformers.Qwen2ForSequenceClassification(config)


def gpt2():
    config = transformers.GPT2Config(
        n_embd=32,
        n_layer=1,
        n_head=2,
        vocab_size=100,
        n_positions=16,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=1,
        num_labels=NUM_LABELS,
    )
    return transformers.GPT2ForSequenceClassification(config)


def timm_pre_logits(model, batch):
    timm_model = model.timm_model
    return timm_model.forward_head(timm_model.forward_features(batch["pixel_values"]), pre_logits=True)


CASES = {
    # name: (model factory, batch columns, head module, expected classifier input of the batch)
    "bert": (bert, text_columns, "classifier", lambda m, b: m.bert(**b).pooler_output),
    "roberta": (
        roberta,
        text_columns,
        "classifier.out_proj",
        lambda m, b: torch.tanh(m.classifier.dense(m.roberta(**b).last_hidden_state[:, 0])),
    ),
    "vit": (vit, lambda: image_columns(16), "classifier", lambda m, b: m.vit(**b).last_hidden_state[:, 0]),
    "convnext": (convnext, lambda: image_columns(32), "classifier", lambda m, b: m.convnext(**b).pooler_output),
    "timm-resnet": (timm("test_resnet"), lambda: image_columns(32), "timm_model.fc", timm_pre_logits),  # BatchNorm
    "timm-vit": (timm("test_vit"), lambda: image_columns(32), "timm_model.head", timm_pre_logits),
    "qwen2": (qwen2, text_columns, "score", lambda m, b: last_non_pad(m.model(**b).last_hidden_state, b["input_ids"])),
    "gpt2": (
        gpt2,
        text_columns,
        "score",
        lambda m, b: last_non_pad(m.transformer(**b).last_hidden_state, b["input_ids"]),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_trainer_pools_the_head_input_of_each_architecture(tmp_path, name):
    factory, columns, head_name, expected_fn = CASES[name]
    torch.manual_seed(0)
    model = factory()
    batch = columns()
    dataset = datasets.Dataset.from_dict({**{k: v.numpy() for k, v in batch.items()}, "labels": LABELS}).with_format(
        "torch"
    )
    args = SemScaleConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
        per_device_train_batch_size=len(LABELS),
        learning_rate=0.0,
        max_steps=2,
        logging_steps=1,
        semscale_warmup_steps=0,
        semscale_fill_max_steps=1,
        semscale_update_interval=1,
    )
    trainer = SemScaleTrainer(model=model, args=args, train_dataset=dataset)
    assert trainer.balancing.capture.head_name == head_name  # found without help, at construction
    trainer.train()

    assert trainer.stage == "reweight" and trainer.pool.filled.tolist() == [PER_CLASS] * NUM_LABELS
    model.train()  # what the trainer saw: training mode (BatchNorm batch statistics), dropout off in the configs
    with torch.no_grad():
        expected = F.normalize(expected_fn(model, batch).float(), dim=-1)
    stored, stored_labels = trainer.pool.contents()
    assert stored.shape[1] == expected.shape[1]
    labels = torch.tensor(LABELS)
    for c in range(NUM_LABELS):
        distance = torch.cdist(stored[stored_labels == c].float(), expected[labels == c])
        assert float(distance.min(dim=1).values.max()) < 3e-3, f"class {c}: pool rows are not the head inputs"
        assert sorted(distance.argmin(dim=1).tolist()) == list(range(PER_CLASS))
    assert bool((trainer.semantic_scales > 0).all()) and bool(torch.isfinite(trainer.class_weights).all())
    predictions = trainer.predict(dataset).predictions  # features never reach the predictions
    assert isinstance(predictions, np.ndarray) and predictions.shape == (len(LABELS), NUM_LABELS)


def test_peft_lora_model_trains_with_dsb_and_saves_an_adapter(tmp_path):
    """LoRA on BERT: the capture finds the trainable copy of the head (peft's ``modules_to_save``), the pool holds
    the pooler outputs, the frozen weights stay frozen, and the output is an adapter with its scale report."""
    peft = pytest.importorskip("peft", reason="pip install peft (the [test] extra)")
    torch.manual_seed(0)
    base = bert()
    frozen_before = base.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"])
    model = peft.get_peft_model(base, config)
    batch = text_columns()
    dataset = datasets.Dataset.from_dict({**{k: v.numpy() for k, v in batch.items()}, "labels": LABELS}).with_format(
        "torch"
    )
    args = SemScaleConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no", seed=0,
        per_device_train_batch_size=len(LABELS), learning_rate=1e-2, max_steps=4, semscale_warmup_steps=0,
        semscale_fill_max_steps=1, semscale_update_interval=1, label_names=["labels"],
    )  # fmt: skip
    trainer = SemScaleTrainer(model=model, args=args, train_dataset=dataset)
    assert (
        trainer.balancing.capture.head_name == "base_model.model.classifier.modules_to_save.default"
    )  # the trained copy
    trainer.train()
    assert trainer.stage == "reweight" and trainer.balancer.num_updates >= 2
    assert trainer.pool.feature_dim == TINY_TEXT["hidden_size"] and trainer.pool.filled.tolist() == [PER_CLASS] * 3
    assert not torch.allclose(trainer.class_weights, torch.ones(NUM_LABELS, dtype=torch.float64))
    frozen_after = model.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer.weight
    assert torch.equal(frozen_after, frozen_before)  # only the adapter and the head's copy train
    trainer.save_model()
    saved = {p.name for p in tmp_path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "semantic_scales.json"} <= saved
