"""Rebuild data/*.jsonl from the project's converted SNIPS JSONL (shared/data/snips, CC0 1.0):
a seeded subsample, each row {"text", "intent", "label"} with `label` the slots as one JSON object
string (slot -> value, in the order the slots occur in the text). Rows in which a slot repeats
(the converter stores a list there) are left out, as in examples/snips-extract.

unlabelled.jsonl holds the texts alone of the next 800 shuffled training rows (less any that repeat
a gold row's text): requests from the logs, for the teacher to answer and the student to learn
from (`data.unlabelled`); the gold-only baseline cannot use them.

    python examples/snips-json/make_data.py /work/shared/data/snips
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SIZES = {"train": 400, "validation": 40, "test": 100}
UNLABELLED = 800
SEED = 0


def rows(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if any(not isinstance(v, str) for v in r["fields"].values()):
            continue
        fields = dict(sorted(r["fields"].items(), key=lambda kv: r["text"].find(kv[1])))
        out.append({"text": r["text"], "intent": r["intent"], "label": json.dumps(fields, ensure_ascii=False)})
    return out


def write(path: Path, rs: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs), encoding="utf-8")


def main(src: str) -> None:
    here = Path(__file__).parent / "data"
    here.mkdir(exist_ok=True)
    for split, n in SIZES.items():
        rs = rows(Path(src) / f"{split}.jsonl")
        random.Random(SEED).shuffle(rs)
        write(here / f"{split}.jsonl", rs[:n])
        print(split, len(rs[:n]), "of", len(rs))
        if split == "train":
            gold = {r["text"] for r in rs[:n]}
            extra = [{"text": r["text"]} for r in rs[n:n + UNLABELLED] if r["text"] not in gold]
            write(here / "unlabelled.jsonl", extra)
            print("unlabelled", len(extra))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/snips")
