"""Stage `calibrate`: fit the student's confidence and OOD scores, choose the routing thresholds.

On the validation split (and the out-of-scope validation rows named by `serve.ood_validation`):

1. temperature scaling of the student's logits (NLL on the gold labels);
2. OOD statistics of the student's embeddings of the training inputs (`serve.ood_method`);
3. for every teacher share on a grid (0 to 30% in 1% steps, plus the one asked for), the pair of
   thresholds (confidence below t_c, or OOD score above t_o) sending at most that share of the
   in-scope validation rows to the teacher and maximising
   `in-scope rows answered right + serve.oos_weight x out-of-scope rows caught`;
4. the operating point: the row for `--teacher-share` (default `serve.teacher_share`), or with
   `--target-accuracy` the smallest share whose hybrid accuracy reaches it.

Hybrid accuracy counts an escalated row as right when the teacher's answer is: the teacher's own
predictions where they are available (a local teacher is run on the rows; an API teacher's answers
come from the call cache only, unless `--ask-teacher`), else the teacher is assumed right on that
row; the output says which, and how many rows each.

Writes `calibration.json` (the table, the operating point, everything the server needs) and
`calibration/ood_stats.npz` in the run directory. The server reads them; a student retrained after
calibration (another content hash) makes the server recalibrate, so a round of the loop that
replaces `student/` only has to rerun this stage.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import MissingOutput, PotstillError
from ..paths import CALIBRATION_DIR, CALIBRATION_JSON, RunPaths
from ..progress import log
from ..spec import TaskSpec
from ..stages.prepare import load_inputs

OOD_STATS = "ood_stats.npz"
MODELS = ("student", "teacher", "baseline")


@dataclass(frozen=True)
class Deployment:
    """What a server serves: a classifier directory and where its calibration lives.

    The run's `student/` (the default) has `calibration.json` and `calibration/ood_stats.npz` in
    the run directory; `teacher/` or `baseline/` (served, say, as the teacher of another run)
    have `calibration.<name>.json` and `calibration/<name>_ood_stats.npz`. A versioned round of
    the loop can hand any other directory pair to `calibrate` and the server the same way.
    """

    name: str
    model_dir: Path
    calibration_json: Path
    ood_stats: Path
    max_length: int

    @classmethod
    def of(cls, run: RunPaths, spec: TaskSpec, name: str = "student") -> "Deployment":
        if name not in MODELS:
            raise PotstillError(f"model must be one of {', '.join(MODELS)}, not {name!r}")
        if name == "student":
            return cls(name, run.student, run.root / CALIBRATION_JSON,
                       run.root / CALIBRATION_DIR / OOD_STATS, spec.student.max_length)
        max_len = spec.teacher.max_length if name == "teacher" else spec.student.max_length
        model_dir = run.model_dir(name)
        if name == "teacher" and spec.teacher.kind == "hf":
            from ..students.hf import resolve_model_path

            model_dir = Path(resolve_model_path(spec.teacher.model))
        return cls(name, model_dir, run.root / f"calibration.{name}.json",
                   run.root / CALIBRATION_DIR / f"{name}_{OOD_STATS}", max_len)
GRID = [round(0.01 * i, 2) for i in range(31)]  # teacher shares in the saved table: 0 .. 30%
FINE_GRID = [round(0.005 * i, 3) for i in range(201)]  # for --target-accuracy: 0 .. 100%
CALIBRATION_FIELDS = ("confidence_score", "ood_method", "embedding", "knn_k", "ood_fit_max",
                      "oos_weight", "high_stakes", "high_stakes_prob")
"""serve.* fields a calibration depends on: changing one makes the server recalibrate."""


# -- the threshold search (pure) -----------------------------------------------------------------
@dataclass
class Rows:
    """Per-row signals of a labelled set: confidence (higher = surer), OOD score (higher = more
    unusual; None when there is no OOD score), and forced escalations (high-stakes, invalid)."""

    conf: np.ndarray
    ood: np.ndarray | None
    forced: np.ndarray

    def __post_init__(self) -> None:
        self.conf = np.asarray(self.conf, dtype=np.float64)
        self.ood = None if self.ood is None else np.asarray(self.ood, dtype=np.float64)
        self.forced = np.asarray(self.forced, dtype=bool)

    def __len__(self) -> int:
        return len(self.conf)


def escalated(rows: Rows, conf_t: float | None, ood_t: float | None) -> np.ndarray:
    """The router's rule on many rows: forced, or confidence < conf_t, or OOD > ood_t."""
    m = rows.forced.copy()
    if conf_t is not None:
        m |= rows.conf < conf_t
    if ood_t is not None and rows.ood is not None:
        m |= rows.ood > ood_t
    return m


