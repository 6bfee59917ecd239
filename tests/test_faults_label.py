"""Labelling under faults and bad input (issue 11): fail fast with the reason, count honestly,
name the file and line. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_rows, write_jsonl
from fake_openai import FakeOpenAI

from potstill.config import load_spec
from potstill.data.inputs import InputError, load_examples, read_jsonl
from potstill.errors import PotstillError
from potstill.spec import DataSpec, TaskSpec
from potstill.store import Store
from potstill.teachers.base import BudgetExceeded, TeacherUnavailable, answer_cached
from potstill.teachers.openai_compat import OpenAITeacher

LABELS = ["balance", "transfer", "weather"]
KEY_ENV = "POTSTILL_TEST_FAULTS_KEY"


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens: connection refused


def teacher(url: str, **t) -> OpenAITeacher:
    tt = {"kind": "openai", "model": "m", "base_url": url, "api_key_env": KEY_ENV, "concurrency": 4,
          "max_retries": 5, "timeout_s": 5.0}
    tt.update(t)
    spec = TaskSpec(name="t", labels=LABELS, data={"train": "unused.jsonl"}, teacher=tt)
    return OpenAITeacher(spec, LABELS)


def by_word(text: str) -> str | None:
    return next((l for l in LABELS if l in text), None)


# -- the teacher fails fast -------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["401", "403"])
def test_a_refused_key_stops_the_run_at_once(status, tmp_path):
    fake = FakeOpenAI(by_word, labels=LABELS, fault_fn=lambda no, text, k: status)
    texts = [f"balance {i}" for i in range(64)]
    with fake as url, Store(tmp_path / "s.db") as store:
        t0 = time.monotonic()
        with pytest.raises(TeacherUnavailable, match=f"refused the API key.*HTTP {status}.*{KEY_ENV}"):
            answer_cached(teacher(url), texts, store, "h")
        took = time.monotonic() - t0
    assert took < 5 and fake.count <= 8  # a few calls in flight, not 64 x 6 attempts


@pytest.mark.parametrize("concurrency", [1, 8])
def test_an_unreachable_endpoint_stops_the_run_within_10_s(concurrency, tmp_path):
    texts = [f"balance {i}" for i in range(64)]
    # the default backoff (0.5 s doubling): the real waits a run would see
    t = teacher(closed_url(), concurrency=concurrency)
    with Store(tmp_path / "s.db") as store:
        t0 = time.monotonic()
        with pytest.raises(TeacherUnavailable, match="unreachable.*connection attempts in a row"):
            answer_cached(t, texts, store, "h")
        assert time.monotonic() - t0 < 10


def test_a_missing_key_variable_is_named_and_no_placeholder_goes_out(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    remote = teacher("https://api.example.invalid/v1")
    with pytest.raises(TeacherUnavailable, match=f"{KEY_ENV} is not set"):
        list(remote.answer(["balance"]))
    # an endpoint on this machine, or one declared keyless, gets the placeholder
    assert teacher("http://127.0.0.1:9/v1").api_key() == "not-needed"
    assert teacher("http://localhost:9/v1").api_key() == "not-needed"
    assert teacher("https://api.example.invalid/v1", api_key_env=None).api_key() == "not-needed"
    monkeypatch.setenv(KEY_ENV, "sk-real")
    assert remote.api_key() == "sk-real"


def test_a_failed_row_keeps_every_attempts_error(tmp_path):
    fake = FakeOpenAI(by_word, labels=LABELS, faults_by_text={"balance 1": ["500", "malformed", "500"]})
    with fake as url:
        t = teacher(url, max_retries=2)
        t.backoff_base_s, t.backoff_max_s = 0.01, 0.02
        (_, a), = list(t.answer(["balance 1"]))
    assert a.error.startswith("HTTP 500") and "then malformed response" in a.error
    assert a.error.count("HTTP 500") == 2 and "gave up after 3 attempts" in a.error


def test_the_spending_cap_message_counts_the_whole_run(tmp_path):
    fake = FakeOpenAI(by_word, labels=LABELS, usage=(1000, 0))  # $0.001 a call
    texts = [f"balance {i}" for i in range(30)]
    with fake as url, Store(tmp_path / "s.db") as store:
        t = teacher(url, concurrency=1, price_in=1.0, max_spend_usd=0.0045)
        with pytest.raises(BudgetExceeded) as e:
            answer_cached(t, texts, store, "h", chunk=4)  # the cap falls in the second chunk
    assert "25 of 30 texts to ask were not labelled" in str(e.value), str(e.value)


# -- the label stage ---------------------------------------------------------------------------------
def task(tmp_path: Path, url: str, n: int = 24) -> Path:
    write_jsonl(tmp_path / "data/train.jsonl", make_rows(n, 1))
    write_jsonl(tmp_path / "data/validation.jsonl", make_rows(9, 2))
    (tmp_path / "potstill.yaml").write_text(f"""
