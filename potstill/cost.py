"""Cost and break-even model: does replacing (most of) the paid teacher with the student pay?

Two ways to serve `requests_per_month`:

* **teacher only** — every request goes to the paid API.
* **hybrid** — the student answers every request on hosting you pay by the hour, and a share
  `teacher_share` of the traffic (the inputs the student is least sure of) still goes to the
  teacher. Someone has to look after the student: `maintenance_hours_per_month`.

Getting there costs a one-off sum: the teacher labelling already spent, training compute, and the
engineering weeks to put the student into production. The model compares the two monthly bills,
amortises the one-off sum over `horizon_months`, and turns the figures into a verdict.

Everything above the loader at the bottom is a pure function of a `CostInputs`; the formulas are
written out in docs/COST.md. The rules of thumb ("below ~$5K a month of API spend distillation
rarely pays, above ~$50K it almost always does") are not written anywhere in here: they come out of
the documented defaults (see `tests/test_cost.py::test_rules_of_thumb_come_out_of_the_defaults`).
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import MissingOutput, PotstillError
from .paths import CALIBRATION_JSON, RunPaths

# --- verdict thresholds (keyword arguments of `verdict`) -----------------------------------------
FAST_PAYBACK_SHARE = 0.25
"""'distill' needs the one-off cost back within this share of the horizon (3 of 12 months): a
payback that quick survives the inputs being off by a factor of two or more."""
MIN_SAVINGS_SHARE = 0.5
"""'distill' also needs the hybrid to remove at least this share of the teacher bill, so the
saving is not eaten by a modest rise in hosting, maintenance or the teacher share."""

VERDICTS = ("distill", "borderline", "keep the API")

BATCH_DISCOUNT = 0.5
"""Share of the list price that batch tiers take off (OpenAI's Batch API and Anthropic's Message
Batches both bill 50% of the real-time price, for results within 24 h). Labelling with
`teacher.batch: true` is recorded at this price; serving-time escalations cannot wait, so the
hybrid bill below always pays the real-time price."""


def batch_price(price: float, discount: float = BATCH_DISCOUNT) -> float:
    """$ per million tokens in a batch: price * (1 - discount)."""
    if not 0.0 <= discount < 1.0:
        raise ValueError(f"batch discount must be within [0, 1), got {discount!r}")
    return price * (1.0 - discount)


def labelling_cost(n_inputs: float, tokens_in: float, tokens_out: float, price_in: float,
                   price_out: float, batch: bool = False, discount: float = BATCH_DISCOUNT) -> float:
    """$ to label `n_inputs` with the teacher: real time, or through a batch at its discount."""
    if batch:
        price_in, price_out = batch_price(price_in, discount), batch_price(price_out, discount)
    return n_inputs * (tokens_in * price_in + tokens_out * price_out) / 1e6


@dataclass(frozen=True)
class CostInputs:
    """Everything the model needs. Money in US dollars; prices per million tokens like TeacherSpec."""

    requests_per_month: float = 1_000_000
    """Traffic to serve. 1M/month (~0.4 requests/s on average) is a modest production workload."""
    price_in: float = 2.5
    """Teacher $ per million input tokens: a current frontier-model list price (GPT-4o class)."""
    price_out: float = 10.0
    """Teacher $ per million output tokens: the same model's output list price."""
    tokens_in: float = 500.0
    """Input tokens per request: instruction + label list + the text of a classification prompt."""
    tokens_out: float = 10.0
    """Output tokens per request: a label, or a short JSON object holding one."""
    teacher_share: float = 0.1
    """Share of traffic the hybrid still sends to the teacher (least-confident inputs); 10% is a
    typical escalation rate for a student at the teacher's accuracy. `calibration.json` sets it."""
    hosting_per_hour: float = 0.50
    """$ per instance-hour: an 8-vCPU CPU instance (~$0.36/h on demand, e.g. AWS c7i.2xlarge) plus
    ~40% for load balancer, logs and monitoring. potstill's small encoder students serve on CPU."""
    student_throughput_per_s: float = 100.0
    """Requests/s one instance serves. A 2-layer MiniLM student measures a few hundred inputs/s
    in batches on 2 CPU cores (report.json); 100 is a conservative figure for one-at-a-time serving."""
    utilisation: float = 0.5
    """Share of that throughput planned for, leaving headroom so bursts do not queue."""
    peak_to_average: float = 3.0
    """Instances are sized for the peak: daytime peaks commonly run 2-4x the 24-hour average."""
    min_instances: int = 2
    """Always-on instances: two, so a deploy or a failed machine never sends all traffic back to
    the teacher at full price."""
    hours_per_month: float = 730.0
    """Hours an always-on instance is billed per month: 8760 h / 12."""
    labelling_usd: float = 150.0
    """Teacher labelling already spent: ~100K training inputs at the default $0.00135 per call,
    plus retries. `cost_inputs_from_run` reads the real figure from potstill.db."""
    training_hours: float = 8.0
    """Compute hours to train the student and a few variants (minutes to hours per try)."""
    training_hour_usd: float = 2.0
    """$ per training hour: one on-demand cloud GPU of the A10/L4 class."""
    engineering_weeks: float = 4.0
    """Weeks to put the student into production: serving, routing to the teacher, monitoring,
    evaluation on your own traffic. Labelling and training themselves are potstill's job."""
    engineering_week_usd: float = 5000.0
    """Fully loaded ML engineer: ~$250K a year over 50 working weeks."""
    maintenance_hours_per_month: float = 16.0
    """Two days a month: watch drift and the routing log, relabel a fresh sample with the teacher,
    retrain and redeploy now and then."""
    maintenance_hour_usd: float = 125.0
    """The same engineer by the hour: $5,000 / 40 h."""
    horizon_months: float = 12.0
    """Months the one-off cost is amortised over, and the longest payback worth taking: models,
    prices and the task itself tend to change within a year."""
    # informational: shown in reasons, never priced
    teacher_latency_ms: float | None = None
    """Teacher p50 latency (report.json), for the reasons only."""
    student_latency_ms: float | None = None
    """Student p50 latency (report.json), for the reasons only."""
    notes: tuple[str, ...] = field(default=(), compare=False)
    """Where figures came from, in particular which ones fell back to a default."""

    def __post_init__(self) -> None:
        nonneg = ("requests_per_month", "price_in", "price_out", "tokens_in", "tokens_out",
                  "hosting_per_hour", "labelling_usd", "training_hours", "training_hour_usd",
                  "engineering_weeks", "engineering_week_usd", "maintenance_hours_per_month",
                  "maintenance_hour_usd", "min_instances")
        for name in nonneg:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise PotstillError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("student_throughput_per_s", "hours_per_month", "horizon_months"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise PotstillError(f"{name} must be a finite number > 0, got {v!r}")
        if not 0.0 <= self.teacher_share <= 1.0:
            raise PotstillError(f"teacher_share must be within 0..1, got {self.teacher_share!r}")
        if not 0.0 < self.utilisation <= 1.0:
            raise PotstillError(f"utilisation must be within (0, 1], got {self.utilisation!r}")
        if self.peak_to_average < 1.0:
            raise PotstillError(f"peak_to_average must be >= 1, got {self.peak_to_average!r}")
        if int(self.min_instances) != self.min_instances:
            raise PotstillError(f"min_instances must be a whole number, got {self.min_instances!r}")


# --- the formulas ---------------------------------------------------------------------------------
def teacher_cost_per_request(x: CostInputs) -> float:
    """tokens_in * price_in / 1e6 + tokens_out * price_out / 1e6."""
    return (x.tokens_in * x.price_in + x.tokens_out * x.price_out) / 1e6


def teacher_only_monthly(x: CostInputs) -> float:
    """requests_per_month * teacher_cost_per_request."""
    return x.requests_per_month * teacher_cost_per_request(x)


def instance_capacity_per_month(x: CostInputs) -> float:
    """Requests per month one instance is planned to carry at peak:
    throughput * utilisation * hours_per_month * 3600 / peak_to_average."""
    return x.student_throughput_per_s * x.utilisation * x.hours_per_month * 3600 / x.peak_to_average


def instances_needed(x: CostInputs, requests_per_month: float | None = None) -> int:
    """max(min_instances, ceil(peak load / (throughput * utilisation))), where
    peak load = requests_per_month / (hours_per_month * 3600) * peak_to_average (requests/s).

    Every request is answered by the student (the hybrid asks the teacher afterwards), so the
    student is sized for all the traffic, not for (1 - teacher_share) of it.
    """
    r = x.requests_per_month if requests_per_month is None else requests_per_month
    load = r / instance_capacity_per_month(x)
    # round before ceil so 2.0000000000000004 instances stays 2
    return max(int(x.min_instances), math.ceil(round(load, 9)))


def student_hosting_monthly(x: CostInputs) -> float:
    """instances_needed * hours_per_month * hosting_per_hour."""
    return instances_needed(x) * x.hours_per_month * x.hosting_per_hour


def maintenance_monthly(x: CostInputs) -> float:
    """maintenance_hours_per_month * maintenance_hour_usd."""
    return x.maintenance_hours_per_month * x.maintenance_hour_usd


def hybrid_monthly(x: CostInputs) -> float:
    """student hosting + teacher_share * teacher-only + maintenance."""
    return student_hosting_monthly(x) + x.teacher_share * teacher_only_monthly(x) + maintenance_monthly(x)


def one_off_cost(x: CostInputs) -> float:
    """labelling + training_hours * training_hour_usd + engineering_weeks * engineering_week_usd."""
    return (x.labelling_usd + x.training_hours * x.training_hour_usd
            + x.engineering_weeks * x.engineering_week_usd)


def monthly_savings(x: CostInputs) -> float:
    """teacher-only - hybrid (negative when the hybrid costs more)."""
    return teacher_only_monthly(x) - hybrid_monthly(x)


def savings_share(x: CostInputs) -> float:
    """monthly savings / teacher-only (0 when there is no teacher bill)."""
    t = teacher_only_monthly(x)
    return monthly_savings(x) / t if t > 0 else 0.0


def payback_months(x: CostInputs) -> float:
    """one-off / monthly savings; inf when savings <= 0 (it never pays back); 0 when nothing was
    spent up front and the hybrid saves money."""
    s = monthly_savings(x)
    if s <= 0:
        return math.inf
    return one_off_cost(x) / s


def net_over_horizon(x: CostInputs) -> float:
    """horizon_months * monthly savings - one-off: what distilling leaves over the horizon."""
    return x.horizon_months * monthly_savings(x) - one_off_cost(x)


def break_even_requests_per_month(x: CostInputs) -> float:
    """Smallest volume R at which hybrid(R) + one_off / horizon <= teacher_only(R); inf if none.

    Solved analytically, piecewise in the instance count n. With c the teacher cost per request,
    s the teacher share, H = hours_per_month * hosting_per_hour (one instance for a month) and
    F = maintenance + one_off / horizon, the condition at a fixed n is

        (1 - s) * c * R  >=  n * H + F     =>   R_n = (n * H + F) / ((1 - s) * c)

    and R_n is the answer as soon as R_n needs no more than n instances. n starts at min_instances
    (or, skipping counts that cannot work, at the continuous solution n = kF / (a - kH), with
    a = (1 - s) c and k = 1 / instance capacity) and goes up one at a time. When one more instance
    costs more than the requests it carries save (k * H >= a), a volume beyond the minimum
    instances never breaks even. Traffic volume does not change the one-off cost, so "break-even"
    here always includes it, amortised.
    """
    a = (1.0 - x.teacher_share) * teacher_cost_per_request(x)
    if a <= 0:
        return math.inf
    H = x.hours_per_month * x.hosting_per_hour
    F = maintenance_monthly(x) + one_off_cost(x) / x.horizon_months
    k = 1.0 / instance_capacity_per_month(x)
    n = int(x.min_instances)
    r = (n * H + F) / a
    if instances_needed(x, r) <= n:
        return r
    if k * H >= a:
        return math.inf  # past the minimum, every extra instance loses money
    n = max(n, int(math.floor(k * F / (a - k * H))))
    for _ in range(1000):  # from the continuous solution this takes one or two steps
        r = (n * H + F) / a
        if instances_needed(x, r) <= n:
            return r
        n += 1
    return math.inf  # pragma: no cover - unreachable: the loop converges in a few steps


def cost_per_1k_requests(x: CostInputs) -> dict[str, float]:
    """$ per 1,000 requests: teacher only (1000 * c), hybrid (1000 * hybrid monthly / R), and the
    hybrid with the one-off cost amortised over the horizon. inf for the hybrid at zero traffic
    (fixed costs and nothing to spread them over)."""
    r = x.requests_per_month
    amortised = hybrid_monthly(x) + one_off_cost(x) / x.horizon_months
    return {
        "teacher_only": 1000 * teacher_cost_per_request(x),
        "hybrid": 1000 * hybrid_monthly(x) / r if r > 0 else math.inf,
        "hybrid_with_one_off": 1000 * amortised / r if r > 0 else math.inf,
    }


# --- the verdict --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    verdict: str
    """One of VERDICTS: "distill", "borderline", "keep the API"."""
    reasons: list[str]


def _usd(v: float) -> str:
    if not math.isfinite(v):
        return "never"
    return f"-${-v:,.0f}" if v < 0 else (f"${v:,.0f}" if abs(v) >= 100 else f"${v:,.2f}")


def _months(v: float) -> str:
    return "never" if not math.isfinite(v) else f"{v:.1f} months"


def verdict(x: CostInputs, *, fast_payback_share: float = FAST_PAYBACK_SHARE,
            min_savings_share: float = MIN_SAVINGS_SHARE) -> Verdict:
    """'keep the API' when the hybrid saves nothing or does not pay back within the horizon;
    'distill' when it pays back within `fast_payback_share` of the horizon AND removes at least
    `min_savings_share` of the teacher bill; 'borderline' in between. The reasons quote the
    figures that decided it."""
    t, h = teacher_only_monthly(x), hybrid_monthly(x)
    s, p, share = monthly_savings(x), payback_months(x), savings_share(x)
    one_off, horizon = one_off_cost(x), x.horizon_months
    host, maint = student_hosting_monthly(x), maintenance_monthly(x)
    fast = fast_payback_share * horizon
    reasons: list[str] = []

    if t <= 0:
        v = "keep the API"
        reasons.append("there is no teacher bill to cut (no traffic, or a teacher that costs nothing)"
                       f"; the hybrid would still cost {_usd(h)} a month")
    elif s <= 0:
        v = "keep the API"
        reasons.append(
            f"the hybrid costs {_usd(h)} a month, {_usd(-s)} more than the teacher alone "
            f"({_usd(t)}): student hosting {_usd(host)} + maintenance {_usd(maint)} outweigh the "
            f"{1 - x.teacher_share:.0%} of the teacher bill it removes")
    elif p > horizon:
        v = "keep the API"
        reasons.append(f"payback takes {_months(p)}, longer than the {horizon:g}-month horizon "
                       f"({_usd(one_off)} one-off against {_usd(s)} saved a month)")
    elif p <= fast and share >= min_savings_share:
        v = "distill"
        reasons.append(f"the one-off {_usd(one_off)} is back in {_months(p)}, within "
                       f"{fast:g} months ({fast_payback_share:.0%} of the {horizon:g}-month horizon)")
        reasons.append(f"the hybrid removes {share:.0%} of the teacher bill "
                       f"({_usd(s)} of {_usd(t)} a month; at least {min_savings_share:.0%} wanted)")
    else:
        v = "borderline"
        reasons.append(f"payback in {_months(p)}: within the {horizon:g}-month horizon"
                       + (f" but not within {fast:g} months" if p > fast else ""))
        if share < min_savings_share:
            reasons.append(f"the hybrid removes only {share:.0%} of the teacher bill "
                           f"({_usd(s)} of {_usd(t)} a month; {min_savings_share:.0%} wanted): a "
                           "modest rise in hosting, maintenance or teacher share would erase it")
        else:
            reasons.append(f"the hybrid removes {share:.0%} of the teacher bill ({_usd(s)} a month)")

    if t > 0:
        net = net_over_horizon(x)
        reasons.append(f"over {horizon:g} months distilling {'saves' if net >= 0 else 'loses'} "
                       f"{_usd(abs(net))} net of the one-off cost")
        be = break_even_requests_per_month(x)
        if math.isfinite(be):
            ratio = x.requests_per_month / be if be > 0 else math.inf
            reasons.append(
                f"break-even volume (one-off amortised over {horizon:g} months): {be:,.0f} "
                f"requests/month = {_usd(be * teacher_cost_per_request(x))} of teacher spend; "
                f"traffic is {ratio:.2g}x that")
        else:
            reasons.append("no traffic volume breaks even with these prices and costs")
    if x.teacher_share >= 1.0:
        reasons.append("teacher_share is 1.0: every request still goes to the teacher, so the "
                       "student only adds cost")
    if x.teacher_latency_ms and x.student_latency_ms:
        reasons.append(f"not priced: the student answers in {x.student_latency_ms:g} ms (p50) "
                       f"against the teacher's {x.teacher_latency_ms:g} ms")
    return Verdict(v, reasons)


def summarize(x: CostInputs) -> dict[str, Any]:
    """All the figures, the verdict and its reasons, as plain data (inf stays a float here)."""
    vd = verdict(x)
    be = break_even_requests_per_month(x)
    return {
        "inputs": {k: v for k, v in asdict(x).items() if k != "notes"},
        "teacher_cost_per_request": teacher_cost_per_request(x),
        "teacher_only_monthly": teacher_only_monthly(x),
        "student_instances": instances_needed(x),
        "student_hosting_monthly": student_hosting_monthly(x),
        "maintenance_monthly": maintenance_monthly(x),
        "teacher_share_monthly": x.teacher_share * teacher_only_monthly(x),
        "hybrid_monthly": hybrid_monthly(x),
        "cost_per_1k_requests": cost_per_1k_requests(x),
        "one_off_cost": one_off_cost(x),
        "monthly_savings": monthly_savings(x),
        "savings_share": savings_share(x),
        "payback_months": payback_months(x),
        "net_over_horizon": net_over_horizon(x),
        "break_even_requests_per_month": be,
        "break_even_teacher_spend_monthly": be * teacher_cost_per_request(x) if math.isfinite(be) else math.inf,
        "verdict": vd.verdict,
        "reasons": vd.reasons,
        "notes": list(x.notes),
    }


# --- the one function that reads files -------------------------------------------------------------
"""In the run directory; its top-level `teacher_share` (0..1) is the hybrid's escalation rate."""


def cost_inputs_from_run(run_dir: str | Path, **overrides: Any) -> CostInputs:
    """CostInputs for a run directory; `overrides` (None values ignored) win over what is read.

    Reads `report.json` (student throughput_per_s, teacher and student p50 latency),
    `potstill.db` (average input/output tokens per teacher call over the calls that recorded
    tokens, preferring the report's teacher identity; labelling spend = every recorded call's
    cost), `spec.resolved.json` if present (teacher price_in/price_out) and `calibration.json` if
    present (teacher_share). `notes` says where each of those figures came from, and which fell
    back to a default. Raises FileNotFoundError naming report.json or potstill.db when missing.
    """

    run = RunPaths(Path(run_dir))
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - ({f.name for f in fields(CostInputs)} - {"notes"}))
    if unknown:
        raise TypeError(f"unknown cost input(s): {', '.join(unknown)}")
    d = CostInputs()
    got: dict[str, Any] = {}
    src: dict[str, str] = {}  # field -> where its value came from, when not a plain default

    # report.json: throughput and latencies
    if not run.report_json.exists():
        raise MissingOutput(f"{run.report_json} not found: run `potstill eval` (or `potstill run`) first")
    try:
        report = json.loads(run.report_json.read_text())
    except json.JSONDecodeError as e:
        raise PotstillError(f"{run.report_json} is not valid JSON: {e}") from None
    models = report.get("models") or {}
    student, teacher = models.get("student") or {}, models.get("teacher") or {}
    if student.get("throughput_per_s"):
        got["student_throughput_per_s"] = float(student["throughput_per_s"])
        src["student_throughput_per_s"] = (f"{run.report_json.name}, batched on the machine that "
                                           "ran `potstill eval`")
    else:
        src["student_throughput_per_s"] = f"default: {run.report_json.name} has no student throughput"
    if student.get("latency_ms_p50"):
        got["student_latency_ms"] = float(student["latency_ms_p50"])
    if teacher.get("latency_ms_p50"):
        got["teacher_latency_ms"] = float(teacher["latency_ms_p50"])

    # potstill.db: tokens per call and what the teacher cost so far
    from .db import database_url

    if database_url():  # the shared store (PostgreSQL): the same figures through the Store
        from .store import Store

        with Store(run.db) as st:
            n_all, spent = st.spend()["calls"], st.spend()["cost_usd"]
            n_tok, avg_in, avg_out = st.token_stats(teacher.get("identity"))
            if not n_tok:
                n_tok, avg_in, avg_out = st.token_stats()
    elif not run.db.exists():
        raise MissingOutput(f"{run.db} not found: the teacher-call store is written by `potstill label`")
    else:
        n_all, spent, n_tok, avg_in, avg_out = _sqlite_call_stats(run.db, teacher.get("identity"))
    got["labelling_usd"] = float(spent)
    src["labelling_usd"] = f"sum over the {n_all} teacher calls in {run.db.name} (labelling and evaluation)"
    if n_tok:
        got["tokens_in"], got["tokens_out"] = float(avg_in), float(avg_out)
        src["tokens_in"] = f"averages over {n_tok} teacher calls in {run.db.name}"
    else:
        src["tokens_in"] = (f"default: no teacher call in {run.db.name} recorded tokens "
                            "(a local teacher?); pass --tokens-in/--tokens-out")

    # spec.resolved.json: the teacher's prices
    kind, pin, pout = None, 0.0, 0.0
    if run.spec.exists():
        try:
            t = json.loads(run.spec.read_text()).get("teacher") or {}
            kind, pin, pout = t.get("kind"), float(t.get("price_in") or 0), float(t.get("price_out") or 0)
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            pass
    if pin > 0 or pout > 0:
        got["price_in"], got["price_out"] = pin, pout
        src["price_in"] = f"$ per million tokens from {run.spec.name}"
    else:
        why = (f"the run's teacher (kind {kind}) has no price" if kind
               else f"no teacher prices in {run.spec.name}")
        src["price_in"] = f"default: {why}; pass --teacher-price-in/--teacher-price-out"

    # calibration.json: the hybrid's teacher share
    cal = run.root / CALIBRATION_JSON
    if cal.exists():
        try:
            doc = json.loads(cal.read_text())
            # `potstill calibrate` writes the chosen row under operating_point; the share that
            # counts out-of-scope traffic too is what the teacher will really see
            op = doc.get("operating_point") or {}
            share = op.get("teacher_share_with_oos", op.get("teacher_share", doc.get("teacher_share")))
        except (json.JSONDecodeError, AttributeError) as e:
            raise PotstillError(f"{cal} is not a JSON object with a teacher_share: {e}") from None
        if share is None:
            src["teacher_share"] = f"default: {cal.name} has no teacher_share"
        else:
            try:
                got["teacher_share"] = float(share)
            except (TypeError, ValueError):
                got["teacher_share"] = math.nan
            if not 0.0 <= got["teacher_share"] <= 1.0:
                raise PotstillError(f"{cal}: teacher_share must be a number within 0..1, got {share!r}")
            src["teacher_share"] = cal.name
    else:
        src["teacher_share"] = f"default: no {cal.name} in the run directory; pass --teacher-share"

    got.update(overrides)
    x = replace(d, **got)
    groups = {"student_throughput_per_s": ("student_throughput_per_s",), "labelling_usd": ("labelling_usd",),
              "tokens_in": ("tokens_in", "tokens_out"), "price_in": ("price_in", "price_out"),
              "teacher_share": ("teacher_share",)}
    notes = []
    for key, names in groups.items():
        if all(n in overrides for n in names):
            continue  # all given: nothing to say
        vals = ", ".join(f"{n} = {_num(getattr(x, n))}" + (" (given)" if n in overrides else "")
                         for n in names)
        notes.append(f"{vals}: {src[key]}")
    return replace(x, notes=tuple(notes))