def sweep(rows: Rows, gain: np.ndarray, shares: Sequence[float], oos: Rows | None = None,
          oos_weight: float = 1.0, max_candidates: int = 400) -> list[dict[str, Any]]:
    """For each share s: the thresholds escalating at most floor(s x n) in-scope rows that maximise
    sum(gain of escalated rows) + oos_weight x (out-of-scope rows caught).

    `gain[i]` is what escalating in-scope row i changes in the count of right answers: +1 where
    the student is wrong and the teacher right, -1 the other way round, 0 otherwise. Candidates for
    the OOD threshold are the in-scope OOD scores (escalate rows strictly above one; up to
    `max_candidates` of them, evenly spaced, plus "no OOD gate"); for each, the confidence
    threshold spends the rest of the budget on the least confident rows. Returns, per share,
    {share, confidence_threshold, ood_threshold, escalated, gain, caught} (counts), where a None
    threshold means that gate never fires.
    """
    n = len(rows)
    gain = np.asarray(gain, dtype=np.float64)
    budgets = np.floor(np.asarray(shares, dtype=np.float64) * n + 1e-9).astype(int)
    k_max = int(budgets.max()) if len(budgets) else 0
    cands: list[float | None] = [None]
    if rows.ood is not None and n:
        vals = np.unique(rows.ood)[::-1]  # descending
        above = n - np.searchsorted(np.sort(rows.ood), vals, side="right")  # rows > each value
        vals = vals[above <= k_max]
        if len(vals) > max_candidates:
            vals = vals[np.unique(np.linspace(0, len(vals) - 1, max_candidates).round().astype(int))]
        cands += [float(v) for v in vals]
    best: list[dict[str, Any] | None] = [None] * len(budgets)
    for ood_t in cands:
        esc0 = escalated(rows, None, ood_t)
        used = int(esc0.sum())
        rest = np.flatnonzero(~esc0)
        order = rest[np.argsort(rows.conf[rest], kind="stable")]
        c_sorted = rows.conf[order]
        prefix = np.concatenate([[0.0], np.cumsum(gain[order])])
        base_gain = float(gain[esc0].sum())
        oos_esc0 = escalated(oos, None, ood_t) if oos is not None else None
        for j, k in enumerate(budgets):
            r = int(k) - used
            if r < 0:
                continue
            if len(c_sorted) == 0:
                conf_t = None
            elif r >= len(c_sorted):
                conf_t = float(np.nextafter(c_sorted[-1], np.inf))  # every remaining row
            else:
                conf_t = float(c_sorted[r])  # rows strictly below it: at most r of them
            k_c = 0 if conf_t is None else int(np.searchsorted(c_sorted, conf_t, side="left"))
            g = base_gain + float(prefix[k_c])
            caught = 0
            if oos is not None and oos_esc0 is not None:
                m = oos_esc0 if conf_t is None else (oos_esc0 | (oos.conf < conf_t))
                caught = int(m.sum())
            score = g + oos_weight * caught
            cur = best[j]
            if cur is None or score > cur["_score"] + 1e-9 or (
                    score > cur["_score"] - 1e-9 and caught > cur["caught"]):
                best[j] = {"share": float(shares[j]), "confidence_threshold": conf_t,
                           "ood_threshold": ood_t, "escalated": used + k_c, "gain": g,
                           "caught": caught, "_score": score}
    out = []
    for j, b in enumerate(best):
        if b is None:  # the forced escalations alone exceed this budget: no gate can fire
            esc = rows.forced
            b = {"share": float(shares[j]), "confidence_threshold": None, "ood_threshold": None,
                 "escalated": int(esc.sum()), "gain": float(gain[esc].sum()),
                 "caught": int(oos.forced.sum()) if oos is not None else 0, "_score": 0.0}
        b.pop("_score")
        out.append(b)
    return out


