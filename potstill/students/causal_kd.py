"""The causal-LM loss computed at the supervised positions only, chunked over positions.

`causal_lm.lm_loss` computes the full (B, T, V) logits of the student (and of the teacher under
logit KD). With SmolLM2's 49,152-entry vocabulary that is 100 MB per float32 copy for a batch of
8 x 64 tokens, several copies live at once in the KD loss, and the LM head on every prompt
position costs as much compute as a third of a 30-layer model's blocks. Here the decoder runs
without its head, the final hidden states are gathered at the N positions whose next token is
supervised (completion tokens), and `losses.chunked_kd_ce` applies the student's and the
teacher's heads `cfg.kd_chunk` positions at a time. Optional hidden-state KD pairs the pruned
student's blocks with the teacher blocks they were initialised from (`prune.hidden_pairs`).

When every row is visited more than once (several epochs), the teacher's part does not change
between visits: `cache_teacher_hidden` runs the teacher's decoder once per row and keeps its
final hidden states at the supervised positions, and the loss applies the teacher's head to those
(`teacher_hidden` in the batch) instead of running the teacher again each step. Same loss, one
teacher pass instead of one per epoch. Under hidden-state KD the cache also keeps the paired
teacher layers' states at every position of the row (`teacher_layers`), in bfloat16 to halve
their memory: the relative MSE against them moves by about 1e-3 of its value.

Used for LoRA and full fine-tuning (prefix / prompt tuning prepend virtual tokens inside peft's
forward, and rows with an API teacher's top-k data need the full logits: those keep the
unchunked path).
"""

from __future__ import annotations

from collections.abc import Sequence
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
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Same value as `causal_lm.lm_loss` (CE for sequence objectives; kd_weight * KD + ce_weight *
    CE under logit_kd), plus cfg.hidden_weight * hidden-state KD when cfg.hidden_pairs is set.
    The parts come back as detached tensors: reading one is a host sync, which on a GPU stalls the
    queue of the next step's kernels, so the training loop reads them only when it logs."""
    dec, head = _parts(model)
    want_hidden = bool(teacher is not None and cfg.objective == "logit_kd" and cfg.hidden_weight > 0
                       and cfg.hidden_pairs)
    out = dec(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              output_hidden_states=want_hidden)
    labels = batch["labels"]  # (B, T)
    tgt = labels[:, 1:]  # (B, T-1): the token each position predicts
    mask = tgt != IGNORE  # (B, T-1)
    # the answer positions, row-major; one host sync (their number) instead of one per boolean index
    at_b, at_t = mask.nonzero(as_tuple=True)  # (N,), (N,)
    h = out.last_hidden_state[at_b, at_t]  # (N, H)
    targets = tgt[at_b, at_t]  # (N,)
    weights = batch["weight"][at_b].float()  # (N,)
    kd_rows = batch["kd"][at_b]  # (N,) general text: CE only
    kd_on = teacher is not None and cfg.objective == "logit_kd"
    t_h = t_head = t_out = None
    t_layers: list[torch.Tensor] | None = None
    if kd_on and "teacher_hidden" in batch and (not want_hidden or "teacher_layers" in batch):
        t_head = _parts(teacher)[1]
        t_h = batch["teacher_hidden"]  # (N, H_t), cached in the same row-major order as `mask`
        if want_hidden:
            t_layers = list(batch["teacher_layers"])  # one (B, T, H_t) per pair, in pair order
    elif kd_on:
        t_dec, t_head = _parts(teacher)
        with torch.no_grad():
            t_out = t_dec(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          output_hidden_states=want_hidden)
            t_h = t_out.last_hidden_state[at_b, at_t]  # (N, H_t)
        if want_hidden:
            t_layers = [t_out.hidden_states[t] for _, t in cfg.hidden_pairs]
    kd, ce = chunked_kd_ce(h, head, targets, weights, t_h, t_head, kd_rows, cfg.kd_loss, cfg.temperature,
                           cfg.jsd_beta, vocab_size if kd_on else None, cfg.kd_chunk)
    if not kd_on:
        return ce, {"ce": ce.detach()}
    loss = cfg.kd_weight * kd + cfg.ce_weight * ce
    parts = {"ce": ce.detach(), "kd": kd.detach()}
    if want_hidden:
        pairs = cfg.hidden_pairs
        hid = hidden_state_kd([out.hidden_states[s] for s, _ in pairs], t_layers, batch["attention_mask"].bool())
        loss = loss + cfg.hidden_weight * hid
        parts["hidden"] = hid.detach()
    return loss, parts


CACHE_LIMIT_BYTES = 4 << 30
"""Cache the teacher's hidden states only while they take at most this much memory."""


@torch.no_grad()
def cache_teacher_hidden(teacher, encoded: list[dict[str, Any]], kd_rows: list[bool], batch_size: int,
                         collate, autocast, device, progress_desc: str | None = None,
                         limit_bytes: int = CACHE_LIMIT_BYTES, layers: Sequence[int] = (),
                         ) -> list[dict[str, torch.Tensor]] | None:
    """Per row, what `chunked_lm_loss` reads from the teacher each step: `t_hidden`, its final
    hidden states at the positions whose next token is supervised, (n_i, H) on the CPU in position
    order; and with `layers` (teacher hidden-state indices, as in `hidden_pairs`), `t_layers`, those
    states at every position of the row, (len(layers), T_i, H) in bfloat16, for every row. Without
    `layers`, rows that take no KD (general text) get zeros and no teacher pass. None when the cache
    would pass `limit_bytes` (the loss then runs the teacher each step, as without a cache).

    encoded: `causal_lm.encode_row` dicts; collate(list of encoded) -> batch dict; autocast() -> a
    context manager for the training precision. Rows are batched by length; right padding does
    not change a causal model's states at the real positions."""
    t_dec = _parts(teacher)[0]
    hidden = int(teacher.config.hidden_size)
    layers = list(layers)
    counts = [sum(1 for x in e["labels"][1:] if x != IGNORE) for e in encoded]
    lengths = [len(e["input_ids"]) for e in encoded]
    if sum(counts) * hidden * 4 + len(layers) * sum(lengths) * hidden * 2 > limit_bytes:
        return None
    from ..progress import progress

    # the hidden-state loss covers every row, general text too (it is masked by attention alone)
    order = sorted((i for i in range(len(encoded)) if kd_rows[i] or layers), key=lambda i: lengths[i])
    out: list[dict[str, torch.Tensor] | None] = [None] * len(encoded)
    chunks = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    with progress(len(chunks), progress_desc or "teacher pass") as bar:
        for idx in chunks:
            b = collate([encoded[i] for i in idx])
            ids, attn, labels = (b[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
            with autocast():
                res = t_dec(input_ids=ids, attention_mask=attn, output_hidden_states=bool(layers))
            last = res.last_hidden_state[:, :-1]
            mask = labels[:, 1:] != IGNORE
            for j, i in enumerate(idx):
                out[i] = {"t_hidden": last[j][mask[j]].detach().cpu()}
                if layers:
                    out[i]["t_layers"] = torch.stack(
                        [res.hidden_states[t][j, :lengths[i]] for t in layers]).to(torch.bfloat16).cpu()
            bar.advance()
    dtype = next((o["t_hidden"].dtype for o in out if o is not None), torch.float32)
    # only without `layers` are rows left out of the pass (general text): their loss takes no KD
    return [o if o is not None else {"t_hidden": torch.zeros(n, hidden, dtype=dtype)} for o, n in zip(out, counts)]
