"""A new user's first hour, end to end, as the README's second quickstart tells it: unlabelled
inputs, a few labelled rows, an API teacher (a local OpenAI-compatible stand-in) —
`init --data --gold` -> `check` -> `run` -> `calibrate` -> `serve` + feedback -> `iterate` ->
`report` -> `compare --gold`, with no edit to the spec `init` wrote, asserting what the console
explains at each step. Plus: `check` stops a run whose key is missing or refused, spending nothing.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import make_rows
from fake_openai import FakeOpenAI
from test_serve_support import free_port, start_server_process

LABELS = ["balance", "transfer", "weather"]


def potstill(*args, env=None, check=True):
    p = subprocess.run([sys.executable, "-m", "potstill", *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}, timeout=600)
    if check:
        assert p.returncode == 0, f"potstill {' '.join(map(str, args))}\n{p.stdout}\n{p.stderr}"
    return p


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture()
def user_files(tmp_path):
    """What the user has: 180 inputs without labels, 90 labelled rows, and (for the teacher
    stand-in) the truth about every text."""
    train, gold = make_rows(180, 1), make_rows(90, 2)
    truth = {r["text"]: r["label"] for r in train + gold + make_rows(30, 3)}
    return (write_csv(tmp_path / "messages.csv", train, ["text"]),
            write_csv(tmp_path / "labelled.csv", gold, ["text", "label"]), truth)


def test_first_hour_with_unlabelled_data_and_an_api_teacher(tmp_path, user_files, tiny_bert):
    messages, labelled, truth = user_files
    fake = FakeOpenAI(label_fn=lambda t: truth.get(t, "weather"), labels=LABELS)
    # the tiny model stands in for MiniLM, and the step budget is cut for a test: `--set`, no edit
    fast = ["--set", f"student.model={tiny_bert}", "--set", "student.layers=[0,3]",
            "--set", "train.lr=0.002", "--set", "train.batch_size=8", "--set", "train.min_steps=60",
            "--set", "train.max_steps=90", "--set", "train.precision=fp32", "--set", "eval.latency_samples=5"]
    env = {"OPENAI_API_KEY": "sk-test"}
    with fake as url:
        p = potstill("init", tmp_path / "sms", "--data", messages, "--gold", labelled,
                     "--labels", ",".join(LABELS), "--base-url", url)
        spec = tmp_path / "sms/potstill.yaml"
        assert "potstill check" in p.stdout and "OPENAI_API_KEY" in p.stdout
        text = spec.read_text()
        assert "baseline: false" in text and "all are held out to measure" in text  # planned off, said why

        p = potstill("check", spec, *fast, env=env)
        out = p.stdout
        assert "✓ data: 180 training inputs (0 with gold), 30 validation and 60 test rows" in out
        assert "✓ teacher:" in out and "answered a test call" in out and "the answer is cached" in out
        assert "inputs to ask: about $" in out and "within teacher.max_spend_usd ($5.00" in out
        assert fake.count == 1  # one test call, nothing more

        p = potstill("run", spec, *fast, env=env)
        err, out = p.stderr, p.stdout
        assert "check: ✓ teacher" in err
        assert "label: 180/180 labelled" in err
        assert fake.count == 180 + 60  # every train and test text once: the checks' calls were reused
        assert "What next:" in out and "because: accuracy on 60 test rows" in out
        run = tmp_path / "sms/runs/sms"
        assert f"next: potstill calibrate {run}" in out
        report = json.loads((run / "report.json").read_text())
        assert "baseline" not in report["models"] and report["baseline_skipped"] == "train.baseline is false"
        assert "student − baseline" not in (run / "report.md").read_text()  # no "None" line
        assert "What next:" in (run / "report.md").read_text()

        p = potstill("calibrate", run, env=env)
        assert "≤" in p.stdout and "teacher assumed right" in p.stdout  # an upper bound, marked in the table

        port = free_port()
        srv = start_server_process(run, port, [f"teacher.base_url={url}"],
                                   env={**env, "POTSTILL_ADMIN_KEYS": "adm"}, log_path=tmp_path / "serve.log")
        try:
            base = f"http://127.0.0.1:{port}"
            held_out = make_rows(90, 2)[0]["text"]  # in the gold the validation / test splits came from
            ids = []
            for t in ["send all my money to grandma right now", held_out]:
                r = httpx.post(f"{base}/v1/chat/completions", timeout=30, json={
                    "model": "sms", "messages": [{"role": "user", "content": t}]})
                assert r.status_code == 200, r.text
                ids.append(r.json()["id"])
            for rid in ids:
                r = httpx.post(f"{base}/v1/feedback", timeout=30, headers={"authorization": "Bearer adm"},
                               json={"request_id": rid, "answer": "transfer"})
                assert r.status_code == 200 and r.json()["status"] == "queued", r.text
        finally:
            srv.terminate()
            srv.wait(30)

        p = potstill("iterate", run, env=env, check=False)
        said = p.stdout + p.stderr
        assert "in a held-out split" in said and "gate stays unseen" in said  # why one item was skipped
        assert "round 1" in said

        p = potstill("report", run, env=env)
        html = (run / "report.html").read_text()
        assert 'id="what-next"' in html and f"potstill serve {run}" in html
        assert "--gold FILE" in html  # the compare hint that can run here: no training gold
        assert "potstill compare SPEC --workdir" not in html
        assert "Hybrid accuracy is an upper bound" in html  # calibrate had no teacher answers for validation

        p = potstill("compare", spec, *fast, env=env, check=False)
        assert p.returncode == 2 and "--gold FILE" in p.stderr  # no training gold: says how
        more = write_csv(tmp_path / "more-labels.csv", make_rows(60, 4), ["text", "label"])
        truth.update({r["text"]: r["label"] for r in make_rows(60, 4)})
        p = potstill("compare", spec, *fast, "--gold", more, env=env)
        doc = json.loads((run / "compare.json").read_text())
        by = {r["name"]: r for r in doc["rows"]}
        assert by["gold"]["gold_labels"] == 60 and by["distill"]["gold_labels"] == 0
        assert doc["gold_file"] == str(more)


def test_check_stops_a_run_with_a_missing_key_spending_nothing(tmp_path, user_files):
    messages, labelled, _ = user_files
    potstill("init", tmp_path / "t", "--data", messages, "--gold", labelled, "--api-key-env", "MY_TEACHER_KEY",
             "--base-url", "https://api.example.invalid/v1")
    spec = tmp_path / "t/potstill.yaml"
    env = {k: v for k, v in os.environ.items() if k != "MY_TEACHER_KEY"}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "potstill", "run", str(spec)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 2
    assert "MY_TEACHER_KEY is not set" in p.stderr and "nothing was labelled or trained" in p.stderr
    assert time.monotonic() - t0 < 60  # the check itself makes no call; the rest is start-up
    assert not (tmp_path / "t/runs/t/labels").exists()


def test_check_stops_on_a_refused_key_after_one_call(tmp_path, user_files):
    messages, labelled, _ = user_files
    fake = FakeOpenAI(label_fn=lambda t: "balance", labels=LABELS, fault_fn=lambda n, t, a: "401")
    with fake as url:
        potstill("init", tmp_path / "t", "--data", messages, "--gold", labelled, "--base-url", url)
        spec = tmp_path / "t/potstill.yaml"
        p = potstill("label", spec, env={"OPENAI_API_KEY": "sk-wrong"}, check=False)
        assert p.returncode == 2
        assert "refused the API key (HTTP 401" in p.stderr and "nothing was labelled" in p.stderr
        assert fake.count == 1  # one test call, not one per input
    assert not (tmp_path / "t/runs/t/labels").exists()


def test_check_stops_on_a_wrong_model_name(tmp_path, user_files):
    """A 404 (OpenAI's answer to a model it does not have) is not retried and stops the check."""
    messages, labelled, _ = user_files
    fake = FakeOpenAI(label_fn=lambda t: "balance", labels=LABELS, fault_fn=lambda n, t, a: "404")
    with fake as url:
        potstill("init", tmp_path / "t", "--data", messages, "--gold", labelled, "--base-url", url,
                 "--model", "gpt-nonexistent")
        p = potstill("check", tmp_path / "t/potstill.yaml", env={"OPENAI_API_KEY": "sk"}, check=False)
        assert p.returncode == 2
        assert "the test call failed: HTTP 404" in p.stdout and "does not exist" in p.stdout
        assert fake.count == 1