def summarise(rows: Rows, conf_t: float | None, ood_t: float | None, s_ok: np.ndarray,
              t_ok: np.ndarray, oos: Rows | None = None, cost_per_call: float = 0.0,
              shadow_share: float = 0.0, t_known: np.ndarray | None = None) -> dict[str, Any]:
    """What a pair of thresholds does on a labelled set (+ optional out-of-scope rows).

    `t_known` marks the rows with a real teacher answer (None: all of them); `t_ok` is True on
    the others (the teacher assumed right), and `teacher_assumed_right` counts the escalated
    ones: when it is not 0, `hybrid_accuracy` is an upper bound, not a measurement."""
    esc = escalated(rows, conf_t, ood_t)
    n = max(len(rows), 1)
    s_ok = np.asarray(s_ok, bool)
    t_ok = np.asarray(t_ok, bool)
    hybrid = np.where(esc, t_ok, s_ok)
    by = {"high_stakes_or_invalid": float(rows.forced.mean()) if len(rows) else 0.0,
          "ood": float((rows.ood > ood_t).mean()) if (ood_t is not None and rows.ood is not None) else 0.0,
          "low_confidence": float((rows.conf < conf_t).mean()) if conf_t is not None else 0.0}
    out: dict[str, Any] = {
        "teacher_share": float(esc.sum() / n),
        "hybrid_accuracy": float(hybrid.mean()) if len(rows) else None,
        "teacher_assumed_right": 0 if t_known is None else int((esc & ~np.asarray(t_known, bool)).sum()),
        "escalated_by": {k: round(v, 4) for k, v in by.items()},
        "confidence_threshold": conf_t,
        "ood_threshold": ood_t,
        "oos_caught": None,
        "teacher_share_with_oos": float(esc.sum() / n),
    }
    if oos is not None and len(oos):
        oesc = escalated(oos, conf_t, ood_t)
        out["oos_caught"] = float(oesc.mean())
        out["teacher_share_with_oos"] = float((esc.sum() + oesc.sum()) / (len(rows) + len(oos)))
    calls = out["teacher_share_with_oos"] + shadow_share * (1 - out["teacher_share_with_oos"])
    out["cost_per_1000"] = round(1000 * calls * cost_per_call, 6)
    return out


def explain(point: dict[str, Any], n: int, n_oos: int, score: str, temperature: float,
            ood_method: str, high_stakes: Sequence[str]) -> str:
    """A threshold pair in words: what it escalates, and the share of traffic that makes."""
    gates = []
    if point["confidence_threshold"] is not None:
        gates.append(f"the student's calibrated confidence ({score}, T={temperature:.3g}) is below "
                     f"{point['confidence_threshold']:.4g}")
    if point["ood_threshold"] is not None:
        gates.append(f"its {ood_method} out-of-distribution score is above {point['ood_threshold']:.4g}")
    if high_stakes:
        gates.append(f"the answer is high-stakes ({', '.join(high_stakes)})")
    share = point["teacher_share"]
    s = (f"Expected share of traffic to the teacher: {share:.1%} of in-scope requests "
         f"(measured on {n} validation rows)")
    if n_oos:
        s += (f"; {point['teacher_share_with_oos']:.1%} of all validation traffic including the "
              f"{n_oos} out-of-scope rows, of which {point['oos_caught']:.1%} are caught")
    s += ". An input goes to the teacher when " + (" or ".join(gates) if gates else "never") + "."
    return s


