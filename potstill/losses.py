"""Distillation losses: pure torch, no state.

Shapes: B = batch, C = number of classes.
"""

from __future__ import annotations

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
