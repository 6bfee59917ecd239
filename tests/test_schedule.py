"""Adaptive schedules (potstill/schedule.py) and the training loop that runs them."""

import hashlib
import json
import math

import pytest
import torch
from test_student import LABELS, rows

from potstill.schedule import EarlyStopping, plan_schedule
from potstill.students import classifier as C


def test_fixed_schedule_is_the_old_epoch_count():
    s = plan_schedule(96, 16, mode="fixed", epochs=2, min_steps=1000, max_steps=5)
    assert (s.total_steps, s.steps_per_epoch, s.eval_every, s.patience) == (12, 6, 0, None)
    assert s.eval_due(6, epoch_end=True) and not s.eval_due(5, epoch_end=False)
    # old LambdaLR: linear warm-up, then linear decay to 0
    s = plan_schedule(1000, 10, mode="fixed", epochs=1, warmup_ratio=0.1)
    assert s.warmup_steps == 10 and s.lr_factor(0) == pytest.approx(0.1)
    assert s.lr_factor(10) == pytest.approx(1.0) and s.lr_factor(55) == pytest.approx(0.5)


def test_adaptive_budget_scales_with_data_within_floor_and_cap():
    kw = dict(mode="adaptive", epochs=4, min_steps=500, max_steps=3000)
    small, mid, big = (plan_schedule(n, 32, **kw) for n in (300, 8000, 100_000))
    assert small.total_steps == 500 and small.epochs > 4  # floor: small data gets more passes
    assert mid.total_steps == 4 * math.ceil(8000 / 32)  # in between: the epochs asked for
    assert big.total_steps == 3000 and big.epochs < 4  # cap
    assert small.total_steps < mid.total_steps < big.total_steps
    # validation about 8 times per run, however long an epoch is
    assert mid.eval_every == math.ceil(mid.total_steps / 8)
    assert small.eval_every == plan_schedule(40, 32, **kw).eval_every == math.ceil(500 / 8)
    with pytest.raises(ValueError, match="max_steps"):
        plan_schedule(100, 8, mode="adaptive", min_steps=50, max_steps=10)


def test_cosine_decay_and_eval_beat():
    s = plan_schedule(320, 32, mode="adaptive", epochs=10, warmup_ratio=0.1, decay="cosine",
                      eval_every=25, patience=2)
    assert s.total_steps == 100 and s.warmup_steps == 10
    assert s.lr_factor(10) == pytest.approx(1.0)
    assert s.lr_factor(55) == pytest.approx(0.5)
    assert s.lr_factor(99) < 0.01
    assert [k for k in range(1, 101) if s.eval_due(k, False)] == [25, 50, 75, 100]


def test_early_stopping_counts_validations_without_gain():
    e = EarlyStopping(patience=2)
    assert e.update(0.5) and e.update(0.6)
    assert not e.update(0.6) and not e.should_stop
    assert not e.update(0.55) and e.should_stop
    again = EarlyStopping.load(2, e.state())
    assert again.best == 0.6 and again.should_stop
    assert not EarlyStopping(None, bad=99).should_stop


def _digest(model) -> str:
    h = hashlib.sha256()
    for _, p in sorted(model.state_dict().items()):
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_training_stops_early_and_keeps_the_best_checkpoint(tiny_bert, tmp_path):
    """A validation score that peaks at the second validation and then falls: training stops after
    `patience` validations without gain, and the weights saved (and left in the model) are those
    of the peak."""
    scores = iter([0.5, 0.9, 0.6, 0.4, 0.3, 0.2, 0.1])
    seen = []

    def metric(accelerator, model, loader):
        seen.append(_digest(accelerator.unwrap_model(model)))
        return next(scores)

    model, tok = C.build_classifier(str(tiny_bert), LABELS, layers=[0, 3])
    cfg = C.TrainConfig(epochs=1, batch_size=8, lr=3e-3, precision="fp32", checkpoint_every=1000,
                        schedule="adaptive", min_steps=60, max_steps=200, eval_every=5, patience=2)
    res = C.train_classifier(model, tok, rows(48, 1), rows(15, 2), tmp_path / "s", cfg, "fp", metric_fn=metric)
    assert res["stopped_early"] and res["steps"] == 20  # 4 validations, every 5 steps, of 60 planned
    assert [h["step"] for h in res["history"]] == [5, 10, 15, 20]
    assert res["best_val_accuracy"] == 0.9 and res["best_step"] == 10
    assert res["schedule"]["total_steps"] == 60
    saved, _ = C.load_classifier(tmp_path / "s")
    assert _digest(saved) == seen[1]  # the checkpoint on disk is the peak's
    assert _digest(model) == seen[1]  # and it was restored into the model trained
    assert seen[1] != seen[3]


