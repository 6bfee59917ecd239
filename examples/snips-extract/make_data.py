"""Rebuild data/*.jsonl from the project's converted SNIPS JSONL (shared/data/snips, CC0 1.0).

- Rows in which a slot repeats (the converter stores a list there) are left out: this example's
  schema makes every slot one string. Everything else is as in the source: texts, values, order.
- validation.jsonl and test.jsonl keep their gold fields.
- Of the training rows, 4,000 keep their gold fields (train.jsonl); the other 8,996 lose them
  (unlabelled.jsonl, the text only). That is how a user starts: some requests labelled by hand,
  many more in the logs. The teacher labels the logged ones for the student; the gold-only
  baseline cannot use them.
- The 4,000 are the seeded subset that `data.max_train: 4000` took when this example still
  listed every training row as gold (potstill's own subset, seed 13). So the teacher fitted on
  them is the one in the earlier runs of docs/RESULTS.md. Rows whose text repeats a kept row's
  text stay with it in train.jsonl (potstill removes the exact duplicates).

    python examples/snips-extract/make_data.py /work/shared/data/snips
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

GOLD_ROWS = 4000
SEED = 13  # train.seed's default: the seed of potstill's max_train subset


def rows(path: Path) -> list[dict]:
    """The rows of a converted split whose every slot is one string."""
    out = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in out if all(isinstance(v, str) for v in r["fields"].values())]


def write(path: Path, rs: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs), encoding="utf-8")
    print(path.name, len(rs))


def gold_texts(train: list[dict], data: Path) -> set[str]:
    """The texts of the training rows that `data.max_train: 4000` keeps (potstill's seeded subset)."""
    from potstill.data.inputs import load_splits
    from potstill.spec import DataSpec

    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "train.jsonl"
        full.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train), encoding="utf-8")
        spec = DataSpec(train=full, validation=data / "validation.jsonl", test=data / "test.jsonl",
                        label_field="fields", max_train=GOLD_ROWS)
        return {ex.text for ex in load_splits(spec, seed=SEED).train}


def main(src: str) -> None:
    here = Path(__file__).parent / "data"
    here.mkdir(exist_ok=True)
    for split in ("validation", "test"):
        write(here / f"{split}.jsonl", rows(Path(src) / f"{split}.jsonl"))
    train = rows(Path(src) / "train.jsonl")
    keep = gold_texts(train, here)
    write(here / "train.jsonl", [r for r in train if r["text"] in keep])
    write(here / "unlabelled.jsonl", [{"text": r["text"]} for r in train if r["text"] not in keep])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/snips")
