"""Depth pruning of causal LMs, the chunked KD/CE loss, hidden-state KD, and a pruned student
distilled through the train stage — on tiny Llamas built from a config."""

from __future__ import annotations

import json

import pytest
import torch
from causal_fixtures import build_tiny_llama, one_torch_thread, to_model  # noqa: F401 (autouse)

from potstill.losses import chunked_kd_ce, hidden_state_kd, token_kd_loss
from potstill.students.prune import block_drop, hidden_pairs, prune_decoder, select_layers, spread

# -- layer selection (pure) ------------------------------------------------------------------------

def test_spread_keeps_first_and_last_evenly():
    assert spread(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert spread(6, 2) == [0, 5] and spread(5, 5) == [0, 1, 2, 3, 4] and spread(4, 1) == [0]
    assert select_layers("auto", 30) == spread(30, 10)
    assert select_layers("auto", 2) == [0, 1] and select_layers("auto", 9) == [0, 4, 8]
    assert select_layers(3, 7) == [0, 3, 6]
    assert select_layers([0, -1], 4) == [0, 3]
    assert select_layers(None, 4) is None


@pytest.mark.parametrize("bad, msg", [([0, 4], "out of range"), ([2, 1], "increasing"), ([], "at least"),
                                      (0, "keep 1..4"), ("half", "auto")])
def test_select_layers_rejects_bad_values(bad, msg):
    with pytest.raises(ValueError, match=msg):
        select_layers(bad, 4)


def test_hidden_pairs_skip_the_last_block():
    assert hidden_pairs([0, 3, 6, 9]) == [(1, 1), (2, 4), (3, 7)]


def test_block_drop_removes_the_closest_contiguous_block_and_keeps_the_last():
    # 6 layers, keep 3: blocks of 3 start at 0, 1 or 2 (the last layer is never in one)
    assert block_drop([0.5, 0.1, 0.3], 6, 3) == [0, 4, 5]
    assert block_drop([0.05, 0.1, 0.3], 6, 3) == [3, 4, 5]
    assert block_drop([0.9, 0.8, 0.3], 6, 3) == [0, 1, 5]
    assert block_drop([], 4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="expected 3"):
        block_drop([0.1, 0.2], 6, 3)


# -- model surgery ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama4(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("llama4"), layers=4)


def test_pruned_model_matches_the_kept_blocks_and_round_trips(llama4, tmp_path):
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(llama4).eval()
    pruned = prune_decoder(AutoModelForCausalLM.from_pretrained(llama4), [0, 3]).eval()
    assert pruned.config.num_hidden_layers == 2 and len(pruned.model.layers) == 2
    assert [b.self_attn.layer_idx for b in pruned.model.layers] == [0, 1]  # KV cache indices
    assert torch.equal(pruned.model.layers[1].mlp.up_proj.weight, full.model.layers[3].mlp.up_proj.weight)
    # the pruned forward is the full model's embeddings -> block 0 -> block 3 -> norm -> head
    x = torch.randint(3, 100, (2, 9))
    with torch.no_grad():
        h = full.model.embed_tokens(x)
        pos = torch.arange(9)[None].expand(2, -1)
        rope = full.model.rotary_emb(h, pos)
        import inspect

        from transformers.masking_utils import create_causal_mask

        # the cache argument is `cache` in transformers 5.2x, `past_key_values` in 5.1x
        cache_kw = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
        mask = create_causal_mask(config=full.config, inputs_embeds=h, attention_mask=torch.ones_like(x),
                                  position_ids=pos, **{cache_kw: None})
        for i in (0, 3):
            h = full.model.layers[i](h, attention_mask=mask, position_embeddings=rope, position_ids=pos)
            h = h[0] if isinstance(h, tuple) else h
        want = full.lm_head(full.model.norm(h))
        got = pruned(input_ids=x).logits
    assert torch.allclose(got, want, atol=1e-5)
    # saves and loads as a plain 2-layer model; generation with a KV cache works
    pruned.save_pretrained(tmp_path / "p")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval()
    assert again.config.num_hidden_layers == 2
    with torch.no_grad():
        assert torch.allclose(again(input_ids=x).logits, got, atol=1e-5)
        out = again.generate(input_ids=x[:1], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 12)


def test_choose_layers_drops_the_block_that_changes_the_hidden_state_least(llama4):
    """choose_layers measures, for each block, how far it moves the hidden state: a block whose
    residual updates are zeroed out (an identity) is the one dropped."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from potstill.students.causal_lm import LMRow, choose_layers

    model = AutoModelForCausalLM.from_pretrained(llama4).eval()
    tok = AutoTokenizer.from_pretrained(llama4)
    rows = [LMRow(f"text {i} about the weather", "sunny") for i in range(5)]
    with torch.no_grad():
        for i in (1, 2):  # blocks 1 and 2 add nothing to the residual stream
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    assert choose_layers(model, tok, rows, keep=2, batch_size=2) == [0, 3]
    assert choose_layers(model, tok, rows, keep=4) == [0, 1, 2, 3]
    assert model.training is False


def test_greedy_choice_drops_the_layers_whose_removal_costs_least(llama4):
    """choose_layers_greedy drops, round by round, the layer whose removal gives the lowest answer
    NLL (checked against models cut by hand); the last layer stays and the model is left whole."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from potstill.students.causal_lm import LMRow, choose_layers_greedy, mean_nll

    model = AutoModelForCausalLM.from_pretrained(llama4).eval()
    tok = AutoTokenizer.from_pretrained(llama4)
    rows = [LMRow(f"text {i} about the weather", "sunny and warm") for i in range(5)]
    before = mean_nll(model, tok, rows)

    def nll_without(kept: list[int]) -> float:
        return mean_nll(prune_decoder(copy.deepcopy(model), kept), tok, rows)

    current = [0, 1, 2, 3]
    for _ in range(2):  # by hand: one layer a round
        drop = min(current[:-1], key=lambda i: nll_without([j for j in current if j != i]))
        current = [j for j in current if j != drop]
    assert choose_layers_greedy(model, tok, rows, keep=2, rounds=2) == current and current[-1] == 3
    assert choose_layers_greedy(model, tok, rows, keep=1) == [3]
    assert len(model.model.layers) == 4 and mean_nll(model, tok, rows) == pytest.approx(before)


# -- chunked loss against the unchunked value ------------------------------------------------------

@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_chunked_kd_ce_equals_full_logits_value_and_gradient(kind):
    torch.manual_seed(0)
    N, H, V = 11, 8, 37
    hs = torch.randn(N, H, requires_grad=True)
    head = torch.nn.Linear(H, V + 3, bias=False)  # 3 padding rows past the tokenizer's size
    t_head = torch.nn.Linear(6, V, bias=False)
    ht = torch.randn(N, 6)
    tgt = torch.randint(0, V, (N,))
    w = torch.rand(N) + 0.5
    m = torch.rand(N) > 0.3
    kd, ce = chunked_kd_ce(hs, head, tgt, w, ht, t_head, m, kind, 2.0, 0.3, vocab_size=V, chunk_size=4)
    (kd + ce).backward()
    g_chunk, gw_chunk = hs.grad.clone(), head.weight.grad.clone()
    hs.grad = None
    head.weight.grad = None
    logits = head(hs)
    want_kd = token_kd_loss(logits[None, :, :V], t_head(ht)[None], m[None], kind, 2.0, 0.3)
    want_ce = (torch.nn.functional.cross_entropy(logits, tgt, reduction="none") * w).sum() / w.sum()
    (want_kd + want_ce).backward()
    assert torch.allclose(kd, want_kd, atol=1e-5) and torch.allclose(ce, want_ce, atol=1e-5)
    assert torch.allclose(hs.grad, g_chunk, atol=1e-5) and torch.allclose(head.weight.grad, gw_chunk, atol=1e-5)


def test_chunked_ce_only_and_no_grad():
    torch.manual_seed(1)
    hs, head = torch.randn(5, 4), torch.nn.Linear(4, 9)
    tgt, w = torch.randint(0, 9, (5,)), torch.ones(5)
    kd, ce = chunked_kd_ce(hs, head, tgt, w, chunk_size=2)
    assert float(kd.detach()) == 0.0
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(head(hs), tgt), atol=1e-6)


