"""Causal-LM training resumes after a kill to the weights an uninterrupted run ends with."""

from __future__ import annotations

import json

import pytest
import torch
from causal_fixtures import build_tiny_llama, one_torch_thread  # noqa: F401 (autouse)

from potstill.students import causal_lm as CL
from potstill.students.causal_lm import LMRow, LMTrainConfig, build_causal_lm, train_causal_lm

ROWS = [LMRow("what is my balance", "balance"), LMRow("send money to mom", "transfer"),
        LMRow("will it rain tomorrow", "weather"), LMRow("how much money is in my account", "balance")] * 4
# 16 rows, batch 4: 4 steps per epoch, 8 in all; checkpoints at steps 3, 4 (epoch end), 6, 8
CFG = LMTrainConfig(epochs=2, batch_size=4, lr=3e-2, warmup_ratio=0.25, log_every=1, checkpoint_every=3)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _dies_at(n: int, real):
    """`real` (the loss) that raises KeyboardInterrupt on its n-th call: a kill during step n."""
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    return dying


def _fresh(tiny_lm):
    # dropout > 0: the resumed run must also restore the RNG to draw the same dropout masks
    return build_causal_lm(str(tiny_lm), "lora", r=4, alpha=8, dropout=0.1, seed=3)


def test_killed_training_resumes_to_the_same_weights(tiny_lm, tmp_path, monkeypatch):
    model, tok = _fresh(tiny_lm)
    straight = train_causal_lm(model, tok, ROWS, CFG, checkpoint_dir=tmp_path / "a", fingerprint="fp")
    want = _trainable(model)
    assert straight["steps"] == 8

    real = CL.lm_loss
    dying = _dies_at(8, real)  # killed during step 8, after the checkpoint of step 6 (mid-epoch 2)

    monkeypatch.setattr(CL, "lm_loss", dying)
    model, tok = _fresh(tiny_lm)
    with pytest.raises(KeyboardInterrupt):
        train_causal_lm(model, tok, ROWS, CFG, checkpoint_dir=tmp_path / "b", fingerprint="fp")
    saved = json.loads((tmp_path / "b/progress.json").read_text())
    assert (saved["step"], saved["epoch"], saved["done_in_epoch"]) == (6, 1, 2)
    after = {"n": 0}
    monkeypatch.setattr(CL, "lm_loss", lambda *a, **k: after.__setitem__("n", after["n"] + 1) or real(*a, **k))

    model, tok = _fresh(tiny_lm)
    resumed = train_causal_lm(model, tok, ROWS, CFG, checkpoint_dir=tmp_path / "b", fingerprint="fp")
    got = _trainable(model)
    assert resumed["steps"] == 8 and after["n"] == 2  # steps 7 and 8 only: it did resume
    assert [x["step"] for x in resumed["losses"]] == list(range(1, 9))
    assert resumed["losses"] == straight["losses"]
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=1e-6, msg=n)
    # a run that did not resume ends elsewhere (the comparison above can fail)
    model, tok = _fresh(tiny_lm)
    train_causal_lm(model, tok, ROWS, LMTrainConfig(**{**CFG.__dict__, "max_steps": 6}))
    assert any(not torch.allclose(p, want[n]) for n, p in _trainable(model).items())


def test_a_checkpoint_of_another_fingerprint_is_ignored(tiny_lm, tmp_path):
    model, tok = _fresh(tiny_lm)
    train_causal_lm(model, tok, ROWS, CFG, checkpoint_dir=tmp_path / "c", fingerprint="old")
    assert json.loads((tmp_path / "c/progress.json").read_text())["step"] == 8
    model, tok = _fresh(tiny_lm)
    h = train_causal_lm(model, tok, ROWS, CFG, checkpoint_dir=tmp_path / "c", fingerprint="new")
    assert [x["step"] for x in h["losses"]] == list(range(1, 9))  # trained from step 1
    assert json.loads((tmp_path / "c/progress.json").read_text())["fingerprint"] == "new"


