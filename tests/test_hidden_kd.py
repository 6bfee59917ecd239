"""Intermediate-layer distillation: the loss on hand-computed tensors, the layer map, and a student
that reads a teacher's hidden states in the training loop."""

import pytest
import torch
from causal_fixtures import to_model
from test_student import LABELS, rows

from potstill.losses import default_layer_map, hidden_state_loss
from potstill.students import classifier as C


def test_hidden_state_loss_matches_a_hand_computed_value():
    # B = 1, T = 2 (the second token is padding), H = 2; two hidden-state levels
    s = [torch.tensor([[[1.0, 2.0], [9.0, 9.0]]]), torch.tensor([[[0.0, 0.0], [5.0, 5.0]]])]
    t = [torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), torch.tensor([[[3.0, 4.0], [0.0, 0.0]]]),
         torch.tensor([[[2.0, 2.0], [0.0, 0.0]]])]
    mask = torch.tensor([[1, 0]])
    # pair (0, 0): ((1-1)^2 + (2-0)^2) / 2 = 2;  pair (1, 2): ((0-2)^2 + (0-2)^2) / 2 = 4
    assert hidden_state_loss(s, t, [(0, 0), (1, 2)], mask).item() == pytest.approx(3.0)
    # a projection doubling the student: pair (1, 1): ((0-3)^2 + (0-4)^2) / 2 = 12.5;
    # pair (0, 0) with 2*s = (2, 4): ((2-1)^2 + (4-0)^2) / 2 = 8.5
    double = lambda x: 2 * x
    assert hidden_state_loss(s, t, [(0, 0), (1, 1)], mask, double).item() == pytest.approx(10.5)
    with pytest.raises(ValueError, match="projection"):
        hidden_state_loss([torch.zeros(1, 2, 3)], t, [(0, 0)], mask)


def test_hidden_state_loss_has_no_gradient_into_the_teacher():
    s = [torch.ones(2, 3, 4, requires_grad=True)]
    t = [torch.zeros(2, 3, 4, requires_grad=True)]
    hidden_state_loss(s, t, [(0, 0)], torch.ones(2, 3)).backward()
    assert s[0].grad is not None and t[0].grad is None


def test_default_layer_map_follows_the_cut():
    # student.layers [0, 5] of a 6-layer teacher: student layer 0 <- teacher 0, layer 1 <- teacher 5
    assert default_layer_map([0, 5], 2, 6) == [(0, 0), (1, 1), (2, 6)]
    assert default_layer_map([1, 3, -1], 3, 4) == [(0, 0), (1, 2), (2, 4), (3, 4)]
    # a student of its own depth: TinyBERT's uniform map
    assert default_layer_map(None, 2, 6) == [(0, 0), (1, 3), (2, 6)]
    assert default_layer_map(None, 4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]
    with pytest.raises(ValueError, match="teacher has layers"):
        default_layer_map([0, 9], 2, 6)


def test_student_reads_the_teachers_hidden_states(tiny_bert, tmp_path):
    """With hidden_weight > 0 the student's hidden states move toward the teacher's: its
    hidden-state loss after training is lower than with the term off (same data, same seed)."""
    teacher, tok = C.build_classifier(str(tiny_bert), LABELS)
    train, val = rows(96, 1, soft=True), rows(15, 2)
    layer_map = default_layer_map([0, 3], 2, 4)
    enc = tok([r.text for r in val], padding=True, return_tensors="pt")

    def gap(student):
        on = to_model(dict(enc), student)  # on the GPU where training ran on one
        with torch.no_grad():
            hs = student(**on, output_hidden_states=True).hidden_states
            ht = teacher.to(next(student.parameters()).device)(**on, output_hidden_states=True).hidden_states
        return hidden_state_loss(hs, ht, layer_map, on["attention_mask"]).item()

    out = {}
    for w in (0.0, 5.0):
        st, _ = C.build_classifier(str(tiny_bert), LABELS, layers=[0, 3])
        cfg = C.TrainConfig(epochs=3, batch_size=16, lr=3e-3, precision="fp32", checkpoint_every=1000,
                            hidden_weight=w, layer_map=layer_map)
        C.train_classifier(st, tok, train, val, tmp_path / f"w{w}", cfg, "fp", teacher=teacher)
        out[w] = gap(st)
    assert out[5.0] < 0.5 * out[0.0]


def test_projection_bridges_different_widths(tiny_bert, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    st, tok = C.build_classifier(str(tiny_bert), LABELS, layers=[0, 3])
    wide = BertForSequenceClassification(BertConfig(vocab_size=st.config.vocab_size, hidden_size=96,
                                                    num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=64, num_labels=len(LABELS)))
    cfg = C.TrainConfig(epochs=1, batch_size=16, lr=3e-3, precision="fp32", checkpoint_every=1000,
                        hidden_weight=1.0)
    res = C.train_classifier(st, tok, rows(32, 1, soft=True), rows(15, 2), tmp_path / "p", cfg, "fp",
                             teacher=wide)
    assert res["steps"] == 2 and all(torch.isfinite(p).all() for p in st.parameters())


def test_hidden_teacher_is_the_local_teacher_with_the_cut_map(tiny_bert, tmp_path):
    """A fitted teacher (a classifier folder) loads as a bare encoder for the student cut from it;
    no teacher for the gold-only baseline, for an API teacher, or with hidden_weight 0."""
    from types import SimpleNamespace

    from potstill.students.hidden_kd import hidden_teacher, hidden_teacher_hash

    teacher, tok = C.build_classifier(str(tiny_bert), LABELS)
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    student, stok = C.build_classifier(str(tmp_path / "teacher"), LABELS, layers=[0, 3])
    spec = SimpleNamespace(train=SimpleNamespace(hidden_weight=1.0), student=SimpleNamespace(layers=[0, 3]),
                           teacher=SimpleNamespace(kind="fit", model=None))
    run = SimpleNamespace(teacher=tmp_path / "teacher")
    enc_model, layer_map, h = hidden_teacher(spec, run, student, stok, "distill", str(tmp_path / "teacher"))
    assert layer_map == [(0, 0), (1, 1), (2, 4)] and h == hidden_teacher_hash(spec, run, "distill")
    enc = stok(["what is my balance"], return_tensors="pt")
    with torch.no_grad():
        want = teacher(**enc, output_hidden_states=True).hidden_states
        got = enc_model(**enc, output_hidden_states=True).hidden_states
    assert all(torch.allclose(a, b) for a, b in zip(want, got))
    # the student's layer 0 was cut from the teacher's layer 0: identical before training
    with torch.no_grad():
        s = student(**enc, output_hidden_states=True).hidden_states
    assert torch.allclose(s[1], want[1])
    # from a base model (not the teacher): the uniform map by depth
    assert hidden_teacher(spec, run, student, stok, "distill", str(tiny_bert))[1] == [(0, 0), (1, 2), (2, 4)]
    assert hidden_teacher(spec, run, student, stok, "gold", str(tiny_bert))[0] is None
    spec.train.hidden_weight = 0.0
    assert hidden_teacher(spec, run, student, stok, "distill", str(tiny_bert))[0] is None
    spec.train.hidden_weight, spec.teacher.kind = 1.0, "openai"
    assert hidden_teacher(spec, run, student, stok, "distill", str(tiny_bert))[0] is None