def test_hidden_state_kd_is_relative_mse_over_masked_positions():
    t = torch.ones(1, 3, 2) * 2.0
    s = t.clone()
    s[0, 2] = 100.0  # masked out: does not count
    mask = torch.tensor([[True, True, False]])
    assert float(hidden_state_kd([s], [t], mask)) == 0.0
    s[0, 0] = 0.0  # error 2*4 over teacher energy 2*(4+4)
    assert abs(float(hidden_state_kd([s], [t], mask)) - 0.5) < 1e-6
    with pytest.raises(ValueError, match="same width"):
        hidden_state_kd([torch.zeros(1, 3, 4)], [t], mask)


def test_lm_loss_chunked_path_equals_full_logits_path(llama4, tmp_path):
    """The training loss through causal_kd (kd_chunk > 0) equals the full-logits lm_loss."""
    from transformers import AutoTokenizer

    from potstill.students.causal_lm import LMRow, LMTrainConfig, build_causal_lm, collate, encode_row, lm_loss

    teacher_dir = build_tiny_llama(tmp_path / "t", layers=2, hidden=64, seed=3,
                                   tokenizer=AutoTokenizer.from_pretrained(llama4))
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    model, tok = build_causal_lm(str(llama4), "lora", r=4, dropout=0.0, layers=[0, 3])
    teacher.to(next(model.parameters()).device)
    rows = [LMRow("what is my balance", "balance"), LMRow("send money to mom", "transfer", weight=2.0),
            LMRow("", "the cat sat on the mat", "general")]
    b = to_model(collate(tok, [encode_row(tok, r, 64) for r in rows], rows), model)
    for obj, t in (("sequence", None), ("logit_kd", teacher)):
        full = lm_loss(model, b, LMTrainConfig(objective=obj, kd_chunk=0, temperature=2.0), t, len(tok))[0]
        chunked = lm_loss(model, b, LMTrainConfig(objective=obj, kd_chunk=3, temperature=2.0), t, len(tok))[0]
        assert torch.allclose(full, chunked, atol=1e-5), obj


