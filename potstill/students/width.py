"""Width pruning of an encoder student's feed-forward blocks (`student.intermediate_size`).

A cut to two of six layers leaves each kept layer as costly as it was: at batch 1 a layer's time
is mostly reading its weights, and two thirds of a BERT layer's weights are its feed-forward
matrices (hidden x intermediate, twice). Keeping fewer intermediate neurons makes every kept layer
cheaper. Which ones: the neurons most active on the training inputs (Minitron, Muralidharan et
al., 2024, activation-based importance): each neuron's root-mean-square activation, after its
nonlinearity, over every real (non-padding) token of a seeded sample of the inputs. The same
neurons are then removed from the up projection (its rows and bias) and the down projection (its
columns), so a neuron that is never active changes nothing when it goes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ..errors import PotstillError

SAMPLE = 512
"""Inputs the importance is measured on (a seeded sample of the training inputs)."""

_FFN = (("intermediate.dense", "output.dense"),  # BERT, RoBERTa, ELECTRA, XLM-R
        ("ffn.lin1", "ffn.lin2"))  # DistilBERT


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _set(obj: Any, path: str, value: Any) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(obj, parent) if parent else obj, name, value)


def ffn_paths(layer: Any) -> tuple[str, str]:
    """The dotted names of a transformer block's (up, down) feed-forward projections."""
    from torch import nn

    for up, down in _FFN:
        if isinstance(_get(layer, up), nn.Linear) and isinstance(_get(layer, down), nn.Linear):
            return up, down
    raise PotstillError(f"student.intermediate_size: no feed-forward block found in {type(layer).__name__} "
                        "(BERT-, RoBERTa-, ELECTRA- and DistilBERT-style encoders are supported)")


def ffn_importance(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int,
                   batch_size: int = 64) -> list[Any]:
    """Per kept layer, each intermediate neuron's root-mean-square activation (the down
    projection's input) over the real tokens of `texts`: a list of (intermediate,) tensors."""
    import torch

    from .hf import _encoder_layers

    layers = list(_encoder_layers(model))
    downs = [_get(layer, ffn_paths(layer)[1]) for layer in layers]
    sums = [torch.zeros(d.in_features, dtype=torch.float64) for d in downs]
    mask: list[torch.Tensor] = []  # the current batch's real-token mask, flattened

    def hook(i: int):
        def pre(_mod, args):
            x = args[0].reshape(-1, args[0].shape[-1])[mask[0]]
            sums[i] += x.double().pow(2).sum(0)
        return pre

    handles = [d.register_forward_pre_hook(hook(i)) for i, d in enumerate(downs)]
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                enc = tokenizer(list(texts[s:s + batch_size]), padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt")
                mask[:] = [enc["attention_mask"].reshape(-1).bool()]
                tokens += int(mask[0].sum())
                model(**enc)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [(x / max(tokens, 1)).sqrt().float() for x in sums]


def narrow_ffn(model: Any, tokenizer: Any, texts: Sequence[str], size: int | None, max_length: int,
               seed: int = 13) -> Any:
    """Keep the `size` most active intermediate neurons of every kept layer (measured on a seeded
    sample of `texts`), in their original order; sets `config.intermediate_size`, so the saved
    model loads as an ordinary one of that width. None keeps the model as it is."""
    import torch
    from torch import nn

    from .hf import _encoder_layers

    width = int(getattr(model.config, "intermediate_size", None) or getattr(model.config, "hidden_dim", 0))
    if size is None or size == width:
        return model
    if not 1 <= size < width:
        raise PotstillError(f"student.intermediate_size {size}: the model's feed-forward blocks have "
                            f"{width} neurons; keep between 1 and {width}")
    if not texts:
        raise PotstillError("student.intermediate_size: no training inputs to measure the neurons on")
    sample = list(texts) if len(texts) <= SAMPLE else random.Random(seed).sample(list(texts), SAMPLE)
    scores = ffn_importance(model, tokenizer, sample, max_length)
    for layer, score in zip(_encoder_layers(model), scores):
        up_path, down_path = ffn_paths(layer)
        up, down = _get(layer, up_path), _get(layer, down_path)
        keep = torch.topk(score, size).indices.sort().values
        new_up = nn.Linear(up.in_features, size, bias=up.bias is not None)
        new_down = nn.Linear(size, down.out_features, bias=down.bias is not None)
        with torch.no_grad():
            new_up.weight.copy_(up.weight[keep])
            if up.bias is not None:
                new_up.bias.copy_(up.bias[keep])
            new_down.weight.copy_(down.weight[:, keep])
            if down.bias is not None:
                new_down.bias.copy_(down.bias)
        _set(layer, up_path, new_up)
        _set(layer, down_path, new_down)
    model.config.update({"hidden_dim" if model.config.model_type == "distilbert" else "intermediate_size": size})
    return model


def width_note(size: int | None) -> str:
    """For the training log line: ', feed-forward N wide' when narrowed."""
    return "" if size is None else f", feed-forward {size} wide"
