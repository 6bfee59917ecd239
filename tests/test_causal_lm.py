"""Causal-LM student: formatting, masking, training objectives, LoRA round trip, generation."""

from __future__ import annotations

import math

import pytest
import torch
from causal_fixtures import build_tiny_llama, build_tokenizer, one_torch_thread, to_model  # noqa: F401 (autouse)

from potstill.students.causal_lm import (
    IGNORE,
    LABEL_TAG,
    RATIONALE_TAG,
    LMRow,
    LMTrainConfig,
    build_causal_lm,
    check_shared_vocab,
    collate,
    encode_row,
    generate,
    is_peft,
    load_causal_lm,
    load_teacher_lm,
    merge_adapters,
    mix_general,
    rationale_rows,
    save_causal_lm,
    sequence_logprob_stats,
    split_rationale,
    task_prompt,
    topk_from_token_logprobs,
    train_causal_lm,
)

ROWS = [LMRow("what is my balance", "balance"), LMRow("send money to mom", "transfer"),
        LMRow("will it rain tomorrow", "weather"), LMRow("how much money is in my account", "balance")]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, tiny_lm):
    """A wider Llama on the same tokenizer, fully fine-tuned on ROWS (so it answers them)."""
    from transformers import AutoTokenizer

    path = build_tiny_llama(tmp_path_factory.mktemp("tiny-teacher"), layers=2, hidden=64,
                            tokenizer=AutoTokenizer.from_pretrained(tiny_lm), seed=1)
    model, tok = build_causal_lm(str(path), "full")
    train_causal_lm(model, tok, ROWS * 6, LMTrainConfig(max_steps=30, batch_size=8, lr=1e-2, warmup_ratio=0))
    model.save_pretrained(path)
    return path


def _logits(model, tok, text="what is my balance"):
    enc = to_model(dict(tok(text, return_tensors="pt")), model)
    with torch.no_grad():
        return model(**enc).logits.cpu()


