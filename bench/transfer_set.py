"""Does a bigger transfer set help the student? `data.augment` measured through `potstill run`.

Distillation can learn from inputs nobody labelled: the teacher labels them. `data.augment: K`
adds K perturbed copies of every training input (a word dropped, two neighbours swapped;
potstill/data/augment.py) for the teacher to label. The gold-only baseline cannot use them.

For one classification data set this writes a spec derived from an example's (default
examples/clinc150/potstill.yaml: the recipe as shipped, only the data, its subsample and the
labelling path changed: the teacher labels in-process instead of over HTTP) and runs the whole
flow once per variant. The first variant fits the teacher and trains the baseline; every later
variant runs in a copy of that run directory, so it reuses both and differs only in labelling and
the student:

    base   : the recipe as shipped (no augmentation)
    augK   : data.augment=K, on the recipe's adaptive schedule (more rows: more steps, up to the cap)
    augK@S : the same with train.max_steps=S (S = the base student's steps: the same training time)
    ffnN   : student.intermediate_size=N (the student and the baseline narrowed to N feed-forward
             neurons a layer, students/width.py; both retrain, the teacher is reused)

Prints one table row per variant (teacher, student, baseline test accuracy, student / teacher,
student - baseline, rows the student saw, its steps and seconds), appends the table to --out and
the raw numbers to --out with .json.

    nice python bench/transfer_set.py --data /work/shared/data/clinc150 --name clinc150 \\
        --max-train 2000 --variants base,aug2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def write_spec(base: Path, data: Path, name: str, label_field: str, max_train: int | None, out: Path) -> Path:
    spec = yaml.safe_load(base.read_text())
    spec["name"] = name
    spec["data"] = {"train": str(data / "train.jsonl"), "validation": str(data / "validation.jsonl"),
                    "test": str(data / "test.jsonl"), "label_field": label_field,
                    **({"max_train": max_train} if max_train else {})}
    spec["teacher"]["over_http"] = False
    spec.pop("serve", None)  # routing is not measured here (the example's OOD files are its own)
    spec["eval"] = {"latency_samples": 20}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def run_variant(spec_path: Path, workdir: Path, overrides: list[str]) -> dict:
    """schedule_kd's run of one variant, plus the rows the student saw and the overrides."""
    from schedule_kd import run_variant as run_one

    from potstill.manifest import read_manifest
    from potstill.paths import RunPaths

    res = run_one(spec_path, workdir, overrides)
    summary = read_manifest(RunPaths(workdir).labels).get("summary") or {}
    return {**res, "student_rows": summary.get("inputs"), "overrides": overrides}


def overrides_for(variant: str) -> list[str]:
    if variant == "base":
        return []
    k, _, cap = variant.removeprefix("aug").partition("@")
    if variant.startswith("aug") and k.isdigit() and (not cap or cap.isdigit()):
        return [f"data.augment={int(k)}"] + ([f"train.max_steps={int(cap)}"] if cap else [])
    if variant.startswith("ffn") and variant[3:].isdigit():
        return [f"student.intermediate_size={int(variant[3:])}"]
    raise SystemExit(f"--variants: unknown variant {variant!r} (base, augK, augK@STEPS, ffnN)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="folder with train/validation/test.jsonl")
    ap.add_argument("--name", required=True)
    ap.add_argument("--spec", type=Path, default=ROOT / "examples" / "clinc150" / "potstill.yaml",
                    help="the example spec whose recipe is measured")
    ap.add_argument("--label-field", default="label")
    ap.add_argument("--max-train", type=int, default=None, help="data.max_train (default: all rows)")
    ap.add_argument("--variants", default="base,aug2")
    ap.add_argument("--set", action="append", default=[], help="extra spec override for every variant")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_transfer_set"))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_transfer_set.md")
    a = ap.parse_args()

    variants = a.variants.split(",")
    spec_path = write_spec(a.spec, a.data.resolve(), a.name, a.label_field, a.max_train,
                           a.work / f"{a.name}.yaml")
    results = {}
    first = a.work / f"{a.name}-{variants[0]}"
    for v in variants:
        wd = a.work / f"{a.name}-{v}"
        if v != variants[0] and not wd.exists():
            shutil.copytree(first, wd, ignore=shutil.ignore_patterns("student", "checkpoints"))
        overrides = overrides_for(v) + a.set
        print(f"=== {a.name}: {v} {overrides}", flush=True)
        results[v] = run_variant(spec_path, wd, overrides)
        print(json.dumps(results[v]), flush=True)

    r0 = next(iter(results.values()))
    lines = [f"### {a.name} ({a.max_train or 'all'} training rows, {r0['test_rows']} test rows; "
             f"recipe of {a.spec.relative_to(ROOT) if a.spec.is_relative_to(ROOT) else a.spec}"
             + (f", {' '.join(a.set)}" if a.set else "") + ")", "",
             "`python bench/transfer_set.py " + " ".join(sys.argv[1:]) + "`", "",
             "| variant | teacher | student | baseline | student / teacher | student − baseline | verdict "
             "| rows the student saw | student steps | student s | teacher p50 / student p50 |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for v, r in results.items():
        st = r["train"]["student"]
        b = r["baseline"]
        base = "—" if b is None else f"{b:.4f}"
        gap = "—" if b is None else f"{r['student'] - b:+.4f}"
        secs = "—" if st["seconds"] is None else f"{st['seconds']:.0f}"
        speed = "—" if r.get("speedup_p50") is None else f"{r['speedup_p50']:.2f}x"
        lines.append(
            f"| {v} | {r['teacher']:.4f} | {r['student']:.4f} | {base} | {r['student'] / r['teacher']:.3f} | "
            f"{gap} | {r['verdict']} | {r['student_rows']} | {st['steps']}{'*' if st['stopped_early'] else ''} | "
            f"{secs} | {speed} |")
    lines += ["", "`*`: stopped early on validation. Seconds are indicative (a shared 2-core machine).", ""]
    from schedule_kd import append_results

    append_results(a.out, "\n".join(lines), {"name": a.name, "max_train": a.max_train, "spec": str(a.spec),
                                               "set": a.set, "results": results})


if __name__ == "__main__":
    main()