# -- the stage -----------------------------------------------------------------------------------
def load_run_spec(run_dir: Path, overrides: Sequence[str] = ()) -> TaskSpec:
    """The resolved spec saved in a run directory, with `--set a.b=x` overrides."""
    from pydantic import ValidationError

    from ..config import SpecError, apply_overrides

    run = RunPaths(Path(run_dir))
    if not run.spec.exists():
        raise MissingOutput(f"{run.spec}: not a potstill run directory (run `potstill run` first)")
    doc = apply_overrides(json.loads(run.spec.read_text()), list(overrides))
    try:
        return TaskSpec.model_validate(doc)
    except ValidationError as e:
        lines = [f"{run.spec}: {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise SpecError("invalid spec\n" + "\n".join(lines)) from None


def resolve_data_path(p: Path, spec: TaskSpec, run: RunPaths) -> Path:
    """A path from the spec: absolute as is; relative to the spec's folder, which the resolved
    spec in a run directory no longer names, so tried in order: the spec file's folder (when
    known), the folder two levels above the run directory (the default `<spec folder>/runs/<name>`),
    the folder holding data.train's folder, the current directory."""
    p = Path(p).expanduser()
    if p.is_absolute():
        return p
    bases = []
    if spec.source is not None:
        bases.append(Path(spec.source).parent)
    bases += [run.root.resolve().parent.parent, Path(spec.data.train).parent.parent, Path.cwd()]
    for b in bases:
        if (b / p).exists():
            return b / p
    raise MissingOutput(f"{p}: not found relative to any of {', '.join(map(str, bases))}")


def _subset(xs: list, k: int, seed: int) -> list:
    if len(xs) <= k:
        return xs
    idx = sorted(random.Random(seed).sample(range(len(xs)), k))
    return [xs[i] for i in idx]


def teacher_predictions(spec: TaskSpec, run: RunPaths, texts: list[str], labels: list[str],
                        ask: bool) -> tuple[list[str | None], str]:
    """The teacher's labels for `texts` (None where unknown) and a sentence saying where they
    came from. Local teachers are run (through the call cache); an API teacher's answers come
    from the cache only, unless `ask`."""
    from ..progress import progress
    from ..store import Store
    from ..teachers import answer_cached, make_teacher
    from ..teachers.base import Answer, cache_key

    teacher = make_teacher(spec, run, labels)  # a teacher that cannot be built is an error, not a guess
    with Store(run.db) as store:
        if hasattr(teacher, "spent_usd"):  # the spending cap counts what earlier stages spent
            teacher.spent_usd = max(teacher.spent_usd, store.spend(teacher.identity)["cost_usd"])
        if spec.teacher.kind in ("fit", "hf") or ask:
            with progress(len(texts), "calibrate: teacher") as bar:
                answers = answer_cached(teacher, texts, store, spec.spec_hash(), bar.advance)
            src = "local model, run on every row" if spec.teacher.kind != "openai" else "asked now (--ask-teacher)"
        else:
            keys = [cache_key(teacher, t, spec.spec_hash()) for t in texts]
            hits = store.get_calls(set(keys))
            answers = [Answer.from_json(hits[k]) if k in hits else Answer(label=None, error="not cached")
                       for k in keys]
            src = "from the teacher-call cache (no new calls; --ask-teacher to ask)"
    got = [a.label for a in answers]
    k = sum(g is not None for g in got)
    return got, (f"the teacher's own answers on {k} of {len(texts)} rows ({src}); "
                 f"the other {len(texts) - k} assumed answered right")


def cost_per_call(spec: TaskSpec, run: RunPaths, labels: list[str], texts: list[str]) -> tuple[float, str]:
    """Dollars per teacher call: the recorded average of this teacher's calls when there are
    any, else an estimate from the configured prices (about 4 characters per token)."""
    from ..store import Store

    t = spec.teacher
    if t.price_in == 0 and t.price_out == 0:
        return 0.0, "no teacher price configured (teacher.price_in / price_out are 0)"
    if t.kind == "openai" and run.db.exists():
        from ..teachers import make_teacher

        identity = make_teacher(spec, run, labels).identity  # no call is made
        with Store(run.db) as store:
            s = store.spend(identity)
        if s["calls"]:
            return s["cost_usd"] / s["calls"], f"recorded average over {s['calls']} calls"
    sample = texts[:200] or ["x"]
    tin = np.mean([len(spec.render_prompt(x, labels)) / 4 for x in sample])
    tout = np.mean([len(l) / 4 + 1 for l in labels]) * t.samples
    usd = (tin * t.samples * t.price_in + tout * t.price_out) / 1e6
    return float(usd), (f"estimated from the prices: ~{tin:.0f} input and ~{tout:.0f} output tokens "
                        f"per call at ${t.price_in}/${t.price_out} per million")


def _rows_for(student, logits: np.ndarray, emb: np.ndarray, spec: TaskSpec) -> tuple[Rows, np.ndarray]:
    from .router import high_stakes_mask

    outs = student.outputs_from(logits, emb)
    probs = np.array([o.probs for o in outs]) if outs else np.zeros((0, len(student.labels)))
    conf = np.array([o.confidence for o in outs])
    ood = None if spec.serve.ood_method == "none" else np.array([o.ood_score for o in outs])
    forced = high_stakes_mask(probs, student.labels, spec.serve.high_stakes, spec.serve.high_stakes_prob)
    return Rows(conf, ood, forced), probs


def calibrate(spec: TaskSpec, run: RunPaths, teacher_share: float | None = None,
              target_accuracy: float | None = None, ask_teacher: bool = False,
              test: bool = False, model: str = "student") -> dict[str, Any]:
    """Fit, sweep, choose; write calibration.json and calibration/ood_stats.npz (for `model`
    other than the student: see `Deployment`); return the doc."""
    from ..data.inputs import load_examples
    from .confidence import ece, fit_ood, fit_temperature, nll, save_ood, softmax
    from .router import ClassifierStudent

    sv = spec.serve
    if teacher_share is not None and target_accuracy is not None:
        raise PotstillError("give a teacher share or a target accuracy, not both")
    if target_accuracy is None and teacher_share is None:
        target_accuracy = sv.target_accuracy
        teacher_share = None if target_accuracy is not None else sv.teacher_share
    dep = Deployment.of(run, spec, model)
    if not (dep.model_dir / "config.json").exists():
        raise MissingOutput(f"{dep.model_dir}: no trained {model} here; train it first")
    inputs = load_inputs(run)
    student = ClassifierStudent(dep.model_dir, score=sv.confidence_score, embedding=sv.embedding,
                                max_length=dep.max_length, threads=sv.threads, device=sv.device)
    labels = student.labels
    bad = [l for l in sv.high_stakes if l not in labels]
    if bad:
        raise PotstillError(f"serve.high_stakes names labels the student does not have: {bad}")
    t0 = time.monotonic()

    # OOD statistics from the training inputs, classes = the student's own predictions
    train_texts = _subset([ex.text for ex in inputs.train], sv.ood_fit_max, spec.train.seed)
    tr_logits, tr_emb = student.forward(train_texts)
    ood = fit_ood(sv.ood_method, tr_emb, tr_logits.argmax(-1), len(labels), sv.knn_k)
    student.ood = ood

    # validation: temperature, then every row's signals
    val = [ex for ex in inputs.validation if ex.gold in labels]
    if not val:
        raise PotstillError(f"{run.inputs}: no gold-labelled validation rows with the student's labels; "
                         "calibration needs data.validation (or data.validation_share of gold rows)")
    v_texts = [ex.text for ex in val]
    y = np.array([labels.index(ex.gold) for ex in val])
    v_logits, v_emb = student.forward(v_texts)
    T = fit_temperature(v_logits, y)
    student.temperature = T
    v_rows, v_probs = _rows_for(student, v_logits, v_emb, spec)
    s_pred = [labels[i] for i in v_probs.argmax(-1)]
    s_ok = np.array([p == ex.gold for p, ex in zip(s_pred, val)])

    oos_rows = None
    n_oos = 0
    if sv.ood_validation is not None:
        path = resolve_data_path(sv.ood_validation, spec, run)
        oos_texts = [ex.text for ex in load_examples(path, spec.data)]
        oos_rows, _ = _rows_for(student, *student.forward(oos_texts), spec)
        n_oos = len(oos_texts)

    t_pred, t_src = teacher_predictions(spec, run, v_texts, labels, ask_teacher)
    t_ok = np.array([True if p is None else p == ex.gold for p, ex in zip(t_pred, val)])
    t_known = np.array([p is not None for p in t_pred], bool)
    teacher_acc = (float(np.mean([p == ex.gold for p, ex in zip(t_pred, val) if p is not None]))
                   if t_known.any() else None)
    gain = t_ok.astype(float) - s_ok.astype(float)
    per_call, cost_src = cost_per_call(spec, run, labels, v_texts)

    def row(point: dict[str, Any], target: float) -> dict[str, Any]:
        r = summarise(v_rows, point["confidence_threshold"], point["ood_threshold"], s_ok, t_ok,
                      oos_rows, per_call, sv.shadow_share, t_known)
        return {"target_share": target, **r}

    shares = sorted(set(GRID) | ({round(teacher_share, 4)} if teacher_share is not None else set()))
    table = [row(p, s) for p, s in zip(sweep(v_rows, gain, shares, oos_rows, sv.oos_weight), shares)]
    if target_accuracy is not None:
        fine = [row(p, s) for p, s in zip(sweep(v_rows, gain, FINE_GRID, oos_rows, sv.oos_weight), FINE_GRID)]
        reach = [r for r in fine if r["hybrid_accuracy"] >= target_accuracy]
        point = dict(reach[0] if reach else max(fine, key=lambda r: r["hybrid_accuracy"]))
        point["target_accuracy"] = target_accuracy
        point["target_reached"] = bool(reach)
        if not any(r["target_share"] == point["target_share"] for r in table):
            table = sorted(table + [{k: v for k, v in point.items()
                                     if k not in ("target_accuracy", "target_reached")}],
                           key=lambda r: r["target_share"])
    else:
        point = dict(next(r for r in table if r["target_share"] == round(teacher_share, 4)))
    point["explanation"] = explain(point, len(val), n_oos, sv.confidence_score, T, sv.ood_method,
                                   sv.high_stakes)

    probs_raw = softmax(v_logits)
    doc: dict[str, Any] = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": spec.name,
        "model": model,
        "student_dir": str(dep.model_dir),
        "student_version": student.identity,
        "spec_hash": spec.spec_hash(),
        "settings": {k: getattr(sv, k) for k in CALIBRATION_FIELDS},
        "temperature": T,
        "ood_stats": str(dep.ood_stats.relative_to(run.root)),
        "saved_to": str(dep.calibration_json),
        "ood_fit_rows": len(train_texts),
        "validation": {
            "rows": len(val), "oos_rows": n_oos,
            "student_accuracy": float(s_ok.mean()),
            "teacher_accuracy": teacher_acc,
            "teacher_answers": t_src,
            "nll_before": nll(v_logits, y), "nll_after": nll(v_logits, y, T),
            "ece_before": ece(probs_raw, y), "ece_after": ece(v_probs, y),
        },
        "cost": {"per_call_usd": per_call, "source": cost_src, "shadow_share": sv.shadow_share},
        "operating_point": point,
        "table": table,
        "seconds": round(time.monotonic() - t0, 2),
    }
    if test:
        doc["test"] = _test_report(spec, run, student, inputs, table, point, ask_teacher, per_call)
    save_ood(ood, dep.ood_stats)
    tmp = dep.calibration_json.with_name(dep.calibration_json.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default))
    tmp.replace(dep.calibration_json)
    log(f"calibrate: T={T:.3g}, {point['explanation']}")
    return doc


