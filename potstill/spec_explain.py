"""`potstill spec --explain`: every spec field with its type, default and meaning.

Generated from the pydantic models in `spec.py` (the attribute docstrings become field descriptions
through `use_attribute_docstrings`), so the reference cannot drift from the code. docs/SPEC.md is
this module's markdown; tests/test_spec_explain.py fails when it is stale.

Registered by the CLI as `app.command("spec")(spec_command)`.
"""

from __future__ import annotations

import json
import math
import textwrap
import types
import typing
from pathlib import PurePath
from typing import Annotated, Any, Literal, Optional

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .spec import CAUSAL_INSTRUCTIONS, CAUSAL_LR, CAUSAL_TEMPLATES, CAUSAL_TRAIN, TaskSpec

TOP = "(top level)"
"""Group name of the spec's own scalar fields (name, kind, labels, ...)."""

HEADER = ("<!-- Generated from potstill/spec.py by `potstill spec --explain --markdown > docs/SPEC.md`. "
          "Do not edit by hand: tests/test_spec_explain.py fails when it is stale. -->")

# Defaults that a validator of TaskSpec changes (spec.py: _kind_supported, _extract_defaults): a field's
# own default would mislead there. tests/test_spec_explain.py checks this table against the validators.
_LR_BY_METHOD = ", ".join(f"{k} {v!r}" for k, v in CAUSAL_LR.items())
DEFAULT_NOTES: dict[str, str] = {
    "instruction": "kind extract: spec.EXTRACT_INSTRUCTION; causal_lm student, kind "
                   + ", ".join(f"{k}: {json.dumps(v)}" for k, v in CAUSAL_INSTRUCTIONS.items()),
    "prompt_template": "kind extract: spec.EXTRACT_TEMPLATE; causal_lm student, kind "
                       + " or ".join(CAUSAL_TEMPLATES) + ": spec.CAUSAL_TEMPLATES[kind]",
    "student.kind": 'kind extract: "tagger"',
    "student.layers": "causal_lm student: null",
    **{f"train.{k}": f"causal_lm student: {v!r}" for k, v in CAUSAL_TRAIN.items()},
    "train.lr": f"causal_lm student, by student.lora.method: {_LR_BY_METHOD}",
}


# -- the entries -----------------------------------------------------------------------------------


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _collapse(text: str | None) -> str:
    return " ".join((text or "").split())


def explain(model: type[BaseModel] = TaskSpec, prefix: str = "") -> list[dict[str, str]]:
    """One entry per leaf field of `model`, depth first in declaration order, recursing into nested
    models: `path` (dotted), `section` (its top-level key), `type`, `default` (as YAML shows it, or
    `required`), `description` (the field's docstring, whitespace collapsed; may be empty) and
    `note` (a default that depends on other fields, or empty). Fields excluded from dumps are left out."""
    out: list[dict[str, str]] = []
    for name, f in model.model_fields.items():
        if f.exclude is True:
            continue
        path = f"{prefix}{name}"
        sub = _nested_model(f.annotation)
        if sub is not None:
            out += explain(sub, f"{path}.")
            continue
        out.append({
            "path": path,
            "section": path.split(".", 1)[0],
            "type": type_text(f),
            "default": "required" if f.is_required() else yaml_value(f.get_default(call_default_factory=True)),
            "description": _collapse(f.description),
            "note": DEFAULT_NOTES.get(path, ""),
        })
    return out


def section_docs(model: type[BaseModel] = TaskSpec, prefix: str = "") -> dict[str, str]:
    """Dotted path of every nested model -> what it is: the model's class docstring and the field's
    own docstring, whitespace collapsed."""
    out: dict[str, str] = {}
    for name, f in model.model_fields.items():
        sub = _nested_model(f.annotation)
        if sub is None or f.exclude is True:
            continue
        path = f"{prefix}{name}"
        out[path] = " ".join(x for x in (_collapse(sub.__dict__.get("__doc__")), _collapse(f.description)) if x)
        out.update(section_docs(sub, f"{path}."))
    return out


def sections(entries: list[dict[str, str]]) -> list[str]:
    """The top-level keys the entries fall under, in order."""
    return list(dict.fromkeys(e["section"] for e in entries))


