"""`potstill compare SPEC`: fine-tune or distill? The same student trained three ways on the same
data, measured on the same held-out test split:

- **gold**    — gold labels only (train.objective gold; initialised from student.model, never
  sees the teacher: the plain fine-tuning path, like the run's baseline);
- **distill** — teacher labels only (the teacher's soft labels on every kept input);
- **both**    — teacher soft labels, with the gold label as the hard target where there is one.

With `--gold-share 0.25` it also trains gold and both with only a seeded 25% of the gold labels
(the teacher still labels every input; distill does not use gold, so it does not change): that is
where distillation usually wins. The subsets are nested (the 10% subset lies inside the 25% one).

Everything reuses the main run directory: its inputs, teacher, labels (cache) and filtered
records; nothing is relabelled. Each variant's model lives in `RUN/compare/<variant>/`; a variant
whose settings match the run's own student or baseline starts from a copy of it, and
train.py's fingerprint check then skips the training. Output: `RUN/compare.json` and
`RUN/compare.md`, rendered into report.html by `potstill report`.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence

import typer

from .curve import curve
from .errors import PotstillError
from .paths import COMPARE_DIR, COMPARE_JSON, COMPARE_MD, KEPT, MANIFEST, PREDICTIONS, SOFT, SPLITS, RunPaths
from .schedule import adaptive_steps
from .timing import time_alone

OBJECTIVES = ("gold", "distill", "both")


# --- pure parts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str
    objective: str        # gold | distill | both
    gold_share: float     # share of the gold training labels it may use (1.0 = all)


def plan(gold_shares: Sequence[float] = ()) -> list[Variant]:
    """gold, distill, both on all gold labels; then gold and both for each share below 1."""
    out = [Variant(o, o, 1.0) for o in OBJECTIVES]
    for s in sorted({float(s) for s in gold_shares}, reverse=True):
        if not 0.0 < s <= 1.0:
            raise PotstillError(f"--gold-share must be within (0, 1], got {s}")
        if s < 1.0:
            out += [Variant(f"{o}@{s:g}", o, s) for o in ("gold", "both")]
    return out


def gold_subset(ids: Sequence[str], share: float, seed: int) -> set[str]:
    """A seeded `share` of `ids` (round(share * n), at least 1 when share > 0). One permutation
    per seed, cut at different lengths, so a smaller share's subset lies inside a larger one's."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    k = max(1, round(share * len(order))) if share > 0 and order else 0
    return set(order[:k])


def noise_margin(p: float, n: int, z: float = 1.96) -> float:
    """Half-width of a ~95% interval on the difference of two accuracies near `p` measured on the
    same `n` rows, treated as independent: z * sqrt(2 p (1 - p) / n). Conservative for paired
    models (their errors correlate), so a difference above it is not test-set noise."""
    if n <= 0:
        return math.inf
    return z * math.sqrt(max(2 * p * (1 - p), 0.0) / n)


