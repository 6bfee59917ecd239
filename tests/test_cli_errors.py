"""The CLI's error contract: user mistakes print one line and exit 2, real bugs keep their
traceback, and Ctrl-C says that finished work is kept (exit 130)."""

from __future__ import annotations

import sys

import pytest

from potstill import cli
from potstill.errors import PotstillError


def _run_main(monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "argv", ["potstill", *argv])
    with pytest.raises(SystemExit) as e:
        cli.main()
    return e.value.code, capsys.readouterr().err


def _spec(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    spec = tmp_path / "potstill.yaml"
    spec.write_text("name: t\ndata: {train: train.jsonl}\n")
    return spec


def test_user_mistake_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    code, err = _run_main(monkeypatch, capsys, ["label", str(tmp_path / "missing.yaml")])
    assert code == 2
    assert err.startswith("error: ") and "missing.yaml" in err and "Traceback" not in err


def test_a_bug_keeps_its_traceback(monkeypatch, capsys, tmp_path):
    def broken(spec, run):
        raise ValueError("a bug, not a user mistake")

    monkeypatch.setattr("potstill.stages.filter.filter_stage", broken)
    monkeypatch.setattr(sys, "argv", ["potstill", "filter", str(_spec(tmp_path))])
    with pytest.raises(ValueError, match="a bug"):  # not swallowed into "error: ..."
        cli.main()


def test_ctrl_c_says_work_is_kept(monkeypatch, capsys, tmp_path):
    def interrupted(spec, run):
        raise KeyboardInterrupt

    monkeypatch.setattr("potstill.stages.label.label", interrupted)
    code, err = _run_main(monkeypatch, capsys, ["label", str(_spec(tmp_path)), "--no-check"])
    assert code == 130
    assert "interrupted" in err and "rerun to resume" in err


def test_potstill_error_subclasses_cover_input_spec_and_budget():
    from potstill.config import SpecError
    from potstill.data.inputs import InputError
    from potstill.teachers.base import BudgetExceeded

    for cls in (SpecError, InputError, BudgetExceeded):
        assert issubclass(cls, PotstillError)


def test_labelling_through_an_api_does_not_load_torch():
    """`potstill label` against an API teacher starts without importing torch (seconds of
    start-up that a fail-fast labelling run cannot afford): stages and the teacher table load it
    only inside the functions that run a local model."""
    import subprocess

    code = ("import sys, potstill.cli; from potstill.stages.label import label; "
            "from potstill.teachers import make_teacher; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_writing_a_manifest_does_not_load_torch(tmp_path):
    """Every stage writes a manifest, `potstill check` first of all: it records torch's version
    from the package metadata; importing torch for it cost seconds before the first stage."""
    import subprocess

    code = ("import sys; from pathlib import Path; from potstill.spec import TaskSpec; "
            "from potstill.manifest import write_manifest; "
            f"m = write_manifest(Path({str(tmp_path)!r}), 'inputs', TaskSpec(name='t', data={{'train': 'x.jsonl'}})); "
            "print('torch' in sys.modules, bool(m['versions']['torch']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False True"