def _test_report(spec, run, student, inputs, table, point, ask, per_call) -> dict[str, Any]:
    """The validation-chosen thresholds of every table row, applied to the test split (+ the
    out-of-scope test rows): the figures to quote, since nothing was fitted on them."""
    from ..data.inputs import load_examples

    labels = student.labels
    test = [ex for ex in inputs.test if ex.gold in labels]
    if not test:
        return {"rows": 0}
    texts = [ex.text for ex in test]
    rows, probs = _rows_for(student, *student.forward(texts), spec)
    s_ok = np.array([labels[i] == ex.gold for i, ex in zip(probs.argmax(-1), test)])
    t_pred, t_src = teacher_predictions(spec, run, texts, labels, ask)
    t_ok = np.array([True if p is None else p == ex.gold for p, ex in zip(t_pred, test)])
    t_known = np.array([p is not None for p in t_pred], bool)
    oos = None
    if spec.serve.ood_test is not None:
        oos_texts = [ex.text for ex in load_examples(resolve_data_path(spec.serve.ood_test, spec, run),
                                                    spec.data)]
        oos, _ = _rows_for(student, *student.forward(oos_texts), spec)
    known = [(p, ex.gold) for p, ex in zip(t_pred, test) if p is not None]
    out_rows = [{"target_share": r["target_share"],
                 **summarise(rows, r["confidence_threshold"], r["ood_threshold"], s_ok, t_ok, oos,
                             per_call, spec.serve.shadow_share, t_known)} for r in table]
    return {
        "rows": len(test), "oos_rows": 0 if oos is None else len(oos),
        "student_accuracy": float(s_ok.mean()),
        "teacher_accuracy": float(np.mean([p == g for p, g in known])) if known else None,
        "teacher_answers": t_src,
        "operating_point": {"target_share": point["target_share"],
                            **summarise(rows, point["confidence_threshold"], point["ood_threshold"],
                                        s_ok, t_ok, oos, per_call, spec.serve.shadow_share, t_known)},
        "table": out_rows,
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


# -- reading it back (the server) ----------------------------------------------------------------
def load_calibration(dep: Deployment) -> dict[str, Any] | None:
    p = dep.calibration_json
    return json.loads(p.read_text()) if p.exists() else None


def stale_reason(cal: dict[str, Any] | None, spec: TaskSpec, student_version: str) -> str | None:
    """Why a saved calibration cannot serve this student and spec (None when it can)."""
    if cal is None:
        return "no calibration.json"
    if cal.get("student_version") != student_version:
        return "the student changed since calibration"
    now = json.loads(json.dumps({k: getattr(spec.serve, k) for k in CALIBRATION_FIELDS}))
    if cal.get("settings") != now:
        return "serve settings changed since calibration"
    return None


def pick_point(cal: dict[str, Any], teacher_share: float | None = None) -> dict[str, Any]:
    """The calibrated operating point, or the table row nearest `teacher_share`."""
    if teacher_share is None:
        return cal["operating_point"]
    return min(cal["table"], key=lambda r: (abs(r["target_share"] - teacher_share), r["target_share"]))


# -- `potstill calibrate RUN_DIR` ----------------------------------------------------------------
def print_calibration(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    if not c.is_terminal:
        c = Console(width=200)
    v = doc["validation"]
    point = doc["operating_point"]
    has_oos = v["oos_rows"] > 0
    test = doc.get("test") if doc.get("test", {}).get("rows") else None
    t = Table(title=f"{doc['task']}: routing trade-off on {v['rows']} validation rows"
              + (f" + {v['oos_rows']} out-of-scope" if has_oos else ""))
    bound = "\n(≤: teacher assumed right)"  # its own line: the table still fits 200 columns
    assumed = any(r.get("teacher_assumed_right") for r in doc["table"])
    cols = ["target share", "teacher share", "hybrid accuracy" + (bound if assumed else "")]
    cols += ["OOS caught", "share incl. OOS"] if has_oos else []
    cols += ["cost / 1k req", "confidence <", "OOD >"]
    if test:
        t_assumed = any(r.get("teacher_assumed_right") for r in test["table"])
        cols += ["test: share", "test: hybrid acc" + (bound if t_assumed else "")]
        cols += ["test: OOS caught"] if test["oos_rows"] else []
    for col in cols:
        t.add_column(col, justify="right")
    show = {0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, point["target_share"]}
    test_rows = {r["target_share"]: r for r in (test["table"] if test else [])}
    for r in doc["table"]:
        if r["target_share"] not in show:
            continue
        mark = " ◀" if r["target_share"] == point["target_share"] else ""
        cells = [f"{r['target_share']:.1%}{mark}", f"{r['teacher_share']:.1%}", hybrid_cell(r)]
        if has_oos:
            cells += [f"{r['oos_caught']:.1%}", f"{r['teacher_share_with_oos']:.1%}"]
        cells += [f"${r['cost_per_1000']:.4f}", _fmt(r["confidence_threshold"]), _fmt(r["ood_threshold"])]
        if test:
            tr = test_rows.get(r["target_share"], {})
            cells += [f"{tr.get('teacher_share', 0):.1%}", hybrid_cell(tr)]
            if test["oos_rows"]:
                cells += [f"{tr.get('oos_caught') or 0:.1%}"]
        t.add_row(*cells)
    c.print(t)
    ta = v["teacher_accuracy"]
    c.print(f"student alone: {v['student_accuracy']:.2%}; teacher alone: "
            f"{'—' if ta is None else f'{ta:.2%}'} (validation, in-scope)")
    c.print(f"temperature {doc['temperature']:.3g}: NLL {v['nll_before']:.3f} -> {v['nll_after']:.3f}, "
            f"ECE {v['ece_before']:.3f} -> {v['ece_after']:.3f}")
    c.print(f"hybrid accuracy counts escalated rows with {v['teacher_answers']}")
    c.print(f"cost: ${doc['cost']['per_call_usd']:.6f} per teacher call ({doc['cost']['source']})"
            + (f", shadow checks {doc['cost']['shadow_share']:.0%} included" if doc['cost']['shadow_share'] else ""))
    if "target_accuracy" in point and not point.get("target_reached", True):
        c.print(f"[yellow]target accuracy {point['target_accuracy']:.2%} is not reached at any share; "
                "chose the most accurate point[/yellow]")
    c.print(point["explanation"])
    c.print(f"saved {doc['saved_to']}")


def hybrid_cell(r: dict[str, Any]) -> str:
    """A table row's hybrid accuracy: "≤97.50%" when escalated rows without a teacher answer
    were counted right (an upper bound, not a measurement; a footnote under the table is easy to
    miss), plain when every escalated row was scored on the teacher's own answer."""
    acc = r.get("hybrid_accuracy")
    if acc is None:
        return "—"
    return ("≤" if r.get("teacher_assumed_right") else "") + f"{acc:.2%}"


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def threshold_on_validation(student: Any, spec: TaskSpec, run: RunPaths, *, path: Path,
                            settings: dict[str, Any], recalibrate: bool, batch: int,
                            choose: Callable[[list[Any], list[str | None], float], dict[str, Any]],
                            what: str) -> dict[str, Any]:
    """The confidence threshold of a student whose answers are not a label distribution (a tagger,
    a causal LM), chosen on the validation split for `settings["teacher_share"]`: the saved doc at
    `path` when it was made for this student version and these settings, else the student answers
    the validation split (`batch` inputs at a time), `choose(outputs, gold answers, share)` picks
    the operating point, and the doc is saved atomically. One helper for every such kind."""
    cal = json.loads(path.read_text()) if path.exists() else None
    if cal is not None and cal.get("student_version") == student.identity and cal.get("settings") == settings:
        return cal
    if not recalibrate:
        raise PotstillError(f"{run.root}: no up-to-date {path.name}; serve with recalibration or set "
                            "serve.confidence_threshold")
    val = [ex for ex in load_inputs(run).validation if ex.gold is not None]
    if not val:
        raise PotstillError(f"{run.inputs}: no gold validation rows to calibrate the {what} on; set "
                            "serve.confidence_threshold by hand")
    t0 = time.monotonic()
    outs: list[Any] = []
    for s in range(0, len(val), batch):
        outs += student.predict([ex.text for ex in val[s:s + batch]])
    point = choose(outs, [ex.gold for ex in val], settings["teacher_share"])
    log(f"calibrated the {what} on {len(val)} validation rows: confidence below "
        f"{point['confidence_threshold']} goes to the teacher ({100 * point['teacher_share']:.1f}% of rows; "
        f"hybrid ≤{100 * (point['hybrid_accuracy'] or 0):.1f}% right, an upper bound: the teacher "
        "assumed right)")
    cal = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "task": spec.name,
           "student_version": student.identity, "settings": settings, "operating_point": point,
           "seconds": round(time.monotonic() - t0, 2), "saved_to": str(path)}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(cal, indent=2))
    tmp.replace(path)
    return cal


