"""Finding a model's classification head and capturing its input (the penultimate features).

The features the semantic scale is measured on are what the classifier reads: the input of the
final linear layer. A forward pre-hook on that layer records its input; :meth:`HeadInputCapture.take`
pools it to ``[B, d]``. The captured tensor is the head's *actual* input: in training mode that
is after any dropout the model applies before the head (BERT, RoBERTa, ...).

Heads found without help: BERT-like ``classifier``, RoBERTa's ``classifier.out_proj`` (after
dense + tanh), ViT / ConvNeXt ``classifier``, ``TimmWrapper`` ``timm_model.fc`` / ``head``, decoder
``*ForSequenceClassification`` ``score`` (applied to every token: pooled at the last non-pad
token by the model's own rule), and any module whose last ``nn.Linear`` has ``num_labels`` outputs.

This module imports torch only; models are duck-typed on ``model.config``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["find_classification_head", "HeadInputCapture", "last_non_pad_token_pool"]

PoolFn = Callable[[Tensor, Mapping[str, Any]], Tensor]

_MAX_LISTED_CANDIDATES = 12


def _config_num_labels(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    num_labels = getattr(config, "num_labels", None)
    if num_labels is None:
        raise ValueError(
            f"{type(model).__name__} has no config.num_labels to find its classification head by. "
            "Fix: pass num_labels=<number of classes>, or name the head with feature_module=<dotted module name>."
        )
    return int(num_labels)


def find_classification_head(model: nn.Module, num_labels: int | None = None) -> tuple[str, nn.Module]:
    """The last ``nn.Linear`` (in registration order) with ``out_features == num_labels``.

    Args:
        model: any module; ``num_labels`` defaults to ``model.config.num_labels``.
        num_labels: number of classes ``C``.

    Returns:
        ``(dotted_name, module)``; the name is ``""`` when ``model`` itself is that Linear.

    Raises:
        ValueError: no such layer; the message lists the model's Linear layers and the fix.
    """
    if num_labels is None:
        num_labels = _config_num_labels(model)
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    matches = [(name, module) for name, module in linears if module.out_features == num_labels]
    if matches:
        return matches[-1]
    listed = [
        f"{name or '<model>'} ({m.in_features} -> {m.out_features})" for name, m in linears[-_MAX_LISTED_CANDIDATES:]
    ]
    candidates = ", ".join(listed) if listed else "none"
    more = f" (last {_MAX_LISTED_CANDIDATES} of {len(linears)})" if len(linears) > _MAX_LISTED_CANDIDATES else ""
    raise ValueError(
        f"{type(model).__name__} has no nn.Linear with out_features == num_labels ({num_labels}), so its "
        f"classification head cannot be found. Linear layers{more}: {candidates}. Fix: pass "
        "feature_module=<dotted name of the layer whose input are the features> (HeadInputCapture(module=...)), "
        "or the right num_labels."
    )


def _pad_token_id(config: Any) -> int | None:
    """``pad_token_id`` where the model reads it: ``config.get_text_config()`` when there is one."""
    get_text_config = getattr(config, "get_text_config", None)
    text_config = get_text_config() if callable(get_text_config) else config
    return getattr(text_config, "pad_token_id", None)


def last_non_pad_token_pool(token_features: Tensor, inputs: Mapping[str, Any], pad_token_id: int | None) -> Tensor:
    """``[B, T, H]`` -> ``[B, H]`` at the token a decoder ``*ForSequenceClassification`` scores.

    The rule of transformers' ``GenericForSequenceClassification`` (Qwen2, Llama, ...): the
    rightmost position whose ``input_ids`` differ from ``pad_token_id`` (left or right padding;
    position 0 if every token is padding); the last position when there is no pad token or the
    batch came as ``inputs_embeds``. ``attention_mask`` is not used, because the model does not use it.
    """
    batch_size, seq_len = token_features.shape[:2]
    input_ids = inputs.get("input_ids")
    if pad_token_id is None or input_ids is None:
        return token_features[:, -1]
    if tuple(input_ids.shape) != (batch_size, seq_len):
        raise ValueError(
            f"head input has {batch_size} x {seq_len} tokens but input_ids has shape {tuple(input_ids.shape)}. "
            "Fix: pass the same batch to take() as to the model, or give pool_fn= for this model."
        )
    non_pad = (input_ids != pad_token_id).to(token_features.device, torch.int32)
    positions = torch.arange(seq_len, device=token_features.device, dtype=torch.int32)
    last_non_pad = (positions * non_pad).argmax(-1)
    return token_features[torch.arange(batch_size, device=token_features.device), last_non_pad]


class HeadInputCapture:
    """Captures the input of the classification head as features ``[B, d]`` during a forward pass.

    Usage per training step: :meth:`arm`, run the model, :meth:`take` with the batch. Only the
    first head call after :meth:`arm` is kept, so a head called twice, or called again by reentrant
    gradient-checkpoint recomputation during backward, does not overwrite the capture. The features
    are the head's actual input: after the model's dropout when it runs in training mode.

    Args:
        model: the model (its ``config.num_labels`` / ``pad_token_id`` are read when present).
        num_labels: classes ``C``, to find the head when ``module`` is not given.
        module: the module whose first input are the features, by dotted name or as the object;
            default: :func:`find_classification_head`.
        pool_fn: ``(head_input, batch_inputs) -> [B, d]``; default: identity for a ``[B, d]`` head
            input, :func:`last_non_pad_token_pool` for ``[B, T, H]``.

    Attributes:
        head_name: dotted name of the hooked module (``""`` if it is ``model`` itself).
        head: the hooked module.
    """

    def __init__(
        self,
        model: nn.Module,
        num_labels: int | None = None,
        module: str | nn.Module | None = None,
        pool_fn: PoolFn | None = None,
    ):
        self.head_name, self.head = self._resolve_module(model, num_labels, module)
        self.pool_fn = pool_fn
        self._config = getattr(model, "config", None)
        self._armed = False
        self._captured: Tensor | None = None
        self._handle = self.head.register_forward_pre_hook(self._record, with_kwargs=True)

    @staticmethod
    def _resolve_module(
        model: nn.Module, num_labels: int | None, module: str | nn.Module | None
    ) -> tuple[str, nn.Module]:
        if module is None:
            return find_classification_head(model, num_labels)
        if isinstance(module, str):
            try:
                return module, model.get_submodule(module)
            except AttributeError as err:
                names = [name for name, _ in model.named_modules() if name]
                raise ValueError(
                    f"{type(model).__name__} has no submodule {module!r}. Fix: pass the dotted name of one "
                    f"of its modules, e.g. one of {names[-_MAX_LISTED_CANDIDATES:]}."
                ) from err
        if isinstance(module, nn.Module):
            for name, candidate in model.named_modules():
                if candidate is module:
                    return name, candidate
            raise ValueError(
                f"the given {type(module).__name__} is not a submodule of {type(model).__name__}. "
                "Fix: pass a module taken from this model (e.g. model.classifier) or its dotted name."
            )
        raise TypeError(f"module must be a dotted name, an nn.Module or None; got {type(module).__name__}")

    def _record(self, head: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._armed:
            return
        features = args[0] if args else next(iter(kwargs.values()), None)
        if not isinstance(features, Tensor):
            raise TypeError(
                f"the first input of {self.head_name or '<model>'} ({type(head).__name__}) is a "
                f"{type(features).__name__}, not a tensor. Fix: pick a module whose input is the feature tensor."
            )
        self._captured = features.detach()
        self._armed = False

    def arm(self) -> None:
        """Capture the next head call only (dropping any capture not yet taken)."""
        self._captured = None
        self._armed = True

    def take(self, inputs: Mapping[str, Any]) -> Tensor | None:
        """Pooled, detached features ``[B, d]`` of the armed forward, or None if the head did not run.

        Args:
            inputs: the batch passed to the model (``input_ids`` is used to pool token features).
        Clears the capture and disarms.
        """
        captured, self._captured, self._armed = self._captured, None, False
        if captured is None:
            return None
        if self.pool_fn is not None:
            features = self.pool_fn(captured, inputs)
        elif captured.ndim == 2:
            features = captured
        elif captured.ndim == 3:
            features = last_non_pad_token_pool(captured, inputs, _pad_token_id(self._config))
        else:
            raise ValueError(
                f"input of {self.head_name or '<model>'} has shape {tuple(captured.shape)}; only [B, d] and "
                "[B, T, d] are pooled automatically. Fix: pass pool_fn=(head_input, inputs) -> [B, d]."
            )
        if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] != captured.shape[0]:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"pooled features must be [B, d] with B = {captured.shape[0]}; got {shape}. "
                "Fix: make pool_fn return one feature row per sample."
            )
        return features.detach()

    def remove(self) -> None:
        """Remove the hook (idempotent)."""
        self._handle.remove()
        self._captured, self._armed = None, False

    def __enter__(self) -> HeadInputCapture:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
