"""Load a TaskSpec: defaults <- file (YAML or TOML) <- `--set a.b=x` overrides.

Errors name the file, the field and, for YAML, the line, e.g.
`potstill.yaml:14: student.layers: Input should be a valid list`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import PotstillError
from .paths import RunPaths
from .spec import TaskSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class SpecError(PotstillError):
    """A spec that cannot be loaded; the message names the file and the field."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is parsed as YAML (`[0,5]`, `3`, `null`, `x`)."""
    if "=" not in item:
        raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise SpecError(f"--set {item!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        parts, value = parse_override(item)
        node = doc
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise SpecError(f"--set {item!r}: {'.'.join(parts[:-1])} is not a section")
            node = nxt
        node[parts[-1]] = value
    return doc


def read_document(path: Path) -> tuple[dict[str, Any], Any]:
    """Read a spec file into a dict; also return the YAML node tree (for line numbers) or None."""
    if not path.exists():
        raise SpecError(f"{path}: no such spec file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        try:
            return tomllib.loads(text), None
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{path}: invalid TOML: {e}") from e
    try:
        doc = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpecError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from e
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: a spec must be a mapping of fields, got {type(doc).__name__}")
    return doc, node


def _line_of(node: Any, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node found along `loc`."""
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


_PATH_FIELDS = {"data": ("train", "validation", "test", "unlabelled"), "serve": ("ood_validation", "ood_test"),
                "train": ("general_data",)}


def _absolute_data_paths(doc: dict[str, Any], base: Path) -> None:
    for section, keys in _PATH_FIELDS.items():
        sec = doc.get(section)
        if isinstance(sec, dict):
            for key in keys:
                if isinstance(sec.get(key), str) and sec[key]:
                    sec[key] = _absolute(sec[key], base)
                elif isinstance(sec.get(key), list):  # a list of files
                    sec[key] = [_absolute(x, base) if isinstance(x, str) and x else x for x in sec[key]]


def _relative_model_paths(doc: dict[str, Any], base: Path) -> None:
    """teacher.model / student.model / teacher.fit.model written as ./x or ../x (a model made by
    another spec beside this one) are relative to the spec's folder; other values are hub ids,
    packaged names or paths as given."""
    for sec in (doc.get("teacher"), doc.get("student"), (doc.get("teacher") or {}).get("fit")):
        if isinstance(sec, dict) and isinstance(sec.get("model"), str) and \
                sec["model"].replace("\\", "/").startswith(("./", "../")):
            sec["model"] = str((base / sec["model"]).resolve())


def _absolute(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base / p)


def load_spec(path: str | Path, overrides: list[str] | None = None) -> TaskSpec:
    """Load, override and validate a spec; relative data paths are resolved against its folder."""
    path = Path(path)
    doc, node = read_document(path)
    # data paths in the file are relative to the file; paths given with --set, to the shell's cwd
    _absolute_data_paths(doc, path.resolve().parent)
    _relative_model_paths(doc, path.resolve().parent)
    doc = apply_overrides(doc, list(overrides or []))
    _absolute_data_paths(doc, Path.cwd())
    try:
        spec = TaskSpec.model_validate(doc)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(x) for x in loc) or "(top level)"
            line = _line_of(node, loc) if node is not None else None
            where = f"{path}:{line}" if line else str(path)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field (check the spelling)"
            lines.append(f"{where}: {field}: {msg}")
        raise SpecError("invalid spec\n" + "\n".join(lines)) from None
    spec.source = path.resolve()
    from .tasks import get_task

    try:
        get_task(spec.kind)
    except PotstillError as e:
        raise SpecError(f"{path}: {e}") from None
    return spec


def default_workdir(spec: TaskSpec) -> Path:
    """Beside the spec: `<spec folder>/runs/<name>`."""
    base = spec.source.parent if spec.source else Path.cwd()
    return base / "runs" / spec.name


def run_paths(spec: TaskSpec, workdir: str | Path | None = None) -> RunPaths:
    run = RunPaths(Path(workdir) if workdir else default_workdir(spec))
    run.root.mkdir(parents=True, exist_ok=True)
    run.spec.write_text(json.dumps(spec.resolved(), indent=2))
    return run
