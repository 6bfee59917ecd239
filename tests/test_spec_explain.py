"""`potstill spec --explain`: the field reference is generated from spec.py, covers every field
once, carries the attribute docstrings of nested models, and docs/SPEC.md is what it generates."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from potstill import spec as spec_mod
from potstill.errors import PotstillError
from potstill.spec import CAUSAL_LR, TaskSpec
from potstill.spec_explain import (
    DEFAULT_NOTES,
    explain,
    render_markdown,
    render_overview,
    render_text,
    spec_command,
)

ROOT = Path(__file__).resolve().parent.parent
SPEC_MD = ROOT / "docs" / "SPEC.md"


@pytest.fixture(scope="module")
def entries():
    return explain()


@pytest.fixture(scope="module")
def by_path(entries):
    return {e["path"]: e for e in entries}


def _leaves(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def _spec(**kw) -> TaskSpec:
    return TaskSpec(name="t", data={"train": "train.jsonl"}, **kw)


def test_docs_spec_md_is_generated_and_current(entries):
    want = render_markdown(entries)
    assert SPEC_MD.read_text(encoding="utf-8") == want, (
        "docs/SPEC.md is stale: regenerate it with `potstill spec --explain --markdown > docs/SPEC.md`")
    assert want.splitlines()[0].startswith("<!-- Generated from potstill/spec.py by `potstill spec --explain --markdown")
    assert "Do not edit by hand" in want.splitlines()[0]


def test_every_leaf_field_appears_exactly_once(entries):
    paths = [e["path"] for e in entries]
    assert len(paths) == len(set(paths))
    # the leaves of a dumped spec, found without the explain code (json_schema's default is null: a leaf)
    assert set(paths) == set(_leaves(_spec().model_dump()))
    assert "source" not in paths  # set by load_spec, excluded from dumps
    for section in ("data.", "teacher.", "teacher.fit.", "filters.", "student.", "student.lora.", "train.",
                    "eval.", "serve."):
        assert any(p.startswith(section) for p in paths), section
    assert not any(p in ("teacher.fit", "student.lora", "train") for p in paths)  # models recursed into


def _attribute_docstrings() -> dict[str, dict[str, str]]:
    """class name -> field -> the string literal right after it, read from spec.py's source."""
    tree = ast.parse(Path(spec_mod.__file__).read_text(encoding="utf-8"))
    out: dict[str, dict[str, str]] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        docs = out.setdefault(cls.name, {})
        for a, b in zip(cls.body, cls.body[1:]):
            if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                docs[a.target.id] = " ".join(b.value.value.split())
    return out


def test_descriptions_are_the_attribute_docstrings_nested_too(entries, by_path):
    for p in ("train.baseline", "data.unlabelled", "teacher.api_key_env", "teacher.fit.min_steps",
              "student.lora.method", "serve.teacher_share", "labels"):
        assert by_path[p]["description"], p
    assert by_path["teacher.api_key_env"]["description"].startswith("Environment variable holding the endpoint's API key.")
    assert "\n" not in by_path["data.unlabelled"]["description"]
    assert "  " not in by_path["teacher.api_key_env"]["description"]
    # every docstring in the source shows, on the field it follows (pydantic finds them through the
    # source: were it ever unable to, descriptions would go missing silently)
    models = {"TaskSpec": "", "DataSpec": "data.", "TeacherSpec": "teacher.", "FitSpec": "teacher.fit.",
              "FilterSpec": "filters.", "StudentSpec": "student.", "LoraSpec": "student.lora.",
              "TrainSpec": "train.", "EvalSpec": "eval.", "ServeSpec": "serve."}
    docs = _attribute_docstrings()
    found = 0
    for cls, prefix in models.items():
        for field, text in docs[cls].items():
            if f"{prefix}{field}" in by_path:  # nested-model fields (student.lora) are sections
                assert by_path[f"{prefix}{field}"]["description"] == text, f"{prefix}{field}"
                found += 1
    assert found == sum(1 for e in entries if e["description"]) > 80
    assert not by_path["data.train"]["description"]  # no docstring: type and default still show


def test_types_constraints_and_defaults(by_path):
    want = {
        "train.epochs": ("float > 0", "4"),
        "data.validation_share": ("0 ≤ float < 1", "0.1"),
        "teacher.concurrency": ("1 ≤ int ≤ 1024", "16"),
        "teacher.fit.max_steps": ("int ≥ 1 | null", "5000"),
        "serve.target_accuracy": ("0 < float ≤ 1 | null", "null"),
        "train.schedule": ('"adaptive" | "fixed"', '"adaptive"'),
        "data.unlabelled": ("list[path]", "[]"),
        "data.train": ("path", "required"),
        "data.test": ("path | null", "null"),
        "student.layers": ('list[int] | int | "auto" | null', "[0, 5]"),
        "student.lora.target_modules": ("list[str] | str | null", '"auto"'),
        "teacher.api_key_env": ("str | null", '"OPENAI_API_KEY"'),
        "train.baseline": ("bool", "true"),
        "teacher.batch": ("bool", "false"),
        "teacher.fit.lr": ("float > 0", "0.0002"),
        "json_schema": ("mapping | null", "null"),
        "name": ("str, matching ^[A-Za-z0-9][A-Za-z0-9_.-]*$", "required"),
    }
    for path, (typ, default) in want.items():
        assert (by_path[path]["type"], by_path[path]["default"]) == (typ, default), path
    assert by_path["train.epochs"]["section"] == "train" and by_path["name"]["section"] == "name"


