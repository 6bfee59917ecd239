from pathlib import Path

import pytest

from potstill.answers import parse_label
from potstill.config import SpecError, load_spec, parse_override

LABELS = ["balance", "transfer", "account_blocked", "card_declined"]


def write(tmp_path: Path, text: str, name: str = "potstill.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_minimal_spec_defaults_and_relative_paths(tmp_path):
    spec = load_spec(write(tmp_path, "name: t\ndata:\n  train: d/train.jsonl\n"))
    assert spec.kind == "classify"
    assert spec.data.train == (tmp_path / "d/train.jsonl").resolve()
    assert spec.student.layers == [0, 5]
    assert spec.train.objective == "distill"


def test_overrides_parse_yaml_values_and_cli_paths_are_cwd_relative(tmp_path, monkeypatch):
    p = write(tmp_path, "name: t\ndata:\n  train: d/train.jsonl\n")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    spec = load_spec(p, ["student.layers=[0,3]", "train.epochs=2.5", "data.test=elsewhere/test.jsonl",
                         "teacher.max_spend_usd=null"])
    assert spec.student.layers == [0, 3]
    assert spec.train.epochs == 2.5
    assert spec.data.test == tmp_path / "cwd" / "elsewhere/test.jsonl"
    assert parse_override("a.b=x y") == (["a", "b"], "x y")


def test_unknown_field_names_file_line_and_field(tmp_path):
    p = write(tmp_path, "name: t\ndata:\n  train: x.jsonl\nstudent:\n  layrs: [0, 1]\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert f"{p}:5: student.layrs: unknown field" in msg


def test_wrong_type_names_the_line(tmp_path):
    p = write(tmp_path, "name: t\ndata:\n  train: x.jsonl\ntrain:\n  epochs: many\n")
    with pytest.raises(SpecError, match=r"potstill.yaml:5: train.epochs"):
        load_spec(p)


def test_override_error_names_the_field(tmp_path):
    p = write(tmp_path, "name: t\ndata:\n  train: x.jsonl\n")
    with pytest.raises(SpecError, match=r"train.lr: Input should be greater than 0"):
        load_spec(p, ["train.lr=-1"])
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        load_spec(p, ["train.lr"])


def test_missing_required_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="data: Field required"):
        load_spec(write(tmp_path, "name: t\n"))
    with pytest.raises(SpecError, match=r"bad.yaml:2: invalid YAML"):
        load_spec(write(tmp_path, "name: t\n  bad: indent\n", "bad.yaml"))
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")


def test_toml_spec(tmp_path):
    p = write(tmp_path, 'name = "t"\n[data]\ntrain = "a.jsonl"\n[train]\nepochs = 1\n', "potstill.toml")
    spec = load_spec(p)
    assert spec.train.epochs == 1 and spec.data.train == (tmp_path / "a.jsonl").resolve()


def test_openai_teacher_needs_a_model_and_reserved_kinds_are_explained(tmp_path):
    with pytest.raises(SpecError, match="teacher.model is required"):
        load_spec(write(tmp_path, "name: t\ndata: {train: a.jsonl}\nteacher: {kind: openai}\n"))
    # extract is implemented; without its schema the error says what is missing
    with pytest.raises(SpecError, match="kind 'extract' needs json_schema"):
        load_spec(write(tmp_path, "name: t\nkind: extract\ndata: {train: a.jsonl}\n"))


def test_template_must_hold_text_and_known_fields(tmp_path):
    with pytest.raises(SpecError, match="must contain"):
        load_spec(write(tmp_path, 'name: t\ndata: {train: a.jsonl}\nprompt_template: "hi"\n'))
    with pytest.raises(SpecError, match="unknown field"):
        load_spec(write(tmp_path, 'name: t\ndata: {train: a.jsonl}\nprompt_template: "{text} {foo}"\n'))


def test_render_prompt_keeps_braces_in_user_text(tmp_path):
    spec = load_spec(write(tmp_path, "name: t\ndata: {train: a.jsonl}\n"))
    out = spec.render_prompt("my {weird} text", ["a", "b"])
    assert "my {weird} text" in out and "Labels: a, b" in out


def test_spec_hash_changes_with_the_task_not_with_training():
    from potstill.spec import TaskSpec

    a = TaskSpec(name="t", data={"train": "a"})
    b = TaskSpec(name="t", data={"train": "a"}, train={"epochs": 9})
    c = TaskSpec(name="t", data={"train": "a"}, instruction="other")
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()


@pytest.mark.parametrize("answer,expected", [
    ("balance", "balance"),
    ("  Balance. ", "balance"),
    ("ACCOUNT BLOCKED", "account_blocked"),
    ('{"label": "card_declined"}', "card_declined"),
    ('```json\n{"label": "Transfer"}\n```', "transfer"),
    ("Label: balance", "balance"),
    ("The intent is transfer.", "transfer"),
    ("balance or transfer", None),
    ("no idea", None),
    ('{"label": "refund"}', None),
    ("", None),
])
def test_parse_label(answer, expected):
    assert parse_label(answer, LABELS) == expected


def test_parse_label_takes_the_first_json_object_and_samples_need_temperature(tmp_path):
    assert parse_label('{"label": "balance"} and later {"x": 1}', LABELS) == "balance"
    assert parse_label('I think {"label": "refund"} no {"label": "transfer"}', LABELS) is None
    with pytest.raises(SpecError, match="needs teacher.temperature > 0"):
        load_spec(write(tmp_path, "name: t\ndata: {train: a.jsonl}\nteacher: {samples: 3}\n"))
