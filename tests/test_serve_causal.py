"""A causal-LM student behind the server (serve/causal.py): confidence from token logprobs,
LoRA adapters picked by `model`, loaded and unloaded at runtime, never mixed in one batch, and
invalid output escalated to the teacher. A tiny Llama built from a config; its adapters are
trained for a few hundred tiny steps on different mappings, so they answer differently. Offline."""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from causal_fixtures import build_tiny_llama, one_torch_thread  # noqa: F401 (autouse)
from conftest import make_rows, write_jsonl
from fake_openai import FakeOpenAI
from test_serve_support import LABELS, live_server, queue_rows

from potstill.serve.app import ServeConfig, create_app, parse_adapters
from potstill.serve.causal import (
    CAUSAL_CALIBRATION,
    TextTeacher,
    calibrate_threshold,
    logprob_confidence,
    output_from,
    parse_output,
    same_answer,
)
from potstill.serve.router import StudentOutput
from potstill.teachers.base import Answer

MAPS = {  # what each adapter learns to answer for an input of each intent
    "own": {l: l for l in LABELS},
    "bee": {"balance": "weather", "transfer": "balance", "weather": "transfer"},
    "cee": {l: "the cat sat on the mat" for l in LABELS},  # names no label: invalid output
}
PROBES = [r["text"] for r in make_rows(9, 3)]


def _train_adapter(base: Path, out: Path, mapping: dict[str, str]) -> Path:
    from potstill.students.causal_lm import LMRow, LMTrainConfig, build_causal_lm, save_causal_lm, train_causal_lm

    model, tok = build_causal_lm(str(base), "lora", r=8, alpha=16, dropout=0.0, seed=1,
                                 target_modules="all-linear")
    rows = [LMRow(r["text"], mapping[r["label"]]) for r in make_rows(48, 1)]
    train_causal_lm(model, tok, rows, LMTrainConfig(epochs=40, lr=0.01, batch_size=8,
                                                    warmup_ratio=0.0, max_length=64, log_every=1000))
    return save_causal_lm(model, tok, out, {"objective": "sequence"})


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory):
    """(run dir, {adapter name: dir}): the run's student is the "own" adapter."""
    from potstill.config import load_spec, run_paths
    from potstill.stages.prepare import prepare_inputs

    root = tmp_path_factory.mktemp("causal-serve")
    base = build_tiny_llama(root / "base")
    write_jsonl(root / "data/train.jsonl", make_rows(48, 1))
    write_jsonl(root / "data/validation.jsonl", make_rows(6, 2))
    write_jsonl(root / "data/test.jsonl", make_rows(9, 3))
    (root / "potstill.yaml").write_text(f"""
name: tinyc
labels: {json.dumps(LABELS)}
prompt_template: "{{text}}"
data: {{train: data/train.jsonl, validation: data/validation.jsonl, test: data/test.jsonl}}
teacher: {{kind: openai, model: fake-teacher, base_url: "http://127.0.0.1:9/v1", max_retries: 0,
           timeout_s: 5}}
student: {{kind: causal_lm, model: {base}, max_new_tokens: 8}}
train: {{precision: fp32}}
serve: {{batch_window_ms: 20, teacher_timeout_s: 5}}
""")
    spec = load_spec(root / "potstill.yaml")
    run = run_paths(spec, root / "run")
    prepare_inputs(spec, run)
    _train_adapter(base, run.student, MAPS["own"])
    extra = {n: _train_adapter(base, root / n, MAPS[n]) for n in ("bee", "cee")}
    return run.root, extra


def make_app(run: Path, db: Path, *overrides: str, teacher=None, **cfg):
    return create_app(ServeConfig(run, overrides=["serve.confidence_threshold=0", *overrides],
                                  db_path=db, teacher=teacher, **cfg))


def post_chat(base: str, model: str, text: str, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{base}/v1/chat/completions", headers=headers, timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": text}]})


# -- pure pieces ---------------------------------------------------------------------------------
def test_logprob_confidence_known_answers():
    lps = [math.log(0.5), math.log(0.8), 0.0]
    assert logprob_confidence(lps, "min") == pytest.approx(0.5)
    assert logprob_confidence(lps, "mean") == pytest.approx(0.4 ** (1 / 3))  # geometric mean
    assert logprob_confidence([], "min") == 0.0 and logprob_confidence([-math.inf], "mean") == 0.0
    with pytest.raises(ValueError, match="one of min, mean"):
        logprob_confidence(lps, "max")
    out = output_from("transfer", lps, "classify", LABELS, score="min")
    assert (out.label, out.error, out.ood_score) == ("transfer", None, None)
    assert out.confidence == pytest.approx(0.5)
    assert out.extra["mean_logprob"] == pytest.approx(sum(lps) / 3)
    assert out.extra["min_logprob"] == pytest.approx(math.log(0.5))


