"""The fine-tune-or-distill curve: accuracy against the number of gold labels, for gold-only,
distilled and both, and where the lines cross.

`curve_points` and `crossover` are pure (compare.json rows in, plain values out); `plot_curve`
draws it for report.html. `potstill compare --gold-share 0.01 --gold-share 0.05 ...` measures the
points (compare.py) and stores `curve(...)` in compare.json.
"""

from __future__ import annotations

from typing import Any, Sequence

LINES = ("gold", "distill", "both")


def curve_points(rows: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """{objective: [(gold labels, accuracy), ...] sorted by gold labels} from compare rows.

    `distill` uses no gold labels, so its one measurement is drawn as a flat line at every gold
    budget the other lines have (the teacher labelled every input either way)."""
    pts: dict[str, dict[int, float]] = {o: {} for o in LINES}
    for r in rows:
        o, acc, n = r.get("objective"), r.get("accuracy"), r.get("gold_labels")
        if o in pts and acc is not None and n is not None:
            pts[o][int(n)] = float(acc)
    budgets = sorted(set(pts["gold"]) | set(pts["both"]))
    if pts["distill"] and budgets:
        flat = next(iter(pts["distill"].values()))
        pts["distill"] = {n: flat for n in budgets}
    return {o: sorted(v.items()) for o, v in pts.items() if v}


def crossover(points: dict[str, list[tuple[int, float]]], n_classes: int | None = None,
              margin: float = 0.0) -> dict[str, Any]:
    """Where gold-only catches up with the best teacher-using line (max of distill and both):
    comes within `margin` of it (the test split's noise margin, as `compare.recommend` uses, so a
    difference the test rows cannot resolve is not called a win for either).

    Returns {"gold_labels": N or None, "per_class": N / n_classes or None, "message": str,
    "status": "crossover" | "distill_everywhere" | "gold_everywhere" | "unknown"}.
    N is found after the last budget where the teacher-using line still wins by more than
    `margin`, by linear interpolation of (difference + margin) between that budget and the next:
    "with fewer than N gold labels (N / C per class), distill".
    """
    gold = dict(points.get("gold") or [])
    teach: dict[int, float] = {}
    for o in ("distill", "both"):
        for n, a in points.get(o) or []:
            teach[n] = max(a, teach.get(n, float("-inf")))
    xs = sorted(set(gold) & set(teach))
    if len(xs) < 1:
        return {"gold_labels": None, "per_class": None, "status": "unknown",
                "message": "no gold budget has both a gold-only and a distilled measurement"}
    d = [gold[x] - teach[x] + margin for x in xs]  # >= 0: gold-only within the margin at x

    def per(n: float | None) -> float | None:
        return round(n / n_classes, 1) if n is not None and n_classes else None

    def labels(n: float) -> str:
        pc = per(n)
        return f"{n:,.0f} gold labels" + (f" ({pc:g} per class)" if pc is not None else "")

    within = f" (within ±{margin:.2%})" if margin else ""
    losing = [i for i, v in enumerate(d) if v < 0]
    if not losing:
        return {"gold_labels": None, "per_class": None, "status": "gold_everywhere",
                "message": f"fine-tuning on gold matches{within} or beats distillation at every budget "
                           f"measured (from {labels(xs[0])}): fine-tune"}
    last = losing[-1]
    if last == len(xs) - 1:
        return {"gold_labels": None, "per_class": None, "status": "distill_everywhere",
                "message": f"distillation beats fine-tuning at every budget measured (up to {labels(xs[-1])}): "
                           "distill"}
    x0, x1, d0, d1 = xs[last], xs[last + 1], d[last], d[last + 1]
    n = x0 + (x1 - x0) * (-d0) / (d1 - d0) if d1 != d0 else float(x1)
    return {"gold_labels": round(n), "per_class": per(n), "status": "crossover",
            "message": f"with fewer than {labels(n)}, distill; with more, fine-tuning on gold alone "
                       f"does as well{within}"}


def curve(rows: Sequence[dict[str, Any]], n_classes: int | None = None, margin: float = 0.0) -> dict[str, Any]:
    """compare.json's `curve`: the points per line and the crossover (`margin`: see crossover)."""
    pts = curve_points(rows)
    return {"points": {k: [list(p) for p in v] for k, v in pts.items()}, "n_classes": n_classes,
            "margin": margin, "crossover": crossover(pts, n_classes, margin)}