def test_cached_teacher_states_give_the_same_loss_with_one_teacher_pass_per_row(llama4, tmp_path):
    """Several epochs of logit KD run the teacher's decoder once per row (its hidden states at the
    answer positions cached), not once per step, and train to the same losses."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from potstill.students.causal_kd import cache_teacher_hidden
    from potstill.students.causal_lm import (
        LMRow,
        LMTrainConfig,
        build_causal_lm,
        collate,
        encode_row,
        lm_loss,
        train_causal_lm,
    )

    teacher_dir = build_tiny_llama(tmp_path / "t", layers=2, hidden=64, seed=3,
                                   tokenizer=AutoTokenizer.from_pretrained(llama4))
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    rows = [LMRow(f"request number {i} " + "word " * (i % 4), f"answer {i % 3}") for i in range(6)]
    rows.append(LMRow("", "the cat sat on the mat", "general"))
    model, tok = build_causal_lm(str(llama4), "full", layers=[0, 3])
    device = next(model.parameters()).device
    teacher.to(device)
    enc = [encode_row(tok, r, 64) for r in rows]
    cfg = LMTrainConfig(objective="logit_kd", kd_chunk=3, temperature=2.0)
    live = lm_loss(model, to_model(collate(tok, enc, rows), model), cfg, teacher, len(tok))[0]
    cached = cache_teacher_hidden(teacher, enc, [r.kind != "general" for r in rows], 4,
                                  lambda e: collate(tok, e, rows[:len(e)]), torch.no_grad, device)
    with_cache = [{**e, **c} for e, c in zip(enc, cached)]
    got = lm_loss(model, to_model(collate(tok, with_cache, rows), model), cfg, teacher, len(tok))[0]
    assert torch.allclose(got, live, atol=1e-5)

    calls = []
    teacher.model.register_forward_hook(lambda *a: calls.append(1))
    histories = []
    for cache in (True, False):
        calls.clear()
        model, tok = build_causal_lm(str(llama4), "full", layers=[0, 3])
        cfg = LMTrainConfig(objective="logit_kd", max_steps=6, batch_size=3, log_every=1, kd_chunk=3,
                            cache_teacher=cache, seed=1)
        histories.append(train_causal_lm(model, tok, rows, cfg, teacher=teacher))
        assert len(calls) == (2 if cache else 6)  # 6 KD rows in batches of 3, once; else every step
    for a, b in zip(*(h["losses"] for h in histories)):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)


def test_hidden_state_kd_reads_the_paired_teacher_layers_from_the_cache(llama4):
    """Hidden-state KD of a pruned student: the cache keeps the paired teacher layers' states too
    (in bfloat16), so several epochs still run the teacher once per row, to about the same loss."""
    from transformers import AutoModelForCausalLM

    from potstill.students.causal_kd import cache_teacher_hidden
    from potstill.students.causal_lm import (
        LMRow,
        LMTrainConfig,
        build_causal_lm,
        collate,
        encode_row,
        lm_loss,
        train_causal_lm,
    )

    teacher = AutoModelForCausalLM.from_pretrained(llama4).eval()  # the model the student is cut from
    rows = [LMRow(f"request number {i} " + "word " * (i % 4), f"answer {i % 3}") for i in range(6)]
    rows.append(LMRow("", "the cat sat on the mat", "general"))  # no token KD, but hidden-state KD
    pairs = hidden_pairs([0, 2, 3])  # (1, 1): equal at the cut, (2, 3): not
    model, tok = build_causal_lm(str(llama4), "full", layers=[0, 2, 3])
    device = next(model.parameters()).device
    teacher.to(device)
    enc = [encode_row(tok, r, 64) for r in rows]
    cfg = LMTrainConfig(objective="logit_kd", kd_chunk=3, hidden_weight=1.0, hidden_pairs=pairs)
    live, live_parts = lm_loss(model, to_model(collate(tok, enc, rows), model), cfg, teacher, len(tok))
    cached = cache_teacher_hidden(teacher, enc, [r.kind != "general" for r in rows], 4, lambda e: collate(tok, e, rows[:len(e)]),
                                  torch.no_grad, device, layers=[t for _, t in pairs])
    assert all(c["t_layers"].shape == (2, len(e["input_ids"]), 32) for c, e in zip(cached, enc))
    loss, parts = lm_loss(model, to_model(collate(tok, [{**e, **c} for e, c in zip(enc, cached)], rows), model),
                          cfg, teacher, len(tok))
    assert live_parts["hidden"] > 0.01
    assert float(parts["hidden"]) == pytest.approx(float(live_parts["hidden"]), rel=1e-2)
    assert loss.item() == pytest.approx(live.item(), rel=1e-2)

    calls = []
    teacher.model.register_forward_hook(lambda *a: calls.append(1))
    histories = []
    for cache in (True, False):
        calls.clear()
        model, tok = build_causal_lm(str(llama4), "full", layers=[0, 2, 3])
        cfg = LMTrainConfig(objective="logit_kd", max_steps=6, batch_size=3, log_every=1, kd_chunk=3,
                            hidden_weight=1.0, hidden_pairs=pairs, cache_teacher=cache, seed=1)
        histories.append(train_causal_lm(model, tok, rows, cfg, teacher=teacher))
        assert len(calls) == (3 if cache else 6)  # 7 rows in batches of 3, once; else every step
    for a, b in zip(*(h["losses"] for h in histories)):
        assert a["hidden"] == pytest.approx(b["hidden"], rel=2e-2)


# -- through the train stage ------------------------------------------------------------------------

def test_pruned_student_trains_with_logit_and_hidden_kd_and_saves_whole(tmp_path):
    from conftest import make_rows, write_jsonl

    from potstill.config import load_spec
    from potstill.pipeline import run_paths
    from potstill.stages.train import train_student
    from potstill.students.causal_lm import load_causal_lm

    teacher = build_tiny_llama(tmp_path / "teacher", layers=4)
    as_json = lambda rows: [{"text": r["text"], "label": json.dumps({"intent": r["label"]})} for r in rows]  # noqa: E731
    write_jsonl(tmp_path / "data/train.jsonl", as_json(make_rows(24, 1)))
    write_jsonl(tmp_path / "data/test.jsonl", as_json(make_rows(6, 3)))
    (tmp_path / "potstill.yaml").write_text(f"""
