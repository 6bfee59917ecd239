"""The loop: `potstill iterate` (a new round from the review queue, promoted only if not worse) and
`potstill rollback`.

A round is a versioned folder; the run's `student/` (with `calibration.json` and
`calibration/ood_stats.npz`) is always a copy of the deployed round, so `serve`, `calibrate`,
`eval` and `report` need not know about rounds:

    RUN/rounds/rounds.json             which round is deployed, the history, the gate set's hash
    RUN/rounds/round-000/              the student the first `iterate` found deployed
    RUN/rounds/round-001/
        records/kept.jsonl, soft.npy   what it learned from: the round it was built on + the queue
        records/from_queue.jsonl       the queue cases taken, each with its label's source
        records/skipped_queue.jsonl    queue items not taken, each with the reason
        student/                       the candidate (a Hugging Face model folder)
        calibration.json, calibration/ its calibration, once deployed
        gate.json                      candidate vs deployed on the fixed gate set, and the verdict

`iterate`: new round = the deployed round's records + the queue items no promoted round has used
yet, labelled by the teacher (human feedback wins over the teacher; cached teacher answers cost
nothing), retrain with the spec's recipe, evaluate the candidate and the deployed student on the
fixed gate set (the test split by default), promote only if the gate metric is not worse than the
deployed one's by more than `margin`. A promoted round marks its queue items used; a refused round
leaves them for the next one. `rollback` deploys the round deployed before the current one.
A running server keeps the student it loaded: restart it to serve the new round.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import numpy as np
import typer

from .data.inputs import read_jsonl, write_jsonl
from .errors import MissingOutput, PotstillError
from .manifest import read_manifest, write_manifest
from .paths import CALIBRATION_DIR, CALIBRATION_JSON, KEPT, SOFT, RunPaths
from .progress import log
from .spec import TaskSpec
from .teachers.base import Answer

STATE = "rounds.json"
RECORDS = "records"
GATE = "gate.json"


# -- pure pieces ---------------------------------------------------------------------------------
@dataclass
class Case:
    """One training row taken from the queue."""

    text: str
    label: str
    probs: list[float] | None
    """The teacher's distribution over the labels; None for a human label (hard target only)."""
    source: str
    """feedback | teacher (the teacher's answer, cached or asked now) | teacher_label (the label
    the queue kept when no distribution could be had)."""
    queue_ids: list[int] = field(default_factory=list)


def cases_from_queue(items: Sequence[dict[str, Any]], labels: Sequence[str],
                     answers: dict[str, Answer], held_out: set[str]
                     ) -> tuple[list[Case], list[dict[str, Any]]]:
    """Queue items -> training cases, one per distinct input, and the items skipped with a reason.

    Human feedback naming a label wins over the teacher. Feedback that only says "wrong" takes the
    teacher's label when it differs from the answer the user saw. Other items (escalations,
    degraded answers, disagreements) take the teacher's answer from `answers` (by input), else the
    teacher label the queue kept. Inputs of the held-out splits are never trained on: the gate set
    must stay unseen. A skip's reason is a fixed sentence, then any detail of the item in
    parentheses (see `skip_summary`, which counts them by the sentence).
    """
    label_set = set(labels)
    cases: dict[str, Case] = {}
    skipped: list[dict[str, Any]] = []

    def skip(item: dict[str, Any], reason: str) -> None:
        skipped.append({"queue_id": item["id"], "kind": item["kind"], "input": item["input"],
                        "reason": reason})

    for item in items:
        text = item["input"]
        detail = item.get("detail")
        if isinstance(detail, dict) and detail.get("adapter"):
            skip(item, f"answered by an added adapter, not this run's student (adapter {detail['adapter']!r})")
            continue
        if text in held_out:
            skip(item, "in a held-out split, validation or test: held-out texts are never trained "
                       "on, so the gate stays unseen")
            continue
        fb = item.get("feedback")
        prior = cases.get(text)
        if item["kind"] == "feedback" and fb and fb != "wrong":
            if fb not in label_set:
                skip(item, f"feedback names no task label ({fb!r})")
                continue
            ids = prior.queue_ids if prior else []
            cases[text] = Case(text, fb, None, "feedback", ids + [item["id"]])
            continue
        if prior is not None and prior.source == "feedback":
            prior.queue_ids.append(item["id"])  # a human already said what this is
            continue
        a = answers.get(text)
        label, probs, source = None, None, "teacher"
        if a is not None and a.label in label_set:
            label, probs = a.label, a.probs
        elif item.get("teacher_label") in label_set:
            label, source = item["teacher_label"], "teacher_label"
        if label is None:
            skip(item, "no teacher answer for it" + (f" ({a.error})" if a is not None and a.error else ""))
            continue
        if item["kind"] == "feedback" and label == item.get("served_label"):
            skip(item, "marked wrong, but the teacher gives the same answer")
            continue
        ids = prior.queue_ids if prior else []
        cases[text] = Case(text, label, probs, source, ids + [item["id"]])
    return list(cases.values()), skipped


