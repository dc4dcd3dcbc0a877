"""HeadInputCapture / find_classification_head on tiny random-init models (no downloads).

The strongest check for each architecture: the captured features fed through the head give the
model's own logits, ``head(features) == logits``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hf_semscale.dsb.capture import HeadInputCapture, find_classification_head, last_non_pad_token_pool

transformers = pytest.importorskip("transformers")

NUM_LABELS = 3
TINY_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=100)


def capture_forward(
    model: nn.Module, inputs: dict, **capture_kwargs
) -> tuple[HeadInputCapture, torch.Tensor, torch.Tensor]:
    """Arm, run the model on ``inputs``, take: ``(capture, features [B, d], logits [B, C])``."""
    capture = HeadInputCapture(model, **capture_kwargs)
    capture.arm()
    logits = model(**inputs).logits
    features = capture.take(inputs)
    capture.remove()
    return capture, features, logits


def assert_head_reproduces_logits(capture: HeadInputCapture, features: torch.Tensor, logits: torch.Tensor) -> None:
    assert features is not None and features.ndim == 2 and features.shape[0] == logits.shape[0]
    with torch.no_grad():
        torch.testing.assert_close(capture.head(features), logits.detach(), rtol=1e-5, atol=1e-5)


def text_batch(batch_size: int = 4, seq_len: int = 7) -> dict:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, TINY_TEXT["vocab_size"], (batch_size, seq_len), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def pixel_batch(size: int, batch_size: int = 2) -> dict:
    return {"pixel_values": torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))}


# ---------------------------------------------------------------- encoders and vision models


@pytest.fixture(scope="module")
def bert():
    config = transformers.BertConfig(**TINY_TEXT, num_labels=NUM_LABELS)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).eval()


def test_bert_features_are_the_pooler_output_in_eval(bert):
    inputs = text_batch()
    with torch.no_grad():
        capture, features, logits = capture_forward(bert, inputs)
        pooler_output = bert.bert(**inputs).pooler_output
    assert capture.head_name == "classifier"
    torch.testing.assert_close(features, pooler_output)
    assert_head_reproduces_logits(capture, features, logits)


def test_bert_train_mode_captures_the_post_dropout_head_input():
    config = transformers.BertConfig(**TINY_TEXT, num_labels=NUM_LABELS, hidden_dropout_prob=0.5)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).train()
    inputs = text_batch()
    capture, features, logits = capture_forward(model, inputs)
    # The head reproduces this very forward's logits, so the features carry this forward's dropout mask.
    assert_head_reproduces_logits(capture, features, logits)
    assert (features == 0).any(), "dropout at p=0.5 should zero some pooled features"
    model.eval()
    with torch.no_grad():
        pooler_output = model.bert(**inputs).pooler_output
    assert not torch.allclose(features, pooler_output)


def test_roberta_captures_out_proj_input_after_dense_and_tanh():
    config = transformers.RobertaConfig(**TINY_TEXT, num_labels=NUM_LABELS, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.RobertaForSequenceClassification(config).eval()
    inputs = text_batch()
    with torch.no_grad():
        capture, features, logits = capture_forward(model, inputs)
        cls_token = model.roberta(**inputs).last_hidden_state[:, 0]
        expected = torch.tanh(model.classifier.dense(cls_token))
    assert capture.head_name == "classifier.out_proj"
    torch.testing.assert_close(features, expected)
    assert_head_reproduces_logits(capture, features, logits)


def test_vit_captures_the_cls_token_features():
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=16,
        patch_size=8,
        num_labels=NUM_LABELS,
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    inputs = pixel_batch(16)
    with torch.no_grad():
        capture, features, logits = capture_forward(model, inputs)
        expected = model.vit(**inputs).last_hidden_state[:, 0]
    assert capture.head_name == "classifier"
    assert features.shape == (2, 32)
    torch.testing.assert_close(features, expected)
    assert_head_reproduces_logits(capture, features, logits)


def test_convnext_captures_the_pooled_features():
    config = transformers.ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32, num_labels=NUM_LABELS
    )
    torch.manual_seed(0)
    model = transformers.ConvNextForImageClassification(config).eval()
    inputs = pixel_batch(32)
    with torch.no_grad():
        capture, features, logits = capture_forward(model, inputs)
        expected = model.convnext(**inputs).pooler_output
    assert capture.head_name == "classifier"
    assert features.shape == (2, 16)
    torch.testing.assert_close(features, expected)
    assert_head_reproduces_logits(capture, features, logits)


@pytest.mark.parametrize(
    ("architecture", "head_name"), [("resnet18", "timm_model.fc"), ("test_vit", "timm_model.head")]
)
def test_timm_wrapper_head_is_found_offline(architecture, head_name):
    pytest.importorskip("timm")
    config = transformers.TimmWrapperConfig(architecture=architecture, num_labels=NUM_LABELS)
    torch.manual_seed(0)
    model = transformers.TimmWrapperForImageClassification(config).eval()
    inputs = pixel_batch(32)
    with torch.no_grad():
        capture, features, logits = capture_forward(model, inputs)
        expected = model.timm_model.forward_head(
            model.timm_model.forward_features(inputs["pixel_values"]), pre_logits=True
        )
    assert capture.head_name == head_name
    torch.testing.assert_close(features, expected)
    assert_head_reproduces_logits(capture, features, logits)


# ---------------------------------------------------------------- decoder heads that score every token

PAD = 0


def decoder(model_name: str, pad_token_id: int | None = PAD) -> nn.Module:
    config_class = getattr(transformers, f"{model_name}Config")
    model_class = getattr(transformers, f"{model_name}ForSequenceClassification")
    config = config_class(**TINY_TEXT, num_key_value_heads=1, pad_token_id=pad_token_id, num_labels=NUM_LABELS)
    torch.manual_seed(0)
    return model_class(config).eval()


@pytest.fixture(scope="module")
def qwen2():
    return decoder("Qwen2")


def last_non_pad_hidden_state_by_hand(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``[B, H]``: the final hidden state at each row's rightmost non-pad token, found with a loop."""
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    rows = []
    for row, ids in enumerate(input_ids.tolist()):
        position = max(i for i, token in enumerate(ids) if token != PAD)
        rows.append(hidden[row, position])
    return torch.stack(rows)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("model_name", ["Qwen2", "Llama"])
