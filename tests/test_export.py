"""`potstill export`: the adapter layout vLLM's --lora-modules loads, and merged weights."""

from __future__ import annotations

import json

import pytest
import torch
from causal_fixtures import build_tiny_llama, one_torch_thread  # noqa: F401 (autouse)

from potstill.export import ADAPTER_FILES, STUDENT_META, export_student
from potstill.students import causal_lm
from potstill.students.causal_lm import (
    LMRow,
    LMTrainConfig,
    build_causal_lm,
    load_causal_lm,
    save_causal_lm,
    train_causal_lm,
)

ROWS = [LMRow("what is my balance", "balance"), LMRow("send money to mom", "transfer")] * 4


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("base"))


def _run_with_student(root, base, method):
    model, tok = build_causal_lm(str(base), method, r=4, dropout=0.0, num_virtual_tokens=4)
    train_causal_lm(model, tok, ROWS, LMTrainConfig(max_steps=3, batch_size=4, lr=5e-2))
    save_causal_lm(model, tok, root / "student", meta={"base_model": str(base), "method": method,
                                                       "objective": "sequence"})
    return model, tok


def _logits(model, tok):
    with torch.no_grad():
        return model(**tok("what is my balance", return_tensors="pt")).logits


def test_meta_name_is_shared():
    assert STUDENT_META == causal_lm.STUDENT_META


def test_adapter_layout_for_vllm(tmp_path, base):
    from safetensors import safe_open

    _run_with_student(tmp_path / "run", base, "lora")
    out = export_student(tmp_path / "run", "adapter", tmp_path / "adapter")
    names = {p.name for p in out.iterdir()}
    assert set(ADAPTER_FILES) <= names and "tokenizer.json" in names
    assert "config.json" not in names and STUDENT_META not in names  # only what vLLM reads
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["base_model_name_or_path"] == str(base)
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    # peft loads the exported folder back
    model, tok = load_causal_lm(out)
    assert causal_lm.is_peft(model)
    with pytest.raises(FileExistsError):
        export_student(tmp_path / "run", "adapter", tmp_path / "adapter")


def test_merged_weights_match_the_adapter_model(tmp_path, base):
    model, tok = _run_with_student(tmp_path / "run", base, "lora")
    out = export_student(tmp_path / "run", "merged", tmp_path / "merged")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not names & set(ADAPTER_FILES)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft
    torch.testing.assert_close(_logits(merged, tok), _logits(model.eval(), tok), atol=1e-5, rtol=1e-4)


def test_cli_export_and_method_errors(tmp_path, base):
    from typer.testing import CliRunner

    from potstill.cli import app

    _run_with_student(tmp_path / "lora", base, "lora")
    r = CliRunner().invoke(app, ["export", str(tmp_path / "lora"), "--format", "merged", "--out",
                                 str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m/model.safetensors").exists()

    _run_with_student(tmp_path / "full", base, "full")
    with pytest.raises(ValueError, match="fully fine-tuned"):
        export_student(tmp_path / "full", "adapter", tmp_path / "x")
    assert (export_student(tmp_path / "full", "merged", tmp_path / "fm") / "model.safetensors").exists()

    _run_with_student(tmp_path / "prefix", base, "prefix")
    with pytest.raises(ValueError, match="cannot be merged"):
        export_student(tmp_path / "prefix", "merged", tmp_path / "pm")
    assert (export_student(tmp_path / "prefix", "adapter", tmp_path / "pa") / "adapter_config.json").exists()
    with pytest.raises(FileNotFoundError, match="causal-LM student"):
        export_student(tmp_path / "nothing", "adapter", tmp_path / "y")
