"""The causal-LM loss computed at the supervised positions only, chunked over positions.

`causal_lm.lm_loss` computes the full (B, T, V) logits of the student (and of the teacher under
logit KD). With SmolLM2's 49,152-entry vocabulary that is 100 MB per float32 copy for a batch of
8 x 64 tokens, several copies live at once in the KD loss, and the LM head on every prompt
position costs as much compute as a third of a 30-layer model's blocks. Here the decoder runs
without its head, the final hidden states are gathered at the N positions whose next token is
supervised (completion tokens), and `losses.chunked_kd_ce` applies the student's and the
teacher's heads `cfg.kd_chunk` positions at a time. Optional hidden-state KD pairs the pruned
student's blocks with the teacher blocks they were initialised from (`prune.hidden_pairs`).

Used for LoRA and full fine-tuning (prefix / prompt tuning prepend virtual tokens inside peft's
forward, and rows with an API teacher's top-k data need the full logits: those keep the
unchunked path).
"""

from __future__ import annotations

from typing import Any

import torch

from ..losses import chunked_kd_ce, hidden_state_kd

IGNORE = -100


def _parts(model) -> tuple[Any, Any]:
    """(decoder without head, LM head) of a causal LM or of a peft LoRA wrapper around one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def supports_chunked(model) -> bool:
    """LoRA or full fine-tuning of a model whose decoder and head transformers exposes."""
    if hasattr(model, "peft_config"):
        kind = str(model.peft_config["default"].peft_type.value).lower()
        if kind != "lora":
            return False
    try:
        dec, head = _parts(model)
    except (AttributeError, NotImplementedError):
        return False
    return dec is not None and head is not None


def chunked_lm_loss(model, batch: dict[str, torch.Tensor], cfg, teacher=None, vocab_size: int | None = None,
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """Same value as `causal_lm.lm_loss` (CE for sequence objectives; kd_weight * KD + ce_weight *
    CE under logit_kd), plus cfg.hidden_weight * hidden-state KD when cfg.hidden_pairs is set."""
    dec, head = _parts(model)
    want_hidden = bool(teacher is not None and cfg.objective == "logit_kd" and cfg.hidden_weight > 0
                       and cfg.hidden_pairs)
    out = dec(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              output_hidden_states=want_hidden)
    labels = batch["labels"]  # (B, T)
    tgt = labels[:, 1:]  # (B, T-1): the token each position predicts
    mask = tgt != IGNORE  # (B, T-1)
    h = out.last_hidden_state[:, :-1][mask]  # (N, H)
    targets = tgt[mask]  # (N,)
    weights = batch["weight"][:, None].expand_as(mask)[mask].float()  # (N,)
    kd_rows = batch["kd"][:, None].expand_as(mask)[mask]  # (N,) general text: CE only
    kd_on = teacher is not None and cfg.objective == "logit_kd"
    t_h = t_head = t_out = None
    if kd_on:
        t_dec, t_head = _parts(teacher)
        with torch.no_grad():
            t_out = t_dec(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          output_hidden_states=want_hidden)
            t_h = t_out.last_hidden_state[:, :-1][mask]  # (N, H_t)
    kd, ce = chunked_kd_ce(h, head, targets, weights, t_h, t_head, kd_rows, cfg.kd_loss, cfg.temperature,
                           cfg.jsd_beta, vocab_size if kd_on else None, cfg.kd_chunk)
    if not kd_on:
        return ce, {"ce": float(ce.detach())}
    loss = cfg.kd_weight * kd + cfg.ce_weight * ce
    parts = {"ce": float(ce.detach()), "kd": float(kd.detach())}
    if want_hidden:
        pairs = cfg.hidden_pairs
        hid = hidden_state_kd([out.hidden_states[s] for s, _ in pairs],
                              [t_out.hidden_states[t] for _, t in pairs],
                              batch["attention_mask"].bool())
        loss = loss + cfg.hidden_weight * hid
        parts["hidden"] = float(hid.detach())
    return loss, parts