def test_default_notes_cover_exactly_what_the_validators_change(by_path):
    """A field whose default a TaskSpec validator changes (causal-LM student, kind extract) has a
    note, and a field with a note does change: the table in spec_explain cannot drift."""
    base = _flat(_spec().model_dump())
    variants = {
        "causal": (_spec(student={"kind": "causal_lm", "model": "m"}), {"student.kind", "student.model"}),
        "generate": (_spec(kind="generate", student={"kind": "causal_lm", "model": "m"},
                           teacher={"kind": "openai", "model": "x"}),
                     {"kind", "student.kind", "student.model", "teacher.kind", "teacher.model"}),
        "extract": (_spec(kind="extract", json_schema={"type": "object", "properties": {"a": {"type": "string"}}}),
                    {"kind", "json_schema"}),
    }
    changed = set()
    for name, (s, given) in variants.items():
        changed |= {p for p, v in _flat(s.model_dump()).items() if v != base[p] and p not in given}
    assert changed == set(DEFAULT_NOTES), changed ^ set(DEFAULT_NOTES)
    causal = variants["causal"][0]
    for k in ("epochs", "batch_size"):
        note = by_path[f"train.{k}"]["note"]
        assert note.startswith("causal_lm student: ") and float(note.split(": ")[1]) == getattr(causal.train, k)
    for method, lr in CAUSAL_LR.items():
        s = _spec(student={"kind": "causal_lm", "model": "m", "lora": {"method": method}})
        assert s.train.lr == lr and f"{method} {lr!r}" in by_path["train.lr"]["note"]
    assert by_path["student.layers"]["note"] == "causal_lm student: null" and causal.student.layers is None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "json_schema" else {f"{prefix}{k}": v})
    return out


def test_render_text_filters_by_section(entries):
    train = render_text(entries, "train")
    assert "  train.epochs: float > 0  = 4" in train
    fields = [line.split(":")[0].strip() for line in train.splitlines() if line.startswith("  ") and
              not line.startswith("   ")]
    assert fields == [e["path"] for e in entries if e["section"] == "train"]
    fit = render_text(entries, "teacher.fit")
    assert fit.splitlines()[0] == "teacher.fit"
    assert "teacher.fit.patience" in fit and "teacher.api_key_env" not in fit
    assert "fine-tune a local encoder" in fit  # the section's class docstring
    one = render_text(entries, "train.lr")
    assert "train.lr" in one and "train.epochs" not in one and "causal_lm student" in one
    everything = render_text(entries)
    assert all(f"  {e['path']}: " in everything for e in entries)
    assert max(len(line) for line in everything.splitlines() if not line.startswith("  ") or
               line.startswith("      ")) <= 100


def test_unknown_section_names_the_valid_ones(entries):
    with pytest.raises(PotstillError, match=r"no spec section 'trian'; valid sections: .*data, teacher, "
                                            r"filters, student, train, eval, serve"):
        render_text(entries, "trian")
    with pytest.raises(PotstillError):
        render_text(entries, "train.nope")
    with pytest.raises(PotstillError):
        render_text(entries, "tra")  # a prefix of a key is not a section


def test_markdown_groups_by_section_and_escapes_pipes(entries):
    md = render_markdown(entries)
    for heading in ("## (top level)", "## data", "## teacher", "### teacher.fit", "## filters", "## student",
                    "### student.lora", "## train", "## eval", "## serve"):
        assert f"\n{heading}\n" in md, heading
    assert md.index("## teacher\n") < md.index("### teacher.fit") < md.index("## filters")
    row = next(line for line in md.splitlines() if line.startswith("| `train.schedule` |"))
    assert row.count(" | ") == 3  # the type's | are escaped, so the row keeps four cells
    assert '`"adaptive" \\| "fixed"`' in row
    assert "| `train.epochs` | `float > 0` | `4`; causal_lm student: 2 |" in md


@pytest.fixture()
def cli():
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("spec")(spec_command)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_spec_command(cli, entries):
    r = cli("--explain", "--markdown")
    assert r.exit_code == 0, r.output
    assert r.output == SPEC_MD.read_text(encoding="utf-8")
    r = cli("--explain", "train")
    assert r.exit_code == 0 and r.output == render_text(entries, "train")
    assert cli("serve").output == render_text(entries, "serve")  # a section implies --explain
    r = cli()
    assert r.exit_code == 0 and r.output == render_overview(entries)
    assert "potstill spec --explain" in r.output and "teacher" in r.output
    r = cli("--explain", "bogus")
    assert isinstance(r.exception, PotstillError) and "valid sections" in str(r.exception)
    r = cli("--markdown", "teacher.fit")
    assert r.exit_code == 0 and "### teacher.fit" in r.output and "## data" not in r.output
