"""Fine-tune, distill, or keep the teacher? The verdict on a run's measured accuracies.

Pure functions. `verdict` reads the teacher's, the distilled student's and the gold-only
baseline's accuracy on one split of `n` rows and says which to deploy, with the reason and the
numbers behind it; `teacher_guard` is the early check (validation split, before or after
distilling): is the teacher clearly better than a model of the student's size fine-tuned on the
same gold labels? When it is not, distilling it cannot beat fine-tuning, and the run should say so.

"Clearly" means by more than the noise margin of the split: the half-width of a ~95% interval on
the difference of two accuracies near p measured on the same n rows, z * sqrt(2 p (1 - p) / n)
(binomial standard errors, treated as independent: conservative for models whose errors
correlate).
"""

from __future__ import annotations

import math
from typing import Any

KEEP_SHARE = 0.98
"""A student within this share of the teacher's accuracy (or within the noise margin) is good
enough to replace it: the share the project's own goals ask of a distilled student."""


def noise_margin(p: float, n: int, z: float = 1.96) -> float:
    """Half-width of a ~95% interval on the difference of two accuracies near `p` on `n` rows."""
    if n <= 0:
        return math.inf
    p = min(max(p, 0.0), 1.0)
    return z * math.sqrt(2 * p * (1 - p) / n)


def _pct(x: float) -> str:
    return f"{x:.2%}"


def teacher_guard(teacher: float | None, baseline: float | None, n: int,
                  split: str = "validation") -> dict[str, Any] | None:
    """None when the teacher is clearly better than the gold-only baseline (or either is
    unknown); else {"warning": str, numbers}. `teacher`, `baseline`: accuracies on `n` rows."""
    if teacher is None or baseline is None or n <= 0:
        return None
    margin = noise_margin(max(teacher, baseline), n)
    gap = teacher - baseline
    if gap > margin:
        return None
    how = "weaker than" if gap < -margin else "not clearly better than"
    return {"warning": (f"the teacher ({_pct(teacher)} on {split}) is {how} the student-size model "
                        f"fine-tuned on your gold labels ({_pct(baseline)}; noise margin ±{_pct(margin)} "
                        f"on {n} rows): distilling it cannot beat fine-tuning. Fine-tune the small "
                        "model, or fix the teacher (train it longer, give it more gold, or pick a "
                        "stronger one)."),
            "teacher": teacher, "baseline": baseline, "gap": round(gap, 4),
            "noise_margin": round(margin, 4), "rows": n, "split": split}


def verdict(teacher: float, student: float | None, baseline: float | None, n: int, *,
            split: str = "test", keep_share: float = KEEP_SHARE) -> dict[str, Any]:
    """{"deploy": "fine-tune" | "distill" | "teacher", "reason": str, numbers}.

    - the teacher not clearly better than the baseline: fine-tune (unless the student still beats
      the baseline by more than noise: then distill);
    - else the student within tolerance of the teacher (max of the noise margin and
      (1 - keep_share) x teacher) and not clearly below the baseline: distill;
    - else the baseline within tolerance of the teacher: fine-tune;
    - else: keep the teacher (no small model comes close enough).
    """
    ref = max(x for x in (teacher, student, baseline) if x is not None)
    margin = noise_margin(ref, n)
    tol = max(margin, (1.0 - keep_share) * teacher)
    nums: dict[str, Any] = {"teacher": teacher, "student": student, "baseline": baseline,
                            "rows": n, "split": split, "noise_margin": round(margin, 4),
                            "tolerance": round(tol, 4),
                            "student_over_teacher": round(student / teacher, 4) if student is not None and teacher else None}
    S = f"student {_pct(student)}" if student is not None else None
    B = f"gold-only baseline {_pct(baseline)}" if baseline is not None else None
    T = f"teacher {_pct(teacher)}"
    on = f"on {n} {split} rows, noise margin ±{_pct(margin)}"

    def out(deploy: str, reason: str) -> dict[str, Any]:
        return {"deploy": deploy, "reason": reason, **nums}

    if baseline is not None and teacher - baseline <= margin:
        if student is not None and student - baseline > margin:
            return out("distill", f"the teacher is not clearly better than fine-tuning ({T}, {B}), yet "
                       f"distilling it still beats fine-tuning ({S}, {on}): deploy the student")
        weaker = "weaker than" if baseline - teacher > margin else "no better than"
        return out("fine-tune", f"the teacher is {weaker} fine-tuning the small model on your gold labels "
                   f"({T}, {B}" + (f", {S}" if S else "") + f"; {on}): fine-tune, or fix the teacher")
    if student is not None and teacher - student <= tol and (baseline is None or baseline - student <= margin):
        return out("distill", f"the distilled student keeps {student / max(teacher, 1e-9):.1%} of the teacher's "
                   f"accuracy ({S}, {T}" + (f", {B}" if B else "") + f"; {on}): deploy the student, "
                   "with the teacher as fallback for the inputs it doubts")
    if baseline is not None and teacher - baseline <= tol:
        return out("fine-tune", f"the small model fine-tuned on gold comes within {_pct(teacher - baseline)} of "
                   f"the teacher and beats the distilled student ({B}, {T}" + (f", {S}" if S else "")
                   + f"; {on}): fine-tune")
    best_small = max((x for x in (student, baseline) if x is not None), default=None)
    lag = f"the best small model trails it by {_pct(teacher - best_small)}" if best_small is not None else \
        "no small model was measured"
    return out("teacher", f"the teacher is clearly more accurate ({T}" + (f", {S}" if S else "")
               + (f", {B}" if B else "") + f"; {on}; {lag}): keep the teacher, or route to it "
               "(`potstill calibrate`), or distill with more data or a longer schedule")