def test_outputs_parse_or_fail_per_kind():
    assert parse_output('{"label": "weather"}', "classify", LABELS)[:2] == ("weather", None)
    label, err, _ = parse_output("the cat sat on the mat", "classify", LABELS)
    assert label is None and "no label" in err
    assert parse_output("  a free answer ", "generate")[:2] == ("a free answer", None)
    assert parse_output("   ", "generate")[:2] == (None, "empty answer")
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    assert parse_output('Sure: {"city": " Paris "}', "extract", schema=schema)[:2] == ('{"city":"Paris"}', None)
    assert parse_output("no json here", "extract", schema=schema)[1].startswith("invalid_json")
    assert parse_output('{"town": "Paris"}', "extract", schema=schema)[1].startswith("schema_invalid")
    assert output_from("{}", [-0.1], "extract", schema=schema).error.startswith("schema_invalid")


def test_generate_with_a_schema_serves_only_json_that_fits_it():
    """A generate task with a json_schema (examples/snips-json): a cut-off or schema-breaking
    object is an invalid output (escalated to the teacher), a good one is served as canonical
    JSON, and calibration compares objects, not their spelling. Before, any non-empty text was
    served as the student's answer."""
    schema = {"type": "object", "additionalProperties": False,
              "properties": {"city": {"type": "string"}, "timeRange": {"type": "string"}}}
    cut = '{"city": "Boston", "timeRange": "4'
    assert parse_output(cut, "generate", schema=schema)[1].startswith("invalid_json")
    assert parse_output('{"town": "Paris"}', "generate", schema=schema)[1].startswith("schema_invalid")
    assert output_from(cut, [-0.1], "generate", schema=schema).error.startswith("invalid_json")
    ok = parse_output('{"timeRange": "tonight", "city": "Boston"}', "generate", schema=schema)
    assert ok[:2] == ('{"city":"Boston","timeRange":"tonight"}', None)
    assert same_answer(ok[0], '{"city": "boston", "timeRange": "tonight"}', "generate")
    assert not same_answer(ok[0], '{"city": "Boston"}', "generate")
    assert same_answer("Paris ", "paris", "generate")  # free text: as before


def test_calibrated_threshold_escalates_the_least_confident_for_the_share():
    confs = [0.9, 0.8, 0.3, 0.2, 0.95]
    outs = [StudentOutput(label="a" if i != 1 else None, confidence=c,
                          error="no label" if i == 1 else None) for i, c in enumerate(confs)]
    refs = ["a", "a", "b", "b", "a"]  # the student is wrong on rows 2 and 3
    p = calibrate_threshold(outs, refs, 0.4, "classify")
    # budget floor(0.4 x 5) = 2: the invalid row, then the least confident row (0.2)
    assert p["confidence_threshold"] == 0.3
    assert p["teacher_share"] == pytest.approx(0.4) and p["invalid_share"] == pytest.approx(0.2)
    assert p["student_accuracy"] == pytest.approx(0.4)  # rows 0 and 4 right
    # + rows 1 and 3, escalated (the teacher is assumed right); row 2 stays wrong
    assert p["hybrid_accuracy"] == pytest.approx(0.8)
    assert calibrate_threshold(outs, refs, 0.0, "classify")["teacher_share"] == pytest.approx(0.2)


def test_text_teacher_serves_the_teachers_text():
    class Inner:
        identity, labels = "openai:m@u", ["x", "y"]

        def request(self, text):
            return {"t": text}

        def answer(self, texts):
            yield 0, Answer(label=None, raw=" Paris is the capital. ")
            yield 1, Answer(label=None, error="HTTP 500")

    t = TextTeacher(Inner())
    got = dict(t.answer(["a", "b"]))
    assert got[0].label == "Paris is the capital." and got[1].label is None
    assert t.identity == "openai:m@u#text" and t.request("a") == {"t": "a"}