def test_a_model_that_stops_improving_stops(tiny_bert, tmp_path):
    """Real validation accuracy, learning rate 0: nothing improves after the first validation."""
    model, tok = C.build_classifier(str(tiny_bert), LABELS, layers=[0, 3])
    cfg = C.TrainConfig(epochs=1, batch_size=8, lr=1e-12, precision="fp32", checkpoint_every=1000,
                        schedule="adaptive", min_steps=100, eval_every=4, patience=3)
    res = C.train_classifier(model, tok, rows(48, 1), rows(15, 2), tmp_path / "s", cfg, "fp")
    assert res["stopped_early"] and res["steps"] == 16 and len(res["history"]) == 4


def test_adaptive_training_learns_on_small_data(tiny_bert, tmp_path):
    """The floor gives 48 rows (6 steps per epoch) many passes; one epoch alone does not learn."""
    cfg = dict(batch_size=8, lr=2e-3, precision="fp32", checkpoint_every=1000)
    torch.manual_seed(0)
    m, t = C.build_classifier(str(tiny_bert), LABELS, layers=[0, 3])
    one = C.train_classifier(m, t, rows(48, 1), rows(30, 2), tmp_path / "a", C.TrainConfig(epochs=1, **cfg), "fp")
    m, t = C.build_classifier(str(tiny_bert), LABELS, layers=[0, 3])
    ada = C.train_classifier(m, t, rows(48, 1), rows(30, 2), tmp_path / "b",
                             C.TrainConfig(epochs=1, schedule="adaptive", min_steps=90, patience=None, **cfg), "fp")
    assert one["steps"] == 6 and ada["steps"] > 6
    # a tiny model's exact accuracy varies with the tokenizer trained for the session: compare
    # against the one-epoch run rather than against a fixed bar
    assert ada["best_val_accuracy"] >= one["best_val_accuracy"] + 0.2


def test_the_head_learns_at_a_scaled_learning_rate(tiny_bert):
    """head_lr_scale puts the classifier and the pooler in their own optimizer groups at lr x
    scale; the body, biases and norms keep lr (norms and biases without weight decay)."""
    model, _ = C.build_classifier(str(tiny_bert), LABELS, layers=[0, 3])
    groups = C.param_groups(model, 1e-4, 0.01, head_lr_scale=10)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(lr_of) == len(names)  # every parameter in exactly one group
    assert lr_of[id(names["classifier.weight"])] == (pytest.approx(1e-3), 0.01)
    assert lr_of[id(names["classifier.bias"])] == (pytest.approx(1e-3), 0.0)
    assert lr_of[id(names["bert.pooler.dense.weight"])] == (pytest.approx(1e-3), 0.01)
    assert lr_of[id(names["bert.encoder.layer.0.attention.self.query.weight"])] == (1e-4, 0.01)
    assert lr_of[id(names["bert.embeddings.LayerNorm.weight"])] == (1e-4, 0.0)
    # scale 1: the same rate for all
    assert {g["lr"] for g in C.param_groups(model, 1e-4, 0.01)} == {1e-4}