def verdict_lines(v: dict[str, Any] | None) -> list[str]:
    """Markdown lines for a report's first screen."""
    if not v:
        return []
    return [f"**Verdict: {v['deploy']}**: {v['reason']}."]


def with_verdict(markdown: str, v: dict[str, Any] | None, nxt: dict[str, Any] | None = None) -> str:
    """report.md with the verdict (fine-tune, distill or keep the teacher) right under its title,
    then the "what next" block (`next_steps`) when given."""
    title, _, rest = markdown.partition("\n")
    block = next_steps_lines(nxt)
    return "\n".join([title, "", *verdict_lines(v), *([""] + block if block else []), rest])


DECISIONS = {
    "distill": "deploy the student, with the teacher as safety net for the inputs it doubts",
    "teacher": "keep the teacher: no small model comes close enough yet",
    "fine-tune": "fine-tune instead: the small model trained on your gold labels does as well",
}


def next_steps(report: dict[str, Any], run_dir: str, spec: str | None = None, *,
               calibrated: bool = False) -> dict[str, Any] | None:
    """The "what next" block: the decision from the verdict, the numbers behind it, and the next
    commands, each one that can run on this run directory (`spec`: the spec file, when known).
    None when the report has no verdict."""
    v = report.get("verdict")
    if not v:
        return None
    metric = report.get("metric", "accuracy")
    nums = [f"teacher {_pct(v['teacher'])}"]
    if v.get("student") is not None:
        nums.append(f"student {_pct(v['student'])}")
    if v.get("baseline") is not None:
        nums.append(f"gold-only baseline {_pct(v['baseline'])}")
    speed = (report.get("summary") or {}).get("latency_speedup")
    because = (f"{metric} on {v['rows']} {v.get('split', 'test')} rows: " + ", ".join(nums)
               + f" (noise margin ±{_pct(v['noise_margin'])})"
               + (f"; the student answers {speed}x faster (p50)" if speed else ""))
    if report.get("baseline_skipped"):
        because += f"; no baseline: {report['baseline_skipped'].split(';')[0]}"
    spec_arg = spec or "SPEC"
    cal = [] if calibrated else [f"potstill calibrate {run_dir} --teacher-share 0.10"]
    if v["deploy"] == "distill":
        cmds = cal + [f"potstill serve {run_dir}"]
    elif v["deploy"] == "fine-tune":
        cmds = [f"potstill calibrate {run_dir} --model baseline", f"potstill serve {run_dir} --model baseline"]
    else:
        cmds = cal + [f"potstill serve {run_dir}   # route: the student answers what it is sure of",
                      f"potstill run {spec_arg} --set data.augment=2   # or more inputs: data.unlabelled, "
                      "potstill synth"]
    return {"decision": DECISIONS.get(v["deploy"], v["deploy"]), "deploy": v["deploy"],
            "because": because, "next": cmds}


def next_steps_lines(block: dict[str, Any] | None) -> list[str]:
    """The block as plain lines for the console and report.md."""
    if not block:
        return []
    return [f"What next: {block['decision']}.", f"  because: {block['because']}.",
            *[f"  next: {c}" for c in block["next"]]]