def test_decoder_features_are_the_last_non_pad_token(model_name, padding_side):
    model = decoder(model_name)
    lengths = [7, 4, 2, 5]
    input_ids = torch.full((4, 7), PAD)
    attention_mask = torch.zeros(4, 7, dtype=torch.long)
    ids = text_batch()["input_ids"]
    for row, length in enumerate(lengths):
        span = slice(0, length) if padding_side == "right" else slice(7 - length, 7)
        input_ids[row, span] = ids[row, :length]
        attention_mask[row, span] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    with torch.no_grad():
        capture, features, logits = capture_forward(model, inputs)
        expected = last_non_pad_hidden_state_by_hand(model, input_ids, attention_mask)
    assert capture.head_name == "score"
    assert features.shape == (4, 32)
    torch.testing.assert_close(features, expected)
    assert_head_reproduces_logits(capture, features, logits)


def test_decoder_pools_like_the_model_when_the_pad_token_also_ends_a_sequence(qwen2):
    # The model ignores attention_mask and takes the rightmost token != pad_token_id; so must we.
    input_ids = text_batch(2, 6)["input_ids"]
    input_ids[0, -1] = PAD  # a real token equal to the pad id (e.g. eos used as pad)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    with torch.no_grad():
        capture, features, logits = capture_forward(qwen2, inputs)
        hidden = qwen2.model(**inputs).last_hidden_state
    torch.testing.assert_close(features[0], hidden[0, -2])
    assert_head_reproduces_logits(capture, features, logits)


def test_decoder_all_padding_row_pools_position_zero_like_the_model(qwen2):
    input_ids = text_batch(2, 5)["input_ids"]
    input_ids[1] = PAD
    inputs = {"input_ids": input_ids}
    with torch.no_grad():
        capture, features, logits = capture_forward(qwen2, inputs)
        hidden = qwen2.model(**inputs).last_hidden_state
    torch.testing.assert_close(features[1], hidden[1, 0])
    assert_head_reproduces_logits(capture, features, logits)


def test_decoder_without_pad_token_uses_the_last_token():
    model = decoder("Qwen2", pad_token_id=None)
    inputs = {"input_ids": text_batch(1, 6)["input_ids"]}  # the model accepts batch size 1 only then
    with torch.no_grad():
        capture, features, logits = capture_forward(model, inputs)
        hidden = model.model(**inputs).last_hidden_state
    torch.testing.assert_close(features, hidden[:, -1])
    assert_head_reproduces_logits(capture, features, logits)