def skip_summary(skipped: Sequence[dict[str, Any]]) -> str:
    """Skipped queue items counted by reason, most frequent first: `25 × in a held-out split,
    ...`. A reason's parenthesised detail (a label, an error) is left out so that items skipped
    for the same reason count together; "N skipped" alone does not say what to fix."""
    counts: dict[str, int] = {}
    for s in skipped:
        key = str(s["reason"]).split(" (", 1)[0]
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])  # stable: ties keep first appearance
    return ", ".join(f"{n} × {reason}" for reason, n in ranked)


def should_promote(candidate: float, deployed: float, margin: float) -> bool:
    """Promote when the candidate's gate metric is not worse than the deployed one's by more
    than `margin` (0: ties promote)."""
    return candidate >= deployed - margin - 1e-12


def merge_records(base: list[dict[str, Any]], base_soft: np.ndarray, cases: Sequence[Case],
                  labels: Sequence[str]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The base records with the cases added (a case replaces a base record of the same input).
    Soft rows are (N, C) float32 probabilities, NaN where only a hard label is known."""
    index = {r["text"]: i for i, r in enumerate(base)}
    rows = [dict(r) for r in base]
    soft = [row for row in base_soft.astype(np.float32)]
    C = len(labels)
    for c in cases:
        p = (np.asarray(c.probs, np.float32) if c.probs is not None and len(c.probs) == C
             else np.full(C, np.nan, np.float32))
        rec = {"id": f"queue-{c.queue_ids[-1]}", "text": c.text, "label": c.label,
               "gold": c.label if c.source == "feedback" else None, "source": f"queue:{c.source}"}
        if c.text in index:
            rows[index[c.text]], soft[index[c.text]] = rec, p
        else:
            index[c.text] = len(rows)
            rows.append(rec)
            soft.append(p)
    return rows, (np.stack(soft) if soft else np.zeros((0, C), np.float32))


# -- state ---------------------------------------------------------------------------------------
def round_dir(run: RunPaths, n: int) -> Path:
    return run.rounds / f"round-{n:03d}"


def load_state(run: RunPaths) -> dict[str, Any] | None:
    p = run.rounds / STATE
    return json.loads(p.read_text()) if p.exists() else None


def save_state(run: RunPaths, state: dict[str, Any]) -> None:
    p = run.rounds / STATE
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, p)


def _copy_dir(src: Path, dst: Path) -> None:
    """Replace `dst` with a copy of `src`; `dst` is never half-written (copy aside, then rename)."""
    tmp = dst.with_name(f".{dst.name}.new")
    old = dst.with_name(f".{dst.name}.old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoints"))
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def _copy_calibration(src_root: Path, dst_root: Path) -> None:
    if (src_root / CALIBRATION_JSON).exists():
        dst_root.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src_root / CALIBRATION_JSON, dst_root / f".{CALIBRATION_JSON}.new")
        os.replace(dst_root / f".{CALIBRATION_JSON}.new", dst_root / CALIBRATION_JSON)
    if (src_root / CALIBRATION_DIR).exists():
        _copy_dir(src_root / CALIBRATION_DIR, dst_root / CALIBRATION_DIR)


def _gold_records(spec: TaskSpec, run: RunPaths) -> tuple[list[dict[str, Any]], np.ndarray]:
    from .stages.prepare import prepare_inputs

    inputs = prepare_inputs(spec, run)
    rows = [{"id": ex.id, "text": ex.text, "label": ex.gold, "gold": ex.gold, "source": "gold"}
            for ex in inputs.train if ex.gold is not None]
    return rows, np.full((len(rows), len(inputs.labels)), np.nan, np.float32)


def _gate_set(spec: TaskSpec, run: RunPaths, split: str) -> tuple[list[str], list[str], str]:
    from .stages.prepare import prepare_inputs

    inputs = prepare_inputs(spec, run)
    rows = [ex for ex in getattr(inputs, split) if ex.gold is not None]
    if not rows:
        raise PotstillError(f"the {split} split has no gold labels to gate on")
    texts, gold = [ex.text for ex in rows], [ex.gold for ex in rows]
    digest = hashlib.sha256(json.dumps([texts, gold]).encode()).hexdigest()[:16]
    return texts, gold, digest


def _init_state(spec: TaskSpec, run: RunPaths, split: str) -> dict[str, Any]:
    """Round 0: a snapshot of the deployed student, its calibration and its training records."""
    if not (run.student / "config.json").exists():
        raise MissingOutput(f"{run.student}: no trained student to start the loop from; "
                                "run `potstill run` first")
    _, _, digest = _gate_set(spec, run, split)
    r0 = round_dir(run, 0)
    _copy_dir(run.student, r0 / "student")
    _copy_calibration(run.root, r0)
    rec = r0 / RECORDS
    rec.mkdir(parents=True, exist_ok=True)
    if (run.filtered / KEPT).exists() and spec.train.objective != "gold":
        shutil.copy2(run.filtered / KEPT, rec / KEPT)
        shutil.copy2(run.filtered / SOFT, rec / SOFT)
        teacher = read_manifest(run.filtered).get("teacher")
    else:  # a student trained on gold: its records are the gold rows
        rows, soft = _gold_records(spec, run)
        write_jsonl(rec / KEPT, rows)
        np.save(rec / SOFT, soft)
        teacher = None
    write_manifest(rec, "round_records", spec, teacher=teacher, round=0, rows=len(read_jsonl(rec / KEPT)))
    state = {"gate": {"split": split, "hash": digest}, "deployed": 0, "deployed_history": [0],
             "rounds": [{"round": 0, "status": "deployed", "created_at": time.time(),
                         "note": "the student deployed when the loop started"}]}
    save_state(run, state)
    return state


# -- the stages ----------------------------------------------------------------------------------
def _teacher_answers(spec: TaskSpec, run: RunPaths, texts: list[str], labels: list[str]
                     ) -> dict[str, Answer]:
    """The teacher's answers for `texts`, through the run's cache (the server's teacher cached
    what it answered; only the rest is asked). A teacher that cannot be built is an error; one that
    hits its spending cap leaves the rest to the teacher labels the queue kept."""
    from .progress import progress
    from .store import Store
    from .teachers import BudgetExceeded, answer_cached, make_teacher

    if not texts:
        return {}
    teacher = make_teacher(spec, run, labels)  # a teacher that cannot be built is an error, not a guess
    with Store(run.db) as store:
        try:
            with progress(len(texts), "iterate: teacher labels for the queue") as bar:
                answers = answer_cached(teacher, texts, store, spec.spec_hash(), bar.advance)
        except BudgetExceeded as e:
            log(f"iterate: {e}; using the teacher labels the queue kept for the rest")
            return {}
    return dict(zip(texts, answers))


def gate_accuracy(model_dir: Path, texts: list[str], gold: list[str], spec: TaskSpec) -> float:
    from .students.classifier import load_classifier, model_labels, predict_logits
    from .tasks.classify import accuracy

    model, tok = load_classifier(model_dir)
    names = model_labels(model)
    logits = predict_logits(model, tok, texts, spec.eval.batch_size, spec.student.max_length)
    return accuracy(gold, [names[i] for i in logits.argmax(-1)])


def deploy(spec: TaskSpec, run: RunPaths, n: int) -> None:
    """Make round `n` the served student: copy its student (and calibration) into the run;
    calibrate it there first if it has none yet, and keep that calibration with the round."""
    from .serve.calibrate import calibrate

    rd = round_dir(run, n)
    _copy_dir(rd / "student", run.student)
    if (rd / CALIBRATION_JSON).exists():
        _copy_calibration(rd, run.root)
    else:
        calibrate(spec, run)
        _copy_calibration(run.root, rd)


def iterate(spec: TaskSpec, run: RunPaths, margin: float = 0.0, gate: str = "test",
            min_cases: int = 1) -> dict[str, Any]:
    """One round of the loop (see the module doc). Returns the round's gate record."""
    from .stages.prepare import prepare_inputs
    from .stages.train import train_student
    from .store import Store

    if spec.kind != "classify" or spec.student.kind != "classifier":
        raise PotstillError("potstill iterate supports classify tasks with a classifier student")
    state = load_state(run) or _init_state(spec, run, gate)
    if state["gate"]["split"] != gate:
        raise PotstillError(f"this run's loop gates on the {state['gate']['split']} split; "
                         f"pass --gate {state['gate']['split']}")
    texts, gold, digest = _gate_set(spec, run, gate)
    if digest != state["gate"]["hash"]:
        raise PotstillError(f"the {gate} split changed since the loop started (gate hash "
                         f"{state['gate']['hash']} -> {digest}); rounds are only comparable on a "
                         "fixed gate set")
    inputs = prepare_inputs(spec, run)
    labels = inputs.labels
    held_out = {ex.text for ex in inputs.validation + inputs.test}

    with Store(run.db) as store:
        items = store.queue_items(unused_only=True)
    need_teacher = sorted({i["input"] for i in items if i["input"] not in held_out and not (
        i["kind"] == "feedback" and i.get("feedback") not in (None, "wrong"))})
    answers = _teacher_answers(spec, run, need_teacher, labels)
    cases, skipped = cases_from_queue(items, labels, answers, held_out)
    if len(cases) < min_cases:
        raise PotstillError(f"{len(cases)} usable queue case(s) from {len(items)} unused queue "
                            "item(s)" + (f"; skipped: {skip_summary(skipped)}" if skipped else "")
                            + f"; a round needs at least {min_cases} (--min-cases)")

    base_n = state["deployed"]
    n = max(r["round"] for r in state["rounds"]) + 1
    rd = round_dir(run, n)  # may hold a crashed attempt: its training resumes from its checkpoint
    base = round_dir(run, base_n) / RECORDS
    rows, soft = merge_records(read_jsonl(base / KEPT), np.load(base / SOFT), cases, labels)
    rec = rd / RECORDS
    rec.mkdir(parents=True, exist_ok=True)
    write_jsonl(rec / KEPT, rows)
    np.save(rec / SOFT, soft)
    write_jsonl(rec / "from_queue.jsonl", [
        {"input": c.text, "label": c.label, "source": c.source, "queue_ids": c.queue_ids}
        for c in cases])
    write_jsonl(rec / "skipped_queue.jsonl", skipped)
    write_manifest(rec, "round_records", spec, teacher=read_manifest(base).get("teacher"),
                   round=n, built_on=base_n, rows=len(rows), from_queue=len(cases),
                   skipped=len(skipped))
    log(f"iterate: round {n}: {len(rows)} records (round {base_n}'s, with {len(cases)} queue "
        f"case(s)); {len(skipped)} queue item(s) skipped"
        + (f": {skip_summary(skipped)}" if skipped else ""))

    objective = spec.train.objective if spec.train.objective != "gold" else "both"
    round_spec = spec.model_copy(update={"train": spec.train.model_copy(update={"objective": objective})})
    train_student(round_spec, run, "student", records=rec, out=rd / "student")

    cand = gate_accuracy(rd / "student", texts, gold, spec)
    dep = gate_accuracy(run.student, texts, gold, spec)
    promoted = should_promote(cand, dep, margin)
    record = {"round": n, "built_on": base_n, "gate_split": gate, "gate_rows": len(texts),
              "metric": "accuracy", "candidate": round(cand, 4), "deployed": round(dep, 4),
              "margin": margin, "promoted": promoted, "from_queue": len(cases),
              "skipped": len(skipped), "created_at": time.time(),
              "status": "deployed" if promoted else "refused"}
    (rd / GATE).write_text(json.dumps(record, indent=2))
    if promoted:
        deploy(spec, run, n)
        with Store(run.db) as store:
            for c in cases:
                for qid in c.queue_ids:
                    store.queue_update(qid, used_in_round=f"round-{n:03d}")
        for r in state["rounds"]:
            if r["status"] == "deployed":
                r["status"] = "retired"
        state["deployed"] = n
        state["deployed_history"].append(n)
    state["rounds"].append(record)
    save_state(run, state)
    verdict = "promoted" if promoted else "refused"
    log(f"iterate: round {n} {verdict}: gate {gate} accuracy {cand:.4f} vs deployed {dep:.4f} "
        f"(margin {margin:g}); deployed round: {state['deployed']}")
    return record


def rollback(spec: TaskSpec, run: RunPaths, to: int | None = None) -> dict[str, Any]:
    """Deploy the round deployed before the current one (or round `to`)."""
    state = load_state(run)
    if state is None:
        raise PotstillError(f"{run.root}: no rounds yet (run `potstill iterate` first)")
    hist = state["deployed_history"]
    if to is None:
        if len(hist) < 2:
            raise PotstillError(f"round {hist[-1]} is the first deployed round; nothing to roll back to")
        to = hist[-2]
        hist.pop()
    else:
        known = {r["round"]: r for r in state["rounds"]}
        if to not in known or not (round_dir(run, to) / "student" / "config.json").exists():
            raise PotstillError(f"no round {to} with a trained student (rounds: {sorted(known)})")
        hist.append(to)
    deploy(spec, run, to)
    for r in state["rounds"]:
        if r["status"] == "deployed":
            r["status"] = "rolled_back"
        if r["round"] == to:
            r["status"] = "deployed"
    state["deployed"] = to
    save_state(run, state)
    log(f"rollback: round {to} deployed")
    return state


# -- commands ------------------------------------------------------------------------------------
RunArg = Annotated[Path, typer.Argument(help="Run directory with a trained student/.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a spec field for this round, e.g. --set train.epochs=2. Repeatable.")]


def iterate_command(
    run_dir: RunArg,
    margin: Annotated[float, typer.Option(
        min=0.0, help="Promote unless the candidate's gate accuracy is below the deployed one's "
        "by more than this.")] = 0.0,
    gate: Annotated[str, typer.Option(
        help="Gate set: the test or validation split (fixed for the life of the loop).")] = "test",
    min_cases: Annotated[int, typer.Option(min=1, help="Fewest usable queue cases for a round.")] = 1,
    set: SetOpt = None,
):
    """Retrain with the review queue; promote the new round only if it is not worse.

    New round = the deployed round's training records + the queued cases no promoted round has
    used, labelled by the teacher (human feedback wins). The candidate and the deployed student
    are compared on a fixed gate set; a refused round leaves the queue for the next one. Rounds
    live in RUN_DIR/rounds/; the run's student/ is always the deployed round. Restart a running
    server to serve a promoted round.
    """
    from .serve.calibrate import load_run_spec

    if gate not in ("test", "validation"):
        raise typer.BadParameter("--gate must be test or validation")
    run = RunPaths(Path(run_dir))
    spec = load_run_spec(run.root, set or [])
    rec = iterate(spec, run, margin=margin, gate=gate, min_cases=min_cases)
    typer.echo(json.dumps({k: rec[k] for k in ("round", "promoted", "candidate", "deployed",
                                                 "from_queue", "skipped")}))


def rollback_command(
    run_dir: RunArg,
    to: Annotated[Optional[int], typer.Option(help="Deploy this round instead of the previous one.")] = None,
):
    """Deploy the round that was deployed before the current one (or --to N)."""
    from .serve.calibrate import load_run_spec

    run = RunPaths(Path(run_dir))
    state = rollback(load_run_spec(run.root), run, to)
    typer.echo(f"deployed round {state['deployed']}; restart a running server to serve it")
