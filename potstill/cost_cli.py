"""`potstill cost RUN_DIR`: teacher-only vs hybrid costs, payback, break-even and a verdict.

Registered by the CLI as `app.command("cost")(cost_command)`; the model is in `cost.py`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .cost import CostInputs, cost_inputs_from_run, summarize

_D = CostInputs()


def cost_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (holds report.json and potstill.db).")],
    requests_per_month: Annotated[int, typer.Option(
        "--requests-per-month", min=0, help="Requests a month to serve.")],
    teacher_price_in: Annotated[Optional[float], typer.Option(
        "--teacher-price-in", min=0, help="Teacher $ per million input tokens [default: the run's spec, else 2.5].")] = None,
    teacher_price_out: Annotated[Optional[float], typer.Option(
        "--teacher-price-out", min=0, help="Teacher $ per million output tokens [default: the run's spec, else 10].")] = None,
    tokens_in: Annotated[Optional[float], typer.Option(
        "--tokens-in", min=0, help="Input tokens per request [default: average in potstill.db, else 500].")] = None,
    tokens_out: Annotated[Optional[float], typer.Option(
        "--tokens-out", min=0, help="Output tokens per request [default: average in potstill.db, else 10].")] = None,
    teacher_share: Annotated[Optional[float], typer.Option(
        "--teacher-share", min=0, max=1,
        help="Share of traffic the hybrid still sends to the teacher [default: calibration.json, else 0.1].")] = None,
    student_throughput: Annotated[Optional[float], typer.Option(
        "--student-throughput", min=0, help="Requests/s one student instance serves [default: report.json, else 100].")] = None,
    hosting_per_hour: Annotated[float, typer.Option(
        "--hosting-per-hour", min=0, help="$ per student instance-hour.")] = _D.hosting_per_hour,
    min_instances: Annotated[int, typer.Option(
        "--min-instances", min=0, help="Always-on student instances.")] = _D.min_instances,
    utilisation: Annotated[float, typer.Option(
        "--utilisation", min=0.01, max=1, help="Share of an instance's throughput planned for.")] = _D.utilisation,
    peak_to_average: Annotated[float, typer.Option(
        "--peak-to-average", min=1, help="Peak load over the monthly average; instances are sized for the peak.")] = _D.peak_to_average,
    labelling_usd: Annotated[Optional[float], typer.Option(
        "--labelling-usd", min=0, help="Teacher labelling spent, $ [default: the sum in potstill.db].")] = None,
    training_hours: Annotated[float, typer.Option(
        "--training-hours", min=0, help="Compute hours to train the student.")] = _D.training_hours,
    training_hour_usd: Annotated[float, typer.Option(
        "--training-hour-usd", min=0, help="$ per training hour.")] = _D.training_hour_usd,
    engineering_weeks: Annotated[float, typer.Option(
        "--engineering-weeks", min=0, help="Engineering weeks to put the student into production.")] = _D.engineering_weeks,
    engineering_week_usd: Annotated[float, typer.Option(
        "--engineering-week-usd", min=0, help="$ per engineering week (fully loaded).")] = _D.engineering_week_usd,
    maintenance_hours: Annotated[float, typer.Option(
        "--maintenance-hours", min=0, help="Hours a month looking after the student.")] = _D.maintenance_hours_per_month,
    maintenance_hour_usd: Annotated[float, typer.Option(
        "--maintenance-hour-usd", min=0, help="$ per maintenance hour.")] = _D.maintenance_hour_usd,
    horizon_months: Annotated[float, typer.Option(
        "--horizon-months", min=0.1, help="Months to amortise the one-off cost over; longest payback worth taking.")] = _D.horizon_months,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON (never/undefined as null).")] = False,
):
    """Cost of teacher-only vs the hybrid (student + a share of traffic to the teacher), with payback, break-even volume and a verdict: distill, borderline or keep the API.

    Reads the run's report.json (student throughput), potstill.db (tokens per teacher call, teacher spend so far), spec.resolved.json (teacher prices) and calibration.json (teacher share) when present. Options given win; figures that fell back to a default are listed under the table. Formulas and the reason for every default: docs/COST.md.

    Example: potstill cost runs/clinc150 --requests-per-month 3000000 --teacher-price-in 2.5 --teacher-price-out 10
    """
    try:
        x = cost_inputs_from_run(
            run_dir, requests_per_month=requests_per_month, price_in=teacher_price_in,
            price_out=teacher_price_out, tokens_in=tokens_in, tokens_out=tokens_out,
            teacher_share=teacher_share, student_throughput_per_s=student_throughput,
            hosting_per_hour=hosting_per_hour, min_instances=min_instances, utilisation=utilisation,
            peak_to_average=peak_to_average, labelling_usd=labelling_usd,
            training_hours=training_hours, training_hour_usd=training_hour_usd,
            engineering_weeks=engineering_weeks, engineering_week_usd=engineering_week_usd,
            maintenance_hours_per_month=maintenance_hours, maintenance_hour_usd=maintenance_hour_usd,
            horizon_months=horizon_months)
    except (FileNotFoundError, ValueError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    s = summarize(x)
    if json_out:
        typer.echo(json.dumps(_finite(s), indent=2))
        return
    _print(s)


def _finite(v: Any) -> Any:
    """inf/nan -> None, so the output is strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(u) for k, u in v.items()}
    if isinstance(v, list):
        return [_finite(u) for u in v]
    return v