def recommend(rows: list[dict[str, Any]], test_rows: int) -> dict[str, Any]:
    """Which way to train, from the measured rows (name, objective, gold_share, accuracy,
    teacher_labels_usd). Among the full-gold rows the most accurate wins, unless the gold-only
    model is within the noise margin of it: then fine-tuning on gold alone is recommended, being
    the one that needs no teacher. The share rows add where each wins when gold is scarce."""
    full = {r["objective"]: r for r in rows if r.get("gold_share") == 1.0 and r.get("accuracy") is not None}
    if not full:
        return {"choice": None, "reasons": ["no variant was evaluated"]}
    best = max(full.values(), key=lambda r: (r["accuracy"], r["objective"] == "gold"))
    margin = noise_margin(best["accuracy"], test_rows)
    reasons: list[str] = []
    gold = full.get("gold")
    choice = best["objective"]
    if gold is not None and best is not gold and best["accuracy"] - gold["accuracy"] <= margin:
        choice = "gold"
        reasons.append(f"gold-only reaches {gold['accuracy']:.2%}, within the noise margin "
                       f"(±{margin:.2%} on {test_rows} test rows) of {best['objective']} "
                       f"({best['accuracy']:.2%}), and needs no teacher labels")
    elif gold is not None and best is not gold:
        reasons.append(f"{best['objective']} beats gold-only by {best['accuracy'] - gold['accuracy']:+.2%} "
                       f"({best['accuracy']:.2%} against {gold['accuracy']:.2%}), more than the noise "
                       f"margin of ±{margin:.2%} on {test_rows} test rows")
    elif gold is not None:
        others = [r for r in full.values() if r is not gold]
        if others:
            nxt = max(others, key=lambda r: r["accuracy"])
            reasons.append(f"gold-only is the most accurate ({gold['accuracy']:.2%} against "
                           f"{nxt['objective']} {nxt['accuracy']:.2%}); the teacher's labels add nothing here")
    for r in full.values():
        if r["objective"] != choice and r is not best and r is not gold:
            reasons.append(f"{r['objective']}: {r['accuracy']:.2%}")
    spend = (full.get(choice) or {}).get("teacher_labels_usd")
    if choice != "gold" and spend:
        reasons.append(f"the teacher labels it needs cost ${spend:,.2f} (already spent in this run)")
    shares = sorted({r["gold_share"] for r in rows if r.get("gold_share", 1.0) < 1.0}, reverse=True)
    distill = full.get("distill")
    for s in shares:
        at = {r["objective"]: r for r in rows if r.get("gold_share") == s and r.get("accuracy") is not None}
        g, b = at.get("gold"), at.get("both")
        if g and b:
            m = noise_margin(max(g["accuracy"], b["accuracy"]), test_rows)
            d = b["accuracy"] - g["accuracy"]
            who = ("both (teacher + gold) wins" if d > m else "gold-only wins" if d < -m
                   else "no clear winner")
            line = (f"with {s:.0%} of the gold labels: gold-only {g['accuracy']:.2%}, both {b['accuracy']:.2%}"
                    + (f", distill {distill['accuracy']:.2%} (uses no gold)" if distill else "")
                    + f" — {who}")
            reasons.append(line)
    return {"choice": choice, "noise_margin": margin, "reasons": reasons}


