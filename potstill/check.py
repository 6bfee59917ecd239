"""`potstill check SPEC`: what can fail before money is spent, found in seconds.

`potstill run` and `potstill label` run the same check first (`--no-check` skips it), so a missing
key, a refused key, a wrong model name or an unusable reply stops the run before the first paid
batch, and nothing trains on a plan that cannot finish. What it looks at:

- **data**: every file the spec names exists and parses (the `inputs` stage itself runs: its
  output is kept, so this costs nothing later); the test split has gold answers;
- **gold per objective**: the gold each requested step needs (a `fit` teacher, `train.objective:
  gold`, the gold-only baseline). A baseline without training gold is planned off, with the
  reason, rather than failing after the student has trained;
- **teacher** (an API teacher): the key's environment variable is set (named when not); one
  test call, on a training input the cache does not hold yet, reaches the endpoint and parses
  (a 401, a 404, a wrong model name or a reply naming no label stop here, with the reason). The
  answer is cached, so labelling does not pay for it again. The call is retried once at most
  and waits at most `CALL_TIMEOUT_S`;
- **cost**: from that call's tokens and latency, the estimated teacher cost and time for every
  input still to ask (training inputs, augmented copies and the test split the evaluation asks),
  against `teacher.max_spend_usd`.

Local teachers (`fit`, `hf`) need no call: the check says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from .errors import PotstillError
from .paths import RunPaths
from .spec import TaskSpec

Level = Literal["ok", "note", "warn", "fail"]
MARK = {"ok": "✓", "note": "·", "warn": "!", "fail": "✗"}
CALL_TIMEOUT_S = 20.0
"""Most seconds the test call waits for one attempt (a slower teacher is still usable; the
check just reports it)."""


@dataclass
class Finding:
    level: Level
    topic: str
    text: str

    def line(self) -> str:
        return f"{MARK[self.level]} {self.topic}: {self.text}"


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    estimate: dict[str, Any] | None = None
    baseline_off: str | None = None
    """Why the run will train no gold-only baseline (None: it will train one)."""

    def add(self, level: Level, topic: str, text: str) -> None:
        self.findings.append(Finding(level, topic, text))

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "fail"]

    def lines(self) -> list[str]:
        return [f.line() for f in self.findings]


def check(spec: TaskSpec, run: RunPaths, *, call: bool = True, need_test: bool = True) -> CheckReport:
    """Check the spec against its data and its teacher; `call=False` makes no teacher call.
    `need_test=False` (`potstill label`, which evaluates nothing) lets a spec without a test
    split pass, with a note."""
    from .stages.prepare import prepare_inputs

    rep = CheckReport()
    try:
        inputs = prepare_inputs(spec, run)
    except PotstillError as e:
        rep.add("fail", "data", str(e))
        return rep
    n_gold = sum(e.gold is not None for e in inputs.train)
    rep.add("ok", "data", f"{len(inputs.train)} training inputs ({n_gold} with gold), "
            f"{len(inputs.validation)} validation and {len(inputs.test)} test rows with gold, "
            f"{len(inputs.labels)} labels" if spec.kind == "classify" else
            f"{len(inputs.train)} training inputs ({n_gold} with gold), {len(inputs.validation)} "
            f"validation and {len(inputs.test)} test rows with gold")
    if not inputs.test:
        rep.add("fail" if need_test else "note", "data", "no test split: set data.test to a file "
                "with gold answers (the evaluation measures teacher, student and baseline on it)")
    _gold_plan(spec, inputs, rep, n_gold)
    if spec.teacher.kind != "openai":
        how = " (served over HTTP by a local potstill server)" if spec.teacher.over_http else ""
        rep.add("ok", "teacher", f"local ({spec.teacher.kind}){how}: no API calls, nothing to pay")
        return rep
    _api_teacher(spec, run, inputs, rep, call)
    return rep


def _gold_plan(spec: TaskSpec, inputs, rep: CheckReport, n_gold: int) -> None:
    from .stages.train import baseline_skip_reason

    if n_gold == 0:
        if spec.teacher.kind == "fit":
            rep.add("fail", "gold", "teacher.kind fit fine-tunes the teacher on the training split's "
                    "gold labels, and it has none: label some rows, or use an API teacher")
        if spec.train.objective == "gold":
            rep.add("fail", "gold", "train.objective gold trains on gold labels only, and the training "
                    "split has none")
        elif spec.train.objective == "both":
            rep.add("note", "gold", "train.objective both: no training gold, so the student learns "
                    "from the teacher alone (as distill)")
    why = baseline_skip_reason(spec, inputs)
    rep.baseline_off = why
    if why is None:
        rep.add("ok", "baseline", f"the gold-only baseline trains on {n_gold} gold labels")
    elif spec.train.baseline:
        rep.add("note", "baseline", f"off: {why}")
    else:
        rep.add("note", "baseline", "off (train.baseline: false)")


def _api_teacher(spec: TaskSpec, run: RunPaths, inputs, rep: CheckReport, call: bool) -> None:
    from .data.augment import augment
    from .store import Store
    from .teachers import BudgetExceeded, answer_cached, cache_key, make_teacher
    from .teachers.base import TeacherUnavailable

    t = spec.teacher
    # one attempt and one retry, each at most CALL_TIMEOUT_S: a check answers in seconds
    quick = spec.model_copy(update={"teacher": t.model_copy(update={
        "max_retries": min(t.max_retries, 1), "timeout_s": min(t.timeout_s, CALL_TIMEOUT_S)})})
    try:
        teacher = make_teacher(quick, run, inputs.labels, realtime=True)
        key = getattr(teacher, "api_key", None)
        if key is not None:
            key()  # unset variable: TeacherUnavailable naming it
    except PotstillError as e:
        rep.add("fail", "teacher", str(e))
        return
    texts = [e.text for e in inputs.train + augment(inputs.train, spec.data.augment, spec.train.seed)]
    texts += [e.text for e in inputs.test]  # the evaluation asks the teacher on the test split
    spec_hash = spec.spec_hash()
    with Store(run.db) as store:
        keys = {cache_key(teacher, x, spec_hash): x for x in texts}
        cached = store.get_calls(set(keys))
        todo = [x for k, x in keys.items() if k not in cached]
        if not todo:
            rep.add("ok", "teacher", f"{teacher.identity}: all {len(keys)} distinct inputs are "
                    "answered in the cache; nothing to ask or pay")
            return
        if not call:
            rep.add("note", "teacher", f"{teacher.identity}: no test call made (--no-call); "
                    f"{len(todo)} of {len(keys)} distinct inputs still to ask")
            return
        spent = store.spend(teacher.identity)["cost_usd"]
        if hasattr(teacher, "spent_usd"):
            teacher.spent_usd = max(teacher.spent_usd, spent)
        try:
            a = answer_cached(teacher, [todo[0]], store, spec_hash)[0]
        except TeacherUnavailable as e:
            rep.add("fail", "teacher", str(e))
            return
        except BudgetExceeded:
            rep.add("fail", "teacher", f"teacher.max_spend_usd (${t.max_spend_usd:,.2f}) is already "
                    f"spent (${spent:,.2f} recorded in {run.db}): raise it to label more")
            return
    if a.error is not None:
        rep.add("fail", "teacher", f"{teacher.identity}: the test call failed: {a.error}")
        return
    if a.label is None:
        why = a.extra.get("parse_error") if a.extra else None
        raw = (a.raw or "")[:200]
        rep.add("fail", "teacher", f"{teacher.identity} answered the test call, but the reply is not "
                f"usable{f' ({why})' if why else ''}: {raw!r}. Check teacher.model, instruction and "
                "prompt_template")
        return
    rep.add("ok", "teacher", f"{teacher.identity} answered a test call in {a.latency_ms or 0:,.0f} ms "
            f"({a.input_tokens} + {a.output_tokens} tokens, ${a.cost_usd:.6f}); the answer is cached")
    _estimate(spec, inputs.labels, a, todo, spent, rep)


def _estimate(spec: TaskSpec, labels: list[str], a, todo: list[str], spent: float,
              rep: CheckReport) -> None:
    """Cost and time of asking every input in `todo` (the first was the test call), scaled from
    the test call: input tokens by prompt length, output tokens and latency as measured."""
    t = spec.teacher
    rest = todo[1:]
    # tokens per prompt character, from the test call's prompt (its fixed part, instruction and
    # labels, is in every prompt; the text part scales with each input's length)
    fixed = len(spec.render_prompt("", labels))
    per_char = a.input_tokens / max(fixed + len(todo[0]), 1)
    in_tokens = per_char * sum(fixed + len(x) for x in rest)
    out_tokens = a.output_tokens * len(rest)
    price = (1.0 - t.batch_discount) if t.batch else 1.0
    cost = price * (in_tokens * t.price_in + out_tokens * t.price_out) / 1e6
    lat = (a.latency_ms or 0.0) / 1000
    seconds = math.ceil(len(rest) / t.concurrency) * lat
    rep.estimate = {"inputs_to_ask": len(todo), "est_input_tokens": round(in_tokens + a.input_tokens),
                    "est_output_tokens": out_tokens + a.output_tokens, "est_cost_usd": round(cost + a.cost_usd, 4),
                    "est_seconds": round(seconds, 1), "batch": t.batch, "spent_usd": round(spent, 6)}
    when = ("within the batch's completion window (up to 24 h)" if t.batch else
            f"about {_duration(seconds)} at concurrency {t.concurrency}")
    rep.add("ok", "cost", f"{len(todo)} inputs to ask: about ${cost + a.cost_usd:,.2f} "
            f"({rep.estimate['est_input_tokens']:,} + {rep.estimate['est_output_tokens']:,} tokens"
            f"{', batch price' if t.batch else ''}), {when}")
    if t.price_in == 0 and t.price_out == 0:
        rep.add("note", "cost", "teacher.price_in and price_out are 0: set your model's prices "
                "($ per million tokens) to see what labelling costs")
    if t.max_spend_usd is None:
        rep.add("note", "cost", "no teacher.max_spend_usd: nothing caps the spend")
    elif spent + cost + a.cost_usd > t.max_spend_usd:
        left = max(t.max_spend_usd - spent, 0.0)
        k = int(len(todo) * left / max(cost + a.cost_usd, 1e-12))
        rep.add("warn", "cost", f"over teacher.max_spend_usd (${t.max_spend_usd:,.2f}, ${spent:,.2f} "
                f"spent): labelling stops at the cap after about {min(k, len(todo)):,} of {len(todo):,} "
                "inputs, keeping what is done; raise the cap to label them all")
    else:
        rep.add("ok", "cost", f"within teacher.max_spend_usd (${t.max_spend_usd:,.2f}; "
                f"${spent:,.2f} spent so far)")


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def run_check(spec: TaskSpec, run: RunPaths, *, call: bool = True, need_test: bool = True) -> CheckReport:
    """The check as `run` and `label` do it first: print the findings; stop (PotstillError)
    before anything is labelled or trained when one fails."""
    from .progress import log

    rep = check(spec, run, call=call, need_test=need_test)
    for line in rep.lines():
        log(f"check: {line}")
    if rep.failures:
        raise PotstillError("check failed, nothing was labelled or trained: "
                            + "; ".join(f"{f.topic}: {f.text}" for f in rep.failures)
                            + " (`potstill check SPEC` reruns the check alone)")
    return rep


def check_command(
    spec: Annotated[Path, typer.Argument(help="Task spec (potstill.yaml or .toml).")],
    set: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a spec field, e.g. --set teacher.model=gpt-4o. Repeatable.")] = None,
    workdir: Annotated[Optional[Path], typer.Option(
        "--workdir", "-w", help="Run directory (default: runs/<name> beside the spec).")] = None,
    no_call: Annotated[bool, typer.Option(
        "--no-call", help="Make no teacher call (no cost or time estimate).")] = False,
):
    """Check before spending: data, gold, API key, one test call, estimated cost.

    The data parses and the gold each step needs is there; the API key's variable is set and one
    test call to the teacher answers and parses (cached, so labelling does not pay for it again);
    then the estimated teacher cost and time for the whole set, against teacher.max_spend_usd.
    Exit 2 when something would fail.

    `potstill run` and `potstill label` run this check first (skip it with --no-check).
    """
    from .config import load_spec, run_paths

    s = load_spec(spec, set or [])
    rep = check(s, run_paths(s, workdir), call=not no_call)
    for line in rep.lines():
        typer.echo(line)
    if rep.failures:
        raise PotstillError(f"check: {len(rep.failures)} problem(s) above; fix them before spending")
    typer.echo("check passed")
