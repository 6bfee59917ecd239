"""Batch-1 latency timed in turn (timing.py): a machine that drifts while one model is timed
after another shows as a difference between two identical models; taking turns cancels it. The
evaluation stage times the teacher, the student and the baseline that way."""

from __future__ import annotations

import shutil

import pytest
from test_serve_support import tiny_run  # noqa: F401  (fixture)

from potstill import timing
from potstill.timing import Timer, calls, time_alone, time_interleaved


class DriftingMachine:
    """A fake clock and fake models of equal cost: every call takes longer than the one before
    (the machine slowing down under other load), by 10% of the base cost per call."""

    def __init__(self) -> None:
        self.now, self.calls, self.log = 0.0, 0, []

    def clock(self) -> float:
        return self.now

    def model(self, name: str):
        def call(text: str) -> str:
            self.calls += 1
            self.now += 0.001 * (1 + self.calls / 10)
            self.log.append((name, text))
            return text
        return call


def test_taking_turns_cancels_the_machine_s_drift(monkeypatch):
    m = DriftingMachine()
    monkeypatch.setattr(timing.time, "perf_counter", m.clock)
    texts = [f"input {i}" for i in range(100)]

    alone = [time_alone(Timer(m.model(n), samples=20, warmup=2), texts) for n in ("a", "b")]
    assert alone[1]["latency_ms_p50"] / alone[0]["latency_ms_p50"] > 1.3  # drift, one after the other

    m.log.clear()
    ticks = []
    res = time_interleaved({"a": Timer(m.model("a"), samples=20, warmup=2),
                            "b": Timer(m.model("b"), samples=20, warmup=2),
                            "c": Timer(m.model("c"), samples=3, warmup=1, units=len, rate_key="chars_per_s")},
                           texts, seed=3, advance=lambda: ticks.append(1))
    assert res["b"]["latency_ms_p50"] / res["a"]["latency_ms_p50"] == pytest.approx(1.0, abs=0.03)
    timed = m.log[5:]  # after the warm-ups: 2 + 2 + 1 calls
    assert [n for n, _ in m.log[:5]] == ["a", "a", "b", "b", "c"]
    # input by input, every model in turn, the first to answer rotating; c only on the first 3
    assert [n for n, _ in timed[:9]] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [n for n, _ in timed[9:13]] == ["a", "b", "b", "a"]
    assert len(timed) == 20 + 20 + 3 and len(ticks) == len(m.log)  # progress: one tick a call
    few = {"d": Timer(m.model("d"), samples=3, warmup=10)}  # warm-ups: no more than the inputs drawn
    m.log.clear()
    time_interleaved(few, texts)
    assert len(m.log) == calls(few) == 6
    by_input = {}
    for n, t in timed:
        by_input.setdefault(t, set()).add(n)
    assert all(len(v) >= 2 for v in by_input.values())  # the same inputs for every model
    assert res["c"]["chars_per_s"] > 0 and "chars_per_s" not in res["a"]


def test_the_evaluation_times_teacher_student_and_baseline_in_turn(tiny_run, tmp_path, monkeypatch):  # noqa: F811
    """A local teacher and two trained models: one interleaved timing over all three, and the
    report's latency columns and speed-up come from it."""
    from potstill.config import load_spec, run_paths
    from potstill.stages import evaluate as stage

    root = tmp_path / "task"
    shutil.copytree(tiny_run.parent.parent, root, ignore=shutil.ignore_patterns("potstill.db*"))
    run_dir = root / "runs" / "tiny"
    shutil.copytree(run_dir / "student", run_dir / "baseline")
    spec_text = (root / "potstill.yaml").read_text()
    start = spec_text.index("teacher:")
    end = spec_text.index("student:")
    (root / "potstill.yaml").write_text(spec_text[:start] + f"teacher: {{kind: hf, model: {run_dir / 'student'}}}\n"
                                        + spec_text[end:] + "eval: {latency_samples: 12}\n")
    spec = load_spec(root / "potstill.yaml")

    calls = []
    real = stage.time_interleaved

    def spy(timers, texts, seed=0, advance=None):
        wrapped = {}
        for name, t in timers.items():
            def call(x, _n=name, _c=t.call):
                calls.append(_n)
                return _c(x)
            wrapped[name] = Timer(call, t.samples, t.warmup, t.units, t.rate_key)
        return real(wrapped, texts, seed, advance)

    monkeypatch.setattr(stage, "time_interleaved", spy)
    report = stage.evaluate(spec, run_paths(spec))
    timed = calls[30:]  # after 10 warm-up calls each
    assert sorted(set(calls)) == ["baseline", "student", "teacher"] and len(timed) == 36
    assert all(sorted(timed[i:i + 3]) == ["baseline", "student", "teacher"] for i in range(0, 36, 3))
    models = report["models"]
    for name in ("teacher", "student", "baseline"):
        assert models[name]["latency_ms_p50"] > 0 and models[name]["throughput_per_s"] > 0
    assert report["summary"]["latency_speedup"] == round(
        models["teacher"]["latency_ms_p50"] / models["student"]["latency_ms_p50"], 2)