def test_the_head_scale_reaches_the_optimizer(tiny_bert, tmp_path, monkeypatch):
    """train.head_lr_scale is what train_classifier's optimizer gets for the head."""
    seen = []
    real = torch.optim.AdamW

    def spy(groups, **kw):
        seen.extend(groups)
        return real(groups, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    model, tok = C.build_classifier(str(tiny_bert), LABELS, layers=[0, 3])
    cfg = C.TrainConfig(epochs=1, batch_size=8, lr=1e-3, head_lr_scale=5, precision="fp32",
                        checkpoint_every=1000)
    C.train_classifier(model, tok, rows(16, 1), rows(8, 2), tmp_path / "s", cfg, "fp")
    assert sorted({round(g["lr"], 6) for g in seen}) == [1e-3, 5e-3]
    # a student cut from that trained model keeps its head, which is not new: one rate for all
    seen.clear()
    student, tok = C.build_classifier(str(tmp_path / "s"), LABELS, layers=[0])
    assert student.potstill_new_head is False and model.potstill_new_head is True
    C.train_classifier(student, tok, rows(16, 1), rows(8, 2), tmp_path / "t", cfg, "fp")
    assert {round(g["lr"], 6) for g in seen} == {1e-3}


def test_validation_batches_come_in_length_order(tiny_bert, tmp_path):
    """Validation rows reach the metric in length order, so each batch pads to a near-equal width
    (in file order every batch pads to its longest text); the score still covers every row."""
    texts = [("word " * n).strip() for n in (9, 1, 7, 2, 12, 3, 8, 4, 11, 5, 10, 6)]
    val = [C.TrainRow(t, i % len(LABELS)) for i, t in enumerate(texts)]
    seen = []

    def metric(accelerator, model, loader):
        for batch in loader:
            seen.append([int(m.sum()) for m in batch["attention_mask"]])
        return 0.5

    model, tok = C.build_classifier(str(tiny_bert), LABELS, layers=[0, 3])
    cfg = C.TrainConfig(epochs=1, batch_size=8, lr=1e-3, precision="fp32", checkpoint_every=1000,
                        eval_batch_size=4)
    C.train_classifier(model, tok, rows(16, 1), val, tmp_path / "s", cfg, "fp", metric_fn=metric)
    lengths = [n for b in seen for n in b]
    assert len(lengths) == len(val) and lengths == sorted(lengths)


def test_throughput_is_timed_on_a_bounded_sample(tiny_bert, monkeypatch):
    """The evaluation has scored every text already: batch throughput is timed on at most
    THROUGHPUT_SAMPLE of them, not on a second pass over all."""
    timed = []
    real = C.predict_logits

    def spy(model, tok, texts, **kw):
        timed.append(len(texts))
        return real(model, tok, texts, **kw)

    monkeypatch.setattr(C, "THROUGHPUT_SAMPLE", 20)
    monkeypatch.setattr(C, "predict_logits", spy)
    model, tok = C.build_classifier(str(tiny_bert), LABELS, layers=[0, 3])
    out = C.batch_throughput(model, tok, [f"text number {i}" for i in range(50)], 8, 16)
    assert timed == [20] and out["throughput_per_s"] > 0
    assert C.throughput_sample(["a", "b"]) == ["a", "b"]


def test_the_baseline_trains_at_least_the_students_steps(tmp_path):
    """A baseline with fewer rows than the student (whose inputs also count unlabelled or
    augmented ones) gets the student's step budget as its floor; unchanged otherwise. Under
    objective both the student also trains on the gold inputs the filter dropped: they count."""
    from potstill.spec import TrainSpec
    from potstill.students.base import baseline_train

    t = TrainSpec(schedule="adaptive", epochs=2, batch_size=8, min_steps=0, max_steps=100)
    kept = tmp_path / "kept.jsonl"
    own = [f"g{i}" for i in range(40)]
    assert baseline_train(t, kept, own) is t  # no records yet (`train --baseline` before labelling)
    kept.write_text("".join(f'{{"text": "u{i}"}}\n' for i in range(80)))
    assert baseline_train(t, kept, own).min_steps == 20  # 2 passes over 80 inputs in batches of 8
    assert baseline_train(t, kept, [f"g{i}" for i in range(80)]) is t  # as many rows: left as it is
    # both: 80 kept + the 40 gold inputs the filter dropped = 120 inputs -> 30 steps
    assert baseline_train(t.model_copy(update={"objective": "both"}), kept, own).min_steps == 30
    kept.write_text("".join(f'{{"text": "g{i}"}}\n' for i in range(20)) +
                    "".join(f'{{"text": "u{i}"}}\n' for i in range(60)))
    # both: 80 kept (20 of them gold) + the 20 gold the filter dropped = 100 -> 2 x 13 batches
    assert baseline_train(t.model_copy(update={"objective": "both"}), kept, own).min_steps == 26
    kept.write_text('{"text": "x"}\n' * 800)
    assert baseline_train(t, kept, own).min_steps == 100  # the cap holds
    assert baseline_train(t.model_copy(update={"min_steps": 500, "max_steps": 1000}), kept, own).min_steps == 500
    fixed = t.model_copy(update={"schedule": "fixed"})
    assert baseline_train(fixed, kept, own) is fixed


def test_a_run_gives_its_baseline_the_students_steps(task_dir):
    """With data.augment the student learns from twice the inputs the gold-only baseline has; on
    the adaptive schedule both train the same number of steps."""
    from potstill.config import load_spec, run_paths
    from potstill.data.inputs import read_jsonl
    from potstill.pipeline import run_all

    sets = ["data.augment=1", "train.schedule=adaptive", "train.epochs=1", "train.min_steps=0",
            "train.max_steps=200", "train.patience=null", "train.eval_every=1000"]
    spec = load_spec(task_dir / "potstill.yaml", sets)
    run = run_paths(spec, task_dir / "run")
    run_all(spec, run.root)
    kept = len(read_jsonl(run.filtered / "kept.jsonl"))
    assert kept > 300  # the 240 gold inputs and their perturbed copies
    steps = {m: (json.loads((run.root / m / "manifest.json").read_text())["metrics"]["steps"])
             for m in ("student", "baseline")}
    assert steps["student"] == math.ceil(kept / 8)
    assert steps["baseline"] == steps["student"]  # not 30, the 240 gold rows' one pass


def test_frozen_word_embeddings_stay_as_they_were(tiny_bert, tmp_path, monkeypatch):
    """train.freeze_embeddings: the word-embedding matrix gets no gradient and no optimizer state,
    and comes out of training (and off the disk) unchanged; the rest of the model learns."""
    seen = []
    real = torch.optim.AdamW

    def spy(groups, **kw):
        seen.extend(p for g in groups for p in g["params"])
        return real(groups, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    model, tok = C.build_classifier(str(tiny_bert), LABELS, layers=[0, 3])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = C.TrainConfig(epochs=2, batch_size=8, lr=3e-3, precision="fp32", checkpoint_every=1000,
                        freeze_embeddings=True)
    C.train_classifier(model, tok, rows(32, 1), rows(8, 2), tmp_path / "s", cfg, "fp")
    word = model.get_input_embeddings().weight
    assert all(p is not word for p in seen) and len(seen) == len(before) - 1
    after = dict(model.named_parameters())
    assert torch.equal(after["bert.embeddings.word_embeddings.weight"], before["bert.embeddings.word_embeddings.weight"])
    assert not torch.equal(after["bert.embeddings.position_embeddings.weight"],
                           before["bert.embeddings.position_embeddings.weight"])
    assert not torch.equal(after["bert.encoder.layer.0.attention.self.query.weight"],
                           before["bert.encoder.layer.0.attention.self.query.weight"])
    saved, _ = C.load_classifier(tmp_path / "s")
    assert torch.equal(saved.get_input_embeddings().weight, before["bert.embeddings.word_embeddings.weight"])


@pytest.mark.parametrize("where", ["teacher.fit", "train"])
def test_the_spec_freezes_embeddings_where_it_says(where, task_dir, monkeypatch):
    """teacher.fit.freeze_embeddings reaches the teacher's fit, train.freeze_embeddings the student
    and the baseline; each leaves the other alone."""
    from potstill.config import load_spec, run_paths
    from potstill.pipeline import run_all

    cfgs = {}
    real = C.train_classifier

    def spy(model, tok, train_rows, val_rows, out_dir, cfg, *a, **kw):
        cfgs[out_dir.name] = cfg.freeze_embeddings
        return real(model, tok, train_rows, val_rows, out_dir, cfg, *a, **kw)

    monkeypatch.setattr(C, "train_classifier", spy)
    other = "train" if where == "teacher.fit" else "teacher.fit"
    spec = load_spec(task_dir / "potstill.yaml", [f"{where}.freeze_embeddings=true",
                                                  f"{other}.freeze_embeddings=false",
                                                  "train.epochs=1", "teacher.fit.epochs=1"])
    run = run_paths(spec, task_dir / "run")
    run_all(spec, run.root)
    frozen = where == "train"
    assert cfgs == {run.teacher.name: not frozen, "student": frozen, "baseline": frozen}


def test_frozen_embeddings_are_off_and_leave_earlier_fingerprints_alone():
    """Off by default (docs/RESULTS.md: 0.6 point lower on held-out data). While off, the option
    is not part of what finished work's fingerprint covers, so a teacher fitted or a student
    trained before the option existed stays up to date; on, it is."""
    from potstill.spec import FitSpec, TrainSpec

    for part in (FitSpec(), TrainSpec()):
        assert part.freeze_embeddings is False
        assert "freeze_embeddings" not in part.identity()
        assert set(part.identity()) == set(part.model_dump()) - {"freeze_embeddings"}
        on = part.model_copy(update={"freeze_embeddings": True})
        assert on.identity(exclude={"lr"})["freeze_embeddings"] is True and "lr" not in on.identity(exclude={"lr"})