def select(entries: list[dict[str, str]], section: str | None) -> list[dict[str, str]]:
    """The entries under `section`: a top-level key (`train`) or a dotted path (`teacher.fit`,
    `train.epochs`); None: all. An unknown section is a PotstillError naming the valid ones."""
    if section is None:
        return entries
    key = section.strip().strip(".")
    picked = [e for e in entries if e["path"] == key or e["path"].startswith(key + ".")]
    if not picked:
        from .errors import PotstillError

        raise PotstillError(f"no spec section {section!r}; valid sections: {', '.join(sections(entries))} "
                            "(or a dotted path below one, e.g. teacher.fit)")
    return picked


# -- types and defaults ----------------------------------------------------------------------------


_NAMES: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "str", type(None): "null", Any: "any"}


def _type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in typing.get_args(t))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(t))
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(t)
        inner = _type_name(args[0]) if args else "any"
        return f"list[{inner}]"
    if origin is dict or t is dict:
        return "mapping"
    if t in _NAMES:
        return _NAMES[t]
    if isinstance(t, type) and issubclass(t, PurePath):
        return "path"
    return getattr(t, "__name__", str(t))


def _num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _constrained(base: str, metadata: list[Any]) -> str:
    """`base` with the field's bounds (`int ≥ 1`, `0 ≤ float < 1`) and string constraints."""
    bound = {k: getattr(m, k) for m in metadata for k in ("gt", "ge", "lt", "le") if getattr(m, k, None) is not None}
    lo = ("<", bound["gt"]) if "gt" in bound else ("≤", bound["ge"]) if "ge" in bound else None
    hi = ("<", bound["lt"]) if "lt" in bound else ("≤", bound["le"]) if "le" in bound else None
    text = base
    if lo and hi:
        text = f"{_num(lo[1])} {lo[0]} {base} {hi[0]} {_num(hi[1])}"
    elif lo:
        text = f"{base} {'>' if lo[0] == '<' else '≥'} {_num(lo[1])}"
    elif hi:
        text = f"{base} {hi[0]} {_num(hi[1])}"
    for m in metadata:
        for k, word in (("min_length", "length ≥"), ("max_length", "length ≤"), ("pattern", "matching")):
            if getattr(m, k, None) is not None:
                text += f", {word} {getattr(m, k)}"
    return text


def type_text(f: FieldInfo) -> str:
    """A readable type: `int ≥ 1`, `"adaptive" | "fixed"`, `path | null`, `list[str]`; bounds attach
    to the non-null part (`int ≥ 1 | null`)."""
    t = f.annotation
    if not f.metadata:
        return _type_name(t)
    args = typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) else (t,)
    rest = [a for a in args if a is not type(None)]
    base = " | ".join(_type_name(a) for a in rest)
    text = _constrained(f"({base})" if len(rest) > 1 else base, list(f.metadata))
    return text + (" | null" if len(rest) < len(args) else "")


