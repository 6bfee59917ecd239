"""A circuit breaker between the server and its teacher (a pure state machine).

Without one, a teacher that is down or hung costs every escalated request the full deadline
(`serve.teacher_timeout_s`) before its degraded answer goes out (issue 11). With it:

- **closed** (the normal state): every escalation asks the teacher. Each answer resets the count
  of consecutive failures; each failure (an error after the teacher's own retries, or no answer
  within the deadline) adds one. `failures` in a row open the breaker.
- **open**: escalations are answered degraded at once, without asking the teacher, for
  `cooldown_s` seconds.
- **half-open**: after the cool-down, one call (the trial) is let through; the others stay
  degraded while it is in flight. The trial's success closes the breaker; its failure opens it
  again for another cool-down. (The router answers the escalation that carries the trial
  degraded at once too, and makes the trial call in the background: nobody waits on a teacher
  that was down a moment ago; its answer, if it comes, lands in that queue item.)

The breaker holds no I/O and no threads: `allow()`, `success()` and `failure(error)` are called
by the router (one event loop), and the clock is injectable, so its behaviour is tested with
known answers (tests/test_breaker.py). `last_error` keeps the real error text of the latest
failure (a refused connection, an HTTP status, a timeout), shown in logs and queue items.
"""

from __future__ import annotations

import time
from typing import Any, Callable

STATES = ("closed", "half_open", "open")


class CircuitBreaker:
    def __init__(self, failures: int = 5, cooldown_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, str], None] | None = None):
        if failures < 1:
            raise ValueError("failures must be at least 1")
        if not cooldown_s > 0:
            raise ValueError("cooldown_s must be positive")
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.on_change = on_change
        """Called with (old state, new state) on every transition (logging, metrics)."""
        self._state = "closed"
        self.consecutive = 0
        self.opened_at: float | None = None
        self.opens = 0
        """How many times the breaker opened (closed -> open, or half-open -> open)."""
        self.trial_in_flight = False
        self.last_error: str | None = None

    # -- reading ----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """closed | half_open | open; an open breaker whose cool-down has passed reads half_open."""
        if self._state == "open" and self._cooled():
            return "half_open"
        return self._state

    def retry_in_s(self) -> float | None:
        """Seconds until the next trial is allowed (open), else None."""
        if self._state != "open" or self.opened_at is None:
            return None
        return max(0.0, self.opened_at + self.cooldown_s - self.clock())

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state, "consecutive_failures": self.consecutive, "opens": self.opens,
                "retry_in_s": self.retry_in_s(), "last_error": self.last_error}

    # -- the three events -------------------------------------------------------------------
    def allow(self) -> bool:
        """May this escalation ask the teacher? (True in closed; once per cool-down, the trial,
        when half-open; False otherwise.) A True from a half-open breaker must be followed by
        `success()` or `failure()` for that call."""
        if self._state == "closed":
            return True
        if self._state == "open":
            if not self._cooled():
                return False
            self._move("half_open")
        # half-open: one trial at a time
        if self.trial_in_flight:
            return False
        self.trial_in_flight = True
        return True

    def success(self) -> None:
        self.consecutive = 0
        self.trial_in_flight = False
        if self._state != "closed":
            self.opened_at = None
            self._move("closed")

    def failure(self, error: str | None = None) -> None:
        self.consecutive += 1
        if error is not None:
            self.last_error = error
        was_trial = self.trial_in_flight
        self.trial_in_flight = False
        if self._state == "half_open" or (self._state == "open" and was_trial):
            self._open()
        elif self._state == "closed" and self.consecutive >= self.failures:
            self._open()
        # open (not a trial): a call that started before the breaker opened; nothing changes

    # -- internals --------------------------------------------------------------------------
    def _cooled(self) -> bool:
        return self.opened_at is not None and self.clock() - self.opened_at >= self.cooldown_s

    def _open(self) -> None:
        self.opened_at = self.clock()
        self.opens += 1
        self._move("open")

    def _move(self, new: str) -> None:
        old, self._state = self._state, new
        if self.on_change is not None and old != new:
            self.on_change(old, new)