def table_rows(c: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """compare.json -> (columns, rows of strings), for compare.md and report.html."""
    cols = ["variant", "objective", "gold labels", "teacher labels", "accuracy", "macro-F1",
            "agree w/ teacher", "p50 ms", "inputs/s", "$ / 1,000 requests", "labelling $"]

    def f(v, nd=4):
        return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else (
            f"{v:.{nd}f}" if isinstance(v, float) else str(v))

    rows = []
    for r in c.get("rows", []):
        rows.append([r["name"], r["objective"], f"{r['gold_labels']:,} ({r['gold_share']:.0%})",
                     f"{r['teacher_labels']:,}" if r.get("teacher_labels") else "0",
                     f(r.get("accuracy")), f(r.get("macro_f1")), f(r.get("agreement_with_teacher")),
                     f(r.get("latency_ms_p50"), 2), f(r.get("throughput_per_s"), 1),
                     "—" if r.get("cost_per_1k") is None else f"${r['cost_per_1k']:,.4f}",
                     "—" if r.get("teacher_labels_usd") is None else f"${r['teacher_labels_usd']:,.2f}"])
    t = c.get("teacher")
    if t:
        rows.append(["teacher (reference)", "—", "—", "—", f(t.get("accuracy")), f(t.get("macro_f1")), "—",
                     f(t.get("latency_ms_p50"), 2), f(t.get("throughput_per_s"), 1), "—", "—"])
    return cols, rows


def render_markdown(c: dict[str, Any]) -> str:
    cols, rows = table_rows(c)
    rec = c.get("recommendation") or {}
    lines = [f"# Fine-tune or distill? {c.get('task')}", "",
             f"The same student ({c.get('student')}) trained on gold labels only, on teacher labels only, "
             f"and on both; measured on {c.get('test_rows')} held-out test rows.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", f"**Recommendation: {rec.get('choice')}**", ""] + [f"- {r}" for r in rec.get("reasons", [])]
    cross = (c.get("curve") or {}).get("crossover") or {}
    if cross.get("status") not in (None, "unknown"):
        lines += ["", f"**Fine-tune or distill, by gold budget:** {cross['message']}."]
    if c.get("fair_min_steps"):
        lines += ["", f"Every variant at a gold share below 100% trains for at least {c['fair_min_steps']} "
                  "optimizer steps, the budget of the full gold set (adaptive schedule, early stopping on "
                  "validation)."]
    lines += ["", "$ / 1,000 requests: hosting the model at the cost model's default volume; labelling $: "
              "teacher spend recorded in potstill.db for the labels it trains on (gold labels are "
              "assumed already paid for)."]
    return "\n".join(lines) + "\n"


# --- the run-directory plumbing ------------------------------------------------------------------
@dataclass(frozen=True)
class VariantPaths(RunPaths):
    """The main run directory, except the model goes to `out`, and (for a gold share) the inputs
    and filtered records come from `data`, a copy with the unselected gold labels removed."""

    out: Path = Path(".")
    data: Optional[Path] = None

    @property
    def student(self) -> Path:
        return self.out

    @property
    def baseline(self) -> Path:
        return self.out

    @property
    def inputs(self) -> Path:
        return self.data / "inputs" if self.data else self.root / "inputs"

    @property
    def filtered(self) -> Path:
        return self.data / "filtered" if self.data else self.root / "filtered"


def write_masked_data(run: RunPaths, dest: Path, share: float, seed: int) -> int:
    """Copy inputs/ and filtered/ to `dest`, keeping the gold label of a seeded `share` of the
    training rows only. The inputs manifest keeps its fingerprint (so prepare_inputs sees it as up
    to date) and gets a dataset hash of its own. Returns the number of gold labels kept."""
    from .data.inputs import read_jsonl

    train = read_jsonl(run.inputs / "train.jsonl")
    keep = gold_subset([r["id"] for r in train if r.get("label") is not None], share, seed)
    _write_variant_data(run, dest, [{**r, "label": r["label"] if r["id"] in keep else None} for r in train],
                        lambda r: r.get("gold") if r["id"] in keep else None,
                        ("gold_share", share, seed),
                        {"gold_share": {"share": share, "seed": seed, "gold_labels": len(keep)}})
    return len(keep)


def _write_variant_data(run: RunPaths, dest: Path, train: list[dict[str, Any]],
                        kept_gold: Callable[[dict[str, Any]], Any], hash_parts: tuple,
                        note: dict[str, Any]) -> None:
    """`dest/inputs` and `dest/filtered`: the run's, except the training rows `train` (their
    `label` is the gold a variant may use) and each kept record's gold from `kept_gold(record)`.
    The inputs manifest keeps its fingerprint (so prepare_inputs sees it as up to date), gets a
    dataset hash of its own from `hash_parts`, and records `note`."""
    from .data.inputs import read_jsonl, write_jsonl
    from .manifest import fingerprint

    src_in, src_f = run.inputs, run.filtered
    (dest / "inputs").mkdir(parents=True, exist_ok=True)
    (dest / "filtered").mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        if name != "train":
            shutil.copyfile(src_in / f"{name}.jsonl", dest / "inputs" / f"{name}.jsonl")
    shutil.copyfile(src_in / "labels.json", dest / "inputs" / "labels.json")
    write_jsonl(dest / "inputs" / "train.jsonl", train)
    m = json.loads((src_in / MANIFEST).read_text())
    m["dataset_hash"] = fingerprint(m.get("dataset_hash"), *hash_parts)
    m.update(note)
    (dest / "inputs" / MANIFEST).write_text(json.dumps(m, indent=2))
    write_jsonl(dest / "filtered" / KEPT, [{**r, "gold": kept_gold(r)} for r in read_jsonl(src_f / KEPT)])
    for name in (SOFT, MANIFEST, "filter_report.json"):
        if (src_f / name).exists():
            shutil.copyfile(src_f / name, dest / "filtered" / name)


def write_gold_data(run: RunPaths, dest: Path, gold_file: Path, spec, labels: Sequence[str],
                    held_out: set[str]) -> int:
    """`compare --gold FILE`: copy inputs/ and filtered/ to `dest` with the gold labels of FILE
    (labelled rows, the spec's field mapping) as the training gold. Rows of FILE whose text is in
    the validation or test split are left out (the comparison stays on unseen rows); a training
    input that FILE labels takes its label, and FILE's other rows are added to the training split
    (the gold-only model trains on them; the teacher-labelled records are unchanged). Returns the
    number of gold labels used."""
    from .data.inputs import InputError, load_examples, normalise, read_jsonl
    from .manifest import file_hash
    from .progress import log

    rows = load_examples(gold_file, spec.data, require_label=True)
    if spec.kind == "classify":
        bad = next((e for e in rows if e.gold not in labels), None)
        if bad is not None:
            raise InputError(f"{gold_file}: row {bad.id}: label {bad.gold!r} is not one of the task's "
                             f"labels ({', '.join(labels[:8])}{', ...' if len(labels) > 8 else ''})")
    gold = {normalise(e.text): e for e in rows if normalise(e.text) not in held_out}
    if len(rows) > len(gold):
        log(f"compare: {len(rows) - len(gold)} row(s) of {gold_file} are in the validation or test "
            "split (or repeat a text) and are left out")
    if not gold:
        raise InputError(f"{gold_file}: no labelled row outside the validation and test splits")
    train, seen = [], set()
    for r in read_jsonl(run.inputs / "train.jsonl"):
        g = gold.get(normalise(r["text"]))
        seen.add(normalise(r["text"]))
        train.append({**r, "label": g.gold if g else None})
    train += [{"id": f"gold:{e.id}", "text": e.text, "label": e.gold}
              for k, e in gold.items() if k not in seen]
    _write_variant_data(run, dest, train,
                        lambda r: g.gold if (g := gold.get(normalise(r["text"]))) else None,
                        ("gold_file", file_hash(Path(gold_file))),
                        {"gold_file": {"path": str(gold_file), "gold_labels": len(gold)}})
    return len(gold)


def _seed_from_main(run: RunPaths, out: Path, which: str, objective: str) -> None:
    """Start `out` from a copy of the run's own model when it was trained the same way; the
    fingerprint check in train_student then decides whether it is really up to date."""
    src = run.model_dir(which)
    if (out / MANIFEST).exists() or not (src / MANIFEST).exists():
        return
    if json.loads((src / MANIFEST).read_text()).get("objective") != objective:
        return
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("checkpoints"))


