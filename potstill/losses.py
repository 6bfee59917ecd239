"""Distillation losses: pure torch, no state.

Shapes: B = batch, C = number of classes; for causal-LM students T = positions, V = vocabulary,
K = an API teacher's top-k alternatives per position (see the token-level section below).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def soft_targets(teacher_logprobs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher distribution softened by T: softmax(log p / T).  (B, C) -> (B, C)

    Taking log-probabilities (not logits) is enough: softmax is shift-invariant, so
    softmax(log p / T) == softmax(logits / T) for p = softmax(logits).
    """
    return F.softmax(teacher_logprobs / temperature, dim=-1)


def kd_loss(
    student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Forward KL(teacher_T || student_T) * T^2, mean over the batch (Hinton et al., 2015).

    student_logits: (B, C); teacher_logprobs: (B, C), log-probabilities (−inf or very negative
    for impossible classes is fine). The T^2 factor keeps gradient size comparable across T.
    """
    t = temperature
    target = soft_targets(teacher_logprobs.float(), t)  # (B, C)
    log_student = F.log_softmax(student_logits.float() / t, dim=-1)  # (B, C)
    # kl_div(input=log q, target=p) = sum p (log p - log q); xlogy handles p == 0
    kl = (torch.xlogy(target, target) - target * log_student).sum(-1)  # (B,)
    return kl.mean() * t * t


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor | None,
    hard_labels: torch.Tensor | None,
    temperature: float,
    kd_weight: float,
    ce_weight: float,
) -> torch.Tensor:
    """kd_weight * KD(T) + ce_weight * CE(hard labels).

    Rows with hard label −100 are ignored by the CE term (PyTorch's convention); either term is
    skipped when its input is None or its weight is 0.
    """
    loss = student_logits.new_zeros((), dtype=torch.float32)
    if teacher_logprobs is not None and kd_weight > 0:
        loss = loss + kd_weight * kd_loss(student_logits, teacher_logprobs, temperature)
    if hard_labels is not None and ce_weight > 0 and bool((hard_labels != -100).any()):
        loss = loss + ce_weight * F.cross_entropy(student_logits.float(), hard_labels, ignore_index=-100)
    return loss


# ---------------------------------------------------------------------------------------------
# token-level KD for causal-LM students. Shapes: B = batch, T = sequence positions, V = vocabulary,
# K = top-k alternatives an API teacher returned per position. `mask` (B, T) is True where the
# position's logits predict a completion token (the caller shifts: logits at t predict token
# t + 1); the loss is the mean over masked positions, so prompts and padding never count.

TokenKD = ("forward_kl", "reverse_kl", "jsd")


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) values, (B, T) bool mask -> mean over masked positions (0 when none is masked)."""
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


def forward_kl_tokens(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher_T || student_T) per position, mean over masked positions, times T^2.

    student_logits, teacher_logits: (B, T, V); mask: (B, T) bool. Mode-covering: the student
    is pushed to put mass wherever the teacher does (Hinton et al., 2015, per token).
    """
    t = temperature
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)  # (B, T, V) teacher
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)  # (B, T, V) student
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, T)
    return _masked_mean(kl, mask) * t * t


def reverse_kl_tokens(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(student_T || teacher_T) per position, mean over masked positions, times T^2.

    Shapes as `forward_kl_tokens`. Mode-seeking: the student may drop teacher modes it cannot
    fit rather than spread over them (MiniLLM, Gu et al., 2023).
    """
    t = temperature
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)  # (B, T, V)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)  # (B, T, V)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # (B, T)
    return _masked_mean(kl, mask) * t * t


def jsd_tokens(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence per position (GKD, Agarwal et al., 2024), mean over
    masked positions, times T^2:

        JSD_beta = beta * KL(P || M) + (1 - beta) * KL(Q || M),  M = beta * P + (1 - beta) * Q

    with P the teacher's and Q the student's distribution at temperature T. Shapes as
    `forward_kl_tokens`; 0 < beta < 1 (beta = 0.5 is the symmetric JSD, bounded by log 2).
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta must be strictly between 0 and 1, got {beta}")
    t = temperature
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)  # (B, T, V)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)  # (B, T, V)
    # log M = logsumexp(log beta + log P, log(1 - beta) + log Q), stable for tiny probabilities
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)  # (B, T)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)  # (B, T)
    return _masked_mean(beta * kl_pm + (1 - beta) * kl_qm, mask) * t * t


