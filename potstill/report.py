"""`potstill report RUN_DIR`: one self-contained `report.html` (plots as base64 PNG, no request
leaves the page) and a `report.md` beside it, from the files a run directory already holds.

Three layers, in this order in the file:

1. pure functions on values, with known-answer tests: reliability bins, confusion pairs,
   per-label scores, hosting cost per 1,000 requests, the cost-against-volume curve;
2. `build_report(run_dir)`: reads the run's files and returns plain data, one section per key;
   a section whose files are missing is `None`, and `missing[section]` says what to run;
3. rendering: `render_html(data)` and `render_markdown(data)`; plots come from matplotlib's Agg
   backend. Nothing here trains a model or runs the evaluation again.

Files read: report.json (stages/evaluate.py), eval/predictions.jsonl + eval/student_logits.npy +
eval/student_labels.json (stages/evaluate.py), calibration.json (serve/calibrate.py), potstill.db and
spec.resolved.json (through cost.py), filtered/filter_report.json, {student,baseline}/history.json,
the stage manifests, and compare.json (compare.py) when present.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import typer

from .cost import (
    CostInputs,
    break_even_requests_per_month,
    cost_inputs_from_run,
    hosting_cost_per_1k,
    hybrid_monthly,
    one_off_cost,
    summarize,
    teacher_only_monthly,
)
from .errors import MissingOutput, PotstillError
from .paths import (
    CALIBRATION_JSON,
    COMPARE_JSON,
    EVAL_DIR,
    FILTER_REPORT,
    HISTORY,
    MANIFEST,
    PREDICTIONS,
    REPORT_HTML,
    STUDENT_LABELS,
    STUDENT_LOGITS,
    RunPaths,
)
from .verdict import next_steps, with_verdict

MODELS = ("teacher", "student", "baseline")
N_BINS = 15
"""Reliability bins: the same 15 equal-width bins `potstill calibrate` uses for its ECE."""


# --- 1. pure functions -----------------------------------------------------------------------------
def reliability_bins(confidence: Sequence[float], correct: Sequence[bool],
                     n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """Equal-width bins over the top-1 probability, (lo, hi], the first also holding 0 (the
    convention of serve/confidence.py's `ece`). One dict per bin: lo, hi, count, accuracy and mean
    confidence (both None for an empty bin)."""
    import numpy as np

    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        out.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": n,
                    "accuracy": float(ok[m].mean()) if n else None,
                    "confidence": float(conf[m].mean()) if n else None})
    return out


def ece_from_bins(bins: Sequence[dict[str, Any]]) -> float:
    """Expected calibration error: sum over bins of (share of rows) x |accuracy - confidence|."""
    total = sum(b["count"] for b in bins)
    if not total:
        return 0.0
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in bins if b["count"]))


def confusion_pairs(gold: Sequence[str], pred: Sequence[str | None], texts: Sequence[str] | None = None,
                    top: int = 10, examples: int = 3) -> list[dict[str, Any]]:
    """The most frequent (gold, predicted) pairs among the errors, most frequent first (ties by
    name), each with up to `examples` texts in input order. A missing prediction counts as
    "<none>"."""
    from collections import Counter

    counts: Counter = Counter()
    seen: dict[tuple[str, str], list[str]] = {}
    for i, (g, p) in enumerate(zip(gold, pred)):
        p = "<none>" if p is None else p
        if g == p:
            continue
        counts[(g, p)] += 1
        if texts is not None and len(seen.setdefault((g, p), [])) < examples:
            seen[(g, p)].append(texts[i])
    pairs = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"gold": g, "predicted": p, "count": n, "examples": seen.get((g, p), [])}
            for (g, p), n in pairs]


def per_label_scores(gold: Sequence[str], pred: Sequence[str | None],
                     labels: Sequence[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support (gold count) of every label in `labels`, in that order
    (sklearn's definitions; 0 where undefined)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        list(gold), ["<none>" if x is None else x for x in pred], labels=list(labels),
        zero_division=0)
    return [{"label": l, "precision": float(a), "recall": float(b), "f1": float(c), "support": int(d)}
            for l, a, b, c, d in zip(labels, p, r, f, s)]


def cost_curve(x: CostInputs, volumes: Sequence[float]) -> list[dict[str, float]]:
    """Monthly cost against monthly volume: teacher only, hybrid, and the hybrid with the one-off
    cost amortised over the horizon (the line the break-even volume is defined on)."""
    amort = one_off_cost(x) / x.horizon_months
    out = []
    for r in volumes:
        y = replace(x, requests_per_month=float(r))
        h = hybrid_monthly(y)
        out.append({"requests_per_month": float(r), "teacher_only": teacher_only_monthly(y),
                    "hybrid": h, "hybrid_with_one_off": h + amort})
    return out


def volume_grid(x: CostInputs, break_even: float, points: int = 61) -> list[float]:
    """Log-spaced volumes spanning the break-even point and the run's own volume (x100 either way)."""
    centre = [v for v in (break_even, x.requests_per_month) if math.isfinite(v) and v > 0]
    lo = max(min(centre, default=1e6) / 100, 100.0)
    hi = max(centre, default=1e6) * 100
    a, b = math.log10(lo), math.log10(hi)
    return [10 ** (a + (b - a) * i / (points - 1)) for i in range(points)]


# --- 2. data from files ----------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PotstillError(f"{path} is not valid JSON: {e}") from None


def read_predictions(run: RunPaths) -> list[dict[str, Any]]:
    path = run.root / PREDICTIONS
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise PotstillError(f"{path}:{n}: not valid JSON: {e}") from None
    return rows


def build_report(run_dir: str | Path, *, requests_per_month: float | None = None) -> dict[str, Any]:
    """All the report's data as plain values. Raises FileNotFoundError naming report.json when
    the run was never evaluated; every other missing file only leaves its section out."""
    run = RunPaths(Path(run_dir))
    if not run.report_json.exists():
        raise MissingOutput(f"{run.report_json} not found: run `potstill eval` (or `potstill run`) first")
    report = _read_json(run.report_json)
    missing: dict[str, str] = {}
    data: dict[str, Any] = {"task": report.get("task"), "run_dir": str(run.root), "report": report,
                            "missing": missing}
    cal_path = run.root / CALIBRATION_JSON
    cal = _read_json(cal_path) if cal_path.exists() else None
    data["next_steps"] = next_steps(report, str(run.root), report.get("spec_file"), calibrated=cal is not None)
    if cal is None:
        missing["routing"] = f"run `potstill calibrate {run.root}` for the routing trade-off"

    # cost: the model in cost.py, fed by the run's files
    x = None
    try:
        x = cost_inputs_from_run(run.root, requests_per_month=requests_per_month)
    except (FileNotFoundError, ValueError) as e:
        missing["cost"] = f"no cost figures: {e}"
    data["headline"] = headline(report, x, _teacher_kind(run), run)
    data["cost"] = cost_section(x) if x is not None else None
    if data["cost"] is not None:
        data["cost"]["teacher_kind"] = _teacher_kind(run)

    data["funnel"] = funnel(report, run)
    pred_path = run.root / PREDICTIONS
    kind = report.get("kind") or "classify"
    if kind != "classify":  # label confusions and reliability are classifier views
        data["errors"] = data["reliability"] = None
        data["per_field"] = {n: m.get("per_field") for n, m in (report.get("models") or {}).items()
                             if m.get("per_field")} or None
        missing["errors"] = f"{kind} task: per-field scores below" if data["per_field"] else f"{kind} task"
        missing["reliability"] = "the reliability diagram is drawn for classify tasks"
    elif pred_path.exists():
        data["errors"] = errors_section(read_predictions(run), report)
    else:
        data["errors"] = None
        missing["errors"] = (f"no {PREDICTIONS}: rerun `potstill eval` (it writes the test predictions), "
                             f"or `potstill report {run.root} --predict` to compute them from the saved models")
    if kind == "classify":
        data["reliability"] = reliability_section(run, cal)
    if kind == "classify" and data["reliability"] is None:
        missing["reliability"] = f"no {STUDENT_LOGITS}: rerun `potstill eval` or `potstill report --predict`"
    data["routing"] = routing_section(cal) if cal else None
    data["curves"] = {n: _read_json(run.model_dir(n) / HISTORY) for n in ("student", "baseline")
                      if (run.model_dir(n) / HISTORY).exists()} or None
    if data["curves"] is None:
        missing["curves"] = "no history.json in student/ or baseline/"
    data["lineage"] = lineage(run)
    cmp_path = run.root / COMPARE_JSON
    data["compare"] = _read_json(cmp_path) if cmp_path.exists() else None
    if data["compare"] is None:
        missing["compare"] = _compare_hint(run, report)
    return data


def _compare_hint(run: RunPaths, report: dict[str, Any]) -> str:
    """How to get the fine-tune-or-distill table for this run directory: a command that can run
    here (without training gold, `compare` needs a labelled file of its own)."""
    cmd = f"potstill compare {report.get('spec_file') or 'SPEC'} --workdir {run.root}"
    try:
        with_gold = (_read_json(run.inputs / MANIFEST).get("counts") or {}).get("train_with_gold")
    except (OSError, ValueError, AttributeError):
        with_gold = None
    if with_gold == 0:
        return (f"the training split has no gold labels: `{cmd} --gold FILE` (a labelled file) trains "
                "gold vs distill vs both to show how many labels fine-tuning would need")
    return f"run `{cmd}` for gold vs distill vs both"


def _teacher_kind(run: RunPaths) -> str | None:
    try:
        return (_read_json(run.spec).get("teacher") or {}).get("kind") if run.spec.exists() else None
    except (ValueError, AttributeError):
        return None


def headline(report: dict[str, Any], x: CostInputs | None, teacher_kind: str | None,
             run: RunPaths | None = None) -> list[dict[str, Any]]:
    """One row per evaluated model: quality, speed, size and cost per 1,000 requests. An API
    teacher costs its per-call price; a local model (the students, and a local teacher) costs its
    hosting at the cost model's volume and defaults."""
    from .cost import teacher_cost_per_request

    rows = []
    extra = [k for k in (report.get("models") or {}) if k not in MODELS]  # eval.runtimes rows
    for name in [*MODELS, *extra]:
        m = (report.get("models") or {}).get(name)
        if not m:
            continue
        if m.get("size_mb") is None and run is not None and name in MODELS and \
                (run.model_dir(name) / "config.json").exists():
            m = {**m, "size_mb": round(sum(f.stat().st_size for f in run.model_dir(name).rglob("*")
                                           if f.is_file()) / 2**20, 2)}  # a fitted teacher: its folder
        cost, basis = None, None
        if x is not None:
            if name == "teacher" and teacher_kind not in ("fit", "hf"):
                cost, basis = 1000 * teacher_cost_per_request(x), "API price per call"
            elif m.get("throughput_per_s"):
                cost = hosting_cost_per_1k(x, float(m["throughput_per_s"]))
                basis = (f"hosting at {x.requests_per_month:,.0f} requests/month, "
                         f"at least {x.min_instances} instances")
        rows.append({"model": name, **{k: m.get(k) for k, _ in quality_columns(report)},
                     "agreement_with_teacher": m.get("agreement_with_teacher"),
                     "latency_ms_p50": m.get("latency_ms_p50"), "latency_ms_p95": m.get("latency_ms_p95"),
                     "throughput_per_s": m.get("throughput_per_s"), "params": m.get("params"),
                     "size_mb": m.get("size_mb"), "cost_per_1k": cost, "cost_basis": basis})
    return rows


def quality_columns(report: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """(report.json key, column title) of the task kind's quality metrics (`Task.quality`)."""
    from .tasks import get_task

    if report.get("json_fields"):  # generate with a json_schema: scored like extract
        return tuple(get_task("extract").quality)
    return tuple(get_task(report.get("kind") or "classify").quality)


def cost_section(x: CostInputs) -> dict[str, Any]:
    s = summarize(x)
    be = break_even_requests_per_month(x)
    return {"summary": s, "break_even": be, "curve": cost_curve(x, volume_grid(x, be))}


def funnel(report: dict[str, Any], run: RunPaths) -> dict[str, Any] | None:
    d = report.get("data") or {}
    if d.get("labeled") is None and not (run.filtered / FILTER_REPORT).exists():
        return None
    fr = _read_json(run.filtered / FILTER_REPORT) if (run.filtered / FILTER_REPORT).exists() else {}
    return {"inputs": d.get("inputs"), "augmented": d.get("augmented") or 0, "labelled": d.get("labeled"),
            "kept": d.get("kept"), "dropped": d.get("dropped"),
            "dropped_by_reason": {k: v for k, v in (d.get("dropped_by_reason") or {}).items() if v},
            "teacher_spend_usd": d.get("teacher_spend_usd"), "policy": fr.get("policy")}


def errors_section(rows: list[dict[str, Any]], report: dict[str, Any]) -> dict[str, Any]:
    gold = [r["gold"] for r in rows]
    out: dict[str, Any] = {"rows": len(rows)}
    labels = sorted({g for g in gold if g is not None})
    for name in ("student", "baseline"):
        if rows and name in rows[0]:
            pred = [r.get(name) for r in rows]
            out[name] = {"pairs": confusion_pairs(gold, pred, [r["text"] for r in rows]),
                         "per_label": per_label_scores(gold, pred, labels),
                         "accuracy": sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1)}
    return out


def reliability_section(run: RunPaths, cal: dict[str, Any] | None) -> dict[str, Any] | None:
    """The student's reliability on the test split: before (T = 1) and, when calibration.json
    holds a temperature, after temperature scaling with it."""
    import numpy as np

    from .serve.confidence import ece, softmax

    lp, labp, pp = run.root / STUDENT_LOGITS, run.root / STUDENT_LABELS, run.root / PREDICTIONS
    if not (lp.exists() and labp.exists() and pp.exists()):
        return None
    logits = np.load(lp)  # (N, C) student logits on the test split
    own = _read_json(labp)
    gold = [r["gold"] for r in read_predictions(run)]
    if len(gold) != len(logits):
        raise PotstillError(f"{lp}: {len(logits)} rows but {pp} has {len(gold)}; rerun `potstill eval`")
    index = {l: i for i, l in enumerate(own)}
    y = np.array([index.get(g, -1) for g in gold])  # -1: a label the student does not know, never right
    out: dict[str, Any] = {"rows": len(gold), "temperature": None, "temperature_source": None}
    variants = [("before", 1.0)]
    if cal and cal.get("model", "student") == "student" and cal.get("temperature"):
        T = float(cal["temperature"])
        out["temperature"], out["temperature_source"] = T, f"calibration.json ({cal.get('created_at', '')})"
        variants.append(("after", T))
    for key, T in variants:
        p = softmax(logits, T)
        conf, ok = p.max(-1), p.argmax(-1) == y
        bins = reliability_bins(conf, ok)
        out[key] = {"bins": bins, "ece": ece(p, y, N_BINS), "mean_confidence": float(conf.mean()),
                    "accuracy": float(ok.mean())}
    return out


def routing_section(cal: dict[str, Any]) -> dict[str, Any]:
    def pts(table):
        return [{"teacher_share": r.get("teacher_share"), "hybrid_accuracy": r.get("hybrid_accuracy"),
                 "oos_caught": r.get("oos_caught"), "teacher_share_with_oos": r.get("teacher_share_with_oos")}
                for r in table or []]

    op = cal.get("operating_point") or {}
    out = {"validation": pts(cal.get("table")), "operating_point": {k: op.get(k) for k in (
        "teacher_share", "hybrid_accuracy", "oos_caught", "teacher_share_with_oos", "confidence_threshold",
        "ood_threshold", "teacher_assumed_right")}, "explanation": op.get("explanation"),
        "validation_rows": (cal.get("validation") or {}).get("rows"),
        "student_accuracy": (cal.get("validation") or {}).get("student_accuracy"),
        "teacher_accuracy": (cal.get("validation") or {}).get("teacher_accuracy")}
    if (cal.get("test") or {}).get("table"):
        out["test"] = pts(cal["test"]["table"])
    return out


def _assumed_note(rt: dict[str, Any]) -> str | None:
    """The routing plot's hybrid accuracy is an upper bound when escalated validation rows had no
    teacher answer (counted right): say so beside it."""
    n = (rt.get("operating_point") or {}).get("teacher_assumed_right")
    if not n:
        return None
    return (f"Hybrid accuracy is an upper bound: {n} escalated validation row(s) had no cached teacher "
            "answer and count as answered right (`potstill calibrate --ask-teacher` measures them).")


def lineage(run: RunPaths) -> list[dict[str, Any]]:
    out = []
    for stage, d in (("inputs", run.inputs), ("teacher", run.teacher), ("labels", run.labels),
                     ("filtered", run.filtered), ("student", run.student), ("baseline", run.baseline),
                     ("eval", run.root / "eval")):
        if not (d / MANIFEST).exists():
            continue
        m = _read_json(d / MANIFEST)
        out.append({"stage": stage, "created_at": m.get("created_at"), "spec_hash": m.get("spec_hash"),
                    "teacher": m.get("teacher"), "dataset_hash": m.get("dataset_hash"),
                    "train_data_hash": m.get("train_data_hash"), "objective": m.get("objective"),
                    "init_from": m.get("init_from"), "versions": m.get("versions"),
                    "git_commit": m.get("git_commit")})
    return out


# --- computing missing test predictions from the saved models (no training, no timing) ----------
def predict_test(spec_or_run: Any, run_dir: str | Path) -> Path:
    """Write eval/predictions.jsonl (+ student logits) for a run evaluated before stages/evaluate.py
    wrote them: the saved student and baseline predict the test split; the teacher's answers come
    from the cache in potstill.db (a local teacher runs; an API teacher is asked only for texts
    not cached). `spec_or_run`: a TaskSpec, or None to load spec.resolved.json."""
    from .serve.calibrate import load_run_spec
    from .stages.evaluate import write_predictions
    from .stages.prepare import load_inputs
    from .store import Store
    from .students.classifier import load_classifier, model_labels, predict_logits
    from .teachers import answer_cached, make_teacher

    run = RunPaths(Path(run_dir))
    spec = spec_or_run if spec_or_run is not None else load_run_spec(run.root)
    inputs = load_inputs(run)
    texts, gold = [e.text for e in inputs.test], [e.gold for e in inputs.test]
    preds: dict[str, list] = {}
    with Store(run.db) as store:
        teacher = make_teacher(spec, run, inputs.labels)
        preds["teacher"] = [a.label for a in answer_cached(teacher, texts, store, spec.spec_hash())]
    student = None
    for name in ("student", "baseline"):
        d = run.model_dir(name)
        if not (d / "config.json").exists():
            continue
        model, tok = load_classifier(d)
        own = model_labels(model)
        logits = predict_logits(model, tok, texts, spec.eval.batch_size, spec.student.max_length,
                                show=f"predict {name}")
        preds[name] = [own[i] for i in logits.argmax(-1)]
        if name == "student":
            student = {"logits": (own, logits)}
    write_predictions(run.root / EVAL_DIR, texts, gold, preds, {"student": student} if student else {})
    return run.root / PREDICTIONS


# --- 3. rendering ----------------------------------------------------------------------------------
def _fig_png(fig) -> str:
    """A matplotlib figure as a data: URI (base64 PNG); the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def plot_reliability(rel: dict[str, Any]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfectly calibrated")
    for key, colour in (("before", "tab:red"), ("after", "tab:blue")):
        if key not in rel:
            continue
        b = [x for x in rel[key]["bins"] if x["count"]]
        lab = (f"before (T=1), ECE {rel[key]['ece']:.3f}" if key == "before"
               else f"after (T={rel['temperature']:.3g}), ECE {rel[key]['ece']:.3f}")
        ax.plot([x["confidence"] for x in b], [x["accuracy"] for x in b], marker="o", color=colour, label=lab)
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.set_xlabel("student top-1 probability (mean in bin)"), ax.set_ylabel("accuracy in bin")
    ax.set_title(f"Reliability on {rel['rows']} test rows")
    ax.legend(loc="lower right")
    return _fig_png(fig)


def plot_routing(rt: dict[str, Any]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    v = [r for r in rt["validation"] if r["teacher_share"] is not None]
    ax.plot([r["teacher_share"] for r in v], [r["hybrid_accuracy"] for r in v], marker=".",
            color="tab:blue", label="hybrid accuracy (validation)")
    if rt.get("test"):
        t = [r for r in rt["test"] if r["teacher_share"] is not None]
        ax.plot([r["teacher_share"] for r in t], [r["hybrid_accuracy"] for r in t], marker=".",
                color="tab:cyan", ls="--", label="hybrid accuracy (test)")
    if any(r.get("oos_caught") is not None for r in v):
        ax.plot([r["teacher_share"] for r in v if r.get("oos_caught") is not None],
                [r["oos_caught"] for r in v if r.get("oos_caught") is not None], marker=".",
                color="tab:orange", label="out-of-scope caught (validation)")
    op = rt["operating_point"]
    if op.get("teacher_share") is not None:
        ax.axvline(op["teacher_share"], color="tab:green", lw=1, ls=":")
        ax.plot([op["teacher_share"]], [op["hybrid_accuracy"]], marker="*", ms=14, color="tab:green",
                ls="none", label=f"chosen: {op['teacher_share']:.0%} to the teacher")
    ax.set_xlabel("share of in-scope traffic sent to the teacher")
    ax.set_ylabel("accuracy / share of out-of-scope caught")
    ax.set_ylim(0, 1.02)
    ax.set_title("Routing trade-off")
    ax.legend(loc="lower right")
    return _fig_png(fig)


def plot_cost(cost: dict[str, Any]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    c = cost["curve"]
    r = [p["requests_per_month"] for p in c]
    ax.loglog(r, [p["teacher_only"] for p in c], color="tab:red", label="teacher only")
    ax.loglog(r, [p["hybrid"] for p in c], color="tab:blue", ls="--", label="hybrid (running cost)")
    ax.loglog(r, [p["hybrid_with_one_off"] for p in c], color="tab:blue",
              label="hybrid + one-off amortised")
    be = cost["break_even"]
    if math.isfinite(be):
        ax.axvline(be, color="tab:green", ls=":", lw=1)
        ax.annotate(f"break-even\n{be:,.0f}/month", (be, ax.get_ylim()[0]), xytext=(4, 8),
                    textcoords="offset points", color="tab:green")
    ax.set_xlabel("requests per month"), ax.set_ylabel("$ per month")
    ax.set_title("Monthly cost against volume")
    ax.legend(loc="upper left")
    return _fig_png(fig)


def plot_curves(curves: dict[str, Any]) -> str:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    for name, colour in (("student", "tab:blue"), ("baseline", "tab:orange")):
        h = (curves.get(name) or {}).get("history") or []
        if not h:
            continue
        ep = [e["epoch"] for e in h]
        a1.plot(ep, [e.get("val_accuracy") for e in h], marker="o", color=colour, label=name)
        a2.plot(ep, [e.get("loss") for e in h], marker="o", color=colour, label=name)
    a1.set_xlabel("epoch"), a1.set_ylabel("validation accuracy"), a1.set_title("Validation accuracy")
    a2.set_xlabel("epoch"), a2.set_ylabel("training loss"), a2.set_title("Training loss")
    a1.legend(), a2.legend()
    return _fig_png(fig)


def plot_funnel(f: dict[str, Any]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 2.0))
    names = ["inputs", "labelled", "kept"]
    vals = [f.get("inputs") or 0, f.get("labelled") or 0, f.get("kept") or 0]
    ax.barh(names[::-1], vals[::-1], color=["tab:green", "tab:blue", "tab:grey"])
    for i, v in enumerate(vals[::-1]):
        ax.text(v, i, f" {v:,}", va="center")
    ax.set_xlim(0, max(vals + [1]) * 1.15)
    ax.set_title("Data funnel")
    return _fig_png(fig)


def plot_curve(c: dict[str, Any]) -> str:
    """The fine-tune-or-distill curve (curve.py) as a data: URI PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    colours = {"gold": "tab:orange", "distill": "tab:blue", "both": "tab:green"}
    names = {"gold": "gold only (fine-tune)", "distill": "distill (teacher labels)", "both": "both"}
    for o, pts in (c.get("points") or {}).items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colours.get(o),
                    label=names.get(o, o), linestyle="--" if o == "distill" else "-")
    x = (c.get("crossover") or {}).get("gold_labels")
    if x:
        ax.axvline(x, color="grey", linestyle=":")
        ax.annotate(f"crossover ≈ {x:,}", (x, ax.get_ylim()[0]), textcoords="offset points",
                    xytext=(4, 6), color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("gold labels (log scale)"), ax.set_ylabel("test accuracy")
    ax.set_title("Fine-tune or distill? Accuracy against gold labels")
    ax.legend(loc="lower right")
    return _fig_png(fig)


def plots(data: dict[str, Any]) -> dict[str, str]:
    """Every plot whose data exists, as data: URIs."""
    out = {}
    if data.get("funnel"):
        out["funnel"] = plot_funnel(data["funnel"])
    if data.get("reliability"):
        out["reliability"] = plot_reliability(data["reliability"])
    if data.get("routing"):
        out["routing"] = plot_routing(data["routing"])
    if data.get("cost"):
        out["cost"] = plot_cost(data["cost"])
    if data.get("curves"):
        out["curves"] = plot_curves(data["curves"])
    pts = ((data.get("compare") or {}).get("curve") or {}).get("points") or {}
    if len(pts.get("gold") or []) >= 2:
        out["gold_curve"] = plot_curve(data["compare"]["curve"])
    return out


def _f(v: Any, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _money(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"${v:,.4f}" if abs(v) < 1 else f"${v:,.2f}"


def _params(v: Any) -> str:
    return f"{v / 1e6:.1f}M" if v else "—"


def headline_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    quality = quality_columns(data["report"])
    cols = ["model", *(title for _, title in quality), "agree w/ teacher", "p50 ms", "p95 ms",
            "inputs/s", "params", "size MB", "$ / 1,000 requests"]
    rows = []
    for r in data["headline"]:
        rows.append([r["model"], *(_f(r[k]) for k, _ in quality), _f(r["agreement_with_teacher"]),
                     _f(r["latency_ms_p50"], 2), _f(r["latency_ms_p95"], 2), _f(r["throughput_per_s"], 1),
                     _params(r["params"]), _f(r["size_mb"], 1),
                     _money(r["cost_per_1k"]) + (f" ({r['cost_basis']})" if r["cost_basis"] else "")])
    return cols, rows


def cost_lines(cost: dict[str, Any]) -> list[str]:
    s = cost["summary"]
    i = s["inputs"]
    per1k = s["cost_per_1k_requests"]
    be = cost["break_even"]
    lines = [f"At {i['requests_per_month']:,.0f} requests/month with {i['teacher_share']:.1%} of them sent "
             f"to the teacher: teacher only {_money(s['teacher_only_monthly'])}/month "
             f"({_money(per1k['teacher_only'])} per 1,000), hybrid {_money(s['hybrid_monthly'])}/month "
             f"({_money(per1k['hybrid'])} per 1,000; {_money(per1k['hybrid_with_one_off'])} with the one-off "
             f"{_money(s['one_off_cost'])} over {i['horizon_months']:g} months).",
             ("Break-even: " + (f"{be:,.0f} requests/month ({_money(s['break_even_teacher_spend_monthly'])} "
                                "of teacher spend a month)" if math.isfinite(be) else "no volume breaks even")
              + f"; verdict: {s['verdict']}.")]
    if cost.get("teacher_kind") in ("fit", "hf"):
        lines.append(f"This run's teacher is a local model (teacher.kind {cost['teacher_kind']}): 'teacher only' "
                     f"prices it as an API at ${i['price_in']:g} / ${i['price_out']:g} per million input / output "
                     f"tokens and {i['tokens_in']:g} / {i['tokens_out']:g} tokens per request (see the inputs "
                     "below; `potstill cost` takes your own prices).")
    return lines


def _table_html(cols: list[str], rows: list[list[str]], num: Sequence[int] | None = None) -> str:
    """An escaped HTML table; columns in `num` (default: all but the first) align right."""
    num = set(range(1, len(cols)) if num is None else num)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(
        f"<td class=\"{'num' if j in num else ''}\">{html.escape(str(c))}</td>" for j, c in enumerate(r))
        + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
"""The page's Content-Security-Policy: images only from data: URIs, inline styles, no scripts,
no fonts, no connections. Nothing the page holds can make a request leave it."""

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .55em;vertical-align:top}th{background:#f4f4f4;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.missing{color:#777;font-style:italic}.next{border-left:4px solid #2a6;padding:.2em .8em;margin:.8em 0}.plot{max-width:100%;height:auto;display:block;margin:.5em 0}
code{background:#f4f4f4;padding:0 .2em}table.small{font-size:.75em}td{overflow-wrap:break-word}
"""


def render_html(data: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """The whole page as one string: inline CSS, images as data: URIs, no scripts, no links out."""
    images = plots(data) if images is None else images
    e = html.escape
    miss = data["missing"]
    out: list[str] = []

    def h2(title: str, anchor: str) -> None:
        out.append(f'<h2 id="{anchor}">{e(title)}</h2>')

    def img(key: str, alt: str) -> None:
        if key in images:
            out.append(f'<img class="plot" id="plot-{key}" alt="{e(alt)}" src="{images[key]}">')

    def missing(key: str) -> None:
        out.append(f'<p class="missing">{e(miss.get(key, "not available for this run"))}</p>')

    rep = data["report"]
    out.append(f"<h1>potstill report: {e(str(data['task']))}</h1>")
    n_out = rep.get("labels") if rep.get("labels") is not None else rep.get("fields")
    n_out = len(n_out) if isinstance(n_out, list) else n_out
    what = "fields" if rep.get("kind") == "extract" else "labels"
    out.append(f"<p>{e(rep.get('kind') or 'classify')} task; held-out test: {rep.get('test_rows')} rows"
               + (f", {n_out} {what}" if n_out is not None else "") + ". "
               f"Run directory <code>{e(data['run_dir'])}</code>.</p>")

    v = rep.get("verdict")
    if v:
        out.append(f'<p class="verdict" id="verdict"><strong>Verdict: {e(v["deploy"])}</strong>: {e(v["reason"])}.</p>')
    nxt = data.get("next_steps")
    if nxt:
        out.append('<div class="next" id="what-next"><p><strong>What next: ' + e(nxt["decision"])
                   + "</strong>.<br>Because: " + e(nxt["because"]) + ".</p><ul>"
                   + "".join(f"<li><code>{e(c)}</code></li>" for c in nxt["next"]) + "</ul></div>")

    h2("Headline", "headline")
    cols, rows = headline_rows(data)
    out.append(_table_html(cols, rows))
    summ = rep.get("summary") or {}
    if summ:
        out.append("<ul>" + "".join(f"<li>{e(k.replace('_', ' '))}: {e(str(v))}</li>" for k, v in summ.items())
                   + "</ul>")
    if data.get("cost"):
        out.append(f"<p>{e(cost_lines(data['cost'])[1])}</p>")
    else:
        missing("cost")

    h2("Data funnel", "funnel")
    f = data.get("funnel")
    if f:
        img("funnel", "data funnel: inputs, labelled, kept")
        out.append(f"<p>inputs {f['inputs']} (of which {f['augmented']} augmented) → labelled {f['labelled']} "
                   f"→ kept {f['kept']} (dropped {f['dropped']}); teacher spend on labelling "
                   f"{_money(f['teacher_spend_usd'])}.</p>")
        if f["dropped_by_reason"]:
            out.append(_table_html(["reason", "dropped"], [[k, str(v)] for k, v in f["dropped_by_reason"].items()]))
    else:
        out.append('<p class="missing">no labelling data: run `potstill label` and `potstill filter`</p>')

    h2("Where the student errs", "errors")
    err = data.get("errors")
    if err:
        for name in ("student", "baseline"):
            if name not in err:
                continue
            out.append(f"<h3>{name}: most confused pairs (gold → predicted)</h3>")
            out.append(_table_html(["gold", "predicted", "count", "examples"], [
                [p["gold"], p["predicted"], str(p["count"]), " | ".join(p["examples"])] for p in err[name]["pairs"]],
                num=[2]))
            if name == "student":
                worst = sorted(err[name]["per_label"], key=lambda r: (r["f1"], r["label"]))
                out.append(f"<details><summary>per-label precision / recall / F1 ({len(worst)} labels, "
                           "worst first)</summary>")
                out.append(_table_html(["label", "precision", "recall", "F1", "support"], [
                    [r["label"], _f(r["precision"], 3), _f(r["recall"], 3), _f(r["f1"], 3), str(r["support"])]
                    for r in worst]))
                out.append("</details>")
    else:
        missing("errors")
    for name, fields in (data.get("per_field") or {}).items():
        out.append(f"<h3>{e(name)}: per-field precision / recall / F1</h3>")
        out.append(_table_html(["field", "precision", "recall", "F1", "support"], [
            [k, _f(v.get("precision"), 3), _f(v.get("recall"), 3), _f(v.get("f1"), 3), str(v.get("support"))]
            for k, v in sorted(fields.items(), key=lambda kv: (kv[1].get("f1") or 0, kv[0]))], num=[4]))

    h2("Calibration: reliability diagram", "reliability")
    rel = data.get("reliability")
    if rel:
        img("reliability", "reliability diagram of the student before and after temperature scaling")
        txt = f"ECE before {rel['before']['ece']:.4f}"
        if "after" in rel:
            txt += f", after {rel['after']['ece']:.4f} (T = {rel['temperature']:.4g} from {rel['temperature_source']})"
        else:
            txt += f"; run `potstill calibrate {data['run_dir']}` for the temperature-scaled curve"
        out.append(f"<p>{e(txt)}; {N_BINS} equal-width bins.</p>")
    else:
        missing("reliability")

    h2("Routing trade-off", "routing")
    rt = data.get("routing")
    if rt:
        img("routing", "hybrid accuracy and out-of-scope caught against teacher share")
        if rt.get("explanation"):
            out.append(f"<p>{e(rt['explanation'])}</p>")
        if _assumed_note(rt):
            out.append(f'<p class="missing">{e(_assumed_note(rt))}</p>')
    else:
        missing("routing")

    h2("Cost against monthly volume", "cost")
    if data.get("cost"):
        img("cost", "monthly cost of teacher-only and hybrid against volume, with break-even")
        for line in cost_lines(data["cost"]):
            out.append(f"<p>{e(line)}</p>")
        s = data["cost"]["summary"]
        out.append("<ul>" + "".join(f"<li>{e(r)}</li>" for r in s["reasons"]) + "</ul>")
        if s["notes"]:
            out.append("<p>Inputs of the cost model:</p><ul>" + "".join(f"<li>{e(n)}</li>" for n in s["notes"])
                       + "</ul>")
    else:
        missing("cost")

    h2("Fine-tune or distill?", "compare")
    if data.get("compare"):
        out.append(compare_html(data["compare"]))
        img("gold_curve", "accuracy against gold labels: gold only, distill, both")
        cross = (data["compare"].get("curve") or {}).get("crossover") or {}
        if cross.get("status") not in (None, "unknown"):
            out.append(f"<p><strong>By gold budget:</strong> {e(cross['message'])}.</p>")
    else:
        missing("compare")

    h2("Training curves", "curves")
    if data.get("curves"):
        img("curves", "validation accuracy and training loss per epoch")
        out.append("<p>The training losses follow each model's own objective (soft-label KD for a distilled "
                   "student, cross-entropy on gold for the baseline), so compare their validation accuracy, "
                   "not the loss values.</p>")
    else:
        missing("curves")

    h2("Lineage", "lineage")
    if data.get("lineage"):
        out.append(_table_html(["stage", "created", "spec hash", "teacher", "dataset hash", "objective",
                                "init from", "versions", "git commit"], [
            [r["stage"], _f(r["created_at"]), _f(r["spec_hash"]), _f(r["teacher"]), _f(r["dataset_hash"]),
             _f(r["objective"]), _f(r["init_from"]),
             "; ".join(f"{k} {v}" for k, v in (r["versions"] or {}).items()), _f((r["git_commit"] or "")[:12] or None)]
            for r in data["lineage"]], num=[]).replace("<table>", '<table class="small">', 1))
    else:
        out.append('<p class="missing">no manifests found</p>')

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>potstill report: {e(str(data['task']))}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(out) + "\n</body></html>\n")


def compare_html(c: dict[str, Any]) -> str:
    from .compare import table_rows

    cols, rows = table_rows(c)
    e = html.escape
    rec = c.get("recommendation") or {}
    return (_table_html(cols, rows) + f"<p><strong>Recommendation: {e(str(rec.get('choice')))}</strong></p>"
            + "<ul>" + "".join(f"<li>{e(r)}</li>" for r in rec.get("reasons", [])) + "</ul>")


def render_markdown(data: dict[str, Any]) -> str:
    """report.md: the evaluation's table and data summary, then the sections this report adds."""
    miss = data["missing"]
    lines = [_evaluation_markdown(data["report"], data.get("next_steps")).rstrip(), ""]
    cols, rows = headline_rows(data)
    lines += ["## Headline (with size and cost)", "", "| " + " | ".join(cols) + " |",
              "|---|" + "---:|" * (len(cols) - 1)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]
    if data.get("cost"):
        lines += ["## Cost", ""] + cost_lines(data["cost"]) + [""]
        lines += [f"- {r}" for r in data["cost"]["summary"]["reasons"]] + [""]
        if data["cost"]["summary"]["notes"]:
            lines += ["Inputs of the cost model:", ""] + [f"- {n}" for n in data["cost"]["summary"]["notes"]] + [""]
    else:
        lines += ["## Cost", "", f"_{miss.get('cost')}_", ""]
    lines += ["## Where the student errs", ""]
    err = data.get("errors")
    if err and "student" in err:
        lines += ["| gold | predicted | count | example |", "|---|---|---:|---|"]
        lines += [f"| {p['gold']} | {p['predicted']} | {p['count']} | {(p['examples'] or [''])[0]} |"
                  for p in err["student"]["pairs"]]
        worst = sorted(err["student"]["per_label"], key=lambda r: (r["f1"], r["label"]))[:10]
        lines += ["", "Lowest F1 labels:", "", "| label | precision | recall | F1 | support |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['label']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
                  for r in worst]
    else:
        lines.append(f"_{miss.get('errors')}_")
    lines.append("")
    rel = data.get("reliability")
    lines += ["## Calibration", ""]
    if rel:
        lines.append(f"ECE on test: before {rel['before']['ece']:.4f}"
                     + (f", after temperature scaling (T = {rel['temperature']:.4g}) {rel['after']['ece']:.4f}"
                        if "after" in rel else " (run `potstill calibrate` for the temperature)"))
    else:
        lines.append(f"_{miss.get('reliability')}_")
    lines += ["", "## Routing", ""]
    rt = data.get("routing")
    lines.append(rt["explanation"] if rt and rt.get("explanation") else f"_{miss.get('routing', 'no operating point')}_")
    if rt and _assumed_note(rt):
        lines += ["", f"_{_assumed_note(rt)}_"]
    lines.append("")
    if data.get("compare"):
        from .compare import render_markdown as cmp_md

        lines += [cmp_md(data["compare"]).replace("# ", "## ", 1), ""]
    lines += ["## Lineage", "", "| stage | spec hash | teacher | dataset hash | git commit |", "|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {_f(r['spec_hash'])} | {_f(r['teacher'])} | {_f(r['dataset_hash'])} | "
              f"{_f(r['git_commit'])} |" for r in data.get("lineage") or []]
    lines += ["", "Plots: report.html (self-contained)."]
    return "\n".join(lines) + "\n"


def _evaluation_markdown(report: dict[str, Any], nxt: dict[str, Any] | None) -> str:
    """The evaluation's own report.md text, rendered by its task kind (report.json says which),
    with the verdict and the "what next" block on top."""
    from .tasks import get_task

    return with_verdict(get_task(report.get("kind") or "classify").render_markdown(report),
                        report.get("verdict"), nxt)


def write_report(run_dir: str | Path, *, requests_per_month: float | None = None) -> dict[str, Any]:
    """Build the data, write report.html and report.md; return {"html", "md", "data"}."""
    run = RunPaths(Path(run_dir))
    data = build_report(run.root, requests_per_month=requests_per_month)
    page = render_html(data)
    tmp = run.root / (REPORT_HTML + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(run.root / REPORT_HTML)
    run.report_md.write_text(render_markdown(data), encoding="utf-8")
    return {"html": run.root / REPORT_HTML, "md": run.report_md, "data": data}


def write_report_safely(run_dir: str | Path) -> Path | None:
    """For `potstill run`: the report after the evaluation; a failure here is logged, never
    raised, so report.json (already written) is not lost with it."""
    from .progress import log

    try:
        out = write_report(run_dir)
    except Exception as e:  # noqa: BLE001 - plotting must not sink a finished evaluation
        log(f"report: not written ({type(e).__name__}: {e}); report.json is intact, "
            f"retry with `potstill report {run_dir}`")
        return None
    log(f"report: {out['html']}")
    return out["html"]


# --- the command -------------------------------------------------------------------------------------
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (holds report.json).")],
    predict: Annotated[bool, typer.Option(
        "--predict", help="Compute eval/predictions.jsonl from the saved models when missing "
        "(no training; teacher answers from the cache).")] = False,
    requests_per_month: Annotated[Optional[float], typer.Option(
        "--requests-per-month", min=1, help="Volume for the cost figures (default: the cost model's 1,000,000).")] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow", help="Log the spec, metrics and report files to MLflow.")] = False,
    mlflow_uri: Annotated[Optional[str], typer.Option(
        "--mlflow-uri", help="MLflow tracking URI (default: a folder store in RUN_DIR/mlruns).")] = None,
):
    """Write RUN_DIR/report.html (one self-contained file with plots) and report.md from the run's files.

    Sections: headline (quality, latency, size, cost per 1,000 requests), data funnel, where the student errs, reliability before/after temperature scaling, routing trade-off, cost against volume with break-even, gold vs distill comparison, training curves and lineage. A section whose files are missing says which command makes them. Nothing is retrained or re-evaluated.
    """
    from .progress import log
    from .tracking import require_mlflow

    if mlflow:
        require_mlflow()
    run = RunPaths(run_dir)
    if predict and not (run.root / PREDICTIONS).exists():
        import time

        t0 = time.monotonic()
        predict_test(None, run.root)
        log(f"report: test predictions computed in {time.monotonic() - t0:.0f} s")
    out = write_report(run.root, requests_per_month=requests_per_month)
    typer.echo(f"wrote {out['html']} and {out['md']}")
    for key, why in out["data"]["missing"].items():
        typer.echo(f"  {key}: {why}")
    if mlflow:
        from .tracking import log_run_dir

        url = log_run_dir(run.root, uri=mlflow_uri, kind="report")
        typer.echo(f"mlflow: {url}")
