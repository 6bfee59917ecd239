"""Token-level KD losses against naive loop references, and top-k + tail against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from potstill.losses import (
    forward_kl_tokens,
    jsd_tokens,
    reverse_kl_tokens,
    token_kd_loss,
    topk_tail_kd,
)


def _softmax(row: list[float], t: float) -> list[float]:
    m = max(row)
    e = [math.exp((x - m) / t) for x in row]
    s = sum(e)
    return [x / s for x in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _naive(student, teacher, mask, t, kind, beta=0.5) -> float:
    """Loop over batch and positions; mean over masked positions, times T^2."""
    total, n = 0.0, 0
    B, T, _ = student.shape
    for b in range(B):
        for i in range(T):
            if not mask[b][i]:
                continue
            q = _softmax(student[b][i].tolist(), t)
            p = _softmax(teacher[b][i].tolist(), t)
            if kind == "forward_kl":
                d = _kl(p, q)
            elif kind == "reverse_kl":
                d = _kl(q, p)
            else:
                m = [beta * a + (1 - beta) * c for a, c in zip(p, q)]
                d = beta * _kl(p, m) + (1 - beta) * _kl(q, m)
            total += d
            n += 1
    return total / n * t * t


@pytest.fixture()
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 4, 6, generator=g) * 2  # (B, T, V)
    te = torch.randn(2, 4, 6, generator=g) * 2
    mask = torch.tensor([[False, True, True, False], [True, True, True, True]])
    return s, te, mask


@pytest.mark.parametrize("t", [1.0, 2.0])
@pytest.mark.parametrize("kind,fn", [("forward_kl", forward_kl_tokens), ("reverse_kl", reverse_kl_tokens)])
def test_kl_matches_loops(logits, t, kind, fn):
    s, te, mask = logits
    assert fn(s, te, mask, t).item() == pytest.approx(_naive(s, te, mask, t, kind), rel=1e-5)
    assert token_kd_loss(s, te, mask, kind, t).item() == pytest.approx(_naive(s, te, mask, t, kind), rel=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_loops(logits, beta):
    s, te, mask = logits
    got = jsd_tokens(s, te, mask, 2.0, beta).item()
    assert got == pytest.approx(_naive(s, te, mask, 2.0, "jsd", beta), rel=1e-5)
    # symmetric JSD is bounded by log 2 (at T = 1)
    assert 0 < jsd_tokens(s, te, mask, 1.0, 0.5).item() <= math.log(2)


def test_masked_positions_do_not_count(logits):
    s, te, mask = logits
    s2 = s.clone()
    s2[0, 0] += 100.0  # a masked-out (prompt) position changes wildly
    assert forward_kl_tokens(s2, te, mask).item() == pytest.approx(forward_kl_tokens(s, te, mask).item())
    assert forward_kl_tokens(te, te, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_vocab_mismatch_is_an_error(logits):
    s, te, mask = logits
    with pytest.raises(ValueError, match="shared tokenizer"):
        token_kd_loss(s, te[..., :5], mask)
    with pytest.raises(ValueError, match="unknown token KD"):
        token_kd_loss(s, te, mask, kind="wasserstein")


def test_gradients_flow_to_student(logits):
    s, te, mask = logits
    s = s.clone().requires_grad_(True)
    reverse_kl_tokens(s, te, mask, 2.0).backward()
    assert s.grad[1].abs().sum() > 0 and s.grad[0, 0].abs().sum() == 0  # masked row gets none


def test_topk_tail_by_hand():
    # one position, vocabulary of 4. Student probabilities: exactly [0.5, 0.25, 0.125, 0.125].
    student = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125])).view(1, 1, 4)
    # teacher's top-2: token 1 with p 0.6, token 0 with p 0.3 -> tail 0.1
    ids = torch.tensor([[[1, 0]]])
    lps = torch.log(torch.tensor([[[0.6, 0.3]]]))
    mask = torch.tensor([[True]])
    # student buckets: token 1 -> 0.25, token 0 -> 0.5, tail -> 0.25
    hand = 0.6 * math.log(0.6 / 0.25) + 0.3 * math.log(0.3 / 0.5) + 0.1 * math.log(0.1 / 0.25)
    assert topk_tail_kd(student, ids, lps, mask).item() == pytest.approx(hand, rel=1e-5)


def test_topk_tail_missing_alternatives_and_zero_tail():
    student = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125])).view(1, 1, 4)
    # only one alternative known (the other slot is -1) with p = 1: tail 0
    ids = torch.tensor([[[2, -1]]])
    lps = torch.tensor([[[0.0, -5.0]]])
    got = topk_tail_kd(student, ids, lps, torch.tensor([[True]])).item()
    assert got == pytest.approx(math.log(1 / 0.125), rel=1e-5)
    # a student equal to the teacher on the buckets scores 0
    ids = torch.tensor([[[0, 1]]])
    lps = torch.log(torch.tensor([[[0.5, 0.25]]]))
    assert topk_tail_kd(student, ids, lps, torch.tensor([[True]])).item() == pytest.approx(0.0, abs=1e-6)