def _money(v: float, cents: bool = False) -> str:
    if not math.isfinite(v):
        return "—"
    s = f"${abs(v):,.{2 if cents else 0}f}"
    return f"-{s}" if v < 0 else s


def _print(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    i = s["inputs"]
    r = i["requests_per_month"]
    per1k = s["cost_per_1k_requests"]
    t = Table(title=f"{r:,.0f} requests/month, teacher ${s['teacher_cost_per_request'] * 1000:,.3f} per 1,000")
    t.add_column("")
    t.add_column("teacher only", justify="right")
    t.add_column("hybrid", justify="right")
    t.add_row("teacher calls / month", f"{r:,.0f}", f"{r * i['teacher_share']:,.0f} ({i['teacher_share']:.0%})")
    t.add_row("student instances", "—", str(s["student_instances"]))
    t.add_row("  student hosting / month", "—", _money(s["student_hosting_monthly"]))
    t.add_row("  teacher share / month", _money(s["teacher_only_monthly"]), _money(s["teacher_share_monthly"]))
    t.add_row("  maintenance / month", "—", _money(s["maintenance_monthly"]))
    t.add_row("monthly cost", _money(s["teacher_only_monthly"]), _money(s["hybrid_monthly"]))
    t.add_row("cost per 1,000 requests", _money(per1k["teacher_only"], True), _money(per1k["hybrid"], True))
    t.add_row(f"  with one-off over {i['horizon_months']:g} months", _money(per1k["teacher_only"], True),
              _money(per1k["hybrid_with_one_off"], True))
    t.add_row("one-off cost", "—", _money(s["one_off_cost"]))
    t.add_row("monthly savings", "—", _money(s["monthly_savings"]))
    pb = s["payback_months"]
    t.add_row("payback", "—", f"{pb:.1f} months" if math.isfinite(pb) else "never")
    be = s["break_even_requests_per_month"]
    t.add_row("break-even volume", "—", f"{be:,.0f} req/month ({_money(s['break_even_teacher_spend_monthly'])} "
              "teacher spend)" if math.isfinite(be) else "none")
    c = Console()
    if not c.is_terminal:
        c = Console(width=140)
    c.print(t)
    colour = {"distill": "green", "borderline": "yellow"}.get(s["verdict"], "red")
    c.print(f"verdict: [bold {colour}]{s['verdict']}[/]")
    for reason in s["reasons"]:
        c.print(f"  - {reason}", highlight=False, soft_wrap=True)
    if s["notes"]:
        c.print("inputs:")
        for n in s["notes"]:
            c.print(f"  - {n}", highlight=False, markup=False, soft_wrap=True)
