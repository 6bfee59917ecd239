"""Spec fields of the causal-LM student path; the issue's command validates."""

from __future__ import annotations

import pytest

from potstill.config import SpecError, load_spec

CHAT = """
name: chat
kind: generate
instruction: "Answer the user."
prompt_template: "{instruction}\\n\\n{text}"
data: {train: data/train.jsonl, test: data/test.jsonl}
teacher: {kind: openai, model: gpt-4o-mini}
"""

ISSUE_OVERRIDES = ["student.kind=causal_lm", "student.model=Qwen/Qwen2.5-0.5B-Instruct",
                   "student.lora.r=16", "train.objective=logit_kd"]


@pytest.fixture()
def chat_spec(tmp_path):
    (tmp_path / "chat").mkdir()
    p = tmp_path / "chat/potstill.yaml"
    p.write_text(CHAT)
    return p


def test_issue_command_overrides_validate(chat_spec):
    spec = load_spec(chat_spec, ISSUE_OVERRIDES)
    assert spec.kind == "generate"
    assert spec.student.kind == "causal_lm" and spec.student.model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert spec.student.lora.r == 16 and spec.student.lora.method == "lora"
    assert spec.train.objective == "logit_kd" and spec.train.kd_loss == "forward_kl"


def test_issue_command_through_the_cli_parser(chat_spec, monkeypatch):
    """`potstill run chat/potstill.yaml --set ...` gets as far as the run (spec valid)."""
    from typer.testing import CliRunner

    import potstill.pipeline
    from potstill.cli import app

    seen = {}
    monkeypatch.setattr(potstill.pipeline, "run_all", lambda s, w: seen.setdefault("spec", s) and {})
    args = ["run", str(chat_spec), "--no-check"] + [a for o in ISSUE_OVERRIDES for a in ("--set", o)]
    CliRunner().invoke(app, args)
    assert seen["spec"].student.kind == "causal_lm" and seen["spec"].train.objective == "logit_kd"


def test_lora_and_general_fields(chat_spec, tmp_path):
    (tmp_path / "chat/general.txt").write_text("some general text\n")
    spec = load_spec(chat_spec, ["student.kind=causal_lm", "student.lora.method=prefix",
                                 "student.lora.quantize_4bit=true", "student.lora.target_modules=[q_proj,k_proj]",
                                 "train.objective=rationale", "train.kd_loss=jsd",
                                 "train.general_ratio=0.2"])
    assert spec.student.lora.method == "prefix" and spec.student.lora.quantize_4bit
    assert spec.student.lora.target_modules == ["q_proj", "k_proj"]
    assert spec.train.kd_loss == "jsd" and spec.train.general_ratio == 0.2
    # general_data in the file is relative to the spec's folder
    (tmp_path / "chat/potstill.yaml").write_text(CHAT + "train: {general_data: general.txt}\n"
                                                 "student: {kind: causal_lm}\n")
    spec = load_spec(tmp_path / "chat/potstill.yaml")
    assert spec.train.general_data == (tmp_path / "chat/general.txt").resolve()


@pytest.mark.parametrize("overrides,msg", [
    ([], "needs student.kind 'causal_lm'"),  # generate with the default encoder student
    (["student.kind=causal_lm", "student.lora.method=qlora"], "student.lora.method"),
    (["student.kind=causal_lm", "train.kd_loss=tvd"], "train.kd_loss"),
    (["student.kind=causal_lm", "train.general_ratio=1.0"], "train.general_ratio"),
])
def test_bad_causal_specs_are_errors(chat_spec, overrides, msg):
    with pytest.raises(SpecError, match=msg):
        load_spec(chat_spec, overrides)


def test_causal_objectives_need_a_causal_student(tmp_path):
    p = tmp_path / "potstill.yaml"
    p.write_text("name: c\ndata: {train: t.jsonl}\n")
    with pytest.raises(SpecError, match="is for student.kind 'causal_lm'"):
        load_spec(p, ["train.objective=logit_kd"])
    assert load_spec(p, ["student.kind=causal_lm", "train.objective=sequence"]).kind == "classify"
