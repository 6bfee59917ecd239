"""The causal-LM student through the stages: train (dispatched from train_student), eval
(dispatched from evaluate), export — on a tiny Llama, with hand-written kept records."""

from __future__ import annotations

import json

import pytest
from causal_fixtures import build_tiny_llama, one_torch_thread  # noqa: F401 (autouse)
from conftest import make_rows, write_jsonl

from potstill.config import load_spec, run_paths
from potstill.stages.prepare import prepare_inputs

RATIONALES = {"balance": "it asks about money held", "transfer": "it asks to move money",
              "weather": "it asks about the sky"}


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("lms")
    student = build_tiny_llama(root / "student")
    teacher = build_tiny_llama(root / "teacher", hidden=64, seed=1,
                               tokenizer=AutoTokenizer.from_pretrained(student))
    return student, teacher


def _task(tmp_path, lms, extra=""):
    student, teacher = lms
    write_jsonl(tmp_path / "data/train.jsonl", make_rows(48, 1))
    write_jsonl(tmp_path / "data/validation.jsonl", make_rows(6, 2))
    write_jsonl(tmp_path / "data/test.jsonl", make_rows(9, 3))
    (tmp_path / "general.txt").write_text("\n".join(["the cat sat on the mat", "a quick brown fox jumps",
                                                     "rain falls on the plain", "birds sing at dawn"] * 3))
    (tmp_path / "potstill.yaml").write_text(f"""
name: tiny-gen
kind: generate
prompt_template: "{{text}}"
data: {{train: data/train.jsonl, validation: data/validation.jsonl, test: data/test.jsonl}}
teacher: {{kind: hf, model: {teacher}}}
student: {{kind: causal_lm, model: {student}, lora: {{r: 8, dropout: 0.0}}, max_new_tokens: 4}}
train: {{epochs: 1, lr: 0.02, batch_size: 8, precision: fp32, warmup_ratio: 0.0, general_data: general.txt,
        general_ratio: 0.2{extra}}}
eval: {{batch_size: 16}}
""")
    spec = load_spec(tmp_path / "potstill.yaml")
    run = run_paths(spec, tmp_path / "run")
    inputs = prepare_inputs(spec, run)
    kept = [{"id": ex.id, "text": ex.text, "gold": ex.gold, "label": ex.gold,
             "raw": f"Rationale: {RATIONALES[ex.gold]}\nAnswer: {ex.gold}"} for ex in inputs.train]
    write_jsonl(run.filtered / "kept.jsonl", kept)
    return spec, run