def test_completion_only_masking(tiny_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    e = encode_row(tok, LMRow("what is my balance", "balance"), max_length=64)
    prompt_ids = tok("what is my balance\n")["input_ids"]
    completion = tok("balance", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert e["input_ids"] == prompt_ids + completion
    assert e["labels"] == [IGNORE] * len(prompt_ids) + completion  # prompt tokens get -100
    # general text: loss on every token after BOS
    g = encode_row(tok, LMRow("", "the cat sat", "general"), 64)
    assert g["labels"][0] == IGNORE and all(x != IGNORE for x in g["labels"][1:])
    # a too-long prompt is cut from the left, the completion kept whole
    long = encode_row(tok, LMRow("what is my balance " * 20, "balance"), max_length=12)
    assert len(long["input_ids"]) == 12 and long["labels"][-len(completion):] == completion
    b = collate(tok, [e, g], [LMRow("a", "b"), LMRow("", "c", "general")])
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape
    assert b["kd"].tolist() == [True, False]
    assert (b["labels"][b["attention_mask"] == 0] == IGNORE).all()  # padding never counts


def test_rationale_formatting():
    rows = rationale_rows("what is my balance", "asks about money held", "balance", 0.5)
    assert [(r.prompt, r.completion, r.kind, r.weight) for r in rows] == [
        (f"{LABEL_TAG} what is my balance", "balance", "task", 1.0),
        (f"{RATIONALE_TAG} what is my balance", "asks about money held", "rationale", 0.5)]
    assert task_prompt("x", "rationale") == f"{LABEL_TAG} x" and task_prompt("x", "sequence") == "x"
    assert split_rationale("Rationale: asks about money.\nIt is held.\nAnswer: balance") == (
        "asks about money.\nIt is held.", "balance")
    assert split_rationale("balance") is None
    assert split_rationale("Answer: balance") is None  # no rationale to learn


def test_sequence_training_reduces_loss(tiny_lm):
    model, tok = build_causal_lm(str(tiny_lm), "lora", r=8, alpha=16, dropout=0.0)
    cfg = LMTrainConfig(max_steps=12, batch_size=4, lr=3e-2, log_every=1, warmup_ratio=0.0)
    h = train_causal_lm(model, tok, ROWS * 4, cfg, val_rows=ROWS)
    losses = [x["loss"] for x in h["losses"]]
    assert losses[-1] < losses[0] - 0.2, losses
    assert h["tokens_per_s"] > 0 and h["steps"] == 12 and h["val_nll"] < losses[0]


def test_logit_kd_against_local_teacher(tiny_lm, tiny_teacher):
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        model, tok = build_causal_lm(str(tiny_lm), "full")
        teacher = load_teacher_lm(str(tiny_teacher), tok)
        cfg = LMTrainConfig(objective="logit_kd", kd_loss=kind, max_steps=8, batch_size=4, lr=1e-2,
                            log_every=1, warmup_ratio=0.0, ce_weight=0.0)
        h = train_causal_lm(model, tok, ROWS * 2, cfg, teacher=teacher)
        kd = [x["kd"] for x in h["losses"]]
        assert kd[-1] < 0.97 * kd[0], (kind, kd)  # reverse KL and JSD move slowest from uniform


def test_vocabulary_mismatch_is_a_clear_error(tiny_lm, tmp_path):
    from transformers import AutoTokenizer

    other_tok = build_tokenizer(["completely different words here", "zebra quartz"], vocab_size=300)
    other = build_tiny_llama(tmp_path / "other", tokenizer=other_tok)
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    with pytest.raises(ValueError, match="share a tokenizer"):
        load_teacher_lm(str(other), tok)
    with pytest.raises(ValueError, match="share a tokenizer"):
        check_shared_vocab(tok, other_tok)
    assert check_shared_vocab(tok, AutoTokenizer.from_pretrained(tiny_lm)) == len(tok)


def test_topk_tail_training_from_api_logprobs(tiny_lm):
    model, tok = build_causal_lm(str(tiny_lm), "lora", r=8, dropout=0.0)
    ids = tok("balance", add_special_tokens=False)["input_ids"]
    toks = tok.convert_ids_to_tokens(ids)
    # an OpenAI-style record: each generated token with two alternatives, in the teacher's vocabulary
    record = [(t, math.log(0.7), [(t, math.log(0.7)), (tok.convert_ids_to_tokens(5), math.log(0.2))])
              for t in toks]
    topk = topk_from_token_logprobs(tok, record)
    assert topk is not None and [a[0] for a in topk[0]] == ids and all(a[1] == 5 for a in topk[0])
    assert topk_from_token_logprobs(tok, [("not-a-single-token-anywhere", -0.1, [])]) is None
    rows = [LMRow("what is my balance", "balance", topk=topk)] * 8
    cfg = LMTrainConfig(objective="logit_kd", max_steps=8, batch_size=4, lr=3e-2, log_every=1,
                        warmup_ratio=0.0, ce_weight=0.0)
    h = train_causal_lm(model, tok, rows, cfg)
    kd = [x["kd"] for x in h["losses"]]
    assert kd[0] > 0 and kd[-1] < kd[0], kd
    with pytest.raises(ValueError, match="top-k logprobs"):
        train_causal_lm(model, tok, ROWS, cfg)  # no teacher and no top-k data


def test_lora_save_load_merge_round_trip(tiny_lm, tmp_path):
    model, tok = build_causal_lm(str(tiny_lm), "lora", r=4, dropout=0.0)
    train_causal_lm(model, tok, ROWS * 2, LMTrainConfig(max_steps=3, batch_size=4, lr=5e-2))
    before = _logits(model, tok)
    save_causal_lm(model, tok, tmp_path / "s", meta={"objective": "sequence"})
    assert (tmp_path / "s/adapter_config.json").exists() and (tmp_path / "s/adapter_model.safetensors").exists()
    loaded, tok2 = load_causal_lm(tmp_path / "s")
    assert is_peft(loaded)
    torch.testing.assert_close(_logits(loaded, tok2), before)
    with loaded.disable_adapter():  # the adapter changed something (trained B != 0)
        assert not torch.allclose(_logits(loaded, tok2), before)
    merged = merge_adapters(loaded)
    assert not is_peft(merged)
    torch.testing.assert_close(_logits(merged, tok2), before, atol=1e-5, rtol=1e-4)
    merged2, _ = load_causal_lm(tmp_path / "s", merge=True)
    torch.testing.assert_close(_logits(merged2, tok2), before, atol=1e-5, rtol=1e-4)


def test_prefix_and_prompt_tuning_train_and_refuse_merge(tiny_lm):
    for method in ("prefix", "prompt"):
        model, tok = build_causal_lm(str(tiny_lm), method, num_virtual_tokens=4)
        h = train_causal_lm(model, tok, ROWS, LMTrainConfig(max_steps=2, batch_size=4))
        assert h["steps"] == 2
        with pytest.raises(ValueError, match="cannot be merged"):
            merge_adapters(model)


def test_qlora_on_cpu_names_the_option(tiny_lm):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="student.lora.quantize_4bit"):
        build_causal_lm(str(tiny_lm), "lora", quantize_4bit=True)


def test_generation_with_logprobs(tiny_teacher):
    model, tok = load_causal_lm(tiny_teacher)  # trained on ROWS
    gens = generate(model, tok, ["what is my balance", "send money to mom"], max_new_tokens=6)
    assert [g.text for g in gens] == ["balance", "transfer"]
    for g in gens:
        assert g.token_logprobs and all(lp <= 0 for lp in g.token_logprobs)
        assert g.min_logprob <= g.mean_logprob <= 0
    assert sequence_logprob_stats([-0.1, -0.5]) == {"mean_logprob": pytest.approx(-0.3), "min_logprob": -0.5}


def test_general_mixing_and_perplexity_against_base(tiny_lm):
    rows = mix_general(ROWS * 3, ["the cat sat on the mat", "a quick brown fox jumps"], 0.25, seed=0)
    assert sum(r.kind == "general" for r in rows) == 4 and len(rows) == 16
    assert mix_general(ROWS, ["x"], 0.0, 0) == ROWS
    model, tok = build_causal_lm(str(tiny_lm), "full")
    h = train_causal_lm(model, tok, ROWS * 4, LMTrainConfig(max_steps=10, batch_size=4, lr=3e-2),
                        general_eval=["the cat sat on the mat"])
    assert h["general_ppl_base"] > 1 and h["general_ppl_student"] > 1
    assert h["general_ppl_ratio"] == pytest.approx(h["general_ppl_student"] / h["general_ppl_base"], rel=1e-3)


def test_chat_template_prompts_get_no_extra_bos(tiny_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    tok.chat_template = "{{ bos_token }}{% for m in messages %}user: {{ m['content'] }}\n{% endfor %}assistant:"
    e = encode_row(tok, LMRow("what is my balance", "balance"), 64)
    assert e["input_ids"].count(tok.bos_token_id) == 1
    assert tok.decode(e["input_ids"][:e["prompt_len"]]) == "<s>user: what is my balance\nassistant:"


def test_adaptive_schedule_stops_early_and_keeps_the_best_weights(tiny_lm, monkeypatch):
    """train.schedule adaptive for a causal student: the validation NLL every eval_every steps,
    a stop once `patience` validations bring no new best, and the weights of the best one kept.
    The validation scores are scripted (best at the 2nd validation, then worse) so the stop and
    the kept step are known; the weights seen at each validation are recorded to check them."""
    from potstill.students import causal_lm

    scripted = iter([2.0, 1.0, 1.5, 1.7, 1.9, 2.5, 3.0])
    seen: list[dict[str, torch.Tensor]] = []

    def fake_nll(model, tokenizer, rows, max_length=256, batch_size=16, precision="fp32"):
        seen.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return next(scripted)

    monkeypatch.setattr(causal_lm, "mean_nll", fake_nll)
    model, tok = build_causal_lm(str(tiny_lm), "lora", r=8, alpha=16, dropout=0.0)
    cfg = LMTrainConfig(schedule="adaptive", epochs=10, min_steps=0, max_steps=40, eval_every=2,
                        patience=2, batch_size=4, lr=3e-2, warmup_ratio=0.0)
    h = train_causal_lm(model, tok, ROWS * 2, cfg, val_rows=ROWS)
    assert [v["step"] for v in h["val_history"]] == [2, 4, 6, 8]  # stopped after 2 without gain
    assert h["stopped_early"] and h["best_step"] == 4 and h["steps"] == 8
    assert h["best_val_nll"] == 1.0 and h["schedule"]["mode"] == "adaptive"
    final = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(final[n], seen[1][n]) for n in final)  # the 2nd validation's weights
    assert not all(torch.equal(final[n], seen[3][n]) for n in final)  # not the last ones


def test_causal_schedule_plans(tiny_lm):
    """fixed: exactly max_steps when given, else epochs; no validation during training. adaptive:
    epochs clamped to [min_steps, max_steps]; nothing to stop on without validation rows."""
    from potstill.students.causal_lm import causal_schedule

    assert causal_schedule(100, LMTrainConfig(max_steps=7, batch_size=10), True).total_steps == 7
    fixed = causal_schedule(100, LMTrainConfig(epochs=2, batch_size=10), True)
    assert fixed.total_steps == 20 and fixed.eval_every < 0 and fixed.patience is None
    a = causal_schedule(100, LMTrainConfig(schedule="adaptive", epochs=2, batch_size=10, min_steps=50,
                                           max_steps=400, patience=3), True)
    assert a.total_steps == 50 and a.patience == 3 and a.eval_every == 7  # ceil(50 / 8)
    capped = causal_schedule(10_000, LMTrainConfig(schedule="adaptive", epochs=2, batch_size=10,
                                                   max_steps=400, patience=3), True)
    assert capped.total_steps == 400
    blind = causal_schedule(100, LMTrainConfig(schedule="adaptive", epochs=2, batch_size=10, patience=3), False)
    assert blind.eval_every < 0 and blind.patience is None


def test_answers_decode_over_the_answer_and_request_tokens_only(tiny_lm, tiny_teacher):
    """student.output_vocab answers+input: each step's token is the best of the allowed ids (the
    answers' tokens and the request's), its logprob normalised over them; the output layer is the
    model's own again afterwards; a trained model's answers inside the set do not change."""
    from potstill.students.output_vocab import answer_ids, request_ids

    model, tok = load_causal_lm(tiny_lm)  # random weights: its full-vocabulary answers wander
    ids = answer_ids(tok, ["balance", "transfer"])
    assert tok.eos_token_id in ids
    prompt = "send money to mom"
    allowed = set(ids) | request_ids(tok, prompt)
    assert len(allowed) < len(tok) // 4
    head = model.get_output_embeddings()
    full = generate(model, tok, [prompt], max_new_tokens=6)[0]
    assert not set(full.token_ids) <= allowed  # the test means something: unrestricted, it leaves the set
    (g,) = generate(model, tok, [prompt], max_new_tokens=6, answer_ids=ids)
    assert model.get_output_embeddings() is head
    got = g.token_ids
    assert got and set(got) <= allowed
    # the first step by hand: argmax and log-softmax over the allowed ids of the full logits
    from potstill.students.causal_lm import prompt_ids

    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids(tok, prompt)])).logits[0, -1]
    idx = torch.tensor(sorted(allowed))
    lp = torch.log_softmax(logits[idx], -1)
    assert got[0] == int(idx[lp.argmax()])
    assert g.token_logprobs[0] == pytest.approx(float(lp.max()), abs=1e-4)

    trained, ttok = load_causal_lm(tiny_teacher)
    gens = generate(trained, ttok, ["what is my balance", "send money to mom"], max_new_tokens=6,
                    answer_ids=answer_ids(ttok, [r.completion for r in ROWS]))
    assert [x.text for x in gens] == ["balance", "transfer"]


def test_request_ids_cover_a_value_copied_into_a_json_string():
    """A value inside a JSON string follows a quote, with no leading space: the request's words
    count alone and after a space, and so do their letter / digit / punctuation pieces."""
    from potstill.students.output_vocab import request_ids

    tok = build_tokenizer(["play jazz in boston at 5pm", '{"city": "boston", "time": "5pm"}'])
    ids = request_ids(tok, "play jazz in boston at 5pm.")
    for value in ["boston", " boston", "5", "pm", "5pm"]:
        assert set(tok(value, add_special_tokens=False)["input_ids"]) <= ids, value


def test_decode_ids_needs_the_answer_ids_a_student_keeps(tmp_path):
    from potstill.errors import PotstillError
    from potstill.students.output_vocab import decode_ids

    assert decode_ids({}, "full", tmp_path) is None
    assert decode_ids({"answer_ids": [3, 5]}, "answers+input", tmp_path) == [3, 5]
    with pytest.raises(PotstillError, match="keeps no answer vocabulary.*output_vocab: full"):
        decode_ids({}, "answers+input", tmp_path)
