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
    "--set", help="Override a spec field, e.g. --set train.epochs=3 --set student.layers=[0,5]. Repeatable. "
    "A relative path given here is relative to the current directory (in the spec file, to the spec's folder).")]
WorkdirOpt = Annotated[Optional[Path], typer.Option(
    "--workdir", "-w", help="Run directory (default: runs/<name> beside the spec).")]
NoCheckOpt = Annotated[bool, typer.Option(
    "--no-check", help="Skip the check before spending (`potstill check`: data, gold, API key, one "
    "test call, estimated cost).")]


def examples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "examples"


def _load(spec: Path, overrides: list[str] | None, workdir: Path | None):
    from .config import load_spec, run_paths

    s = load_spec(spec, overrides or [])
    return s, run_paths(s, workdir)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create for the task.")],
    example: Annotated[Optional[str], typer.Option(
        help="Bundled example to copy (see examples/; default clinc150 when --data is not given).")] = None,
    data: Annotated[Optional[Path], typer.Option(
        help="Your inputs (JSONL, CSV or Parquet); labels optional: the teacher labels them.")] = None,
    gold: Annotated[Optional[Path], typer.Option(
        help="Labelled rows to measure on (split into validation and test). Without it, labelled rows "
        "of --data are held out.")] = None,
    teacher: Annotated[str, typer.Option(help="openai (any OpenAI-compatible endpoint), fit or hf.")] = "openai",
    labels: Annotated[Optional[str], typer.Option(
        help="Comma-separated labels, e.g. ham,spam (default: those in your gold rows).")] = None,
    schema: Annotated[Optional[Path], typer.Option(
        help="A JSON schema file (object of string fields): an extract task instead of classify.")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="The teacher model (openai: the model name, default gpt-4o-mini; hf: a local classifier).")] = None,
    base_url: Annotated[Optional[str], typer.Option(
        help="OpenAI-compatible endpoint (default https://api.openai.com/v1).")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    price_in: Annotated[Optional[float], typer.Option(help="$ per million input tokens.")] = None,
    price_out: Annotated[Optional[float], typer.Option(help="$ per million output tokens.")] = None,
    text_field: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    label_field: Annotated[str, typer.Option(help="Column holding the gold label (or JSON object).")] = "label",
    force: Annotated[bool, typer.Option(help="Overwrite an existing folder.")] = False,
):
    """Create a ready task folder: from your own data and teacher (--data), or a bundled example.

    With --data: a spec for your inputs and an API teacher (or fit / hf), gold only where you
    have it (--gold, or the labelled rows of --data, held out as validation and test), every
    choice commented. Without: a copy of a bundled example (spec, data and the data's licence).
    """
    if directory.exists() and any(directory.iterdir()) and not force:
        raise typer.BadParameter(f"{directory} exists and is not empty (use --force to overwrite)")
    if data is None:
        if gold is not None or schema is not None or labels is not None:
            raise typer.BadParameter("--gold, --labels and --schema describe your own data: give --data too")
        example = example or "clinc150"
        src = examples_dir() / example
        if not (src / "potstill.yaml").exists():
            have = sorted(p.name for p in examples_dir().glob("*") if (p / "potstill.yaml").exists())
            raise typer.BadParameter(f"no example {example!r}; bundled examples: {', '.join(have) or 'none'}")
        shutil.copytree(src, directory, dirs_exist_ok=True, ignore=shutil.ignore_patterns("runs", "__pycache__"))
        typer.echo(f"created {directory}/ from example {example!r}; next: potstill run {directory}/potstill.yaml")
        return
    if example is not None:
        raise typer.BadParameter("--example copies a bundled example; --data starts from your own data: pick one")
    from .errors import PotstillError
    from .scaffold import init_from_data

    if not data.exists():
        raise PotstillError(f"--data {data}: no such file")
    if gold is not None and not gold.exists():
        raise PotstillError(f"--gold {gold}: no such file")
    spec_path = init_from_data(
        directory, data, gold=gold, teacher=teacher, schema=schema, model=model, base_url=base_url,
        labels=[x.strip() for x in labels.split(",") if x.strip()] if labels else None,
        api_key_env=api_key_env, price_in=price_in, price_out=price_out, text_field=text_field,
        label_field=label_field)
    typer.echo(f"created {spec_path} (every choice is commented there)")
    if teacher == "openai":
        typer.echo(f"next: export {api_key_env}=...   (the key is read from it, never stored)")
    typer.echo(f"next: potstill check {spec_path}   (data, gold, key, one test call, estimated cost)")
    typer.echo(f"then: potstill run {spec_path}")