def test_text_teacher_answers_are_checked_against_the_schema():
    """With a json_schema the teacher's reply is served as the student's is: the canonical JSON of
    a schema-valid object; a reply that breaks the schema is an answer without a label (the
    request is answered degraded, with the reason), never the raw text. Before, any reply was
    served as it came."""
    from potstill.tasks import get_task

    schema = {"type": "object", "additionalProperties": False, "properties": {"city": {"type": "string"}}}
    replies = ['Sure! {"city": " Paris "}', '{"town": "Paris"}', "Paris"]

    class Inner:
        identity, labels = "openai:m@u", []

        def answer(self, texts):
            for i, r in enumerate(replies):
                yield i, Answer(label=None, raw=r)

    task = get_task("generate")
    t = TextTeacher(Inner(), parse=lambda text: task.serve_answer(text, [], schema))
    got = dict(t.answer(["a", "b", "c"]))
    assert got[0].label == '{"city":"Paris"}' and "parse_error" not in got[0].extra
    assert got[1].label is None and "schema_invalid" in got[1].extra["parse_error"]
    assert got[2].label is None and "invalid_json" in got[2].extra["parse_error"]
    assert all(got[i].error is None for i in range(3))  # answers: the teacher is up (breaker)


def test_parse_adapters_flag():
    assert parse_adapters(["a=/x", "b = /y"]) == {"a": "/x", "b": "/y"}
    for bad in (["a"], ["=/x"], ["a=/x", "a=/y"]):
        with pytest.raises(Exception, match="--adapter"):
            parse_adapters(bad)