def compare(spec_path: str | Path, overrides: Sequence[str] = (), workdir: str | Path | None = None,
            gold_shares: Sequence[float] = (), gold_file: str | Path | None = None) -> dict[str, Any]:
    """Train and evaluate every variant of `plan(gold_shares)`; write compare.json/.md. With
    `gold_file`, the gold-using variants take their gold labels from that file instead of the
    training split (`write_gold_data`)."""
    from .config import load_spec, run_paths
    from .cost import hosting_cost_per_1k
    from .data.inputs import normalise
    from .paths import PREDICTIONS
    from .progress import log
    from .stages.filter import filter_stage
    from .stages.label import label
    from .stages.prepare import prepare_inputs
    from .stages.train import fit_teacher, missing_training_gold, train_student
    from .students import get_student
    from .tasks import get_task

    variants = plan(gold_shares)
    spec = load_spec(spec_path, list(overrides))
    run = run_paths(spec, workdir)
    # the main run's data stages: each is skipped when up to date, labels come from the cache
    inputs = prepare_inputs(spec, run)
    if gold_file is None and (why := missing_training_gold(spec, inputs)):
        raise PotstillError(f"compare: {why.split(';')[0]}. Pass --gold FILE: labelled rows (the "
                            "spec's text and label fields) to fine-tune on, to see how many labels "
                            "fine-tuning would need")
    if spec.teacher.kind == "fit":
        fit_teacher(spec, run)
    label(spec, run)
    filter_stage(spec, run)

    task, student = get_task(spec.kind), get_student(spec.student.kind)
    texts = [e.text for e in inputs.test]
    gold = [task.gold_answer(e.gold) for e in inputs.test]
    if not texts:
        raise PotstillError("no test split: set data.test to a gold-labelled file")
    teacher_pred = _teacher_predictions(run, texts)
    report = json.loads(run.report_json.read_text()) if run.report_json.exists() else {}
    spend = (report.get("data") or {}).get("teacher_spend_usd")
    if spend is None:
        spend = _labelling_spend(run)
    n_kept = sum(1 for line in (run.filtered / KEPT).read_text().splitlines() if line.strip())
    try:
        from .cost import cost_inputs_from_run

        x = cost_inputs_from_run(run.root)
    except (FileNotFoundError, ValueError):
        from .cost import CostInputs

        x = CostInputs()
    old = _previous_rows(run)
    base = Path(run.root) / COMPARE_DIR
    rows = []
    gold_dir = None
    if gold_file is not None:
        gold_dir = base / "data_gold"
        n_gold_all = write_gold_data(run, gold_dir, Path(gold_file), spec, inputs.labels,
                                     {normalise(e.text) for e in inputs.validation + inputs.test})
    else:
        n_gold_all = sum(e.gold is not None for e in inputs.train)
    # the adaptive step budget of the full gold set: the floor every gold-share variant gets, so
    # a smaller gold set is not simply trained for fewer steps (None: the fixed schedule)
    fair = adaptive_steps(spec.train, n_gold_all)
    for v in variants:
        out = base / v.name.replace("@", "_share")
        data = gold_dir if v.objective != "distill" else None  # distill reads no gold
        n_gold = n_gold_all
        if v.gold_share < 1.0:
            data = base / f"data_share{v.gold_share:g}"
            n_gold = write_masked_data(VariantPaths(run.root, data=gold_dir), data, v.gold_share,
                                       spec.train.seed)
        vp = VariantPaths(run.root, out=out, data=data)
        log(f"compare: {v.name} ({v.objective}, {v.gold_share:.0%} of the gold labels) -> {out}")
        # the same step budget at every gold share (schedule.py): a smaller gold set is not
        # simply trained for fewer steps; early stopping on validation still ends it sooner
        extra = [f"train.min_steps={fair}"] if fair and v.gold_share < 1.0 else []
        if v.objective == "gold":
            if data is None and gold_dir is None:
                _seed_from_main(run, out, "baseline", "gold")
            man = train_student(load_spec(spec_path, [*overrides, *extra]) if extra else spec, vp, "baseline")
        else:
            s_v = load_spec(spec_path, [*overrides, *extra, f"train.objective={v.objective}"])
            if data is None and gold_dir is None:
                _seed_from_main(run, out, "student", v.objective)
            man = train_student(s_v, vp, "student")
        fp = man.get("fingerprint")
        prev = old.get(v.name)
        if prev and prev.get("fingerprint") == fp and prev.get("accuracy") is not None:
            rows.append(prev)
            continue
        pred, info, ex = student.evaluate(spec, task, out, texts, inputs.labels, v.name)
        pred = [task.within_input(p, t, spec) for p, t in zip(pred, texts)]  # as evaluate scores them
        info.update(time_alone(ex["timer"], texts))
        rows.append({
            "name": v.name, "objective": v.objective, "gold_share": v.gold_share, "gold_labels":
            n_gold if v.objective != "distill" else 0, "teacher_labels": n_kept if v.objective != "gold" else 0,
            "agreement_with_teacher": None, **task.score(gold, pred, inputs.labels, teacher_pred, spec),
            "latency_ms_p50": info["latency_ms_p50"], "latency_ms_p95": info["latency_ms_p95"],
            "throughput_per_s": info["throughput_per_s"], "params": info["params"], "size_mb": info["size_mb"],
            "cost_per_1k": hosting_cost_per_1k(x, info["throughput_per_s"]) if info["throughput_per_s"] else None,
            "teacher_labels_usd": float(spend) if v.objective != "gold" and spend is not None else
            (0.0 if v.objective == "gold" else None),
            "init_from": man.get("init_from"), "best_val_accuracy": (man.get("metrics") or {}).get("best_val_accuracy"),
            "train_seconds": (man.get("metrics") or {}).get("seconds"), "model_dir": str(out), "fingerprint": fp,
            "train_steps": (man.get("metrics") or {}).get("steps"),
        })
    t = (report.get("models") or {}).get("teacher")
    doc = {
        "task": spec.name, "spec_hash": spec.spec_hash(), "student": spec.student.model,
        "student_layers": spec.student.layers, "test_rows": len(texts), "gold_shares": sorted(
            {v.gold_share for v in variants if v.gold_share < 1}, reverse=True), "seed": spec.train.seed,
        "rows": rows, "teacher": {k: t.get(k) for k in ("accuracy", "macro_f1", "latency_ms_p50",
                                                       "throughput_per_s")} if t else None,
        "recommendation": (rec := recommend(rows, len(texts))),
        "curve": curve(rows, len(inputs.labels), rec.get("noise_margin") or 0.0),
        "fair_min_steps": fair,
        "gold_file": str(gold_file) if gold_file is not None else None,
        "run_dir": str(run.root),
        "note": "teacher agreement uses the test predictions in " + PREDICTIONS if teacher_pred else
        "no teacher predictions on the test split (run `potstill eval`): agreement not measured",
    }
    (run.root / COMPARE_JSON).write_text(json.dumps(doc, indent=2))
    (run.root / COMPARE_MD).write_text(render_markdown(doc))
    return doc