def token_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                  kind: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """One of `TokenKD` by name; shapes as `forward_kl_tokens`. The vocabularies must match:
    logit KD assumes the student and teacher share a tokenizer."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: logit KD needs one shared tokenizer")
    if kind == "forward_kl":
        return forward_kl_tokens(student_logits, teacher_logits, mask, temperature)
    if kind == "reverse_kl":
        return reverse_kl_tokens(student_logits, teacher_logits, mask, temperature)
    if kind == "jsd":
        return jsd_tokens(student_logits, teacher_logits, mask, temperature, beta)
    raise ValueError(f"unknown token KD loss {kind!r}; one of {', '.join(TokenKD)}")


def topk_tail_kd(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over k + 1 buckets, against an API teacher's top-k logprobs.

    student_logits: (B, T, V); topk_ids: (B, T, K) long token ids of the teacher's top-k at each
    position (-1 where the teacher gave fewer than K); topk_logprobs: (B, T, K) their
    log-probabilities; mask: (B, T) bool. The buckets are the teacher's k tokens plus one tail
    holding the rest of the mass: teacher tail = 1 - sum(top-k), student tail = 1 - sum of the
    student's probabilities of the same k tokens. Mean over masked positions.

    No temperature: an API returns logprobs at T = 1 for a truncated distribution, and softening
    it would need the shape of the missing mass. The ids in one position must be distinct.
    """
    valid = topk_ids >= 0  # (B, T, K)
    ids = topk_ids.clamp_min(0)
    log_q_all = F.log_softmax(student_logits.float(), dim=-1)  # (B, T, V)
    log_q = log_q_all.gather(-1, ids)  # (B, T, K)
    p = torch.where(valid, topk_logprobs.float().exp(), torch.zeros_like(log_q))  # (B, T, K)
    q_in = torch.where(valid, log_q.exp(), torch.zeros_like(log_q)).sum(-1)  # (B, T)
    p_tail = (1.0 - p.sum(-1)).clamp_min(0.0)  # (B, T); rounding may push the sum past 1
    log_q_tail = torch.log((1.0 - q_in).clamp_min(1e-12))  # (B, T)
    log_p = torch.where(valid, topk_logprobs.float(), torch.zeros_like(log_q))
    head = torch.where(valid, p * (log_p - log_q), torch.zeros_like(log_q)).sum(-1)  # (B, T)
    tail = torch.xlogy(p_tail, p_tail) - p_tail * log_q_tail  # (B, T)
    return _masked_mean(head + tail, mask)


# ---------------------------------------------------------------------------------------------
# chunked over positions: logit KD without (B, T, V) tensors. N = supervised positions (the
# caller gathers them from (B, T)), H = hidden size, V = vocabulary, c = chunk size.