# -- in a real server ----------------------------------------------------------------------------
def test_adapter_picked_by_model_name_with_the_openai_client(causal_run, tmp_path):
    run, extra = causal_run
    app = make_app(run, tmp_path / "q.db", adapters={"bee": extra["bee"]})
    host = app.state.potstill.student.host
    own = [o.label for o in host.predict_with("tinyc", PROBES)]
    bee = [o.label for o in host.predict_with("bee", PROBES)]
    i = next(k for k in range(len(PROBES)) if own[k] != bee[k] and None not in (own[k], bee[k]))
    with live_server(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        assert sorted(m.id for m in client.models.list()) == ["bee", "tinyc"]
        a = client.chat.completions.create(model="tinyc", messages=[{"role": "user", "content": PROBES[i]}])
        b = client.chat.completions.create(model="bee", messages=[{"role": "user", "content": PROBES[i]}])
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert (a.choices[0].message.content, b.choices[0].message.content) == (own[i], bee[i])
    assert a.choices[0].message.content != b.choices[0].message.content
    assert (a.model, b.model) == ("tinyc", "bee")
    assert a.system_fingerprint != b.system_fingerprint  # each adapter's own version
    assert e.value.body["code"] == "model_not_found" and "'bee'" in e.value.body["message"]


def test_adapters_load_and_unload_at_runtime_behind_the_keys(causal_run, tmp_path):
    run, extra = causal_run
    key = "sk-admin"
    app = make_app(run, tmp_path / "q.db", api_keys=[key], admin_keys=[key])
    host = app.state.potstill.student.host
    auth = {"authorization": f"Bearer {key}"}
    body = {"name": "bee", "path": str(extra["bee"])}
    with live_server(app) as base:
        assert post_chat(base, "bee", PROBES[0], key).status_code == 404
        r = httpx.post(f"{base}/v1/adapters", json=body, timeout=60)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(f"{base}/v1/adapters", json=body, headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401 and "bee" not in host.names
        r = httpx.post(f"{base}/v1/adapters", json=body, headers=auth, timeout=60)
        assert r.status_code == 200 and r.json()["id"] == "bee"
        solo = host.predict_with("bee", PROBES[:3])
        got = [post_chat(base, "bee", t, key).json() for t in PROBES[:3]]
        assert [g["choices"][0]["message"]["content"] for g in got] == [o.label for o in solo]
        ids = [m["id"] for m in httpx.get(f"{base}/v1/models", headers=auth).json()["data"]]
        assert ids == ["tinyc", "bee"]
        # the errors
        dup = httpx.post(f"{base}/v1/adapters", json=body, headers=auth)
        assert dup.status_code == 409 and dup.json()["error"]["code"] == "model_exists"
        bad = httpx.post(f"{base}/v1/adapters", json={"name": "x", "path": str(tmp_path)}, headers=auth)
        assert bad.status_code == 400 and "adapter_config.json" in bad.json()["error"]["message"]
        own = httpx.delete(f"{base}/v1/adapters/tinyc", headers=auth)
        assert own.status_code == 400
        # unloading
        assert httpx.delete(f"{base}/v1/adapters/bee").status_code == 401
        d = httpx.delete(f"{base}/v1/adapters/bee", headers=auth)
        assert d.status_code == 200 and d.json() == {"object": "adapter", "id": "bee", "deleted": True}
        gone = post_chat(base, "bee", PROBES[0], key)
        missing = httpx.delete(f"{base}/v1/adapters/bee", headers=auth)
        ids = [m["id"] for m in httpx.get(f"{base}/v1/models", headers=auth).json()["data"]]
        still = post_chat(base, "tinyc", PROBES[0], key)
    assert gone.status_code == 404
    err = gone.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "model_not_found", "model")
    assert missing.status_code == 404 and ids == ["tinyc"]
    assert "bee" not in host.names and "a1" not in host.model.peft_config  # gone from the model
    assert still.status_code == 200


def test_concurrent_requests_to_two_adapters_never_mix(causal_run, tmp_path):
    run, extra = causal_run
    app = make_app(run, tmp_path / "q.db", adapters={"bee": extra["bee"]})
    host = app.state.potstill.student.host
    texts = PROBES * 2
    # alone: one adapter at a time, one input at a time
    alone = {(m, t): host.predict_with(m, [t])[0].label for m in ("tinyc", "bee") for t in texts}
    assert any(alone[("tinyc", t)] != alone[("bee", t)] for t in texts)
    sizes: list[tuple[str, int]] = []
    real = host.generate_texts

    def spy(name, batch):
        sizes.append((name, len(batch)))
        return real(name, batch)

    host.generate_texts = spy
    set_adapter = host.model.set_adapter

    def slow_set_adapter(name):  # widens the window in which another thread could switch it
        set_adapter(name)
        time.sleep(0.02)

    host.model.set_adapter = slow_set_adapter
    jobs = [(m, t) for t in texts for m in ("tinyc", "bee")]
    start = threading.Barrier(len(jobs))

    def ask(job):
        start.wait()
        return post_chat(base, *job).json()["choices"][0]["message"]["content"]

    with live_server(app) as base:
        with ThreadPoolExecutor(len(jobs)) as ex:
            got = list(ex.map(ask, jobs))
    assert got == [alone[j] for j in jobs]
    assert sum(n for _, n in sizes) == len(jobs)
    assert max(n for _, n in sizes) > 1  # requests were batched, and each batch held one adapter


def test_invalid_output_escalates_to_the_teacher(causal_run, tmp_path):
    run, extra = causal_run
    fake = FakeOpenAI(lambda t: "weather", labels=LABELS)
    with fake as url:
        app = make_app(run, tmp_path / "q.db", f"teacher.base_url={url}", teacher="auto",
                       adapters={"cee": extra["cee"]})
        host = app.state.potstill.student.host
        assert host.predict_with("cee", [PROBES[0]])[0].error is not None
        with live_server(app) as base:
            r = post_chat(base, "cee", PROBES[0]).json()
    assert (r["route"], r["reasons"]) == ("teacher", ["invalid_output"])
    assert r["choices"][0]["message"]["content"] == "weather" and r["ood_score"] is None
    assert [q.text for q in fake.requests] == [PROBES[0]]
    (row,) = queue_rows(run, tmp_path / "q.db")
    assert (row["kind"], row["reason"], row["teacher_label"]) == ("escalation", "invalid_output", "weather")
    assert row["student_version"] == host.identities["cee"] != host.identities["tinyc"]
    assert row["detail"]["adapter"] == "cee"


def test_threshold_calibrated_on_validation_at_start(causal_run, tmp_path):
    import shutil

    run = shutil.copytree(causal_run[0], tmp_path / "run", ignore=shutil.ignore_patterns("potstill.db*"))
    cfg = ServeConfig(run, db_path=tmp_path / "q.db", teacher=None, teacher_share=0.5)
    app = create_app(cfg)
    cal = json.loads((run / CAUSAL_CALIBRATION).read_text())
    point = cal["operating_point"]
    assert cal["settings"]["logprob_confidence"] == "min" and point["rows"] == 6
    assert point["teacher_share"] <= 0.5 and point["target_share"] == 0.5
    assert app.state.potstill.policy.confidence_threshold == point["confidence_threshold"]
    assert app.state.potstill.policy.ood_threshold is None
    mtime = (run / CAUSAL_CALIBRATION).stat().st_mtime_ns
    create_app(cfg)  # up to date: reused, not redone
    assert (run / CAUSAL_CALIBRATION).stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="confidence_threshold"):
        create_app(ServeConfig(run, db_path=tmp_path / "q.db", teacher=None, teacher_share=0.2,
                               recalibrate=False))


