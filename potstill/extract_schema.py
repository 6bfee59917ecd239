"""The JSON side of `kind: extract`: the schema's contract, answer parsing, canonical JSON.

An extract task turns a text into one JSON object whose fields are the string-valued properties
of `json_schema` (an object schema). Pure functions; importing this module imports nothing heavy.

Conventions, shared by teachers, filters, students and evaluation:

- a field that is absent, `null` or an empty string means "the text does not mention it": such
  values are removed before validation (`clean_fields`), so `{"city": null}` == `{}`;
- the canonical text of an object (`canonical_json`) is its JSON with sorted keys and no
  whitespace; it is what `Answer.label`, a record's `label`/`gold` and self-consistency votes hold.
"""

from __future__ import annotations

import json
from typing import Any

EXTRACT_INSTRUCTION = (
    "Extract the fields described by the JSON schema from the text. Copy each value exactly as it "
    "is written in the text; leave out fields the text does not mention."
)
EXTRACT_TEMPLATE = (
    "{instruction}\n\nJSON schema: {schema}\n\nText: {text}\n\n"
    "Answer with one JSON object only."
)


def check_extract_schema(schema: Any) -> list[str]:
    """The field names of an extract schema, or ValueError saying what is wrong and where.

    The schema must be a valid JSON Schema (checked against its metaschema), of `type: object`,
    with at least one property, every property string-valued (`{"type": "string"}`, other
    keywords such as `description` or `enum` allowed), and `required` naming only properties.
    """
    import jsonschema

    if not isinstance(schema, dict):
        raise ValueError(f"json_schema must be a mapping (a JSON Schema object), got {type(schema).__name__}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = ".".join(str(p) for p in e.absolute_path)
        raise ValueError(f"json_schema{'.' + where if where else ''}: not a valid JSON Schema: "
                         f"{e.message}") from None
    if schema.get("type") != "object":
        raise ValueError(f"json_schema.type: an extract schema must be 'object', got {schema.get('type')!r}")
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        raise ValueError("json_schema.properties: an extract schema needs at least one field")
    for name, sub in props.items():
        if not isinstance(sub, dict) or sub.get("type") != "string":
            got = sub.get("type") if isinstance(sub, dict) else sub
            raise ValueError(f"json_schema.properties.{name}: extract fields must be string-valued "
                             f"({{\"type\": \"string\"}}), got type {got!r}")
    missing = [r for r in schema.get("required", []) if r not in props]
    if missing:
        raise ValueError(f"json_schema.required: {missing} are not properties")
    return list(props)


def schema_fields(schema: dict[str, Any]) -> list[str]:
    return list(schema["properties"])


def canonical_json(obj: dict[str, Any]) -> str:
    """Sorted keys, no whitespace, Unicode kept: equal objects give equal text."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def clean_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop null and empty-string values (they mean "not mentioned"); strip string values."""
    out = {}
    for k, v in obj.items():
        if isinstance(v, str):
            v = v.strip()
            if not v:
                continue
        elif v is None:
            continue
        out[k] = v
    return out


def validate_fields(obj: Any, schema: dict[str, Any]) -> str | None:
    """None when `obj` satisfies `schema`, else the first error as `field: message`."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    err = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if err is None:
        return None
    where = ".".join(str(p) for p in err.absolute_path) or "(object)"
    return f"{where}: {err.message}"


def first_json_object(s: str) -> dict[str, Any] | None:
    """The first JSON object in `s` (bare, in a code fence, or after some prose)."""
    decoder = json.JSONDecoder()
    start = s.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(s, start)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return obj
        start = s.find("{", start + 1)
    return None


def parse_answer(raw: str | None, schema: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """A teacher's text -> (fields, reason, detail).

    fields is the cleaned, schema-valid object, or None with reason `invalid_json` (no JSON object
    in the text) or `schema_invalid` (an object that breaks the schema), and a detail message.
    """
    if raw is None:
        return None, "invalid_json", "no answer text"
    obj = first_json_object(raw)
    if obj is None:
        return None, "invalid_json", f"no JSON object in the answer: {raw[:120]!r}"
    obj = clean_fields(obj)
    err = validate_fields(obj, schema)
    if err is not None:
        return None, "schema_invalid", err
    return obj, None, None