name: tiny
labels: {json.dumps(LABELS)}
data: {{train: data/train.jsonl, validation: data/validation.jsonl}}
teacher: {{kind: openai, model: m, base_url: "{url}", api_key_env: {KEY_ENV}, max_retries: 0,
           concurrency: 4, logprobs: false}}
""")
    return tmp_path / "potstill.yaml"


def run_label(spec_path: Path):
    from potstill.config import run_paths
    from potstill.stages.label import label

    spec = load_spec(spec_path)
    run = run_paths(spec)
    return label(spec, run), run


def test_cache_hits_are_real_hits_and_failures_are_not_counted_as_cached(tmp_path):
    rows = make_rows(24, 1)
    bad = {rows[0]["text"]: ["400"], rows[1]["text"]: ["400"]}  # not retried, not cached
    fake = FakeOpenAI(by_word, labels=LABELS, faults_by_text=bad)
    with fake as url:
        spec = task(tmp_path, url)
        first, _ = run_label(spec)
        second, _ = run_label(spec)
    assert (first["cached"], first["new_calls"], first["errors"]) == (0, 22, 2)
    # the second run: 22 from the cache, the 2 failures asked again (and answered now)
    assert (second["cached"], second["new_calls"], second["errors"]) == (22, 2, 0)


def test_nothing_labelled_is_an_error(tmp_path):
    with FakeOpenAI(lambda t: None, labels=LABELS) as url:  # answers that name no label
        with pytest.raises(PotstillError, match="none of the 24 inputs was labelled.*no answer named"):
            run_label(task(tmp_path, url))


def test_label_command_fails_fast_and_non_zero_when_the_teacher_is_unreachable(tmp_path):
    spec = task(tmp_path, closed_url(), n=64)
    spec.write_text(spec.read_text().replace("max_retries: 0", "max_retries: 5"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "potstill", "label", str(spec), "--no-check"], env=env,
                       capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert p.returncode != 0
    assert "unreachable" in p.stderr and "connection attempts in a row" in p.stderr
    import re

    stopped_after = float(re.search(r"failed over ([0-9.]+)s", p.stderr).group(1))
    assert stopped_after < 10  # the labelling itself gave up within 10 s
    assert took < 60  # the rest is start-up (importing torch: seconds on a shared 2-core machine)


# -- bad input files -------------------------------------------------------------------------------
def test_invalid_utf8_names_the_file_and_line(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_bytes(b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "a"}\n')
    with pytest.raises(InputError, match=rf"{f}:2: not valid UTF-8 \(byte 0xe9"):
        load_examples(f, DataSpec(train=f))
    c = tmp_path / "train.csv"
    c.write_bytes(b"text,label\nok,a\nfine,b\nna\xefve,a\n")
    with pytest.raises(InputError, match=rf"{c}:4: not valid UTF-8"):
        load_examples(c, DataSpec(train=c))


def test_a_csv_without_its_label_column_is_warned(tmp_path, capsys):
    c = tmp_path / "train.csv"
    c.write_text("text,intent\nwhat is my balance,balance\n")
    from potstill.progress import console

    with console.capture() as cap:
        ex = load_examples(c, DataSpec(train=c))
    assert ex[0].gold is None
    assert f"{c}: no row has the label field 'label'" in cap.get()


def test_a_cut_records_file_and_a_mismatched_soft_matrix_are_named(tmp_path):
    f = tmp_path / "records.jsonl"
    f.write_text('{"id": 1, "text": "a"}\n{"id": 2, "te')
    with pytest.raises(InputError, match=rf"{f}:2: not valid JSON .* cut short"):
        read_jsonl(f)

    from potstill.stages.filter import filter_stage

    with FakeOpenAI(by_word, labels=LABELS) as url:
        _, run = run_label(task(tmp_path / "t", url))
    soft = np.load(run.labels / "soft.npy")
    np.save(run.labels / "soft.npy", soft[:-3])
    spec = load_spec(tmp_path / "t" / "potstill.yaml")
    with pytest.raises(InputError, match=r"soft.npy: 21 rows, but .*records.jsonl holds 24 records"):
        filter_stage(spec, run)
    np.save(run.labels / "soft.npy", soft)
    lines = (run.labels / "records.jsonl").read_text().splitlines(keepends=True)
    (run.labels / "records.jsonl").write_text("".join(lines[:5]) + lines[5][:20])
    with pytest.raises(InputError, match=r"records.jsonl:6: not valid JSON"):
        filter_stage(spec, run)


def test_filter_keeping_nothing_is_an_error(tmp_path):
    from potstill.stages.filter import filter_stage

    with FakeOpenAI(by_word, labels=LABELS) as url:
        _, run = run_label(task(tmp_path, url))
    spec = load_spec(tmp_path / "potstill.yaml", ["filters.min_chars=1000"])
    with pytest.raises(PotstillError, match=r"kept none of the 24 records \(dropped: .*too_short"):
        filter_stage(spec, run)
