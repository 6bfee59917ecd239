"""The package's shape holds: dependencies run one way (no import cycle), no stage, teacher or
server module branches on a task or student kind, and a new task kind needs nothing but its own
`Task` (and a teacher row): a small one defined here goes through label -> filter -> train ->
eval via the registries."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from conftest import make_rows, write_jsonl

PKG = Path(__file__).resolve().parent.parent / "potstill"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        mod = ".".join(p.relative_to(PKG.parent).with_suffix("").parts)
        out[mod.removesuffix(".__init__")] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports, at the top or inside functions."""
    edges = {}
    for mod, p in mods.items():
        pkg = mod if p.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.ImportFrom) and n.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
                target = ".".join(base + ([n.module] if n.module else []))
                deps |= {t for t in [target, *(f"{target}.{a.name}" for a in n.names)] if t in mods}
            elif isinstance(n, ast.ImportFrom) and n.module and n.module in mods:
                deps.add(n.module)
        edges[mod] = deps - {mod}
    return edges


def test_no_import_cycle():
    mods = _modules()
    edges = _imports(mods)
    edges.pop("potstill.__main__", None)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_no_kind_branches_outside_the_registries():
    """Stages, teachers and the server ask the Task / Student; they never compare kinds."""
    pattern = re.compile(r"(spec|self\.spec)\.(kind|student\.kind)\s*(==|!=|in\b|not in\b)")
    registries = {PKG / "teachers/__init__.py", PKG / "serve/backends.py"}  # the tables themselves
    offenders = []
    for sub in ("stages", "teachers", "serve"):
        for p in sorted(set((PKG / sub).rglob("*.py")) - registries):
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{p.relative_to(PKG)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_every_builtin_kind_has_every_protocol_member():
    from potstill.students import get_student
    from potstill.students.base import Student
    from potstill.tasks import get_task, kinds
    from potstill.tasks.base import Task

    for kind in kinds():
        task = get_task(kind)
        missing = [m for m in Task.__annotations__ | {n: 0 for n in vars(Task) if not n.startswith("_")}
                   if not hasattr(task, m)]
        assert not missing, (kind, missing)
    for kind in ("classifier", "tagger", "causal_lm"):
        student = get_student(kind)
        missing = [m for m in vars(Student) if not m.startswith("_") and not hasattr(student, m)]
        assert not missing, (kind, missing)


@pytest.fixture()
def length_task():
    """A task kind defined only here: is the request short or long? Labels are fixed by the task,
    a record whose teacher answer is "unsure" is dropped for its own reason, and the score adds
    a metric of its own."""
    from potstill import tasks, teachers
    from potstill.answers import Answer
    from potstill.tasks.classify import Classify, accuracy

    class Length(Classify):
        kind = "length"
        reasons = ("teacher_error", "unsure", *Classify.reasons[1:])

        def label_set(self, spec, splits):
            return ["long", "short"]

        def check_record(self, rec, f, seen):
            if rec.get("raw") == "unsure":
                return "unsure"
            return super().check_record(rec, f, seen)

        def score(self, gold, pred, labels, teacher, spec=None):
            m = super().score(gold, pred, labels, teacher, spec)
            m["long_recall"] = round(accuracy([g for g in gold if g == "long"],
                                              [p for g, p in zip(gold, pred) if g == "long"]), 4)
            return m

    class RuleTeacher:
        """The expensive model, played by a rule: more than four words is long."""
        identity = "rule:length@1"
        labels = ["long", "short"]

        def request(self, text):
            return {"text": text}

        def answer(self, texts):
            for i, t in enumerate(texts):
                n = len(t.split())
                label = None if n == 4 else ("long" if n > 4 else "short")
                probs = None if label is None else [float(label == "long"), float(label == "short")]
                yield i, Answer(label=label, probs=probs, raw=label or "unsure")

    task = tasks.register(Length())
    teachers.register_teacher("length", "openai", lambda spec, run, labels, spent: RuleTeacher())
    yield task
    tasks._TASKS.pop("length", None)
    teachers.TEACHERS.pop(("length", "openai"), None)


@pytest.mark.e2e
def test_a_new_task_kind_runs_through_the_registries(tmp_path, tiny_bert, length_task):
    from potstill.config import load_spec
    from potstill.pipeline import run_all

    def rows(n, seed):
        return [{"text": r["text"], "label": "long" if len(r["text"].split()) > 4 else "short"}
                for r in make_rows(n, seed)]

    write_jsonl(tmp_path / "data/train.jsonl", rows(150, 1))
    write_jsonl(tmp_path / "data/validation.jsonl", rows(30, 2))
    write_jsonl(tmp_path / "data/test.jsonl", rows(45, 3))
    (tmp_path / "potstill.yaml").write_text(f"""
name: lengths
kind: length
data: {{train: data/train.jsonl, validation: data/validation.jsonl, test: data/test.jsonl}}
teacher: {{kind: openai, model: rule}}
student: {{model: {tiny_bert}, layers: [0, 1]}}
train: {{epochs: 2, lr: 0.002, batch_size: 8, precision: fp32}}
eval: {{latency_samples: 3}}
""")
    spec = load_spec(tmp_path / "potstill.yaml")
    report = run_all(spec, tmp_path / "run")
    assert report["kind"] == "length"
    filt = json.loads((tmp_path / "run/filtered/filter_report.json").read_text())
    unsure = sum(len(r["text"].split()) == 4 for r in rows(150, 1))
    assert filt["dropped_by_reason"]["unsure"] == unsure > 0
    for name in ("teacher", "student", "baseline"):
        assert "long_recall" in report["models"][name] and "accuracy" in report["models"][name]
    assert report["models"]["teacher"]["accuracy"] > 0.6  # the rule is right except on 4 words
    assert "| student |" in (tmp_path / "run/report.md").read_text()


def test_every_import_in_the_package_resolves():
    """Imports inside functions (kept lazy so the CLI starts fast) are not run by importing the
    package: check each names a module that exists and a name it defines."""
    import importlib

    mods = _modules()
    missing = []
    for mod, p in sorted(mods.items()):
        pkg = mod if p.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for n in ast.walk(ast.parse(p.read_text())):
            if not (isinstance(n, ast.ImportFrom) and n.level):
                continue
            base = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
            target = ".".join(base + ([n.module] if n.module else []))
            if target not in mods:
                missing.append(f"{p.relative_to(PKG)}:{n.lineno}: no module {target}")
                continue
            names = [a.name for a in n.names if f"{target}.{a.name}" not in mods]
            if names:
                m = importlib.import_module(target)
                missing += [f"{p.relative_to(PKG)}:{n.lineno}: {target} has no {a}" for a in names
                            if not hasattr(m, a)]
    assert not missing, "\n".join(missing)


def test_every_bench_script_import_resolves():
    """bench/ scripts are not run by the tests; a name they import from the package (or from a
    sibling script) that was moved or renamed would only show when someone next measures."""
    import importlib

    bench = PKG.parent / "bench"
    mods, siblings = _modules(), {p.stem: p for p in bench.glob("*.py")}
    missing = []
    for p in sorted(bench.glob("*.py")):
        for n in ast.walk(ast.parse(p.read_text())):
            if not (isinstance(n, ast.ImportFrom) and n.module and not n.level):
                continue
            if n.module in siblings:
                tree = ast.parse(siblings[n.module].read_text())
                defined = {s.name for s in ast.walk(tree) if isinstance(s, (ast.FunctionDef, ast.ClassDef))}
                defined |= {t.id for s in ast.walk(tree) if isinstance(s, ast.Assign)
                            for t in s.targets if isinstance(t, ast.Name)}
                missing += [f"bench/{p.name}:{n.lineno}: {n.module} has no {a.name}"
                            for a in n.names if a.name not in defined]
            elif n.module.split(".")[0] == "potstill":
                if n.module not in mods:
                    missing.append(f"bench/{p.name}:{n.lineno}: no module {n.module}")
                    continue
                m = importlib.import_module(n.module)
                missing += [f"bench/{p.name}:{n.lineno}: {n.module} has no {a.name}" for a in n.names
                            if not hasattr(m, a.name) and f"{n.module}.{a.name}" not in mods]
    assert not missing, "\n".join(missing)