def test_generate_task_escalates_to_the_teachers_text(causal_run, tmp_path):
    import shutil

    from potstill.config import load_spec, run_paths
    from potstill.stages.prepare import prepare_inputs

    task = Path(causal_run[0]).parent
    doc = (task / "potstill.yaml").read_text().replace("name: tinyc", "name: tinyg\nkind: generate")
    (task / "gen.yaml").write_text(doc.replace(f"labels: {json.dumps(LABELS)}\n", ""))
    spec = load_spec(task / "gen.yaml")
    run = run_paths(spec, tmp_path / "run")
    prepare_inputs(spec, run)
    shutil.copytree(Path(causal_run[0]) / "student", run.student)
    fake = FakeOpenAI(lambda t: "weather", labels=LABELS)
    with fake as url:
        app = make_app(run.root, tmp_path / "q.db", f"teacher.base_url={url}",
                       "serve.confidence_threshold=1.01", teacher="auto",  # every answer escalates
                       allow_local_admin=True)
        host = app.state.potstill.student.host
        (alone,) = host.predict_with("tinyg", [PROBES[0]])
        with live_server(app) as base:
            r = post_chat(base, "tinyg", PROBES[0]).json()
            fb = httpx.post(f"{base}/v1/feedback", json={"request_id": r["id"], "answer": "a free text"})
            three = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={
                "model": "tinyg", "n": 3, "messages": [{"role": "user", "content": PROBES[1]}]}).json()
    assert alone.error is None and alone.label and host.labels == []
    assert (r["route"], r["reasons"]) == ("teacher", ["low_confidence"])
    assert r["choices"][0]["message"]["content"] == "weather"  # the teacher's text, as is
    assert r["confidence"] == pytest.approx(alone.confidence, abs=1e-6)
    assert app.state.potstill.teacher_identity.endswith("#text")
    assert fb.status_code == 200 and fb.json()["reason"] == "corrected"
    # with a json_schema, the same reply ("weather") breaks it: answered degraded, with the reason
    doc = (task / "gen.yaml").read_text().replace(
        "kind: generate", "kind: generate\njson_schema: {type: object, properties: {city: {type: string}}}")
    (task / "gen-schema.yaml").write_text(doc)
    spec = load_spec(task / "gen-schema.yaml")
    run2 = run_paths(spec, tmp_path / "run2")
    prepare_inputs(spec, run2)
    shutil.copytree(Path(causal_run[0]) / "student", run2.student)
    with FakeOpenAI(lambda t: "weather", labels=LABELS) as url:
        app2 = make_app(run2.root, tmp_path / "q2.db", f"teacher.base_url={url}",
                        "serve.confidence_threshold=1.01", teacher="auto")
        with live_server(app2) as base:
            bad = post_chat(base, "tinyg", PROBES[0]).json()
    assert bad["route"] == "degraded" and bad["choices"][0]["message"]["content"] != "weather"
    from potstill.store import Store

    with Store(tmp_path / "q2.db", url="") as st:
        (item,) = st.queue_items()
    assert item["kind"] == "degraded" and "not usable: invalid_json" in item["detail"]["error"]
    # usage: the answer's own length (an estimate of 4 characters a token, as the prompt's), for
    # each of the n choices; not one token whatever was generated
    est = lambda s: -(-len(s) // 4)  # noqa: E731
    assert r["usage"] == {"prompt_tokens": est(PROBES[0]), "completion_tokens": est("weather"),
                          "total_tokens": est(PROBES[0]) + est("weather")}
    assert len(three["choices"]) == 3 and three["usage"]["completion_tokens"] == 3 * est("weather")


def test_span_values_snap_the_served_answers_of_student_and_teacher(causal_run, tmp_path):
    """span_values in serving: the teacher's reply and the student's generated text both have
    their values made spans of the request before they are checked and served (a near-copy
    takes the request's own word). Before, the misspelt copy was served as it came."""
    import shutil

    from potstill.config import load_spec, run_paths
    from potstill.stages.prepare import prepare_inputs

    task = Path(causal_run[0]).parent
    doc = (task / "potstill.yaml").read_text().replace("name: tinyc", (
        "name: tinys\nkind: generate\nspan_values: true\n"
        "json_schema: {type: object, properties: {city: {type: string}}}"))
    (task / "span.yaml").write_text(doc.replace(f"labels: {json.dumps(LABELS)}\n", ""))
    spec = load_spec(task / "span.yaml")
    run = run_paths(spec, tmp_path / "run")
    prepare_inputs(spec, run)
    shutil.copytree(Path(causal_run[0]) / "student", run.student)
    word = max(PROBES[0].split(), key=len)
    typo = word[:-1] + "q"  # a near-copy of a word of the request
    with FakeOpenAI(lambda t: json.dumps({"city": typo}), labels=LABELS) as url:
        app = make_app(run.root, tmp_path / "q.db", f"teacher.base_url={url}",
                       "serve.confidence_threshold=1.01", teacher="auto")  # every answer escalates
        with live_server(app) as base:
            r = post_chat(base, "tinys", PROBES[0]).json()
    assert r["route"] == "teacher"
    assert r["choices"][0]["message"]["content"] == json.dumps({"city": word}, separators=(",", ":"))
    host = app.state.potstill.student.host
    host.generate_texts = lambda name, texts: [(json.dumps({"city": typo}), [0.0]) for _ in texts]
    (out,) = host.predict_with(host.default, [PROBES[0]])
    assert out.error is None and json.loads(out.label) == {"city": word}


SERVE_SCRIPT = """
import sys
from pathlib import Path
from potstill.serve.app import serve_command
serve_command(Path(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), teacher_share=None,
              no_teacher=True, model="student", no_routing=False, adapter=sys.argv[3:],
              set=["serve.confidence_threshold=0"], access_log=False, log_level="warning")
"""


def test_serve_command_takes_adapter_flags(causal_run, tmp_path):
    """`potstill serve RUN --adapter bee=DIR` in a child process."""
    import os
    import subprocess
    import sys

    from test_serve_support import free_port, wait_for

    run, extra = causal_run
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "POTSTILL_API_KEYS": ""}
    p = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, str(run), str(port),
                          f"bee={extra['bee']}"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        def up():
            assert p.poll() is None, p.stderr.read().decode()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            except httpx.HTTPError:
                return None

        models = wait_for(up, timeout=120, every=0.2).json()
        r = post_chat(f"http://127.0.0.1:{port}", "bee", PROBES[0])
    finally:
        p.terminate()
        p.wait(30)
    assert [m["id"] for m in models["data"]] == ["tinyc", "bee"]
    assert r.status_code == 200 and r.json()["route"] == "student"