def threshold_routing(student: Any, spec: TaskSpec, run: RunPaths, *, routing: bool,
                      teacher_share: float | None, path: Path, settings: dict[str, Any],
                      recalibrate: bool, batch: int,
                      choose: Callable[[list[Any], list[str | None], float], dict[str, Any]],
                      what: str) -> tuple[Any, dict[str, Any] | None, Any, dict[str, Any] | None]:
    """(student, calibration doc, Policy, operating point) for a student routed on one confidence
    threshold (a tagger, a causal LM): no gate without routing, the hand-set
    `serve.confidence_threshold` when there is one, else `threshold_on_validation` for the teacher
    share (`settings` gains it)."""
    from .router import Policy

    sv = spec.serve
    if not routing:
        return student, None, Policy(), None
    hs = frozenset(sv.high_stakes)
    if sv.confidence_threshold is not None:
        return student, None, Policy(sv.confidence_threshold, None, hs, sv.high_stakes_prob), None
    share = sv.teacher_share if teacher_share is None else teacher_share
    cal = threshold_on_validation(student, spec, run, path=path, settings={**settings, "teacher_share": share},
                                  recalibrate=recalibrate, batch=batch, choose=choose, what=what)
    point = cal["operating_point"]
    return student, cal, Policy(point["confidence_threshold"], None, hs, sv.high_stakes_prob), point
