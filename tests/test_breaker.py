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
    b.allow(); b.allow()              # two calls in flight
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