def _teacher_predictions(run: RunPaths, texts: list[str]) -> list[str | None] | None:
    p = run.root / PREDICTIONS
    if not p.exists():
        return None
    rows = [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
    if [r["text"] for r in rows] != texts or not rows or "teacher" not in rows[0]:
        return None
    return [r["teacher"] for r in rows]


def _labelling_spend(run: RunPaths) -> float | None:
    from .manifest import read_manifest

    try:
        return (read_manifest(run.labels).get("summary") or {}).get("spend_total", {}).get("cost_usd")
    except FileNotFoundError:
        return None


def _previous_rows(run: RunPaths) -> dict[str, dict[str, Any]]:
    p = run.root / COMPARE_JSON
    try:
        return {r["name"]: r for r in json.loads(p.read_text()).get("rows", [])} if p.exists() else {}
    except (json.JSONDecodeError, AttributeError, KeyError):
        return {}


# --- the command -----------------------------------------------------------------------------------
def compare_command(
    spec: Annotated[Path, typer.Argument(help="Task spec (potstill.yaml or .toml).")],
    set: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a spec field, e.g. --set train.epochs=3. Repeatable.")] = None,
    workdir: Annotated[Optional[Path], typer.Option(
        "--workdir", "-w", help="Run directory (default: runs/<name> beside the spec).")] = None,
    gold_share: Annotated[Optional[list[float]], typer.Option(
        "--gold-share", help="Also train gold and both with only this share of the gold labels "
        "(a seeded subset). Repeatable, e.g. --gold-share 0.25 --gold-share 0.1.")] = None,
    gold: Annotated[Optional[Path], typer.Option(
        "--gold", help="A labelled file (the spec's text and label fields) whose labels the gold "
        "and both variants train on instead of the training split's: for a run whose training "
        "inputs have no gold. Rows in the validation or test split are left out.")] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow", help="Log the spec, metrics and compare files to MLflow.")] = False,
    mlflow_uri: Annotated[Optional[str], typer.Option(
        "--mlflow-uri", help="MLflow tracking URI (default: a folder store in RUN_DIR/mlruns).")] = None,
):
    """Fine-tune or distill? Train the same student on gold labels only, teacher labels only, and both; measure each on the test split; recommend one, with reasons.

    Shares the run directory's inputs, teacher, labels and filtered records (nothing is relabelled); models go to RUN/compare/<variant>/. Writes RUN/compare.json and compare.md; `potstill report` renders them into report.html.
    """
    from rich.console import Console
    from rich.table import Table

    from .tracking import require_mlflow

    if mlflow:
        require_mlflow()
    doc = compare(spec, set or [], workdir, gold_share or [], gold)
    cols, rows = table_rows(doc)
    t = Table(title=f"{doc['task']}: gold vs distill vs both on {doc['test_rows']} test rows")
    for c in cols:
        t.add_column(c, justify="left" if c in ("variant", "objective") else "right")
    for r in rows:
        t.add_row(*r)
    c = Console()
    if not c.is_terminal:
        c = Console(width=180)
    c.print(t)
    rec = doc["recommendation"]
    c.print(f"recommendation: [bold]{rec['choice']}[/]")
    for r in rec["reasons"]:
        c.print(f"  - {r}", highlight=False, soft_wrap=True)
    root = Path(doc["run_dir"])
    c.print(f"wrote {root / COMPARE_JSON} and {root / COMPARE_MD}", highlight=False)
    if mlflow:
        from .tracking import log_run_dir

        c.print(f"mlflow: {log_run_dir(root, uri=mlflow_uri, kind='compare')}", highlight=False)
