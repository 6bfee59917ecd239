"""Load inputs (JSONL, CSV, Parquet) with a field mapping, remove exact duplicates, fix the splits.

Every row becomes an `Example(id, text, gold)`; `gold` is None for inputs without a label, which
is normal in the training split. A malformed row raises `InputError` naming the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import PotstillError
from ..spec import DataSpec


class InputError(PotstillError):
    """Bad input data; the message names the file and line (or row)."""


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    gold: str | None = None


def _detect(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    for name, exts in {"jsonl": (".jsonl", ".ndjson", ".json"), "csv": (".csv", ".tsv"),
                       "parquet": (".parquet", ".pq")}.items():
        if suffix in exts:
            return name
    raise InputError(f"{path}: cannot tell the format from the suffix {suffix!r}; set data.format")


def decoded_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file (line ends kept); bytes that are not UTF-8 raise InputError
    naming the file and line (a plain text-mode read names neither)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{n}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                                 f"{e.start + 1}); save the file as UTF-8") from None


def _rows(path: Path, fmt: str) -> Iterator[tuple[int, dict]]:
    """(line or row number, row as dict)."""
    if fmt == "jsonl":
        for n, line in enumerate(decoded_lines(path), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            yield n, row
    elif fmt == "csv":
        reader = csv.DictReader(decoded_lines(path),
                                delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        for row in reader:
            # line_num is the physical line where this row ended (1 = header)
            if None in row:
                raise InputError(f"{path}:{reader.line_num}: more fields than the header has")
            yield reader.line_num, row
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a broken file
            raise InputError(f"{path}: cannot read as Parquet: {e}") from None
        for n, row in enumerate(table.to_pylist(), start=1):
            yield n, row
    else:  # pragma: no cover - guarded by DataSpec
        raise InputError(f"{path}: unknown format {fmt!r}")


def load_examples(path: Path, data: DataSpec, require_label: bool = False,
                  label_expected: bool = True) -> list[Example]:
    """Read one file into Examples, mapping `data.text_field` / `data.label_field`. A file where
    no row has the label field gets a warning naming it (unless `label_expected` is False)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    fmt = _detect(path, data.format)
    out = []
    label_seen = False
    for n, row in _rows(path, fmt):
        label_seen = label_seen or data.label_field in row
        at = f"{path}: row {n}" if fmt == "parquet" else f"{path}:{n}"
        text = row.get(data.text_field)
        if not isinstance(text, str):
            got = "missing" if text is None else f"a {type(text).__name__}"
            raise InputError(f"{at}: field {data.text_field!r} must be a string, it is {got}")
        gold = row.get(data.label_field)
        if isinstance(gold, dict):  # extract tasks: the gold fields, kept as canonical JSON text
            gold = json.dumps(gold, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        if gold is not None and not isinstance(gold, (str, int)):
            raise InputError(f"{at}: field {data.label_field!r} must be a string label")
        gold = str(gold) if gold not in (None, "") else None
        if require_label and gold is None:
            raise InputError(f"{at}: field {data.label_field!r} is required in this split")
        rid = str(row.get("id", f"{path.stem}:{n}"))
        out.append(Example(rid, text, gold))
    if not out:
        raise InputError(f"{path}: no rows")
    if label_expected and not label_seen:  # a renamed or missing column: no gold anywhere, say so
        from ..progress import log

        log(f"note: {path}: no row has the label field {data.label_field!r} (data.label_field), so its "
            "rows have no gold label: fine for inputs the teacher labels; if they should have labels, "
            "check the field's name")
    return out


def normalise(text: str) -> str:
    """Case-, whitespace- and punctuation-insensitive form of a text."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def dedup(examples: list[Example]) -> tuple[list[Example], list[Example]]:
    """Exact-duplicate removal (text identical after stripping), so the teacher is asked once;
    first occurrence wins. Near-duplicates are the `dedup` filter's job. Returns (kept, removed).
    """
    seen: set[str] = set()
    kept, removed = [], []
    for ex in examples:
        key = ex.text.strip()
        if key in seen:
            removed.append(ex)
        else:
            seen.add(key)
            kept.append(ex)
    return kept, removed


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    duplicates_removed: int = 0
    leaked_removed: int = 0


def load_splits(data: DataSpec, seed: int = 13) -> Splits:
    """Load train / validation / test as the spec says, fixed before anything trains.

    - validation and test must carry gold labels;
    - without a validation file, `validation_share` of the gold-labelled training rows is held
      out (seeded);
    - training inputs whose text also appears in validation or test are removed (no leakage).
    """
    train = load_examples(data.train, data)
    for extra in data.unlabelled:  # their labels, if any, are not gold: the teacher labels them
        train += [Example(ex.id, ex.text, None)
                  for ex in load_examples(extra, data, label_expected=False)]
    removed = 0
    if data.dedup:
        train, dup = dedup(train)
        removed = len(dup)
    if data.validation is not None:
        validation = load_examples(data.validation, data, require_label=True)
    else:
        rng = random.Random(seed)
        labelled = [i for i, ex in enumerate(train) if ex.gold is not None]
        k = int(len(labelled) * data.validation_share)
        if k == 0:
            raise InputError(
                f"{data.train}: no validation file and no gold labels to hold out; set data.validation"
            )
        held = set(rng.sample(labelled, k))
        validation = [train[i] for i in sorted(held)]
        train = [ex for i, ex in enumerate(train) if i not in held]
    test = load_examples(data.test, data, require_label=True) if data.test is not None else []
    held_out = {normalise(ex.text) for ex in validation + test}
    before = len(train)
    train = [ex for ex in train if normalise(ex.text) not in held_out]
    leaked = before - len(train)
    if data.max_train is not None and len(train) > data.max_train:
        rng = random.Random(seed)
        train = [train[i] for i in sorted(rng.sample(range(len(train)), data.max_train))]
    if data.max_test is not None and len(test) > data.max_test:
        rng = random.Random(seed + 1)
        test = [test[i] for i in sorted(rng.sample(range(len(test)), data.max_test))]
    return Splits(train, validation, test, removed, leaked)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file; a line that is not JSON (a file cut short by a kill, say) or not
    UTF-8 raises InputError naming the file and line."""
    out = []
    for n, line in enumerate(decoded_lines(Path(path)), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            cut = "" if line.endswith("\n") else "; the file looks cut short (rerun the stage that wrote it)"
            raise InputError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}){cut}") from None
    return out


def examples_hash(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.id, ex.text, ex.gold]).encode())
    return h.hexdigest()[:16]


@dataclass
class Inputs:
    """A run's prepared inputs (`stages/prepare.py` writes and reads them): the label list and the
    fixed splits."""

    labels: list[str]
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    dataset_hash: str

    @property
    def gold_hash(self) -> str:
        """The hash of what a gold-only model (a fitted teacher, the baseline) reads: the training
        inputs with gold, validation and test. Inputs added without gold (`data.unlabelled`) leave
        it alone, so they do not refit the teacher; with gold on every input it is dataset_hash."""
        return examples_hash([ex for ex in self.train if ex.gold is not None] + self.validation + self.test)
