"""Shared pieces of the report, compare and tracking tests (this module holds no tests): a tiny run
that went through the whole flow (fitted teacher, distilled student, gold baseline, evaluation)
and `potstill calibrate`, built once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import make_rows, write_jsonl

OOS = ["play some jazz music", "book a table for two at eight", "who won the football game",
       "translate hello into french", "set an alarm for six", "order a pizza with cheese",
       "tell me a joke", "what is the capital of peru"]


def write_task(root: Path, tiny_bert: Path) -> Path:
    write_jsonl(root / "data/train.jsonl", make_rows(240, 1))
    write_jsonl(root / "data/validation.jsonl", make_rows(45, 2))
    write_jsonl(root / "data/test.jsonl", make_rows(60, 3))
    write_jsonl(root / "data/oos_validation.jsonl", [{"text": t, "label": "oos"} for t in OOS])
    (root / "potstill.yaml").write_text(f"""
name: tiny
data: {{train: data/train.jsonl, validation: data/validation.jsonl, test: data/test.jsonl}}
teacher:
  kind: fit
  fit: {{model: {tiny_bert}, schedule: fixed, epochs: 4, lr: 0.002, batch_size: 8}}
student: {{model: {tiny_bert}, layers: [0, 3]}}
train: {{schedule: fixed, epochs: 3, lr: 0.002, batch_size: 8, precision: fp32, checkpoint_every: 1000}}
eval: {{latency_samples: 5}}
serve: {{ood_validation: data/oos_validation.jsonl}}
""")
    return root / "potstill.yaml"


@pytest.fixture(scope="session")
def report_task(tiny_bert, tmp_path_factory) -> Path:
    """The spec of a task whose run directory (`runs/tiny` beside it) is evaluated and calibrated.
    Tests must not write into it: copy it with `copy_run` first."""
    root = tmp_path_factory.getbasetemp() / "report-task"
    spec_path = root / "potstill.yaml"
    run = root / "runs" / "tiny"
    if not (run / "calibration.json").exists():
        from potstill.config import load_spec, run_paths
        from potstill.pipeline import run_all
        from potstill.serve.calibrate import calibrate

        root.mkdir(parents=True, exist_ok=True)
        write_task(root, tiny_bert)
        spec = load_spec(spec_path)
        run_all(spec)
        calibrate(spec, run_paths(spec), teacher_share=0.1)
        from potstill.report import write_report

        write_report(run)  # again, now with the routing trade-off and calibrated reliability
    return spec_path


def copy_run(report_task: Path, dest: Path) -> Path:
    """A writable copy of the task folder (spec, data, run directory); returns its spec."""
    shutil.copytree(report_task.parent, dest)
    return dest / "potstill.yaml"