def test_rationale_student_train_eval_export(tmp_path, lms):
    from potstill.export import export_student
    from potstill.stages.evaluate import evaluate
    from potstill.stages.train import train_student

    spec, run = _task(tmp_path, lms, ", objective: rationale")
    m = train_student(spec, run)
    assert m["objective"] == "rationale" and m["method"] == "lora"
    h = json.loads((run.student / "history.json").read_text())
    # 48 inputs -> 96 rows (answer + rationale task), plus general text at 20%
    assert h["rows"] == 96 + h["general_rows"] and h["general_rows"] == 24
    assert h["general_ppl_base"] > 1 and h["general_ppl_student"] > 1
    assert (run.student / "adapter_model.safetensors").exists()
    assert train_student(spec, run)["fingerprint"] == m["fingerprint"]  # up to date: skipped

    report = evaluate(spec, run)
    st = report["models"]["student"]
    assert set(report["models"]) == {"teacher", "student"}
    assert 0 <= st["exact_match"] <= st["token_f1"] <= 1 and "agreement_with_teacher" in st
    assert st["general_ppl_base"] == h["general_ppl_base"]
    preds = [json.loads(l) for l in (run.root / "eval/predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 9 and preds[0]["student_confidence"]["min_logprob"] <= 0
    assert "exact match" in run.report_md.read_text()

    out = export_student(run.root, "adapter", tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}


def test_gold_baseline_and_logit_kd_with_local_teacher(tmp_path, lms):
    from potstill.stages.train import train_student

    spec, run = _task(tmp_path, lms, ", objective: logit_kd, kd_loss: jsd, epochs: 0.3")
    m = train_student(spec, run)
    assert m["objective"] == "logit_kd" and m["metrics"]["losses"][-1]["kd"] > 0
    b = train_student(spec, run, "baseline")
    assert b["objective"] == "gold" and (run.baseline / "adapter_config.json").exists()


def test_a_student_keeps_its_answer_ids_and_evaluates_over_them(tmp_path, lms):
    """Training keeps the token ids of every answer it taught beside the weights; with
    student.output_vocab answers+input the evaluation writes answers from those and the request's."""
    from transformers import AutoTokenizer

    from potstill.stages.evaluate import evaluate
    from potstill.stages.train import train_student
    from potstill.students.causal_lm import STUDENT_META, generate, load_causal_lm
    from potstill.students.output_vocab import answer_ids, request_ids

    spec, run = _task(tmp_path, lms, ", objective: gold, epochs: 0.3")
    train_student(spec, run)
    tok = AutoTokenizer.from_pretrained(run.student)
    kept = json.loads((run.student / STUDENT_META).read_text())["answer_ids"]
    golds = sorted({json.loads(l)["label"] for l in (tmp_path / "data/train.jsonl").read_text().splitlines()})
    assert kept == answer_ids(tok, golds)
    evaluate(spec, run)
    full = [json.loads(l)["student"] for l in (run.root / "eval/predictions.jsonl").read_text().splitlines()]
    spec.student.output_vocab = "answers+input"
    evaluate(spec, run)
    preds = [json.loads(l)["student"] for l in (run.root / "eval/predictions.jsonl").read_text().splitlines()]
    texts = [json.loads(l)["text"] for l in (tmp_path / "data/test.jsonl").read_text().splitlines()]
    model, _ = load_causal_lm(run.student)
    prompts = [spec.render_prompt(t, []) for t in texts]
    by_hand = generate(model, tok, prompts, spec.student.max_new_tokens, answer_ids=kept,
                       max_length=spec.student.max_length)
    assert preds == [g.text for g in by_hand] != full
    assert all(set(g.token_ids) <= set(kept) | request_ids(tok, p) for g, p in zip(by_hand, prompts))


def test_both_trains_on_gold_answers_with_token_kd_from_the_teacher(tmp_path, lms, monkeypatch):
    """objective both: the gold answer where the input has one (not the teacher's), gold inputs the
    filter dropped included, with token KD from the local causal-LM teacher along them."""
    from potstill.stages.train import train_student
    from potstill.students import causal_lm

    spec, run = _task(tmp_path, lms, ", objective: both, epochs: 0.2, general_ratio: 0.0")
    kept = [json.loads(x) for x in (run.filtered / "kept.jsonl").read_text().splitlines()]
    wrong = [{**r, "label": "weather" if r["gold"] != "weather" else "balance"} for r in kept[4:]]
    write_jsonl(run.filtered / "kept.jsonl", wrong)  # 4 inputs dropped, every teacher answer wrong
    seen = {}
    real = causal_lm.train_causal_lm

    def spy(model, tok, rows, cfg, teacher=None, *a, **k):
        seen.update(rows=rows, cfg=cfg, teacher=teacher)
        return real(model, tok, rows, cfg, teacher, *a, **k)

    monkeypatch.setattr(causal_lm, "train_causal_lm", spy)
    m = train_student(spec, run)
    gold = {r["text"]: r["gold"] for r in kept}
    assert sorted(r.completion for r in seen["rows"]) == sorted(gold.values())  # 48 rows, all gold
    assert seen["cfg"].objective == "logit_kd" and seen["teacher"] is not None
    assert m["objective"] == "both" and m["metrics"]["losses"][-1]["kd"] > 0


def test_logit_kd_refuses_a_teacher_of_another_tokenizer(tmp_path, lms):
    from causal_fixtures import build_tokenizer

    from potstill.stages.train import train_student

    other = build_tiny_llama(tmp_path / "other", tokenizer=build_tokenizer(["zebra quartz words"], 300))
    spec, run = _task(tmp_path, lms, ", objective: logit_kd")
    spec.teacher.model = str(other)
    with pytest.raises(ValueError, match="share a tokenizer"):
        train_student(spec, run)
    spec.teacher.kind = "fit"
    with pytest.raises(ValueError, match="causal-LM teacher"):
        train_student(spec, run)


def test_potstill_run_classify_with_a_causal_student(task_dir, lms):
    """The whole flow (fit teacher -> label -> filter -> causal student + baseline -> eval) for a
    classify task whose student is a causal LM generating the label."""
    from potstill.pipeline import run_all

    spec = load_spec(task_dir / "potstill.yaml", [
        "student.kind=causal_lm", f"student.model={lms[0]}", "student.max_new_tokens=4",
        "train.epochs=0.3", "train.lr=0.02", "prompt_template='{text}'",
        "student.layers=null"])  # the file's [0, 3] are the encoder's; a causal student would prune
    report = run_all(spec, task_dir / "run")
    assert set(report["models"]) == {"teacher", "student", "baseline"}
    assert report["models"]["teacher"]["accuracy"] > 0.5  # the fitted encoder teacher's labels
    for name in ("student", "baseline"):
        assert 0 <= report["models"][name]["accuracy"] <= 1
        # classify columns (report.html needs them: it failed with KeyError 'accuracy' before)
        assert 0 <= report["models"][name]["macro_f1"] <= report["models"][name]["accuracy"] + 1
    assert report["models"]["teacher"]["accuracy"] > 0.5
    from potstill.report import write_report

    html = write_report(task_dir / "run")["html"].read_text()
    assert "macro-F1" in html
    assert (task_dir / "run/student/adapter_config.json").exists()


def test_the_causal_baseline_trains_the_students_steps(tmp_path, lms):
    """The student's inputs (48 gold rows' and 48 more the teacher answered) outnumber the baseline's
    48 gold rows: on the adaptive schedule the baseline gets the student's 12 steps, not 6."""
    from potstill.stages.train import train_student

    spec, run = _task(tmp_path, lms, ", schedule: adaptive, min_steps: 0, eval_every: 100")
    kept = (run.filtered / "kept.jsonl").read_text().splitlines()
    extra = [json.dumps({**json.loads(r), "id": f"u{i}", "text": json.loads(r)["text"] + " please", "gold": None})
             for i, r in enumerate(kept)]
    (run.filtered / "kept.jsonl").write_text("\n".join(kept + extra) + "\n")
    b = train_student(spec, run, "baseline")
    assert b["objective"] == "gold" and b["metrics"]["steps"] == 12
