"""Depth pruning of decoder-only causal LMs: keep a subset of the decoder layers, initialised from
the full model, then distil the full model into it (the prune-then-distill recipe of NVIDIA's
Minitron work, Muralidharan et al., 2024, here by depth only).

`student.layers` for a causal-LM student is one of

- null: keep every layer (no pruning);
- `auto`: about a third of the layers;
- an integer k: k layers;
- a list of layer indices (0-based, negatives count from the end), strictly increasing.

Which ones, for `auto` or a count (`student.prune`):

- `block` (the default): the contiguous block of layers whose input and output hidden states are
  closest in angular distance on the training rows is dropped, the last layer kept (Gromov et
  al., 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"; `block_drop`, measured by
  `causal_lm.choose_layers`). On SmolLM2-135M cut to 10 of 30 layers it kept 0, 1, 22-29 and
  trained to field F1 0.129 on snips-json where the spread cut reached 0.030 (docs/RESULTS.md);
- `greedy`: in 5 rounds, every remaining layer is removed alone and the answers' NLL measured on
  16 training rows; the layers whose removal costs least are dropped (`causal_lm.
  choose_layers_greedy`). On the same cut it kept 0, 1, 8, 11, 15, 18, 19, 24, 27, 29, with a
  validation NLL right after the cut of 7.7 against block's 11.8; it costs about 100 forward
  passes of the probe rows (4 minutes on a 2-core CPU), once per run;
- `spread`: evenly spread, first and last included (30 -> 10: 0, 3, 6, 10, 13, 16, 19, 23, 26, 29).

`select_layers` (pure) turns the spec value into a list (evenly spread for `auto` or a count);
`prune_decoder` does the model surgery in place.
Student layer i is initialised from teacher layer `layers[i]`; that map also pairs the hidden
states for the optional hidden-state KD (`train.hidden_weight`).
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn


def spread(n_layers: int, keep: int) -> list[int]:
    """`keep` of `n_layers` indices, evenly spread, first and last included (pure)."""
    if not 1 <= keep <= n_layers:
        raise ValueError(f"cannot keep {keep} of {n_layers} layers")
    if keep == 1:
        return [0]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def auto_keep(n_layers: int) -> int:
    """How many layers `layers: auto` keeps: a third, at least two (when there are two)."""
    return max(min(n_layers, 2), round(n_layers / 3))


def select_layers(spec: Any, n_layers: int) -> list[int] | None:
    """The kept layer indices for a `student.layers` value (pure); None keeps every layer.
    ValueError names the bad value and the model's range."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec.strip().lower() != "auto":
            raise ValueError(f"student.layers {spec!r}: null, auto, a count or a list of layer indices")
        return spread(n_layers, auto_keep(n_layers))
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 1 <= spec <= n_layers:
            raise ValueError(f"student.layers {spec}: the model has {n_layers} layers, keep 1..{n_layers}")
        return spread(n_layers, spec)
    idx = list(spec)
    if not idx:
        raise ValueError("student.layers []: keep at least one layer")
    bad = [i for i in idx if not -n_layers <= int(i) < n_layers]
    if bad:
        raise ValueError(f"student.layers {idx}: {bad} out of range; the model has layers 0..{n_layers - 1}")
    out = [int(i) % n_layers for i in idx]
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"student.layers {idx}: layer indices must be strictly increasing")
    return out


def block_drop(distances: Sequence[float], n_layers: int, keep: int) -> list[int]:
    """The layers kept when the contiguous block of `n_layers - keep` layers starting at the
    lowest of `distances` is dropped (pure). distances[l], for l in 0..keep-1: how far the
    hidden state entering layer l is from the one entering layer l + (n_layers - keep), so the
    block changes it least where it is lowest (Gromov et al., 2024, "The Unreasonable
    Ineffectiveness of the Deeper Layers"). The last layer is always kept."""
    drop = n_layers - keep
    if drop <= 0:
        return list(range(n_layers))
    if len(distances) != keep:
        raise ValueError(f"{len(distances)} block distances for dropping {drop} of {n_layers} layers; "
                         f"expected {keep}")
    start = min(range(keep), key=lambda i: distances[i])
    return [i for i in range(n_layers) if not start <= i < start + drop]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder block list of a causal LM (Llama, Mistral, Qwen, GPT-NeoX, GPT-2 ...), peft
    wrappers included: the ModuleList whose length is config.num_hidden_layers."""
    from .hf import layer_stack

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    stack = layer_stack(base, base.config.num_hidden_layers,
                        ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"))
    if stack is None:
        raise ValueError(f"cannot find the decoder layers of {type(base).__name__}")
    return stack


def prune_decoder(model: nn.Module, layers: Sequence[int]) -> nn.Module:
    """Keep only decoder `layers` (valid, increasing; see `select_layers`) in place.

    The kept blocks are renumbered 0..k-1 (`layer_idx` of every submodule that has one: the KV
    cache is indexed by it), and config.num_hidden_layers and per-layer config lists
    (`layer_types`) follow, so the pruned model saves, loads and generates as a plain model of
    k layers.
    """
    stack = decoder_layers(model)
    n = len(stack)
    layers = select_layers(list(layers), n)
    kept = [stack[i] for i in layers]
    for new_idx, block in enumerate(kept):
        for mod in block.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_idx
    parent = next(m for m in model.modules() if any(c is stack for c in m.children()))
    name = next(k for k, v in parent.named_children() if v is stack)
    setattr(parent, name, nn.ModuleList(kept))
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    config.num_hidden_layers = len(kept)
    for attr in ("layer_types",):
        val = getattr(config, attr, None)
        if isinstance(val, list) and len(val) == n:
            setattr(config, attr, [val[i] for i in layers])
    return model


def hidden_pairs(layers: Sequence[int]) -> list[tuple[int, int]]:
    """(student hidden-state index, teacher hidden-state index) pairs for hidden-state KD (pure).

    `hidden_states` from transformers holds the embeddings at 0 and block i's output at i + 1,
    the last one after the final norm. The student's last block is left to the logit KD (its
    output is normed, the matching teacher block's may not be), so the pairs are its blocks
    0..k-2 against teacher blocks layers[0..k-2]."""
    return [(i + 1, t + 1) for i, t in enumerate(layers[:-1])]