def test_decoder_inputs_embeds_uses_the_last_token(qwen2):
    inputs_embeds = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        capture, features, logits = capture_forward(qwen2, {"inputs_embeds": inputs_embeds})
        hidden = qwen2.model(inputs_embeds=inputs_embeds).last_hidden_state
    torch.testing.assert_close(features, hidden[:, -1])
    assert_head_reproduces_logits(capture, features, logits)


def test_token_pooling_rejects_input_ids_of_another_shape():
    with pytest.raises(ValueError, match=r"input_ids has shape \(2, 4\).*Fix"):
        last_non_pad_token_pool(torch.zeros(2, 5, 8), {"input_ids": torch.ones(2, 4, dtype=torch.long)}, pad_token_id=0)


# ---------------------------------------------------------------- plain modules and overrides


class TinyResNet(nn.Module):
    """Conv stem, one residual block, global pool, hidden Linear with C outputs, final Linear."""

    def __init__(self, num_classes: int = NUM_LABELS, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.decoy = nn.Linear(width, num_classes)  # same out_features but registered first: not the head
        self.fc = nn.Linear(width, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(pixel_values))
        x = x + self.block(x)
        return self.fc(x.mean(dim=(2, 3)))


def test_plain_module_without_config_needs_num_labels():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    pixel_values = pixel_batch(8)["pixel_values"]
    with pytest.raises(ValueError, match="num_labels"):
        HeadInputCapture(model)
    with HeadInputCapture(model, num_labels=NUM_LABELS) as capture:
        capture.arm()
        with torch.no_grad():
            logits = model(pixel_values)
        features = capture.take({"pixel_values": pixel_values})
    assert capture.head_name == "fc"
    with torch.no_grad():
        stem = torch.relu(model.stem(pixel_values))
        expected = (stem + model.block(stem)).mean(dim=(2, 3))
    torch.testing.assert_close(features, expected)
    assert_head_reproduces_logits(capture, features, logits)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, NUM_LABELS))


def test_plain_mlp_head_is_the_last_linear_with_num_labels_outputs():
    name, head = find_classification_head(mlp(), num_labels=NUM_LABELS)
    assert name == "4" and head.out_features == NUM_LABELS


@pytest.mark.parametrize("by", ["name", "object"])
def test_module_override_by_name_or_object(by):
    model = mlp()
    module = "2" if by == "name" else model[2]
    x = torch.randn(3, 6)
    with HeadInputCapture(model, module=module) as capture:
        capture.arm()
        model(x)
        features = capture.take({})
    assert capture.head_name == "2"
    torch.testing.assert_close(features, torch.relu(model[0](x)).detach())


def test_pool_fn_replaces_the_default_pooling():
    model = mlp()
    x = torch.randn(2, 5, 6)  # the MLP applies to every token: head input [2, 5, 4]

    def mean_over_tokens(head_input: torch.Tensor, inputs: dict) -> torch.Tensor:
        return head_input.mean(dim=1) * inputs["scale"]

    with HeadInputCapture(model, num_labels=NUM_LABELS, pool_fn=mean_over_tokens) as capture:
        capture.arm()
        model(x)
        features = capture.take({"scale": 2.0})
    expected = 2.0 * torch.tanh(model[2](torch.relu(model[0](x)))).mean(dim=1)
    torch.testing.assert_close(features, expected.detach())


# ---------------------------------------------------------------- arming, gating, detaching


class HeadCalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, NUM_LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) + self.head(2 * x)


def test_only_the_first_head_call_after_arm_is_kept():
    model = HeadCalledTwice()
    x = torch.randn(3, 4)
    with HeadInputCapture(model, num_labels=NUM_LABELS) as capture:
        capture.arm()
        model(x)
        torch.testing.assert_close(capture.take({}), x)