def _num(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:.6g}"


def _sqlite_call_stats(db: Path, identity: str | None):
    """(calls, dollars, calls with tokens, mean tokens in, mean tokens out) from a run's SQLite
    store, read-only."""
    con = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        try:
            n_all, spent = con.execute("SELECT COUNT(*), COALESCE(SUM(cost_usd), 0) FROM calls").fetchone()
            tok_q = ("SELECT COUNT(*), AVG(input_tokens), AVG(output_tokens) FROM calls "
                     "WHERE (input_tokens > 0 OR output_tokens > 0)")
            n_tok, avg_in, avg_out = con.execute(tok_q + " AND teacher = ?", (identity,)).fetchone()
            if not n_tok:
                n_tok, avg_in, avg_out = con.execute(tok_q).fetchone()
        except sqlite3.DatabaseError as e:
            raise PotstillError(f"{db} is not a potstill store (no readable calls table): {e}") from None
    finally:
        con.close()
    return n_all, spent, n_tok, avg_in, avg_out


def hosting_cost_per_1k(x: CostInputs, throughput_per_s: float) -> float:
    """$ per 1,000 requests of a model served on your own instances: the cost model's hosting for
    `x.requests_per_month` at this throughput (min_instances, peak sizing) / volume x 1000."""
    if x.requests_per_month <= 0:
        return math.inf
    return 1000 * student_hosting_monthly(replace(x, student_throughput_per_s=throughput_per_s)) / x.requests_per_month