def test_served_answers_decode_over_the_students_answer_ids(causal_run, tmp_path):
    """student.output_vocab answers+input in serving: a student that keeps no answer ids is a
    clear error at start; one that keeps them answers over those ids and the request's tokens."""
    import shutil

    from transformers import AutoTokenizer

    from potstill.errors import PotstillError
    from potstill.students.causal_lm import STUDENT_META, generate
    from potstill.students.output_vocab import answer_ids

    run = shutil.copytree(causal_run[0], tmp_path / "run", ignore=shutil.ignore_patterns("potstill.db*"))
    with pytest.raises(PotstillError, match="keeps no answer vocabulary"):
        make_app(run, tmp_path / "q.db", "student.output_vocab=answers+input")
    tok = AutoTokenizer.from_pretrained(run / "student")
    ids = answer_ids(tok, ["balance", "weather"])  # "transfer" cannot be written whole
    meta = json.loads((run / "student" / STUDENT_META).read_text())
    (run / "student" / STUDENT_META).write_text(json.dumps({**meta, "answer_ids": ids}))
    svc = make_app(run, tmp_path / "q.db", "student.output_vocab=answers+input").state.potstill
    host = svc.student.host
    assert host.answer_ids[host.default] == ids
    served = host.generate_texts(host.default, PROBES)
    by_hand = generate(host.model, tok, PROBES, 8, batch_size=len(PROBES), answer_ids=ids)
    full = generate(host.model, tok, PROBES, 8, batch_size=len(PROBES))
    assert [t for t, _ in served] == [g.text for g in by_hand]
    # where the request does not say "transfer", the student cannot write it
    assert any(g.text == "transfer" and "transfer" not in p for g, p in zip(full, PROBES))
    assert not any(t == "transfer" for (t, _), p in zip(served, PROBES) if "transfer" not in p)