def yaml_value(v: Any) -> str:
    """A default as YAML shows it: null, true/false, numbers, quoted strings, flow lists and maps."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (".nan" if math.isnan(v) else ("-.inf" if v < 0 else ".inf")) if not math.isfinite(v) else repr(v)
    if isinstance(v, (str, PurePath)):
        return json.dumps(str(v), ensure_ascii=False)
    if isinstance(v, (list, tuple, set, frozenset)):
        return "[" + ", ".join(yaml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{yaml_value(str(k))}: {yaml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, BaseModel):
        return yaml_value(v.model_dump(mode="json"))
    return json.dumps(str(v))


# -- rendering -------------------------------------------------------------------------------------


def _groups(entries: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """Entries by their parent path (`teacher`, `teacher.fit`; TOP for the spec's own fields),
    each group in the order it first appears."""
    out: dict[str, list[dict[str, str]]] = {}
    for e in entries:
        out.setdefault(e["path"].rpartition(".")[0] or TOP, []).append(e)
    return out


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(entries: list[dict[str, str]], docs: dict[str, str] | None = None) -> str:
    """A markdown reference: one table per section (field, type, default, description), each under
    a heading with the section's own docstring. `docs`: section_docs() of TaskSpec by default."""
    docs = section_docs() if docs is None else docs
    groups = _groups(entries)
    lines = [
        HEADER, "",
        "# Spec reference", "",
        "Every field of a task spec (`potstill.yaml` or `.toml`), with its type, default and meaning. "
        "Unknown fields are errors; `--set a.b=x` overrides any field from the command line. "
        "`potstill spec --explain SECTION` prints one section in the console.", "",
        "Sections: " + ", ".join(f"[{g}](#{_anchor(g)})" for g in groups), "",
    ]
    for g, rows in groups.items():
        lines += [f"{'#' * (2 + g.count('.')) if g != TOP else '##'} {g}", ""]
        if docs.get(g):
            lines += [docs[g], ""]
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        for e in rows:
            default = f"`{_md_cell(e['default'])}`" if e["default"] != "required" else "**required**"
            if e["note"]:
                default += f"; {_md_cell(e['note'])}"
            lines.append(f"| `{e['path']}` | `{_md_cell(e['type'])}` | {default} | {_md_cell(e['description'])} |")
        lines.append("")
    return "\n".join(lines)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return "".join(c for c in heading.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def render_text(entries: list[dict[str, str]], section: str | None = None, width: int = 100,
                docs: dict[str, str] | None = None) -> str:
    """The console reference: per section a heading, then each field as `path  type  = default`
    with its description wrapped and indented below. `section` as for select()."""
    docs = section_docs() if docs is None else docs
    out: list[str] = []
    for g, rows in _groups(select(entries, section)).items():
        out.append(g)
        if docs.get(g):
            out += textwrap.wrap(docs[g], width, initial_indent="  ", subsequent_indent="  ")
        out.append("")
        for e in rows:
            default = e["default"] if e["default"] == "required" else f"= {e['default']}"
            out.append(f"  {e['path']}: {e['type']}  {default}")
            body = e["description"] + (f" [default for {e['note']}]" if e["note"] else "")
            out += textwrap.wrap(body.strip(), width, initial_indent="      ", subsequent_indent="      ")
        out.append("")
    return "\n".join(out)


def render_overview(entries: list[dict[str, str]], width: int = 100) -> str:
    """What `potstill spec` prints without --explain: the sections, their field counts and how to
    see the fields."""
    docs = section_docs()
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["section"]] = counts.get(e["section"], 0) + 1
    top = [s for s, n in counts.items() if s not in docs]
    lines = ["The task spec (potstill.yaml or .toml): top-level fields and sections.", "",
             f"  {'fields':<9} " + ", ".join(top)]
    for s in (s for s in counts if s in docs):
        head = f"  {s:<9} {counts[s]:>3} fields"
        first = docs[s].split(". ")[0].rstrip(".")
        lines.append(f"{head}  {textwrap.shorten(first, width - len(head) - 2, placeholder='...')}".rstrip())
    lines += ["", "potstill spec --explain [SECTION]   every field: type, default, meaning "
                  "(SECTION: a key above, or a dotted path like teacher.fit)",
              "potstill spec --explain --markdown  the same as markdown (docs/SPEC.md)"]
    return "\n".join(lines) + "\n"


# -- the command -----------------------------------------------------------------------------------


def _all_entries() -> list[dict[str, str]]:
    return explain()


def spec_command(
    section: Annotated[Optional[str], typer.Argument(
        help="Only this part of the spec: a top-level key (train, serve, ...) or a dotted path (teacher.fit).",
        metavar="SECTION", show_default=False)] = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Document every field: its type, default and meaning.")] = False,
    markdown: Annotated[bool, typer.Option(
        "--markdown", help="Print the reference as markdown (what docs/SPEC.md holds).")] = False,
):
    """Explain the task spec: every field's type, constraints, default and meaning, generated from the code.

    Without --explain or a SECTION, lists the sections. Examples: potstill spec --explain train; potstill spec --explain teacher.fit; potstill spec --explain --markdown > docs/SPEC.md
    """
    entries = _all_entries()  # `explain`, the flag, shadows the function here
    if markdown:
        typer.echo(render_markdown(select(entries, section)), nl=False)
    elif explain or section is not None:
        typer.echo(render_text(entries, section), nl=False)
    else:
        typer.echo(render_overview(entries), nl=False)


__all__ = ["explain", "render_markdown", "render_text", "render_overview", "section_docs", "select",
           "spec_command"]
