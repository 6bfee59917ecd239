"""The teacher circuit breaker (serve/breaker.py) as a pure state machine, with a fake clock."""

from __future__ import annotations

import pytest

from potstill.serve.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_n_consecutive_failures_and_a_success_resets_the_count():
    clock = Clock()
    moves = []
    b = CircuitBreaker(failures=3, cooldown_s=10, clock=clock, on_change=lambda o, n: moves.append((o, n)))
    for _ in range(2):
        assert b.allow()
        b.failure("connection error: refused")
    assert b.allow()
    b.success()  # the count starts again
    assert (b.state, b.consecutive) == ("closed", 0)
    for k in range(3):
        assert b.allow()
        b.failure(f"HTTP 503: down {k}")
    assert b.state == "open" and b.opens == 1 and moves == [("closed", "open")]
    assert b.last_error == "HTTP 503: down 2"
    assert not b.allow() and not b.allow()  # answered degraded at once
    assert b.retry_in_s() == 10
    clock.t += 9.99
    assert not b.allow() and b.state == "open"


def test_half_open_lets_one_trial_through_and_its_outcome_decides():
    clock = Clock()
    b = CircuitBreaker(failures=2, cooldown_s=5, clock=clock)
    for _ in range(2):
        b.allow()
        b.failure("timed out")
    clock.t += 5
    assert b.state == "half_open"
    assert b.allow() is True          # the trial
    assert b.allow() is False         # others wait while it is in flight
    b.failure("connection error: refused")
    assert b.state == "open" and b.opens == 2 and b.retry_in_s() == 5  # a fresh cool-down
    clock.t += 5
    assert b.allow() is True
    b.success()
    assert (b.state, b.consecutive, b.retry_in_s()) == ("closed", 0, None)
    assert b.allow() and b.allow()


def test_a_late_failure_of_a_call_started_before_opening_changes_nothing():
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown_s=5, clock=clock)
    b.allow()                         # two calls in flight
    b.allow()
    b.failure("x")                    # opens
    opened = b.opened_at
    clock.t += 1
    b.failure("y")                    # the other call's failure: not a trial
    assert b.state == "open" and b.opened_at == opened and b.opens == 1


def test_snapshot_and_bad_settings():
    b = CircuitBreaker(failures=1, cooldown_s=1, clock=Clock())
    assert b.snapshot() == {"state": "closed", "consecutive_failures": 0, "opens": 0,
                            "retry_in_s": None, "last_error": None}
    with pytest.raises(ValueError):
        CircuitBreaker(failures=0)
    with pytest.raises(ValueError):
        CircuitBreaker(cooldown_s=0)


# -- the breaker in the router: degraded at once while open, a background trial after the cool-down --
def test_router_answers_at_once_while_open_and_a_background_trial_closes_the_breaker(tmp_path):
    import asyncio

    from potstill.serve.queue import ReviewQueue
    from potstill.serve.router import Policy, Router, StudentOutput, TeacherClient
    from potstill.store import Store
    from potstill.teachers.base import Answer

    class Student:
        identity, labels = "s1", ["balance", "weather"]

        def predict(self, texts):
            return [StudentOutput(label="balance", confidence=0.1) for _ in texts]

    class Teacher:
        identity, labels, up, calls = "stub", ["balance", "weather"], False, 0

        def request(self, text):
            return {"text": text}

        def answer(self, texts):
            self.calls += len(texts)
            for i, _ in enumerate(texts):
                yield i, (Answer(label="weather") if self.up
                          else Answer(label=None, error="connection error: refused"))

    clock = Clock()
    breaker = CircuitBreaker(failures=2, cooldown_s=5, clock=clock)
    teacher = Teacher()

    async def go():
        store = Store(tmp_path / "q.db")
        queue = ReviewQueue(store, log_requests=False)
        tc = TeacherClient(teacher, store, "h", breaker=breaker)
        router = Router(Student(), Policy(confidence_threshold=0.5), queue, tc, batching=False)
        await queue.start()
        await router.start()
        try:
            got = [(await router.route([f"t{i}"], [f"r{i}"]))[0] for i in range(3)]
            assert teacher.calls == 2 and breaker.state == "open"  # the third never asked
            teacher.up = True
            clock.t += 5
            (trial,) = await router.route(["t3"], ["r3"])
            assert trial.route == "degraded"  # answered at once, the trial runs behind it
            await asyncio.wait(set(router._background), timeout=5)
            assert breaker.state == "closed" and teacher.calls == 3
            (after,) = await router.route(["t4"], ["r4"])
            return got, trial, after, store.queue_items()
        finally:
            await router.stop()
            await queue.stop()
            store.close()

    got, trial, after, rows = asyncio.run(go())
    assert [r.route for r in got] == ["degraded"] * 3
    assert [r["reason"] for r in rows] == ["teacher_error", "teacher_error", "breaker_open",
                                           "breaker_open", "low_confidence"]
    assert "connection error: refused" in rows[2]["detail"]["error"]
    assert rows[3]["teacher_label"] == "weather"  # the trial's answer, kept with its item
    assert (after.route, after.label) == ("teacher", "weather")
