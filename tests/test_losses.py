import math

import torch

from potstill.losses import distill_loss, kd_loss, soft_targets


def test_kd_loss_matches_hand_computation():
    # teacher p = (0.7, 0.2, 0.1), T = 2 -> target ∝ p^(1/2)
    p = torch.tensor([[0.7, 0.2, 0.1]])
    z = torch.tensor([[1.0, 0.0, -1.0]])
    T = 2.0
    sq = [math.sqrt(x) for x in (0.7, 0.2, 0.1)]
    tgt = [x / sum(sq) for x in sq]
    ez = [math.exp(v / T) for v in (1.0, 0.0, -1.0)]
    q = [x / sum(ez) for x in ez]
    expected = sum(t * math.log(t / qq) for t, qq in zip(tgt, q)) * T * T
    got = kd_loss(z, p.log(), T)
    assert abs(got.item() - expected) < 1e-6
    assert torch.allclose(soft_targets(p.log(), T), torch.tensor([tgt]))


def test_kd_loss_is_zero_when_student_matches_teacher_and_handles_zero_mass():
    logits = torch.tensor([[2.0, 1.0, -3.0], [0.0, 0.0, 0.0]])
    assert kd_loss(logits, torch.log_softmax(logits, -1), 3.0).abs().item() < 1e-6
    one_hot = torch.log(torch.tensor([[1.0, 1e-12, 1e-12]]))
    assert torch.isfinite(kd_loss(torch.zeros(1, 3), one_hot, 1.0))


def test_distill_loss_combines_terms_and_ignores_missing_labels():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    lp = torch.log(torch.tensor([[0.9, 0.1], [0.5, 0.5]]))
    hard = torch.tensor([0, -100])
    kd = kd_loss(z, lp, 2.0)
    ce = torch.nn.functional.cross_entropy(z[:1], hard[:1])
    got = distill_loss(z, lp, hard, 2.0, kd_weight=0.5, ce_weight=2.0)
    assert abs(got.item() - (0.5 * kd + 2.0 * ce).item()) < 1e-6
    assert distill_loss(z, None, torch.tensor([-100, -100]), 2.0, 1.0, 1.0).item() == 0.0


def test_kd_gradient_pushes_student_towards_teacher():
    z = torch.zeros(1, 3, requires_grad=True)
    lp = torch.log(torch.tensor([[0.8, 0.1, 0.1]]))
    kd_loss(z, lp, 1.0).backward()
    assert z.grad[0, 0] < 0 < z.grad[0, 1]  # descending raises the teacher's top class
