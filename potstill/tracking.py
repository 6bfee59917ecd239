"""`--mlflow`: log a run directory to an MLflow tracking store.

What is logged: the resolved spec flattened into parameters (`train.epochs`, `student.layers`...),
the numbers of report.json as metrics (`student.accuracy`, `teacher.latency_ms_p50`, ...; of
compare.json too, as `compare.<variant>.<metric>`), and the report files as artifacts. The store
is a local folder by default, `RUN_DIR/mlruns` (MLflow 3 keeps folder stores in maintenance mode:
potstill sets MLFLOW_ALLOW_FILE_STORE=true for them; view one with
`MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri RUN_DIR/mlruns`); `--mlflow-uri` names
another (a tracking server URL, or `sqlite:///mlflow.db`, which needs the full `mlflow` package).

mlflow is an optional extra: `pip install 'potstill[mlflow]'`. `flatten` and `report_metrics`
are pure and need no mlflow.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import PotstillError
from .paths import COMPARE_JSON

EXTRA_HINT = "pip install 'potstill[mlflow]'"
EXPERIMENT = "potstill"
MAX_PARAM_CHARS = 6000  # MLflow's limit on one parameter value (8000 on recent servers; stay under)


class TrackingError(PotstillError):
    """--mlflow could not be honoured (mlflow not installed); the message says how to fix it."""


def require_mlflow():
    """The mlflow module, or TrackingError naming the extra that installs it."""
    try:
        import mlflow  # noqa: F401
    except ImportError as e:
        raise TrackingError(f"--mlflow needs the optional mlflow extra: {EXTRA_HINT} ({e})") from None
    return mlflow


def flatten(doc: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts -> {"a.b.c": "value"}; lists and scalars become strings (JSON for lists,
    "null" for None), cut to MAX_PARAM_CHARS."""
    out: dict[str, str] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(doc, (list, tuple)):
        s = json.dumps(list(doc), default=str)
    elif doc is None:
        s = "null"
    else:
        s = str(doc)
    out[prefix] = s[:MAX_PARAM_CHARS]
    return out


def report_metrics(report: dict[str, Any], compare: dict[str, Any] | None = None) -> dict[str, float]:
    """The finite numbers of report.json as MLflow metrics: `<model>.<metric>`, `summary.<key>`,
    `data.<key>`; and `compare.<variant>.<metric>` from compare.json."""
    out: dict[str, float] = {}

    def put(key: str, v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return
        if math.isfinite(v):
            out[key] = float(v)

    for name, m in (report.get("models") or {}).items():
        for k, v in m.items():
            put(f"{name}.{k}", v)
    for k, v in (report.get("summary") or {}).items():
        put(f"summary.{k}", v)
    for k, v in (report.get("data") or {}).items():
        put(f"data.{k}", v)
    for row in (compare or {}).get("rows") or []:
        for k, v in row.items():
            put(f"compare.{row.get('name')}.{k}", v)
    return out


def default_uri(run_dir: Path) -> str:
    return (Path(run_dir).resolve() / "mlruns").as_uri()


ARTIFACTS = ("report.html", "report.md", "report.json", "calibration.json", "compare.json", "compare.md",
             "spec.resolved.json")


def log_run_dir(run_dir: str | Path, *, uri: str | None = None, kind: str = "run",
                run_name: str | None = None) -> str:
    """Log `run_dir` as one MLflow run (tag potstill.kind = run / report / compare); return
    where to find it (the tracking URI and run id)."""
    mlflow = require_mlflow()
    run_dir = Path(run_dir)
    spec_path, report_path = run_dir / "spec.resolved.json", run_dir / "report.json"
    params = flatten(json.loads(spec_path.read_text())) if spec_path.exists() else {}
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    cmp_path = run_dir / COMPARE_JSON
    compare = json.loads(cmp_path.read_text()) if cmp_path.exists() else None
    metrics = report_metrics(report, compare)
    uri = uri or default_uri(run_dir)
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 keeps its folder store in maintenance mode and refuses it unless asked; a
        # folder needs no database packages, which is what the skinny extra is for
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=run_name or f"{report.get('task') or run_dir.name}-{kind}") as r:
        mlflow.set_tags({"potstill.kind": kind, "potstill.run_dir": str(run_dir.resolve())})
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            mlflow.log_params(dict(items[i:i + 100]))
        if metrics:
            mlflow.log_metrics(metrics)
        for name in ARTIFACTS:
            if (run_dir / name).exists():
                mlflow.log_artifact(str(run_dir / name))
        run_id = r.info.run_id
    return f"{uri} (experiment {EXPERIMENT!r}, run {run_id})"
