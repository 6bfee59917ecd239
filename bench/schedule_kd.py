"""Fixed vs adaptive schedules, and the hidden-state loss on/off, through `potstill run`.

For one classification data set (train/validation/test JSONL) it writes a spec (teacher fit on
gold from MiniLM-L6, 2-layer student cut from the teacher's layers 0 and 5, as in
examples/clinc150) and runs the whole flow in one run directory, three ways. The teacher is
fitted once (by default with the fixed schedule, `--teacher-schedule`) and shared; the variants
differ in how the student and the gold-only baseline train:

- fixed     : train.schedule fixed (the old recipe: 4 epochs, validation per epoch)
- adaptive  : train.schedule adaptive (step budget with a floor `--min-steps` and the spec's cap,
              validation about 8 times per run, early stopping, best checkpoint kept)
- adaptive+hidden : adaptive, and train.hidden_weight = W (the student also matches the teacher's
              hidden states); the baseline is reused from the adaptive run

and prints one table row per variant: teacher, student and gold-only baseline test accuracy,
student / teacher, student - baseline, the verdict, optimizer steps and training seconds.
Appends the table to --out (markdown) and the raw numbers to --out with .json.

    nice -n 10 python bench/schedule_kd.py --data /path/to/sms_spam --name sms_spam \\
        --max-train 1000 --out docs/bench_schedule_kd.md

The machine this ran on is shared: seconds are indicative only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SPEC = """name: {name}
kind: classify
data:
  train: {data}/train.jsonl
  validation: {data}/validation.jsonl
  test: {data}/test.jsonl
  label_field: {label_field}
  max_train: {max_train}
teacher:
  kind: fit
  fit: {{model: minilm, epochs: 3, lr: 1.0e-4, batch_size: 32}}
filters: {{drop_gold_disagreement: false}}
student: {{model: minilm, layers: [0, 5], init: auto}}
train: {{objective: distill, epochs: 4, batch_size: 32, lr: 2.0e-4}}
eval: {{latency_samples: 20}}
"""

VARIANTS = {
    "fixed": ["train.schedule=fixed"],
    "adaptive": ["train.schedule=adaptive", "train.min_steps={m}"],
    "adaptive+hidden": ["train.schedule=adaptive", "train.min_steps={m}", "train.hidden_weight={w}"],
}


def run_variant(spec_path: Path, workdir: Path, overrides: list[str]) -> dict:
    from potstill.config import load_spec
    from potstill.manifest import read_manifest
    from potstill.paths import RunPaths
    from potstill.pipeline import run_all

    spec = load_spec(spec_path, overrides)
    t0 = time.monotonic()
    rep = run_all(spec, workdir)
    wall = time.monotonic() - t0
    run = RunPaths(workdir)
    steps = {}
    for name in ("teacher", "student", "baseline"):
        if not (run.model_dir(name) / "manifest.json").exists():
            steps[name] = {"steps": None, "seconds": None, "stopped_early": None, "best_val": None}
            continue
        m = (read_manifest(run.model_dir(name)).get("metrics") or {})
        steps[name] = {"steps": m.get("steps"), "seconds": m.get("seconds"),
                       "stopped_early": m.get("stopped_early"), "best_val": m.get("best_val_accuracy")}
    ms = rep["models"]
    p50 = {n: (ms.get(n) or {}).get("latency_ms_p50") for n in ("teacher", "student")}
    return {"teacher": ms["teacher"]["accuracy"], "student": ms["student"]["accuracy"],
            "speedup_p50": round(p50["teacher"] / p50["student"], 2) if all(p50.values()) else None,
            "baseline": (ms.get("baseline") or {}).get("accuracy"), "verdict": rep["verdict"]["deploy"],
            "test_rows": rep["test_rows"], "train": steps, "wall_s": round(wall, 1)}


def append_results(out: Path, table: str, record: dict) -> None:
    """Print the table and append it to `out` (markdown) and the record to out's .json (one line)."""
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(table + "\n")
    with open(out.with_suffix(".json"), "a") as f:
        f.write(json.dumps(record) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--label-field", default="label")
    ap.add_argument("--max-train", type=int, default=1000)
    ap.add_argument("--hidden-weight", type=float, default=1.0)
    ap.add_argument("--min-steps", type=int, default=500, help="train.min_steps of the adaptive variants")
    ap.add_argument("--teacher-schedule", default="fixed", choices=["fixed", "adaptive"])
    ap.add_argument("--variants", default="fixed,adaptive,adaptive+hidden")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_schedule_kd"))
    ap.add_argument("--run-name", default=None, help="run directory under --work (default: --name)")
    ap.add_argument("--set", action="append", default=[], help="extra spec override for every variant")
    ap.add_argument("--out", type=Path, default=Path("docs/bench_schedule_kd.md"))
    a = ap.parse_args()

    a.work.mkdir(parents=True, exist_ok=True)
    spec_path = a.work / f"{a.name}.yaml"
    spec_path.write_text(SPEC.format(name=a.name, data=a.data.resolve(), label_field=a.label_field,
                                     max_train=a.max_train))
    results = {}
    for v in a.variants.split(","):
        overrides = [f"teacher.fit.schedule={a.teacher_schedule}"] + [
            o.format(w=a.hidden_weight, m=a.min_steps) for o in VARIANTS[v]] + a.set
        wd = a.work / (a.run_name or a.name)
        print(f"=== {a.name}: {v} {overrides}", flush=True)
        results[v] = run_variant(spec_path, wd, overrides)
        print(json.dumps(results[v]), flush=True)

    lines = [f"### {a.name} (max_train {a.max_train}, test rows {next(iter(results.values()))['test_rows']}, "
             f"teacher schedule {a.teacher_schedule}, adaptive min_steps {a.min_steps}, hidden_weight "
             f"{a.hidden_weight})", "",
             "| variant | teacher | student | baseline | student / teacher | student − baseline | verdict "
             "| steps teacher / student / baseline | train s teacher / student / baseline |",
             "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for v, r in results.items():
        tr = r["train"]
        b = r["baseline"]
        bs = "—" if b is None else f"{b:.4f}"
        gap = "—" if b is None else f"{r['student'] - b:+.4f}"
        lines.append(
            f"| {v} | {r['teacher']:.4f} | {r['student']:.4f} | {bs} | "
            f"{r['student'] / r['teacher']:.3f} | {gap} | "
            f"{r['verdict']} | "
            + " / ".join(f"{tr[k]['steps']}{'*' if tr[k]['stopped_early'] else ''}" for k in ("teacher", "student", "baseline"))
            + " | " + " / ".join("—" if tr[k]["seconds"] is None else f"{tr[k]['seconds']:.0f}"
                                 for k in ("teacher", "student", "baseline")) + " |")
    lines += ["", "`*`: stopped early on validation. Seconds on a shared 2-core machine (indicative only).", ""]
    append_results(a.out, "\n".join(lines), {"name": a.name, "max_train": a.max_train,
                                               "hidden_weight": a.hidden_weight, "results": results})


if __name__ == "__main__":
    main()
