"""Training schedules: how long to train, how the learning rate moves, when to validate and stop.

Pure: no torch, no I/O. `plan_schedule` turns the data size and the spec's schedule fields into a
`Schedule`; `EarlyStopping` decides, one validation at a time, whether a score is the best so far
and whether to stop. students/classifier.py's `train_classifier` runs both.

Two modes:

- **fixed** — the old behaviour: `epochs` passes over the data, validation at each epoch's end,
  no early stopping, linear decay after warm-up.
- **adaptive** — the length comes from the data: `epochs` passes, but never fewer than `min_steps`
  nor more than `max_steps` optimizer steps (a small data set gets more passes, a big one is
  capped); validation every `eval_every` steps (auto: about `EVALS_PER_RUN` times per run,
  whatever the epoch length); training stops once `patience` validations in a row did not beat the
  best, and the best checkpoint is what is kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

EVALS_PER_RUN = 8
"""Adaptive mode with eval_every unset: validate about this many times over the whole run."""


@dataclass(frozen=True)
class Schedule:
    mode: str
    """fixed | adaptive"""
    total_steps: int
    """Optimizer steps planned (early stopping may end sooner)."""
    steps_per_epoch: int
    warmup_steps: int
    decay: str
    """linear | cosine: how the learning rate falls from its peak to 0 after warm-up."""
    eval_every: int
    """Optimizer steps between validations; 0: at each epoch's end (fixed mode)."""
    patience: int | None
    """Validations in a row without a new best before training stops; None: never stops early."""

    @property
    def epochs(self) -> float:
        """Passes over the data the planned steps make."""
        return self.total_steps / max(self.steps_per_epoch, 1)

    @property
    def n_epochs(self) -> int:
        """Epoch loops the trainer runs (the last one may be cut short)."""
        return max(1, math.ceil(self.total_steps / max(self.steps_per_epoch, 1)))

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak learning rate for optimizer step `step` (0-based): linear
        warm-up over `warmup_steps`, then linear or cosine decay to 0 at `total_steps`."""
        w, n = self.warmup_steps, self.total_steps
        if step < w:
            return (step + 1) / max(1, w)
        frac = min(1.0, max(0.0, (step - w) / max(1, n - w)))
        if self.decay == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        return max(0.0, 1.0 - frac)

    def eval_due(self, step: int, epoch_end: bool) -> bool:
        """Validate after optimizer step `step` (1-based count of steps done)?"""
        if step >= self.total_steps:
            return True
        if self.eval_every <= 0:
            return epoch_end
        return step % self.eval_every == 0

    def describe(self) -> str:
        stop = f", early stop after {self.patience} validations without gain" if self.patience else ""
        every = f"every {self.eval_every} steps" if self.eval_every > 0 else "each epoch"
        return (f"{self.mode} schedule: {self.total_steps} steps ({self.epochs:.3g} epochs of "
                f"{self.steps_per_epoch}), warm-up {self.warmup_steps}, {self.decay} decay, "
                f"validation {every}{stop}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epochs": round(self.epochs, 3)}


def plan_schedule(n_rows: int, batch_size: int, *, mode: Literal["fixed", "adaptive"] = "fixed",
                  epochs: float = 4, min_steps: int = 0, max_steps: int | None = None,
                  warmup_ratio: float = 0.06, decay: Literal["linear", "cosine"] = "linear",
                  eval_every: int | None = None, patience: int | None = None,
                  processes: int = 1) -> Schedule:
    """The schedule for `n_rows` training rows in batches of `batch_size` (per process).

    fixed: ceil(epochs * steps_per_epoch) steps, validation per epoch, no early stopping (the
    other arguments but warmup_ratio and decay are ignored). adaptive: the same count clamped to
    [min_steps, max_steps]; validation every `eval_every` steps (None: about EVALS_PER_RUN times
    per run); stop after `patience` validations without a
    new best (None: never)."""
    if n_rows < 1:
        raise ValueError("no training rows to plan a schedule for")
    if batch_size < 1 or processes < 1:
        raise ValueError("batch_size and processes must be at least 1")
    spe = math.ceil(n_rows / (batch_size * processes))
    base = max(1, math.ceil(spe * epochs))
    if mode == "fixed":
        total = base
        return Schedule("fixed", total, spe, int(total * warmup_ratio), decay, 0, None)
    if mode != "adaptive":
        raise ValueError(f"unknown schedule {mode!r}; one of fixed, adaptive")
    if max_steps is not None and max_steps < max(min_steps, 1):
        raise ValueError(f"train.max_steps ({max_steps}) is below train.min_steps ({min_steps})")
    total = max(base, min_steps, 1)
    if max_steps is not None:
        total = min(total, max_steps)
    if eval_every is None or eval_every <= 0:
        eval_every = max(1, math.ceil(total / EVALS_PER_RUN))
    return Schedule("adaptive", total, spe, int(total * warmup_ratio), decay, int(eval_every),
                    patience if patience and patience > 0 else None)


class EarlyStopping:
    """Tracks the best validation score; `update(score)` -> True when it is a new best.
    `should_stop` once `patience` updates in a row brought none (never when patience is None).
    A new best must beat the old one by more than `min_delta`. State round-trips through
    `state()` / `load()` so a resumed run continues the count."""

    def __init__(self, patience: int | None, min_delta: float = 0.0, best: float = -math.inf,
                 bad: int = 0):
        self.patience, self.min_delta, self.best, self.bad = patience, min_delta, best, bad

    def update(self, score: float) -> bool:
        if score > self.best + self.min_delta or self.best == -math.inf:
            self.best, self.bad = score, 0
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best if math.isfinite(self.best) else None, "bad": self.bad}

    @classmethod
    def load(cls, patience: int | None, state: dict[str, Any] | None, min_delta: float = 0.0) -> "EarlyStopping":
        state = state or {}
        best = state.get("best")
        return cls(patience, min_delta, -math.inf if best is None else float(best), int(state.get("bad", 0)))


def adaptive_steps(part: Any, n_rows: int) -> int | None:
    """The adaptive schedule's step budget for `n_rows` training rows under a spec part (TrainSpec):
    the floor that gives a variant with fewer rows as many steps. None for the fixed schedule."""
    if part.schedule != "adaptive" or n_rows < 1:
        return None
    f = {k: v for k, v in schedule_fields(part).items() if k != "schedule"}
    return plan_schedule(n_rows, part.batch_size, mode="adaptive", epochs=part.epochs,
                         warmup_ratio=part.warmup_ratio, **f).total_steps


def schedule_fields(part: Any) -> dict[str, Any]:
    """The TrainConfig schedule fields from a spec part (TrainSpec or FitSpec)."""
    return {"schedule": part.schedule, "min_steps": part.min_steps, "max_steps": part.max_steps,
            "patience": part.patience, "eval_every": part.eval_every,
            "decay": getattr(part, "decay", "linear")}
