"""Which out-of-distribution score should routing use? Side by side on one run directory.

`potstill calibrate` escalates an input when the student's calibrated confidence is low or its
out-of-distribution (OOD) score is high, with both thresholds chosen on the validation split and the
out-of-scope validation rows (`serve.ood_validation`). This script calibrates the same run once per
variant of `serve.ood_method` x `serve.embedding` (and of `serve.confidence_score`) and reports, at
one teacher share:

- the out-of-scope rows caught on validation (in-sample: the thresholds were chosen on them);
- on `--dev` rows (out-of-scope rows the thresholds never saw, e.g. CLINC150's `oos_train`), which
  is what a choice between variants should be made on;
- on test (`serve.ood_test`), with the hybrid accuracy and teacher share on the test split;
- what the OOD score costs per request: one query, and a batch of 32, against the statistics the
  calibration saved (the k-NN bank holds up to `serve.ood_fit_max` training embeddings).

The run's own calibration (calibration.json, calibration/) is put back at the end. Writes
docs/bench_ood_methods.{md,json}.

    .venv/bin/python bench/ood_methods.py runs/clinc150 \\
        --dev /path/to/clinc150/oos_train.jsonl --teacher-share 0.10
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from potstill.paths import CALIBRATION_DIR, CALIBRATION_JSON, RunPaths  # noqa: E402
from potstill.serve.calibrate import OOD_STATS, calibrate, load_run_spec  # noqa: E402
from potstill.serve.confidence import load_ood  # noqa: E402

VARIANTS = {
    "mahalanobis, cls (default)": [],
    "mahalanobis, mean": ["serve.embedding=mean"],
    "knn, cls": ["serve.ood_method=knn"],
    "knn, mean": ["serve.ood_method=knn", "serve.embedding=mean"],
    "knn, mean, 5,000-row bank": ["serve.ood_method=knn", "serve.embedding=mean", "serve.ood_fit_max=5000"],
    "none (confidence only)": ["serve.ood_method=none"],
}


def score_cost_ms(run: RunPaths, repeats: int = 50) -> dict[str, float]:
    """Milliseconds to score one query and a batch of 32 with the saved OOD statistics."""
    stats = load_ood(run.root / CALIBRATION_DIR / OOD_STATS)
    dim = (stats.means.shape[1] if hasattr(stats, "means")
           else stats.bank.shape[1] if hasattr(stats, "bank") else 384)
    q = np.random.default_rng(0).normal(size=(32, dim)).astype(np.float32)
    out = {}
    for n in (1, 32):
        stats.score(q[:n])
        t0 = time.perf_counter()
        for _ in range(repeats):
            stats.score(q[:n])
        out[f"ms_{n}"] = (time.perf_counter() - t0) / repeats * 1000
    return out


def one(run: RunPaths, overrides: list[str], share: float, dev: Path | None) -> dict[str, Any]:
    spec = load_run_spec(run.root, overrides)
    doc = calibrate(spec, run, teacher_share=share, test=True)
    val, test = doc["operating_point"], doc["test"]["operating_point"]
    row = {"overrides": overrides, "val_oos_caught": val["oos_caught"], "val_hybrid": val["hybrid_accuracy"],
           "test_share": test["teacher_share"], "test_hybrid": test["hybrid_accuracy"],
           "test_oos_caught": test["oos_caught"], "test_oos_rows": doc["test"]["oos_rows"],
           "teacher_test": doc["test"]["teacher_accuracy"], **score_cost_ms(run)}
    if dev is not None:
        spec = load_run_spec(run.root, overrides + [f"serve.ood_test={dev}"])
        d = calibrate(spec, run, teacher_share=share, test=True)
        row["dev_oos_caught"], row["dev_oos_rows"] = d["test"]["operating_point"]["oos_caught"], d["test"]["oos_rows"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="run directory with a trained classifier student")
    ap.add_argument("--dev", type=Path, help="out-of-scope rows never used for thresholds (JSONL)")
    ap.add_argument("--teacher-share", type=float, default=0.10)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_ood_methods")
    args = ap.parse_args()
    run = RunPaths(args.run.resolve())
    saved = Path(tempfile.mkdtemp(prefix="ood_methods_"))
    had_json = (run.root / CALIBRATION_JSON).exists()
    if had_json:
        shutil.copy2(run.root / CALIBRATION_JSON, saved / CALIBRATION_JSON)
    if (run.root / CALIBRATION_DIR).exists():
        shutil.copytree(run.root / CALIBRATION_DIR, saved / CALIBRATION_DIR)
    rows: dict[str, dict[str, Any]] = {}
    try:
        for name, ov in VARIANTS.items():
            print(f"== {name}", flush=True)
            rows[name] = one(run, ov, args.teacher_share, args.dev.resolve() if args.dev else None)
    finally:  # the run's own calibration back
        (run.root / CALIBRATION_JSON).unlink(missing_ok=True)
        shutil.rmtree(run.root / CALIBRATION_DIR, ignore_errors=True)
        if had_json:
            shutil.copy2(saved / CALIBRATION_JSON, run.root / CALIBRATION_JSON)
        if (saved / CALIBRATION_DIR).exists():
            shutil.copytree(saved / CALIBRATION_DIR, run.root / CALIBRATION_DIR)
        shutil.rmtree(saved, ignore_errors=True)

    def pct(x: float | None, digits: int = 1) -> str:
        return "—" if x is None else f"{100 * x:.{digits}f}%"

    first = next(iter(rows.values()))
    lines = [f"Run `{args.run}`, teacher share {args.teacher_share:.0%} of in-scope validation rows; "
             f"teacher alone on test: {pct(first['teacher_test'], 2)}. OOS = out-of-scope rows caught "
             f"(escalated); dev = `{args.dev}` ({first.get('dev_oos_rows', 0)} rows), never used to "
             f"choose thresholds; test: {first['test_oos_rows']} rows.", "",
             "| OOD score | validation OOS | dev OOS | test OOS | test share | test hybrid accuracy "
             "| score ms (1 / batch of 32) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {pct(r['val_oos_caught'])} | {pct(r.get('dev_oos_caught'))} | "
                     f"{pct(r['test_oos_caught'])} | {pct(r['test_share'])} | {pct(r['test_hybrid'], 2)} | "
                     f"{r['ms_1']:.2f} / {r['ms_32']:.2f} |")
    table = "\n".join(lines)
    print(table)
    meta = {"command": " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d"), "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    args.out.with_suffix(".md").write_text(f"# OOD scores for routing\n\n`{meta['command']}` "
                                           f"({meta['date']})\n\n{table}\n")


if __name__ == "__main__":
    main()
