"""`potstill init NAME --data FILE [--gold FILE] [--teacher openai] [--labels a,b | --schema S]`:
a ready task folder for your own data and teacher, with every choice in the spec commented.

Your gold answers are the scarce part, so they go where they measure most:

- `--gold FILE` (labelled rows): a third becomes the validation split (early stopping, routing
  thresholds), the rest the test split (the final score); the teacher labels `--data`;
- no `--gold`, and some rows of `--data` carry labels: half of those rows (at most 1,000) become
  the test split, a quarter (at most 500) the validation split, and the rest stay in training,
  where they train the gold-only baseline (the "fine-tune or distill?" comparison). The held-out
  rows are left in the training file: the inputs stage removes them from training itself;
- no gold anywhere: an error, since nothing could measure the student.

The gold-only baseline is planned off, with the reason in the spec, when the training split keeps
no gold. The training file is copied into the folder (the folder is then complete, like the
bundled examples), unless it is larger than `COPY_LIMIT_BYTES`: then the spec points at it.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PotstillError

COPY_LIMIT_BYTES = 50 * 2**20
MIN_GOLD = 20
"""Fewest labelled rows to hold out: below this no split measures anything."""
KNOWN_PRICES = {"gpt-4o-mini": (0.15, 0.60)}
"""$ per million input / output tokens written into a new spec for these models (OpenAI's list
prices when this was written: check yours). Other models get 0, and `potstill check` says so."""


@dataclass
class Plan:
    kind: str
    labels: list[str] | None
    train_rows: int
    train_gold: int
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    gold_source: str


def init_from_data(directory: Path, data: Path, *, gold: Path | None = None, teacher: str = "openai",
                   labels: list[str] | None = None, schema: Path | None = None, model: str | None = None,
                   base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                   price_in: float | None = None, price_out: float | None = None,
                   text_field: str = "text", label_field: str = "label", seed: int = 13) -> Path:
    """Write `directory/potstill.yaml` and `directory/data/`; returns the spec path."""
    from .spec import DataSpec

    if teacher not in ("openai", "fit", "hf"):
        raise PotstillError(f"--teacher {teacher!r}: one of openai, fit, hf")
    if teacher == "hf" and not model:
        raise PotstillError("--teacher hf needs --model (a local classifier directory or hub id)")
    json_schema = _read_schema(schema) if schema is not None else None
    kind = "extract" if json_schema is not None else "classify"
    if kind == "extract" and labels:
        raise PotstillError("--labels is for classify tasks; an extract task names its fields in --schema")
    dspec = DataSpec(train=data, text_field=text_field, label_field=label_field)
    plan = _plan(dspec, data, gold, kind, labels, seed)
    if teacher == "fit" and plan.train_gold == 0:
        raise PotstillError("--teacher fit fine-tunes the teacher on the training gold, and none is "
                            f"left in {data} after the held-out splits: use an API teacher, or give "
                            "--data more labelled rows")
    out = directory / "data"
    out.mkdir(parents=True, exist_ok=True)
    if data.stat().st_size <= COPY_LIMIT_BYTES:
        shutil.copyfile(data, out / data.name)
        train_ref = f"data/{data.name}"
    else:
        train_ref = str(data.resolve())
    for name, rows in (("validation", plan.validation), ("test", plan.test)):
        with open(out / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    spec_path = directory / "potstill.yaml"
    spec_path.write_text(_render(directory.name, plan, train_ref, data, teacher=teacher, model=model,
                                 base_url=base_url, api_key_env=api_key_env, price_in=price_in,
                                 price_out=price_out, text_field=text_field, label_field=label_field,
                                 json_schema=json_schema))
    from .config import load_spec

    load_spec(spec_path, [])  # what init writes must load; a failure here is a bug worth a traceback
    return spec_path


def _read_schema(path: Path) -> dict[str, Any]:
    from .answers import check_extract_schema

    try:
        s = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PotstillError(f"--schema {path}: cannot read a JSON schema: {e}") from None
    try:
        check_extract_schema(s)
    except ValueError as e:
        raise PotstillError(f"--schema {path}: {e}") from None
    return s


def _plan(dspec, data: Path, gold: Path | None, kind: str, labels: list[str] | None, seed: int) -> Plan:
    from .data.inputs import load_examples

    train = load_examples(data, dspec, label_expected=False)
    if gold is not None:
        pool = load_examples(gold, dspec, require_label=True)
        source = str(gold)
    else:
        pool = [e for e in train if e.gold is not None]
        source = f"the labelled rows of {data}"
    if len(pool) < MIN_GOLD:
        raise PotstillError(
            f"{len(pool)} labelled rows in {gold or data} (field {dspec.label_field!r}): at least "
            f"{MIN_GOLD} are needed to hold out validation and test splits that measure the teacher "
            "and the student. Label a few hundred rows and pass them as --gold FILE")
    if kind == "classify":
        seen = sorted({e.gold for e in [*pool, *train] if e.gold is not None})
        if labels:
            bad = next((e for e in [*pool, *train] if e.gold is not None and e.gold not in labels), None)
            if bad is not None:
                raise PotstillError(f"{bad.id}: label {bad.gold!r} is not in --labels "
                                    f"({', '.join(labels)})")
        labels = labels or seen
        if len(labels) < 2:
            raise PotstillError(f"only one label ({labels[0]!r}) in the gold rows: pass --labels a,b,...")
    return _split(pool, train, kind, labels, source, gold is not None, dspec, seed)


def _split(pool, train, kind: str, labels: list[str] | None, source: str, gold_file: bool, dspec,
           seed: int) -> Plan:
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    if gold_file:
        n_val = len(pool) // 3
        n_test = len(pool) - n_val
    else:
        n_test, n_val = min(1000, len(pool) // 2), min(500, len(pool) // 4)
    val_i, test_i = order[:n_val], order[n_val:n_val + n_test]
    held = {pool[i].text.strip() for i in val_i + test_i}
    train_gold = sum(e.gold is not None and e.text.strip() not in held for e in train)

    def row(e) -> dict[str, Any]:
        g = json.loads(e.gold) if kind == "extract" else e.gold
        return {dspec.text_field: e.text, dspec.label_field: g}

    return Plan(kind, labels, len(train), train_gold, [row(pool[i]) for i in sorted(val_i)],
                [row(pool[i]) for i in sorted(test_i)], source)


def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a YAML string


def _render(name: str, p: Plan, train_ref: str, data: Path, *, teacher: str, model: str | None,
            base_url: str | None, api_key_env: str, price_in: float | None, price_out: float | None,
            text_field: str, label_field: str, json_schema: dict[str, Any] | None) -> str:
    import yaml

    task_name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in name).strip("-.") or "task"
    L: list[str] = [
        f"# {task_name}: written by `potstill init` from {data} ({p.train_rows} rows, {p.train_gold} of",
        f"# them with gold kept for training) and gold held out from {p.gold_source}.",
        "# Every field and its default: `potstill spec --explain`. Before spending: `potstill check`.",
        f"name: {task_name}",
        f"kind: {p.kind}",
    ]
    if p.kind == "classify":
        assert p.labels is not None
        L += [f"labels: [{', '.join(_q(x) for x in p.labels)}]"
              + "   # the teacher must answer one of these; the student predicts them",
              'instruction: "Classify the text into exactly one of the labels."'
              + "   # say what each label means: the teacher reads this"]
    else:
        L += ["json_schema:   # the fields to extract: one string property per field",
              *("  " + x for x in yaml.safe_dump(json_schema, sort_keys=False).splitlines())]
    L += ["", "data:",
          f"  train: {_q(train_ref)}   # your inputs: the teacher labels them"
          + (" (their gold labels, where present, train the baseline)" if p.train_gold else ""),
          f"  validation: data/validation.jsonl   # {len(p.validation)} gold rows: early stopping and routing thresholds",
          f"  test: data/test.jsonl               # {len(p.test)} gold rows: the final score of every model",
          f"  text_field: {_q(text_field)}",
          f"  label_field: {_q(label_field)}",
          "", "teacher:"]
    if teacher == "openai":
        m = model or "gpt-4o-mini"
        pin, pout = KNOWN_PRICES.get(m, (0.0, 0.0))
        pin = pin if price_in is None else price_in
        pout = pout if price_out is None else price_out
        priced = price_in is not None or m in KNOWN_PRICES
        L += ["  kind: openai                # any OpenAI-compatible chat-completions endpoint",
              f"  model: {_q(m)}",
              f"  base_url: {_q(base_url) if base_url else 'null'}"
              + ("   # null: https://api.openai.com/v1 (vLLM, Ollama, llama.cpp: their /v1 URL)" if not base_url else ""),
              f"  api_key_env: {api_key_env}   # the key is read from this variable, never written anywhere",
              f"  price_in: {pin}   # $ per million input tokens"
              + ("" if priced else ": set your model's price to see the cost"),
              f"  price_out: {pout}   # $ per million output tokens",
              "  max_spend_usd: 5.0          # labelling stops here, keeping what is done; `potstill check` estimates the set",
              "  concurrency: 16             # calls in flight",
              "  logprobs: true              # soft labels from token probabilities, when the endpoint gives them"]
    elif teacher == "fit":
        L += ["  kind: fit                   # fine-tune a local encoder on your training gold: the teacher",
              "  fit:",
              "    model: minilm             # the packaged MiniLM-L6"]
    else:
        L += ["  kind: hf                    # a local transformers classifier",
              f"  model: {_q(model or '')}"]
    baseline = p.train_gold > 0
    L += ["", "filters:",
          "  min_confidence: 0.0         # keep every answer; raise it to drop answers the teacher was unsure of",
          "  drop_gold_disagreement: true   # where you have gold and the teacher disagrees, drop the row",
          "", "student:",
          "  model: minilm               # the packaged MiniLM-L6 encoder",
          "  layers: [0, 5]              # keep its first and last layer: a 2-layer student",
          "", "train:",
          "  objective: distill          # learn from the teacher's answers (soft labels where it gives them)",
          (f"  baseline: true              # also fine-tune the same student on the {p.train_gold} gold "
           "training labels: fine-tune or distill?") if baseline else
          ("  baseline: false             # no gold labels are left for training (all are held out to "
           "measure); `potstill compare SPEC --gold FILE` asks how many labels fine-tuning would need"),
          "", "serve:",
          "  teacher_share: 0.10         # `potstill calibrate`: about 10% of traffic goes to the teacher",
          ""]
    return "\n".join(L)