@app.command()
def run(spec: SpecArg, set: SetOpt = None, workdir: WorkdirOpt = None, no_check: NoCheckOpt = False,
        mlflow: Annotated[bool, typer.Option("--mlflow", help="Log the spec, metrics and report files to MLflow.")] = False,
        mlflow_uri: Annotated[Optional[str], typer.Option(
            "--mlflow-uri", help="MLflow tracking URI (default: a folder store in RUN_DIR/mlruns).")] = None):
    """Run the whole flow: inputs -> teacher -> label -> filter -> student + baseline -> evaluation.

    Starts with `potstill check` (data, gold, API key, one test call, estimated cost) and stops
    there when something would fail. Finished stages whose inputs did not change are skipped,
    and teacher calls come from the cache, so a second run costs nothing. Prints the evaluation
    table and what to do next at the end, and writes report.html + report.md (see `potstill report`).
    """
    from .config import load_spec, run_paths
    from .pipeline import run_all

    if mlflow:
        from .tracking import require_mlflow

        require_mlflow()  # before hours of work, not after
    s = load_spec(spec, set or [])
    if not no_check:
        from .check import run_check

        run_check(s, run_paths(s, workdir))
    report = run_all(s, workdir)
    _print_report(report, run_paths(s, workdir).root)
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
def label(spec: SpecArg, set: SetOpt = None, workdir: WorkdirOpt = None, no_check: NoCheckOpt = False):
    """Label the training inputs with the teacher (cached; a killed run resumes).

    Starts with `potstill check` and stops there when something would fail.
    """
    from .stages.label import label as label_stage

    s, r = _load(spec, set, workdir)
    if not no_check:
        from .check import run_check

        run_check(s, r, need_test=False)  # labelling needs no test split; `run` does
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
    _print_report(evaluate(s, r), r.root)


# commands that live beside their stage; their modules import nothing heavy at load time
from .check import check_command  # noqa: E402
from .compare import compare_command  # noqa: E402
from .cost_cli import cost_command  # noqa: E402
from .export import export_command  # noqa: E402
from .report import report_command  # noqa: E402
from .rounds import iterate_command, rollback_command  # noqa: E402
from .serve.app import serve_command  # noqa: E402
from .serve.calibrate_cli import calibrate_command  # noqa: E402
from .serve.queue import queue_list_command  # noqa: E402
from .spec_explain import spec_command  # noqa: E402
from .synth import synth_command  # noqa: E402

app.command("check")(check_command)
app.command("cost")(cost_command)
app.command("export")(export_command)
app.command("report")(report_command)
app.command("compare")(compare_command)
app.command("calibrate")(calibrate_command)
app.command("serve")(serve_command)
app.command("iterate")(iterate_command)
app.command("rollback")(rollback_command)
app.command("synth")(synth_command)
app.command("spec")(spec_command)
queue_app = typer.Typer(help="The review queue: escalations, degraded answers, disagreements, feedback.",
                        no_args_is_help=True)
app.add_typer(queue_app, name="queue")
queue_app.command("list")(queue_list_command)


def _print_report(report: dict, run_dir: Path) -> None:
    """The evaluation table, rendered by the report's own task kind (report.json says which),
    then the verdict and what to do next."""
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
    from .paths import CALIBRATION_JSON
    from .verdict import next_steps, next_steps_lines

    nxt = next_steps(report, str(run_dir), report.get("spec_file"),
                     calibrated=(run_dir / CALIBRATION_JSON).exists())
    for line in next_steps_lines(nxt):
        c.print(line, highlight=False, soft_wrap=True)


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