name: tiny-prune
kind: generate
prompt_template: "{{text}}"
json_schema: {{type: object, properties: {{intent: {{type: string}}}}}}
data: {{train: data/train.jsonl, test: data/test.jsonl}}
teacher: {{kind: hf, model: {teacher}}}
student: {{kind: causal_lm, model: {teacher}, layers: [0, 2, 3], lora: {{r: 4, dropout: 0.0}}}}
train: {{objective: logit_kd, hidden_weight: 1.0, epochs: 1, lr: 0.01, batch_size: 8, precision: fp32,
        kd_chunk: 5}}
""")
    spec = load_spec(tmp_path / "potstill.yaml")
    run = run_paths(spec, tmp_path / "run")
    from potstill.stages.prepare import prepare_inputs

    inputs = prepare_inputs(spec, run)
    write_jsonl(run.filtered / "kept.jsonl", [{"id": ex.id, "text": ex.text, "label": ex.gold,
                                               "output": ex.gold} for ex in inputs.train])
    m = train_student(spec, run)
    assert m["layers"] == [0, 2, 3] and m["params"] < 0.9 * sum(
        p.numel() for p in load_causal_lm(teacher)[0].parameters())
    h = json.loads((run.student / "history.json").read_text())
    assert all("hidden" in x and "kd" in x for x in h["losses"])
    meta = json.loads((run.student / "potstill_student.json").read_text())
    assert meta["adapter"] is False and meta["layers"] == [0, 2, 3]  # merged: no base to point at
    model, _ = load_causal_lm(run.student)
    assert model.config.num_hidden_layers == 3
    # evaluated as JSON objects (field F1, validity) with batch-1 latency, teacher and student
    from potstill.stages.evaluate import evaluate

    report = evaluate(spec, run)
    assert report["json_fields"] is True
    for name, layers in (("teacher", 4), ("student", 3)):
        m = report["models"][name]
        assert m["layers"] == layers and 0 <= m["field_f1"] <= 1 and 0 <= m["json_validity"] <= 1
        assert m["latency_ms_p50"] > 0 and m["gen_tokens_per_s_b1"] > 0
    assert "field F1" in run.report_md.read_text()


@pytest.mark.parametrize("prune, want", [("block", [2, 3]), ("spread", [0, 3]), ("greedy", None)])
def test_a_layer_count_is_cut_by_block_drop_the_same_for_student_and_baseline(tmp_path, prune, want,
                                                                               monkeypatch):
    """`student.layers: 2` of a 4-layer model: `prune: block` drops the two blocks that change
    nothing (0 and 1 are zeroed to identities), `prune: spread` keeps the first and the last;
    the gold-only baseline gets the student's shape. `prune: greedy` is measured once per run."""
    from conftest import make_rows, write_jsonl
    from transformers import AutoModelForCausalLM

    from potstill.config import load_spec
    from potstill.pipeline import run_paths
    from potstill.stages.prepare import prepare_inputs
    from potstill.stages.train import train_student

    path = build_tiny_llama(tmp_path / "teacher", layers=4)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for i in (0, 1):
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    model.save_pretrained(path)
    write_jsonl(tmp_path / "data/train.jsonl", make_rows(16, 1))
    (tmp_path / "potstill.yaml").write_text(f"""
name: tiny-count
kind: generate
prompt_template: "{{text}}"
data: {{train: data/train.jsonl}}
teacher: {{kind: hf, model: {path}}}
student: {{kind: causal_lm, model: {path}, layers: 2, prune: {prune}, lora: {{method: full}}}}
train: {{objective: sequence, epochs: 1, batch_size: 8, precision: fp32}}
""")
    spec = load_spec(tmp_path / "potstill.yaml")
    run = run_paths(spec, tmp_path / "run")
    inputs = prepare_inputs(spec, run)
    write_jsonl(run.filtered / "kept.jsonl", [{"id": ex.id, "text": ex.text, "output": ex.gold}
                                              for ex in inputs.train])
    from potstill.students import causal_lm

    calls = []
    real = causal_lm.choose_layers_greedy
    monkeypatch.setattr(causal_lm, "choose_layers_greedy", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = train_student(spec, run)["layers"]
    assert got == (want or got) and len(got) == 2 and got[-1] == 3
    assert train_student(spec, run, "baseline")["layers"] == got
    assert len(calls) == (prune == "greedy")  # chosen once, read back for the baseline


def test_spec_layers_for_causal_students():
    from potstill.spec import TaskSpec

    base = {"name": "x", "kind": "generate", "data": {"train": "t.jsonl"},
            "teacher": {"kind": "hf", "model": "m"}}
    assert TaskSpec(**base, student={"kind": "causal_lm", "model": "m"}).student.layers is None
    assert TaskSpec(**base, student={"kind": "causal_lm", "model": "m", "layers": "auto"}).student.layers == "auto"
    assert TaskSpec(**base, student={"kind": "causal_lm", "model": "m", "layers": 10}).student.layers == 10
    with pytest.raises(ValueError, match="causal_lm"):
        TaskSpec(name="x", data={"train": "t.jsonl"}, student={"layers": "auto"})


# -- classify with a causal student: labels read from the answers ----------------------------------

def test_causal_students_get_a_one_format_prompt_by_default():
    from potstill.spec import DEFAULT_TEMPLATE, TaskSpec

    s = TaskSpec(name="x", data={"train": "t.jsonl"}, student={"kind": "causal_lm", "model": "m"})
    p = s.render_prompt("win a prize", ["ham", "spam"])
    assert p.endswith("Answer with the label only.") and "JSON" not in p
    assert TaskSpec(name="x", data={"train": "t.jsonl"}).prompt_template == DEFAULT_TEMPLATE
    own = TaskSpec(name="x", data={"train": "t.jsonl"}, prompt_template="{text}",
                   student={"kind": "causal_lm", "model": "m"})
    assert own.prompt_template == "{text}"


def test_causal_students_get_their_own_schedule_defaults():
    from potstill.spec import CAUSAL_LR, TaskSpec

    s = TaskSpec(name="x", data={"train": "t.jsonl"}, student={"kind": "causal_lm", "model": "m"})
    assert (s.train.lr, s.train.epochs, s.train.batch_size) == (CAUSAL_LR["lora"], 2, 8)
    full = TaskSpec(name="x", data={"train": "t.jsonl"}, train={"lr": 3e-4, "epochs": 1},
                    student={"kind": "causal_lm", "model": "m", "lora": {"method": "full"}})
    assert (full.train.lr, full.train.epochs, full.train.batch_size) == (3e-4, 1, 8)  # set values kept
    enc = TaskSpec(name="x", data={"train": "t.jsonl"})
    assert (enc.train.lr, enc.train.epochs, enc.train.batch_size) == (2e-4, 4, 32)  # encoders: their own defaults
    # the adaptive schedule, with a causal floor and cap (the encoders' floor is 500 steps)
    assert (s.train.schedule, s.train.min_steps, s.train.max_steps) == ("adaptive", 0, 2000)
    assert (enc.train.min_steps, enc.train.max_steps) == (500, 5000)


def test_causal_student_trains_on_the_spec_schedule(tmp_path, monkeypatch):
    """train_causal_student hands the spec's schedule to the training loop: adaptive with its
    cap; fixed without the adaptive cap (spec max_steps bounds adaptive runs only)."""
    from potstill.students import causal_lm as CL

    got: list = []
    monkeypatch.setattr(CL, "train_causal_lm", lambda *a, **k: got.append(a[3]) or (_ for _ in ()).throw(RuntimeError("stop")))
    monkeypatch.setattr(CL, "pruned_layers", lambda *a, **k: None)
    monkeypatch.setattr(CL, "build_causal_lm", lambda *a, **k: (torch.nn.Linear(1, 1), None))
    monkeypatch.setattr(CL, "count_trainable", lambda m: (1, 1))
    (tmp_path / "config.json").write_text("{}")
    from potstill.data.inputs import Example, Inputs
    from potstill.paths import RunPaths
    from potstill.spec import TaskSpec

    inputs = Inputs(train=[Example("1", "a", "x")], validation=[Example("2", "b", "y")], test=[],
                    labels=["x", "y"], dataset_hash="h")
    for sched, cap in (("adaptive", 2000), ("fixed", None)):
        spec = TaskSpec(name="x", labels=["x", "y"], data={"train": "t.jsonl"}, train={"schedule": sched},
                        student={"kind": "causal_lm", "model": str(tmp_path)})
        with pytest.raises(RuntimeError, match="stop"):
            CL.train_causal_student(spec, RunPaths(tmp_path / sched), inputs, "baseline")
        assert (got[-1].schedule, got[-1].max_steps, got[-1].min_steps, got[-1].patience) == (sched, cap, 0, 3)