class CheckpointedHead(nn.Module):
    """Runs backbone and head inside one reentrant checkpoint: the head runs again during backward."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.head = nn.Linear(4, NUM_LABELS)
        self.head_calls = 0
        self.head.register_forward_pre_hook(lambda *_: setattr(self, "head_calls", self.head_calls + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(lambda h: self.head(torch.tanh(self.backbone(h))), x, use_reentrant=True)


def test_reentrant_checkpoint_recomputation_does_not_overwrite_or_create_a_capture():
    model = CheckpointedHead()
    x = torch.randn(3, 4, requires_grad=True)
    expected = torch.tanh(model.backbone(x)).detach()
    with HeadInputCapture(model, num_labels=NUM_LABELS) as capture:
        # Recomputation between forward and take: the first capture is kept. Changing the weights
        # before backward makes the recomputed head input differ from the forward's.
        capture.arm()
        output = model(x)
        with torch.no_grad():
            model.backbone.weight.add_(1.0)
        output.sum().backward()
        assert model.head_calls == 2
        torch.testing.assert_close(capture.take({}), expected)
        # Trainer order: take before backward; the recomputation then captures nothing.
        with torch.no_grad():
            model.backbone.weight.sub_(1.0)
        capture.arm()
        output = model(x)
        torch.testing.assert_close(capture.take({}), expected)
        output.sum().backward()
        assert model.head_calls == 4
        assert capture.take({}) is None


def test_take_returns_detached_features_and_clears(bert):
    bert.train()
    try:
        inputs = text_batch()
        with HeadInputCapture(bert) as capture:
            capture.arm()
            bert(**inputs).logits.sum().backward()
            features = capture.take(inputs)
            assert features.requires_grad is False and features.grad_fn is None
            assert capture.take(inputs) is None
    finally:
        bert.zero_grad(set_to_none=True)
        bert.eval()


def test_nothing_is_captured_unless_armed_and_after_remove(bert):
    inputs = text_batch()
    capture = HeadInputCapture(bert)
    with torch.no_grad():
        bert(**inputs)
        assert capture.take(inputs) is None
        capture.remove()
        capture.arm()
        bert(**inputs)
    assert capture.take(inputs) is None
    capture.remove()  # idempotent
    assert not bert.classifier._forward_pre_hooks


def test_arm_drops_a_capture_that_was_not_taken():
    model = mlp()
    with HeadInputCapture(model, num_labels=NUM_LABELS) as capture:
        capture.arm()
        model(torch.randn(2, 6))
        capture.arm()
        assert capture.take({}) is None


# ---------------------------------------------------------------- errors


def test_no_matching_linear_lists_candidates_and_the_fix():
    with pytest.raises(ValueError) as excinfo:
        find_classification_head(mlp(), num_labels=7)
    message = str(excinfo.value)
    assert "num_labels (7)" in message and "feature_module=" in message
    assert "0 (6 -> 5)" in message and "2 (5 -> 4)" in message and "4 (4 -> 3)" in message


def test_default_num_labels_comes_from_the_config(bert):
    assert find_classification_head(bert)[0] == "classifier"
    with pytest.raises(ValueError, match=r"num_labels \(5\).*classifier \(32 -> 3\)"):
        find_classification_head(bert, num_labels=5)


@pytest.mark.parametrize("num_labels", [0, -1, 2.0, True])
def test_bad_num_labels(num_labels):
    with pytest.raises(ValueError, match="num_labels must be a positive integer"):
        find_classification_head(mlp(), num_labels=num_labels)


def test_unknown_module_name_and_foreign_module():
    model = mlp()
    with pytest.raises(ValueError, match=r"no submodule 'classifier'.*Fix"):
        HeadInputCapture(model, module="classifier")
    with pytest.raises(ValueError, match="not a submodule.*Fix"):
        HeadInputCapture(model, module=nn.Linear(4, NUM_LABELS))
    with pytest.raises(TypeError, match="module must be"):
        HeadInputCapture(model, module=3)


def test_unpoolable_head_input_and_bad_pool_fn():
    model = nn.Sequential(nn.Identity(), nn.Linear(4, NUM_LABELS))
    with HeadInputCapture(model, num_labels=NUM_LABELS) as capture:
        capture.arm()
        model(torch.randn(2, 3, 5, 4))
        with pytest.raises(ValueError, match=r"\(2, 3, 5, 4\).*pool_fn"):
            capture.take({})
    with HeadInputCapture(model, num_labels=NUM_LABELS, pool_fn=lambda h, _: h.flatten()) as capture:
        capture.arm()
        model(torch.randn(2, 4))
        with pytest.raises(ValueError, match=r"must be \[B, d\] with B = 2; got \(8,\)"):
            capture.take({})


def test_non_tensor_head_input_is_a_clear_error():
    class TakesTuple(nn.Module):
        def forward(self, pair):
            return pair[0]

    model = nn.Sequential(TakesTuple())
    with HeadInputCapture(model, module="0") as capture:
        capture.arm()
        with pytest.raises(TypeError, match="is a tuple, not a tensor"):
            model((torch.zeros(1),))
