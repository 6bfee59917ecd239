"""Width pruning of encoder students' feed-forward blocks (`student.intermediate_size`)."""

import pytest
import torch
from conftest import INTENTS, make_rows

from potstill.errors import PotstillError
from potstill.spec import StudentSpec, TrainSpec
from potstill.students import classifier as C
from potstill.students.width import ffn_importance, narrow_ffn

LABELS = list(INTENTS)
TEXTS = [r["text"] for r in make_rows(60, 1)]


def _ffn(model, i):
    layer = model.bert.encoder.layer[i]
    return layer.intermediate.dense, layer.output.dense


def test_the_neurons_that_never_fire_go_and_the_answers_stay(tiny_bert, tmp_path):
    """Silence half of each layer's neurons (zero up-projection rows and bias: GELU(0) = 0), then
    narrow to the other half: those are the ones kept, in order, and the logits do not move."""
    model, tok = C.build_classifier(str(tiny_bert), LABELS, layers=[0, 3])
    width = model.config.intermediate_size
    dead = torch.arange(0, width, 2)  # every other neuron
    with torch.no_grad():
        for i in range(2):
            up, _ = _ffn(model, i)
            up.weight[dead] = 0
            up.bias[dead] = 0
    live_down = [_ffn(model, i)[1].weight[:, 1::2].clone() for i in range(2)]
    model.eval()
    enc = tok(TEXTS[:8], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**enc).logits
    scores = ffn_importance(model, tok, TEXTS, 32)
    assert all(float(s[dead].max()) == 0.0 and float(s[1::2].min()) > 0 for s in scores)

    narrow_ffn(model, tok, TEXTS, width // 2, 32)
    for i in range(2):
        up, down = _ffn(model, i)
        assert up.out_features == down.in_features == width // 2
        assert torch.equal(down.weight, live_down[i])  # the live neurons, in their order
    with torch.no_grad():
        assert torch.allclose(model(**enc).logits, before, atol=1e-5)

    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    again, _ = C.load_classifier(tmp_path / "m")
    assert again.config.intermediate_size == width // 2
    with torch.no_grad():
        assert torch.allclose(again(**enc).logits, before, atol=1e-5)


def test_a_width_the_model_cannot_give_is_refused(tiny_bert):
    model, tok = C.build_classifier(str(tiny_bert), LABELS, layers=[0, 3])
    width = model.config.intermediate_size
    with pytest.raises(PotstillError, match=f"keep between 1 and {width}"):
        narrow_ffn(model, tok, TEXTS, width + 1, 32)
    assert narrow_ffn(model, tok, TEXTS, width, 32) is model  # the full width changes nothing


def test_the_option_leaves_old_fingerprints_alone_and_refuses_a_causal_student():
    assert "intermediate_size" not in StudentSpec().identity()
    assert StudentSpec(intermediate_size=64).identity()["intermediate_size"] == 64
    assert "freeze_embeddings" not in TrainSpec().identity()
    from potstill.spec import TaskSpec

    with pytest.raises(ValueError, match="intermediate_size is for encoder students"):
        TaskSpec.model_validate({"name": "x", "kind": "generate", "data": {"train": "t.jsonl"},
                                 "teacher": {"kind": "hf", "model": "m"},
                                 "student": {"kind": "causal_lm", "model": "m", "intermediate_size": 8}})


def _width(model_dir) -> int:
    import json

    return json.loads((model_dir / "config.json").read_text())["intermediate_size"]


def test_a_run_narrows_the_student_and_the_baseline_alike(task_dir):
    """student.intermediate_size reaches both small models of a classify run (the teacher keeps
    its width), is part of what they are (a new width retrains them), and the run evaluates them."""
    from potstill.config import load_spec, run_paths
    from potstill.pipeline import run_all

    spec = load_spec(task_dir / "potstill.yaml", ["student.intermediate_size=32", "train.epochs=1",
                                                  "teacher.fit.epochs=1"])
    run = run_paths(spec, task_dir / "run")
    report = run_all(spec, run.root)
    assert _width(run.teacher) == 128
    assert _width(run.model_dir("student")) == _width(run.model_dir("baseline")) == 32
    assert report["models"]["student"]["accuracy"] is not None
    wider = load_spec(task_dir / "potstill.yaml", ["student.intermediate_size=48", "train.epochs=1",
                                                   "teacher.fit.epochs=1"])
    run_all(wider, run.root)
    assert _width(run.model_dir("student")) == _width(run.model_dir("baseline")) == 48


@pytest.mark.e2e
def test_an_extract_run_narrows_the_tagger_student(tmp_path, tiny_bert):
    from test_extract import extract_task  # the fixture's task folder, built here

    from potstill.config import load_spec, run_paths
    from potstill.pipeline import run_all

    task = extract_task.__wrapped__(tmp_path, tiny_bert)
    spec = load_spec(task / "potstill.yaml", ["student.intermediate_size=40", "train.epochs=1",
                                              "teacher.fit.epochs=1"])
    run = run_paths(spec, task / "run")
    run_all(spec, run.root)
    assert _width(run.teacher) == 128
    assert _width(run.model_dir("student")) == _width(run.model_dir("baseline")) == 40