def chunked_kd_ce(student_hidden: torch.Tensor, student_head, targets: torch.Tensor,
                  weights: torch.Tensor, teacher_hidden: torch.Tensor | None = None, teacher_head=None,
                  kd_mask: torch.Tensor | None = None, kind: str = "forward_kl",
                  temperature: float = 1.0, beta: float = 0.5, vocab_size: int | None = None,
                  chunk_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(kd, ce) computed `chunk_size` positions at a time, never holding logits for all N.

    student_hidden: (N, H) final (normed) hidden states of the student at the N positions whose
    logits predict a supervised token; student_head: a callable (c, H) -> (c, V) (the LM head);
    targets: (N,) long, the next tokens; weights: (N,) float, each position's CE weight (its row's
    weight). teacher_hidden: (N, H_t) the teacher's final hidden states at the same positions and
    teacher_head (c, H_t) -> (c, V), or None for CE only; kd_mask: (N,) bool, positions that take
    part in KD (default all). vocab_size: KD compares the first V ids only (rows past the
    tokenizer's size are padding); CE uses the student's whole output.

    Returns kd = mean over kd_mask positions of the `token_kd_loss` divergence (times T^2), the
    same value as `token_kd_loss` on the full (B, T, V) logits, and ce = sum(w * CE) / sum(w), as
    `weighted_ce`. Each chunk runs under activation checkpointing, so the backward pass also
    holds one chunk's (c, V) logits at a time: peak extra memory is O(c * V), not O(N * V).
    """
    from torch.utils.checkpoint import checkpoint

    n = student_hidden.shape[0]
    kd_mask = torch.ones(n, dtype=torch.bool, device=student_hidden.device) if kd_mask is None else kd_mask
    use_kd = teacher_hidden is not None and teacher_head is not None

    def chunk_loss(h: torch.Tensor, th: torch.Tensor | None, tgt: torch.Tensor, w: torch.Tensor,
                   m: torch.Tensor) -> torch.Tensor:
        logits = student_head(h)  # (c, V)
        ce = (F.cross_entropy(logits.float(), tgt, reduction="none") * w).sum()
        if not use_kd:
            return torch.stack([ce, ce.new_zeros(())])
        with torch.no_grad():
            t_logits = teacher_head(th)  # (c, V_t)
        v = vocab_size or logits.shape[-1]
        k = m.sum()
        kd = token_kd_loss(logits[None, :, :v], t_logits[None, :, :v], m[None], kind, temperature, beta) * k
        return torch.stack([ce, kd])

    total = student_hidden.new_zeros(2, dtype=torch.float32)
    for s in range(0, n, chunk_size):
        sl = slice(s, s + chunk_size)
        th = teacher_hidden[sl] if use_kd else None
        if torch.is_grad_enabled() and student_hidden.requires_grad:
            part = checkpoint(chunk_loss, student_hidden[sl], th, targets[sl], weights[sl], kd_mask[sl],
                              use_reentrant=False)
        else:
            part = chunk_loss(student_hidden[sl], th, targets[sl], weights[sl], kd_mask[sl])
        total = total + part
    ce = total[0] / weights.float().sum().clamp_min(1e-9)
    kd = total[1] / kd_mask.float().sum().clamp_min(1.0)
    return kd, ce


def hidden_state_kd(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                    mask: torch.Tensor) -> torch.Tensor:
    """Relative MSE between paired hidden states, mean over pairs: for each pair (B, T, H),
    sum over masked positions of |h_s - h_t|^2 / sum of |h_t|^2 (the teacher's scale differs by
    layer by orders of magnitude, so each layer is normalised by its own). mask: (B, T) bool
    (attention mask: prompt tokens count too). Student and teacher widths must match (depth
    pruning keeps the width)."""
    if len(student_states) != len(teacher_states):
        raise ValueError(f"{len(student_states)} student vs {len(teacher_states)} teacher hidden states")
    if not student_states:
        return mask.new_zeros((), dtype=torch.float32)
    m = mask[..., None].float()  # (B, T, 1)
    losses = []
    for hs, ht in zip(student_states, teacher_states):
        if hs.shape != ht.shape:
            raise ValueError(f"hidden states {tuple(hs.shape)} vs {tuple(ht.shape)}: hidden-state KD "
                             "needs the same width")
        err = ((hs.float() - ht.float()) ** 2 * m).sum()
        losses.append(err / (ht.float() ** 2 * m).sum().clamp_min(1e-9))
    return torch.stack(losses).mean()

# intermediate-layer KD for encoder students (TinyBERT, Jiao et al., 2020; MiniLM, Wang et al.,
# 2020). Hidden-state lists are what Hugging Face returns with output_hidden_states=True:
# index 0 is the embedding output, index k + 1 the output of transformer layer k.


def default_layer_map(student_layers: list[int] | None, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Pairs (student hidden-state index, teacher hidden-state index) to match, embeddings included.

    With `student.layers` (the layers the student kept from the teacher's stack, DistilBERT-style)
    student layer i learns from the teacher layer it was cut from: (i + 1, layers[i] + 1). Without
    (a student of its own depth), the uniform map of TinyBERT: student layer i <- teacher layer
    round((i + 1) * n_teacher / n_student) - 1. Always (0, 0) for the embeddings.
    """
    if student_layers is not None and len(student_layers) == n_student:
        bad = [l for l in student_layers if not -n_teacher <= l < n_teacher]
        if bad:
            raise ValueError(f"student.layers {student_layers}: the teacher has layers 0..{n_teacher - 1}")
        return [(0, 0)] + [(i + 1, (l % n_teacher) + 1) for i, l in enumerate(student_layers)]
    return [(0, 0)] + [(i + 1, max(1, round((i + 1) * n_teacher / n_student))) for i in range(n_student)]


def hidden_state_loss(student_hidden, teacher_hidden, layer_map, attention_mask: torch.Tensor,
                      projection=None) -> torch.Tensor:
    """Mean squared error between mapped hidden states, over real (unpadded) tokens.

    student_hidden: sequence of (B, T, Hs) tensors; teacher_hidden: sequence of (B, T, Ht);
    layer_map: pairs (student index, teacher index) into those sequences; attention_mask: (B, T),
    1 for real tokens; projection: a module mapping Hs -> Ht (a learned linear map, TinyBERT's
    W_h) or None for the identity (then Hs must equal Ht, as for a student cut from the teacher).

        loss = mean over pairs of  sum_{b,t} m_bt * ||P(s_bt) - h_bt||^2 / (Ht * sum_{b,t} m_bt)

    The teacher side carries no gradient.
    """
    if not layer_map:
        raise ValueError("hidden_state_loss needs at least one (student, teacher) layer pair")
    m = attention_mask.to(torch.float32).unsqueeze(-1)  # (B, T, 1)
    n_tok = m.sum().clamp_min(1.0)
    total = attention_mask.new_zeros((), dtype=torch.float32)
    for si, ti in layer_map:
        s = student_hidden[si].float()  # (B, T, Hs)
        if projection is not None:
            s = projection(s)  # (B, T, Ht)
        t = teacher_hidden[ti].detach().float()  # (B, T, Ht)
        if s.shape != t.shape:
            raise ValueError(f"hidden states {tuple(s.shape)} (student layer {si}) and {tuple(t.shape)} "
                             f"(teacher layer {ti}) differ: give a projection")
        total = total + (((s - t) ** 2) * m).sum() / (n_tok * t.shape[-1])
    return total / len(layer_map)
