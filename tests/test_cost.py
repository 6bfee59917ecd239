"""The cost and break-even model: every formula against hand-computed numbers, the edge cases, the
rules of thumb as a consequence of the documented defaults, the run-directory loader and the
`cost` command."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from potstill import cost
from potstill.cost import CostInputs
from potstill.cost_cli import cost_command
from potstill.store import Store

# A worked case with round numbers; the hand arithmetic is in the comments of each test.
X = CostInputs(
    requests_per_month=10_000_000, price_in=2.0, price_out=8.0, tokens_in=400, tokens_out=50,
    teacher_share=0.2, hosting_per_hour=1.0, student_throughput_per_s=10, utilisation=0.5,
    peak_to_average=2.0, min_instances=1, hours_per_month=730, labelling_usd=500,
    training_hours=10, training_hour_usd=3, engineering_weeks=2, engineering_week_usd=4000,
    maintenance_hours_per_month=10, maintenance_hour_usd=100, horizon_months=12,
)


# --- formulas --------------------------------------------------------------------------------------
def test_teacher_cost_per_request_and_teacher_only_monthly():
    # (400 * 2 + 50 * 8) / 1e6 = (800 + 400) / 1e6 = 0.0012 $ per request
    assert cost.teacher_cost_per_request(X) == pytest.approx(0.0012)
    # 10,000,000 * 0.0012 = 12,000 $ a month
    assert cost.teacher_only_monthly(X) == pytest.approx(12_000)


def test_student_hosting_sizes_for_the_peak():
    # one instance carries 10 req/s * 0.5 * 730 h * 3600 s / 2 (peak) = 6,570,000 requests a month
    assert cost.instance_capacity_per_month(X) == pytest.approx(6_570_000)
    # 10,000,000 / 6,570,000 = 1.52 -> ceil 2 instances; 2 * 730 h * $1 = $1,460
    assert cost.instances_needed(X) == 2
    assert cost.student_hosting_monthly(X) == pytest.approx(1_460)
    # sized for the average instead (peak 1): 10M / 13.14M = 0.76 -> 1 instance -> $730
    assert cost.student_hosting_monthly(replace(X, peak_to_average=1.0)) == pytest.approx(730)
    # the minimum wins when traffic is low: 1,000 requests -> ceil(0.00015) = 1, but min 3 -> 3 * 730
    assert cost.student_hosting_monthly(replace(X, requests_per_month=1000, min_instances=3)) == pytest.approx(2_190)
    # exactly at capacity: 6,570,000 requests -> 1.0 -> 1 instance (no float round-up to 2)
    assert cost.instances_needed(replace(X, requests_per_month=6_570_000)) == 1


def test_hybrid_one_off_savings_payback():
    # maintenance 10 h * $100 = $1,000
    assert cost.maintenance_monthly(X) == pytest.approx(1_000)
    # hybrid = hosting 1,460 + 0.2 * 12,000 (= 2,400) + maintenance 1,000 = 4,860
    assert cost.hybrid_monthly(X) == pytest.approx(4_860)
    # one-off = labelling 500 + 10 h * $3 (= 30) + 2 weeks * $4,000 (= 8,000) = 8,530
    assert cost.one_off_cost(X) == pytest.approx(8_530)
    # savings = 12,000 - 4,860 = 7,140 a month; 7,140 / 12,000 = 0.595 of the bill
    assert cost.monthly_savings(X) == pytest.approx(7_140)
    assert cost.savings_share(X) == pytest.approx(0.595)
    # payback = 8,530 / 7,140 = 1.1947 months
    assert cost.payback_months(X) == pytest.approx(8_530 / 7_140)
    assert cost.payback_months(X) == pytest.approx(1.19468, abs=1e-5)
    # over 12 months: 12 * 7,140 - 8,530 = 85,680 - 8,530 = 77,150
    assert cost.net_over_horizon(X) == pytest.approx(77_150)


def test_cost_per_1k_requests():
    per = cost.cost_per_1k_requests(X)
    # teacher: 1000 * 0.0012 = $1.20
    assert per["teacher_only"] == pytest.approx(1.2)
    # hybrid: 1000 * 4,860 / 10,000,000 = $0.486
    assert per["hybrid"] == pytest.approx(0.486)
    # with the one-off over 12 months: 1000 * (4,860 + 8,530 / 12) / 1e7 = (4,860 + 710.83) / 1e4 = 0.55708
    assert per["hybrid_with_one_off"] == pytest.approx(0.5570833, abs=1e-6)


def test_break_even_volume_at_the_minimum_instances():
    # a = (1 - 0.2) * 0.0012 = 0.00096 saved per request moved to the student
    # F = maintenance 1,000 + one-off 8,530 / 12 (= 710.833) = 1,710.833; one instance H = $730
    # n = 1: R = (730 + 1,710.833) / 0.00096 = 2,440.833 / 0.00096 = 2,542,534.72
    # and 2,542,534.72 / 6,570,000 = 0.39 -> one instance: that is the answer
    be = cost.break_even_requests_per_month(X)
    assert be == pytest.approx(2_542_534.72, abs=0.01)
    _assert_is_break_even(X, be)


# A case built for stepping over instance counts: c = 1000 tokens * $1/M = $0.001 a request, all
# of it saved (teacher_share 0); one instance = 1 req/s * 1 * 1000 h * 3600 s = 3.6M requests a
# month for H = 1000 h * $1 = $1,000; no one-off; F = maintenance.
STEP = CostInputs(
    price_in=1.0, price_out=0.0, tokens_in=1000, tokens_out=0, teacher_share=0.0,
    hosting_per_hour=1.0, student_throughput_per_s=1.0, utilisation=1.0, peak_to_average=1.0,
    min_instances=1, hours_per_month=1000, labelling_usd=0, training_hours=0, engineering_weeks=0,
    maintenance_hours_per_month=50, maintenance_hour_usd=100,  # F = $5,000 a month
)


def test_break_even_steps_over_instance_counts():
    # n = 1: R = (1,000 + 5,000) / 0.001 = 6,000,000 -> 6 / 3.6 = 1.67 -> needs 2 instances: no
    # n = 2: R = (2,000 + 5,000) / 0.001 = 7,000,000 -> 7 / 3.6 = 1.94 -> 2 instances: yes
    # check: teacher 7M * 0.001 = $7,000 = hybrid 2 * 1,000 + 0 + 5,000
    assert cost.break_even_requests_per_month(STEP) == pytest.approx(7_000_000)
    _assert_is_break_even(STEP, 7_000_000)
    # min_instances 0 starts lower and lands on the same answer:
    # n = 0: R = 5,000 / 0.001 = 5M needs 2; continuous n = kF / (a - kH)
    #   = (5,000 / 3.6M) / (0.001 - 1,000 / 3.6M) = 0.0013889 / 0.00072222 = 1.92 -> start at 1 -> 2 -> 7M
    assert cost.break_even_requests_per_month(replace(STEP, min_instances=0)) == pytest.approx(7_000_000)


def test_break_even_jumps_to_the_continuous_solution():
    # F = 500 h * $100 = $50,000: n from kF / (a - kH) = 0.013889 / 0.00072222 = 19.23 -> 19
    # n = 19: R = (19,000 + 50,000) / 0.001 = 69M -> 69 / 3.6 = 19.17 -> needs 20: no
    # n = 20: R = (20,000 + 50,000) / 0.001 = 70M -> 19.44 -> 20: yes
    x = replace(STEP, maintenance_hours_per_month=500)
    assert cost.break_even_requests_per_month(x) == pytest.approx(70_000_000)
    _assert_is_break_even(x, 70_000_000)


def test_break_even_never_when_an_instance_costs_more_than_it_saves():
    # hosting $4/h -> H = $4,000 per 3.6M requests = $0.00111 a request > $0.001 saved:
    # n = 1: R = 9,000 / 0.001 = 9M needs 3 instances, and each further one loses money
    x = replace(STEP, hosting_per_hour=4.0)
    assert cost.break_even_requests_per_month(x) == math.inf
    for r in (1e5, 9e6, 1e8, 1e10):
        assert cost.monthly_savings(replace(x, requests_per_month=r)) < 0


def _assert_is_break_even(x: CostInputs, r: float) -> None:
    def net(v):  # monthly savings less the amortised one-off, at volume v
        y = replace(x, requests_per_month=v)
        return cost.monthly_savings(y) - cost.one_off_cost(y) / y.horizon_months

    assert net(r) == pytest.approx(0, abs=1e-6 * max(1.0, cost.teacher_only_monthly(replace(x, requests_per_month=r))))
    assert net(r * 0.999) < 0
    assert net(r * 1.001) > 0


# --- edge cases ------------------------------------------------------------------------------------
def test_zero_traffic():
    x = replace(X, requests_per_month=0)
    # teacher 0; hybrid = min 1 instance * 730 + 0 + 1,000 = 1,730
    assert cost.teacher_only_monthly(x) == 0
    assert cost.hybrid_monthly(x) == pytest.approx(1_730)
    assert cost.monthly_savings(x) == pytest.approx(-1_730)
    assert cost.payback_months(x) == math.inf
    assert cost.savings_share(x) == 0
    per = cost.cost_per_1k_requests(x)
    assert per["teacher_only"] == pytest.approx(1.2) and per["hybrid"] == math.inf
    v = cost.verdict(x)
    assert v.verdict == "keep the API" and "no teacher bill" in v.reasons[0]
    # no always-on instance: nothing is hosted
    assert cost.student_hosting_monthly(replace(x, min_instances=0)) == 0


def test_teacher_share_one_never_pays():
    x = replace(X, teacher_share=1.0)
    # savings = 12,000 - (1,460 + 12,000 + 1,000) = -2,460
    assert cost.monthly_savings(x) == pytest.approx(-2_460)
    assert cost.payback_months(x) == math.inf
    assert cost.break_even_requests_per_month(x) == math.inf
    for r in (1e3, 1e6, 1e8, 1e10):
        y = replace(x, requests_per_month=r)
        assert cost.monthly_savings(y) < 0 and cost.verdict(y).verdict == "keep the API"
    assert any("teacher_share is 1.0" in r for r in cost.verdict(x).reasons)


def test_zero_savings_payback_is_inf():
    # numbers exact in binary: $1 a request (1e6 tokens at $1/M), 1,000 requests -> teacher $1,000;
    # hybrid = 1 instance * 100 h * $1 (= 100) + 0.5 * 1,000 (= 500) + 400 h * $1 (= 400) = 1,000
    x = replace(X, requests_per_month=1000, tokens_in=1_000_000, tokens_out=0, price_in=1.0,
                teacher_share=0.5, hours_per_month=100, min_instances=1,
                maintenance_hours_per_month=400, maintenance_hour_usd=1.0)
    assert cost.teacher_only_monthly(x) == 1000 and cost.hybrid_monthly(x) == 1000
    assert cost.monthly_savings(x) == 0
    assert cost.payback_months(x) == math.inf
    assert cost.verdict(x).verdict == "keep the API"


def test_no_one_off_pays_back_at_once_and_free_teacher_never_breaks_even():
    x = replace(X, labelling_usd=0, training_hours=0, engineering_weeks=0)
    assert cost.payback_months(x) == 0
    free = replace(X, price_in=0, price_out=0)
    assert cost.break_even_requests_per_month(free) == math.inf
    assert cost.verdict(free).verdict == "keep the API"


@pytest.mark.parametrize("field,value", [
    ("teacher_share", 1.5), ("teacher_share", -0.1), ("utilisation", 0.0), ("requests_per_month", -1),
    ("student_throughput_per_s", 0.0), ("horizon_months", 0), ("peak_to_average", 0.5),
    ("min_instances", 1.5), ("price_in", math.inf),
])
def test_invalid_inputs_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        CostInputs(**{field: value})


# --- verdict ---------------------------------------------------------------------------------------
def test_verdict_on_the_worked_case():
    v = cost.verdict(X)
    # payback 1.19 months <= 3 (a quarter of 12) and savings 59.5% >= 50%
    assert v.verdict == "distill"
    assert "1.2 months" in v.reasons[0]
    assert ("59%" in v.reasons[1] or "60%" in v.reasons[1]) and "$7,140 of $12,000" in v.reasons[1]
    assert any("2,542,535 requests/month" in r for r in v.reasons)


def test_verdict_borderline_and_keep_say_why():
    # payback within 12 months but slower than 3: 20 engineering weeks make the one-off
    # 20 * $4,000 + 530 = 80,530 -> 80,530 / 7,140 = 11.3 months
    slow = replace(X, engineering_weeks=20)
    v = cost.verdict(slow)
    assert v.verdict == "borderline" and "11.3 months" in v.reasons[0] and "not within 3 months" in v.reasons[0]
    # fast payback but only a thin saving: teacher share 0.55 -> hybrid 1,460 + 6,600 + 1,000 = 9,060,
    # savings 2,940 = 24.5% of 12,000; payback 8,530 / 2,940 = 2.9 months
    thin = replace(X, teacher_share=0.55)
    v = cost.verdict(thin)
    assert v.verdict == "borderline" and any("only 24%" in r or "only 25%" in r for r in v.reasons)
    # 40 weeks -> one-off 160,530 / 7,140 = 22.5 months > 12
    v = cost.verdict(replace(X, engineering_weeks=40))
    assert v.verdict == "keep the API" and "22.5 months" in v.reasons[0]


def test_latency_is_a_reason_but_not_priced():
    y = replace(X, teacher_latency_ms=800, student_latency_ms=4)
    assert cost.verdict(y).verdict == cost.verdict(X).verdict
    assert any("4 ms" in r and "800 ms" in r for r in cost.verdict(y).reasons)


# --- the rules of thumb come out of the defaults ------------------------------------------------
def _at_spend(spend: float, base: CostInputs = CostInputs()) -> CostInputs:
    return replace(base, requests_per_month=spend / cost.teacher_cost_per_request(base))


def test_rules_of_thumb_come_out_of_the_defaults():
    """"Below ~$5K a month of API spend distillation rarely pays; above ~$50K it almost always does."

    Under the defaults (hosting 2 x $0.50/h x 730 h = $730 + maintenance 16 h x $125 = $2,000 a
    month; one-off $150 + 8 h x $2 + 4 weeks x $5,000 = $20,166; teacher share 0.1; 12 months):
      hybrid = 2,730 + 0.1 T, savings = 0.9 T - 2,730
      keep the API below payback 12 months:  0.9 T - 2,730 = 20,166 / 12 = 1,680.5 -> T = $4,900.56
      distill from payback 3 months:         0.9 T - 2,730 = 20,166 / 3  = 6,722   -> T = $10,502.22
      (savings there are 6,722 / 10,502 = 64% of the bill, above the 50% wanted)
    So the crossover is ~$4.9K (keep -> borderline) and ~$10.5K (borderline -> distill).
    """
    seen = []
    for spend in range(1_000, 100_001, 100):
        seen.append((spend, cost.verdict(_at_spend(spend)).verdict))
    assert dict(seen)[2_000] == "keep the API"
    assert dict(seen)[60_000] == "distill"
    # the verdict only ever improves with spend: keep -> borderline -> distill
    order = [cost.VERDICTS[::-1].index(v) for _, v in seen]
    assert order == sorted(order)
    first = {v: next(s for s, w in seen if w == v) for v in ("borderline", "distill")}
    assert first["borderline"] == 4_900 + 100 and first["distill"] == 10_500 + 100
    # the exact crossovers, from the model
    assert cost.verdict(_at_spend(4_900.55)).verdict == "keep the API"
    assert cost.verdict(_at_spend(4_900.57)).verdict == "borderline"
    assert cost.verdict(_at_spend(10_502.2)).verdict == "borderline"
    assert cost.verdict(_at_spend(10_502.3)).verdict == "distill"
    # the keep/borderline line is the break-even volume with the one-off amortised over 12 months
    d = CostInputs()
    be_spend = cost.break_even_requests_per_month(d) * cost.teacher_cost_per_request(d)
    assert be_spend == pytest.approx(4_900.56, abs=0.01)
    # and the seeds' rules of thumb hold
    assert 3_000 < first["borderline"] < 7_000 and first["distill"] < 50_000


def test_at_50k_it_pays_even_when_the_defaults_are_too_kind():
    # 4x the engineering (16 weeks), 2x maintenance, 2x hosting, 3x the teacher share:
    # savings = 0.7 * 50,000 - (1,460 + 4,000) = 29,540; one-off 80,166 -> payback 2.7 months
    d = CostInputs()
    worse = replace(d, engineering_weeks=16, maintenance_hours_per_month=32, hosting_per_hour=1.0,
                    teacher_share=0.3)
    x = _at_spend(50_000, worse)
    assert cost.monthly_savings(x) == pytest.approx(29_540)
    assert cost.payback_months(x) == pytest.approx(80_166 / 29_540)
    assert cost.verdict(x).verdict == "distill"
    # while at $5K even the defaults only reach borderline, and the pessimistic case says keep
    assert cost.verdict(_at_spend(5_000)).verdict == "borderline"
    assert cost.verdict(_at_spend(5_000, worse)).verdict == "keep the API"


def test_summarize_has_every_figure():
    s = cost.summarize(X)
    assert s["teacher_only_monthly"] == pytest.approx(12_000)
    assert s["hybrid_monthly"] == pytest.approx(4_860)
    assert s["student_instances"] == 2 and s["verdict"] == "distill"
    assert s["break_even_teacher_spend_monthly"] == pytest.approx(2_542_534.72 * 0.0012, abs=1e-4)
    assert "notes" not in s["inputs"] and s["inputs"]["teacher_share"] == 0.2


# --- loader ----------------------------------------------------------------------------------------
def _make_run(root: Path, *, tokens: bool = True, spec: bool = True, calibration: float | None = None) -> Path:
    run = root / "run"
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({
        "task": "t", "test_rows": 10, "labels": 3,
        "models": {
            "teacher": {"identity": "openai:gpt-4o@abc", "accuracy": 0.9, "latency_ms_p50": 650.0,
                        "throughput_per_s": None},
            "student": {"accuracy": 0.88, "latency_ms_p50": 2.5, "throughput_per_s": 250.0},
        },
        "summary": {}, "data": {"teacher_spend_usd": 0.0029},
    }))
    with Store(run / "potstill.db") as st:
        if tokens:
            # the report's teacher: tokens average (400 + 600) / 2 = 500 in, (10 + 30) / 2 = 20 out
            st.put_call("a", "openai:gpt-4o@abc", {"label": "x"}, 400, 10, 0.0011)
            st.put_call("b", "openai:gpt-4o@abc", {"label": "y"}, 600, 30, 0.0018)
            # an earlier teacher: its tokens are not averaged in, its spend counts
            st.put_call("c", "openai:old@def", {"label": "y"}, 1000, 100, 0.0035)
        else:
            st.put_call("a", "hf:teacher@abc", {"label": "x"})
    if spec:
        (run / "spec.resolved.json").write_text(json.dumps(
            {"name": "t", "teacher": {"kind": "openai", "price_in": 2.5, "price_out": 10.0}}))
    if calibration is not None:
        (run / "calibration.json").write_text(json.dumps({"teacher_share": calibration}))
    return run


def test_loader_reads_the_run(tmp_path):
    run = _make_run(tmp_path)
    x = cost.cost_inputs_from_run(run, requests_per_month=2_000_000)
    assert x.student_throughput_per_s == 250
    assert x.teacher_latency_ms == 650 and x.student_latency_ms == 2.5
    assert x.tokens_in == pytest.approx(500) and x.tokens_out == pytest.approx(20)
    # 0.0011 + 0.0018 + 0.0035 = 0.0064: everything the teacher cost so far
    assert x.labelling_usd == pytest.approx(0.0064)
    assert (x.price_in, x.price_out) == (2.5, 10.0)
    assert x.teacher_share == 0.1
    assert any("teacher_share = 0.1" in n and "no calibration.json" in n for n in x.notes)
    # (500 * 2.5 + 20 * 10) / 1e6 = (1,250 + 200) / 1e6 = 0.00145 a request
    assert cost.teacher_cost_per_request(x) == pytest.approx(0.00145)


def test_loader_reads_the_operating_point_that_calibrate_writes(tmp_path):
    run = _make_run(tmp_path)
    (run / "calibration.json").write_text(json.dumps(
        {"operating_point": {"teacher_share": 0.1, "teacher_share_with_oos": 0.125}}))
    assert cost.cost_inputs_from_run(run).teacher_share == 0.125


def test_loader_calibration_and_overrides(tmp_path):
    run = _make_run(tmp_path, calibration=0.25)
    x = cost.cost_inputs_from_run(run)
    assert x.teacher_share == 0.25
    assert any("teacher_share = 0.25: calibration.json" in n for n in x.notes)
    y = cost.cost_inputs_from_run(run, teacher_share=0.05, tokens_in=300, tokens_out=None)
    assert y.teacher_share == 0.05 and y.tokens_in == 300 and y.tokens_out == pytest.approx(20)
    assert not any(n.startswith("teacher_share") for n in y.notes)  # given: nothing to say
    assert any("tokens_in = 300 (given), tokens_out = 20" in n for n in y.notes)
    with pytest.raises(TypeError, match="bogus"):
        cost.cost_inputs_from_run(run, bogus=1)
    with pytest.raises(TypeError, match="notes"):
        cost.cost_inputs_from_run(run, notes=("x",))
    (run / "calibration.json").write_text(json.dumps({"teacher_share": 1.7}))
    with pytest.raises(ValueError, match="calibration.json"):
        cost.cost_inputs_from_run(run)


def test_loader_falls_back_for_a_local_teacher(tmp_path):
    run = _make_run(tmp_path, tokens=False, spec=False)
    x = cost.cost_inputs_from_run(run)
    d = CostInputs()
    assert (x.tokens_in, x.tokens_out, x.price_in, x.price_out) == (d.tokens_in, d.tokens_out, d.price_in, d.price_out)
    assert x.labelling_usd == 0
    joined = "\n".join(x.notes)
    assert "recorded tokens" in joined and "--teacher-price-in" in joined


def test_loader_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="report.json"):
        cost.cost_inputs_from_run(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"models": {}}))
    with pytest.raises(FileNotFoundError, match="potstill.db"):
        cost.cost_inputs_from_run(tmp_path)
    assert not (tmp_path / "potstill.db").exists()  # the loader never creates a store


# --- the command -----------------------------------------------------------------------------------
def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command("cost")(cost_command)

    @app.command("other")
    def other():  # a second command, so `cost` is a subcommand as in the real CLI
        pass

    return app


def test_command_prints_table_and_verdict(tmp_path):
    run = _make_run(tmp_path)
    r = CliRunner().invoke(_app(), ["cost", str(run), "--requests-per-month", "3000000",
                                    "--teacher-price-in", "2.5", "--teacher-price-out", "10"])
    assert r.exit_code == 0, r.output
    # teacher 3M * 0.00145 = $4,350; hybrid 730 + 435 + 2,000 = $3,165; savings $1,185
    for text in ("monthly cost", "$4,350", "$3,165", "cost per 1,000 requests", "$1.45", "one-off cost",
                 "monthly savings", "$1,185", "payback", "break-even volume", "verdict: keep the API",
                 "no calibration.json"):
        assert text in r.output, text


def test_command_json(tmp_path):
    run = _make_run(tmp_path, calibration=0.1)
    r = CliRunner().invoke(_app(), ["cost", str(run), "--requests-per-month", "30000000", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    # teacher 30M * 0.00145 = 43,500; instances: 250/s * 0.5 * 730 * 3600 / 3 = 109.5M a month -> 1, min 2
    # hybrid = 730 + 4,350 + 2,000 = 7,080; savings 36,420; one-off 0.0064 + 16 + 20,000 = 20,016.0064
    assert s["teacher_only_monthly"] == pytest.approx(43_500)
    assert s["hybrid_monthly"] == pytest.approx(7_080)
    assert s["monthly_savings"] == pytest.approx(36_420)
    assert s["one_off_cost"] == pytest.approx(20_016.0064)
    assert s["payback_months"] == pytest.approx(20_016.0064 / 36_420)
    assert s["verdict"] == "distill" and s["reasons"]
    # never-paying figures are null, not Infinity
    r = CliRunner().invoke(_app(), ["cost", str(run), "--requests-per-month", "0", "--json"])
    s = json.loads(r.output)
    assert s["payback_months"] is None and s["cost_per_1k_requests"]["hybrid"] is None


def test_command_errors_and_help(tmp_path):
    r = CliRunner().invoke(_app(), ["cost", str(tmp_path / "nope"), "--requests-per-month", "1"])
    assert r.exit_code == 2 and "report.json" in r.output
    r = CliRunner().invoke(_app(), ["cost", "--help"])
    assert r.exit_code == 0 and "break-even" in r.output and "--teacher-price-in" in r.output
