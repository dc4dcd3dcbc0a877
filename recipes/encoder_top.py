"""Fine-tune the TOP layers of a BERT-style encoder on CPU: the frozen lower layers run once per split.

``encoder_mode="finetune_top"`` of ``recipes/train_text.py``: the token states after the lower
``L - top_layers`` layers are computed once per split (and cached on disk), then
:class:`EncoderTopForSequenceClassification` trains the top ``top_layers`` transformer layers (initialised
from the pretrained encoder), mean pooling over the tokens, dropout and a linear classifier (the head whose
input DSB measures). Exactly a full fine-tune of those layers with the lower ones frozen, at a fraction
of the cost; full fine-tuning (``encoder_mode="finetune"``) stays the GPU setting.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertLayer

from recipes.common import save_cache_atomic, text_cache_file

logger = logging.getLogger("recipes.encoder_top")

__all__ = [
    "LowerLayerStates",
    "EncoderTopForSequenceClassification",
    "lower_layer_states",
    "collate_states",
    "build_top_model",
]


class LowerLayerStates(torch.utils.data.Dataset):
    """Per-example token states ``[len_i, d]`` float32 (pad tokens removed) and labels."""

    def __init__(self, states: list[np.ndarray], labels: list[int]):
        self.states, self.labels = states, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"hidden_states": self.states[i], "labels": self.labels[i]}


def collate_states(rows: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Pad ``hidden_states`` to the batch's longest: ``[B, T, d]``, ``attention_mask [B, T]``, ``labels [B]``."""
    longest = max(r["hidden_states"].shape[0] for r in rows)
    dim = rows[0]["hidden_states"].shape[1]
    states = torch.zeros(len(rows), longest, dim)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, r in enumerate(rows):
        n = r["hidden_states"].shape[0]
        states[i, :n] = torch.from_numpy(r["hidden_states"])
        mask[i, :n] = 1
    return {"hidden_states": states, "attention_mask": mask, "labels": torch.tensor([r["labels"] for r in rows])}


def lower_layer_states(
    model_path: str, texts: list[str], max_length: int, lower: int, batch_size: int = 128, cache_dir: str | None = None
) -> list[np.ndarray]:
    """Token states after embeddings + the first ``lower`` layers, one ``[len_i, d]`` float32 array per text."""
    cache = text_cache_file(
        cache_dir, model_path, texts, max_length, prefix=f"lower{lower}_", suffix=".npz", extra=(lower,)
    )
    if cache is not None and cache.is_file():
        with np.load(cache) as npz:
            flat, offsets = npz["states"], npz["offsets"]
        return [flat[offsets[i] : offsets[i + 1]] for i in range(len(texts))]
    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    encoder = AutoModel.from_pretrained(model_path).eval()
    out: list[np.ndarray | None] = [None] * len(texts)
    order = np.argsort([len(t) for t in texts])
    with torch.inference_mode():
        for first in range(0, len(texts), batch_size):
            idx = order[first : first + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = encoder.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
            mask = create_bidirectional_mask(
                config=encoder.config, inputs_embeds=hidden, attention_mask=batch["attention_mask"]
            )
            for layer in encoder.encoder.layer[:lower]:
                hidden = layer(hidden, attention_mask=mask)
            lengths = batch["attention_mask"].sum(1).tolist()
            for row, i in enumerate(idx):
                out[i] = hidden[row, : lengths[row]].numpy().astype(np.float32)
    logger.info("lower %d layers of %s on %d texts in %.0f s", lower, model_path, len(texts), time.time() - start)
    if cache is not None:
        offsets = np.cumsum([0] + [a.shape[0] for a in out])
        save_cache_atomic(cache, lambda tmp: np.savez(tmp, states=np.concatenate(out), offsets=offsets))
    return out


class EncoderTopForSequenceClassification(PreTrainedModel):
    """``hidden_states [B, T, d]`` (lower-layer token states) + ``attention_mask [B, T]`` -> ``logits [B, C]``.

    ``config.top_layers`` BERT layers, mean pooling over non-pad tokens, dropout, ``classifier``
    (``nn.Linear(d, num_labels)``: its input ``[B, d]`` is the feature DSB measures).
    """

    config_class = BertConfig
    base_model_prefix = "encoder_top"
    main_input_name = "hidden_states"

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.top_layers))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, hidden_states: Tensor, attention_mask: Tensor, labels: Tensor | None = None, **kwargs: Any):
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask)
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask)
        weights = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
        pooled = (hidden_states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def build_top_model(model_path: str, top_layers: int, num_labels: int, id2label: dict[int, str]) -> nn.Module:
    """The top ``top_layers`` layers of the pretrained encoder at ``model_path`` (weights copied) + a new head."""
    config = AutoConfig.from_pretrained(
        model_path, num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    total = config.num_hidden_layers
    if not 1 <= top_layers <= total:
        raise ValueError(f"top_layers must be in [1, {total}] for {model_path}, got {top_layers}")
    config.top_layers = top_layers
    model = EncoderTopForSequenceClassification(config)
    encoder = AutoModel.from_pretrained(model_path)
    for mine, theirs in zip(model.layers, encoder.encoder.layer[total - top_layers :]):
        mine.load_state_dict(theirs.state_dict())
    return model