def test_train_stage_resumes_a_killed_student(tiny_lm, tmp_path, monkeypatch):
    """`potstill train` for a causal student: killed, rerun, it ends with the weights of a run
    that was not killed, and the checkpoint folder is gone once the student is saved."""
    from conftest import make_rows, write_jsonl
    from safetensors.torch import load_file

    from potstill.config import load_spec, run_paths
    from potstill.stages.prepare import prepare_inputs
    from potstill.stages.train import train_student

    write_jsonl(tmp_path / "data/train.jsonl", make_rows(24, 1))
    write_jsonl(tmp_path / "data/test.jsonl", make_rows(3, 3))
    (tmp_path / "potstill.yaml").write_text(f"""
name: resume
kind: generate
prompt_template: "{{text}}"
data: {{train: data/train.jsonl, test: data/test.jsonl}}
teacher: {{kind: openai, model: unused}}
student: {{kind: causal_lm, model: {tiny_lm}, lora: {{r: 4, dropout: 0.1}}}}
train: {{epochs: 2, lr: 0.02, batch_size: 8, precision: fp32, checkpoint_every: 2}}
""")
    spec = load_spec(tmp_path / "potstill.yaml")

    def prepared(name):
        run = run_paths(spec, tmp_path / name)
        inputs = prepare_inputs(spec, run)
        write_jsonl(run.filtered / "kept.jsonl", [{"text": ex.text, "output": ex.gold} for ex in inputs.train])
        return run

    straight = prepared("straight")
    train_student(spec, straight)
    real = CL.lm_loss
    dying = _dies_at(4, real)

    killed = prepared("killed")
    monkeypatch.setattr(CL, "lm_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        train_student(spec, killed)
    assert json.loads((killed.student / "checkpoints/progress.json").read_text())["step"] == 3  # epoch end
    after = {"n": 0}
    monkeypatch.setattr(CL, "lm_loss", lambda *a, **k: after.__setitem__("n", after["n"] + 1) or real(*a, **k))
    m = train_student(spec, killed)
    assert m["metrics"]["steps"] == 6 and after["n"] == 3  # the second epoch only: it resumed
    assert not (killed.student / "checkpoints").exists()
    a = load_file(straight.student / "adapter_model.safetensors")
    b = load_file(killed.student / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_adaptive_run_resumes_with_its_best_weights_and_validations(tiny_lm, tmp_path, monkeypatch):
    """The adaptive schedule's state survives a kill: the validations already made, the best
    weights so far (checkpoints/best.pt) and the early-stopping count, so the resumed run keeps
    the same weights as an uninterrupted one."""
    cfg = LMTrainConfig(**{**CFG.__dict__, "schedule": "adaptive", "eval_every": 2, "patience": 5})
    val = ROWS[:4]
    model, tok = _fresh(tiny_lm)
    straight = train_causal_lm(model, tok, ROWS, cfg, val_rows=val, checkpoint_dir=tmp_path / "a", fingerprint="fp")
    want = _trainable(model)
    assert [v["step"] for v in straight["val_history"]] == [2, 4, 6, 8]

    real = CL.lm_loss
    dying = _dies_at(8, real)

    monkeypatch.setattr(CL, "lm_loss", dying)
    model, tok = _fresh(tiny_lm)
    with pytest.raises(KeyboardInterrupt):
        train_causal_lm(model, tok, ROWS, cfg, val_rows=val, checkpoint_dir=tmp_path / "b", fingerprint="fp")
    assert (tmp_path / "b/best.pt").exists()
    monkeypatch.setattr(CL, "lm_loss", real)
    model, tok = _fresh(tiny_lm)
    resumed = train_causal_lm(model, tok, ROWS, cfg, val_rows=val, checkpoint_dir=tmp_path / "b", fingerprint="fp")
    assert resumed["val_history"] == straight["val_history"]
    assert resumed["best_step"] == straight["best_step"]
    got = _trainable(model)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=1e-6, msg=n)
