"""The `potstill` command: one thin command per stage. The logic lives in the stage modules."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="potstill",
    help="Distill an expensive teacher into a small student you own, measured against the teacher.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
teacher_app = typer.Typer(help="Teacher commands.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")

SpecArg = Annotated[Path, typer.Argument(help="Task spec (potstill.yaml or .toml).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a spec field, e.g. --set train.epochs=3 --set student.layers=[0,5]. Repeatable.")]
WorkdirOpt = Annotated[Optional[Path], typer.Option(
    "--workdir", "-w", help="Run directory (default: runs/<name> beside the spec).")]


def examples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "examples"


def _load(spec: Path, overrides: list[str] | None, workdir: Path | None):
    from .config import load_spec, run_paths

    s = load_spec(spec, overrides or [])
    return s, run_paths(s, workdir)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create for the task.")],
    example: Annotated[str, typer.Option(help="Bundled example to copy (see examples/).")] = "clinc150",
    force: Annotated[bool, typer.Option(help="Overwrite an existing folder.")] = False,
):
    """Create a ready task folder from a bundled example: spec, data and the data's licence."""
    src = examples_dir() / example
    if not (src / "potstill.yaml").exists():
        have = sorted(p.name for p in examples_dir().glob("*") if (p / "potstill.yaml").exists())
        raise typer.BadParameter(f"no example {example!r}; bundled examples: {', '.join(have) or 'none'}")
    if directory.exists() and any(directory.iterdir()) and not force:
        raise typer.BadParameter(f"{directory} exists and is not empty (use --force to overwrite)")
    shutil.copytree(src, directory, dirs_exist_ok=True, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    typer.echo(f"created {directory}/ from example {example!r}; next: potstill run {directory}/potstill.yaml")


@app.command()
def run(spec: SpecArg, set: SetOpt = None, workdir: WorkdirOpt = None,
        mlflow: Annotated[bool, typer.Option("--mlflow", help="Log the spec, metrics and report files to MLflow.")] = False,
        mlflow_uri: Annotated[Optional[str], typer.Option(
            "--mlflow-uri", help="MLflow tracking URI (default: a folder store in RUN_DIR/mlruns).")] = None):
    """Run the whole flow: inputs -> teacher -> label -> filter -> student + baseline -> evaluation.

    Finished stages whose inputs did not change are skipped, and teacher calls come from the
    cache, so a second run costs nothing. Prints the evaluation table at the end and writes
    report.html + report.md (see `potstill report`).
    """
    from .config import load_spec, run_paths
    from .pipeline import run_all

    if mlflow:
        from .tracking import require_mlflow

        require_mlflow()  # before hours of work, not after
    s = load_spec(spec, set or [])
    report = run_all(s, workdir)
    _print_report(report)
    if mlflow:
        from .tracking import log_run_dir

        typer.echo(f"mlflow: {log_run_dir(run_paths(s, workdir).root, uri=mlflow_uri, kind='run')}")


@teacher_app.command("fit")
def teacher_fit(spec: SpecArg, set: SetOpt = None, workdir: WorkdirOpt = None):
    """Fine-tune a local encoder (teacher.fit.model, all layers) on the gold labels: the teacher
    when teacher.kind is 'fit', and the plain fine-tuning path."""
    from .stages.train import fit_teacher

    s, r = _load(spec, set, workdir)
    m = fit_teacher(s, r)
    typer.echo(f"teacher: {r.teacher} (best validation accuracy {m['metrics']['best_val_accuracy']:.4f})")


@app.command()
def label(spec: SpecArg, set: SetOpt = None, workdir: WorkdirOpt = None):
    """Label the training inputs with the teacher (cached; a killed run resumes)."""
    from .stages.label import label as label_stage

    s, r = _load(spec, set, workdir)
    label_stage(s, r)


@app.command("filter")
def filter_cmd(spec: SpecArg, set: SetOpt = None, workdir: WorkdirOpt = None):
    """Apply the spec's filters to the labelled records; every drop keeps its reason."""
    from .stages.filter import filter_stage

    s, r = _load(spec, set, workdir)
    filter_stage(s, r)


@app.command()
def train(
    spec: SpecArg, set: SetOpt = None, workdir: WorkdirOpt = None,
    baseline: Annotated[bool, typer.Option("--baseline", help="Train the gold-only baseline instead.")] = False,
):
    """Train the student on the kept records (or, with --baseline, the same student on gold only).

    Runs on accelerate: `torchrun --nproc_per_node 2 -m potstill train SPEC` (or
    `accelerate launch --multi_gpu --num_processes 2 -m potstill train SPEC`) trains on two
    processes, on CPUs or GPUs. A killed run resumes from its last checkpoint.
    """
    from .stages.train import train_student

    s, r = _load(spec, set, workdir)
    from .manifest import is_main_process

    m = train_student(s, r, "baseline" if baseline else "student")
    if m and (m.get("metrics") or {}).get("best_val_accuracy") is not None and is_main_process():
        typer.echo(f"{m['stage']}: best validation accuracy {m['metrics']['best_val_accuracy']:.4f}")


@app.command("eval")
def eval_cmd(spec: SpecArg, set: SetOpt = None, workdir: WorkdirOpt = None):
    """Evaluate teacher, student and baseline on the held-out test split; writes report.json/.md."""
    from .stages.evaluate import evaluate

    s, r = _load(spec, set, workdir)
    _print_report(evaluate(s, r))


# commands that live beside their stage; their modules import nothing heavy at load time
from .compare import compare_command  # noqa: E402
from .cost_cli import cost_command  # noqa: E402
from .export import export_command  # noqa: E402
from .report import report_command  # noqa: E402
from .rounds import iterate_command, rollback_command  # noqa: E402
from .serve.app import serve_command  # noqa: E402
from .serve.calibrate import calibrate_command  # noqa: E402
from .serve.queue import queue_list_command  # noqa: E402
from .synth import synth_command  # noqa: E402

app.command("cost")(cost_command)
app.command("export")(export_command)
app.command("report")(report_command)
app.command("compare")(compare_command)
app.command("calibrate")(calibrate_command)
app.command("serve")(serve_command)
app.command("iterate")(iterate_command)
app.command("rollback")(rollback_command)
app.command("synth")(synth_command)
queue_app = typer.Typer(help="The review queue: escalations, degraded answers, disagreements, feedback.",
                        no_args_is_help=True)
app.add_typer(queue_app, name="queue")
queue_app.command("list")(queue_list_command)


def _print_report(report: dict) -> None:
    """The evaluation table, rendered by the report's own task kind (report.json says which)."""
    from rich.console import Console
    from rich.table import Table

    from .tasks import get_task

    head, rows = get_task(report.get("kind", "classify")).table(report)
    t = Table(title=f"{report['task']}: {report['test_rows']} held-out test rows")
    for col in head:
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        t.add_row(*r)
    c = Console()
    if not c.is_terminal:
        c = Console(width=160)
    c.print(t)
    for k, v in report.get("summary", {}).items():
        c.print(f"  {k.replace('_', ' ')}: {v}")


def main() -> None:
    """The console entry point. User mistakes (`PotstillError`: a bad spec, bad data, a missing
    stage output) print one line and exit 2; anything else is a bug and shows its traceback."""
    from .errors import PotstillError

    try:
        app()
    except PotstillError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    except SystemExit as e:
        if e.code == 130:  # typer turns Ctrl-C into a silent exit 130: say what it means
            typer.secho("interrupted; finished work is kept, rerun to resume", fg="yellow", err=True)
        raise

if __name__ == "__main__":
    main()
