"""Build examples/fortunes/data from the fortune cookie files of Debian's `fortunes` and
`fortunes-min` packages: topic classification of short quotes, jokes and verses (16 topics).

    apt-get download fortunes fortunes-min
    for f in fortunes*.deb; do dpkg-deb -x "$f" pkg; done
    python examples/fortunes/convert.py pkg/usr/share/games/fortunes

A fortune file holds entries separated by lines that are a single `%`; its name is the topic.
Kept: the topical files with at least 140 entries, leaving out the catch-all ones (`people`,
`cookie`, `fortunes`, `miscellaneous`, `platitudes`, `wisdom`, `zippy`, ...), the ones named by
form rather than topic (`definitions`, `riddles`, `disclaimer`), and `men-women` and `ethnic`.
Texts are whitespace-normalised; a text found in two files, or twice, is kept once (a text in
two topics is dropped); splits are stratified by topic, 70 / 15 / 15, seeded.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

TOPICS = ("computers", "songs-poems", "politics", "work", "science", "art", "linux", "literature",
          "startrek", "drugs", "law", "education", "food", "love", "kids", "sports")


def entries(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    out, cur = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            out.append(" ".join(" ".join(cur).split()))
            cur = []
        else:
            cur.append(line)
    out.append(" ".join(" ".join(cur).split()))
    return [e for e in out if e]


def main(src: str, dest: str = str(Path(__file__).parent / "data"), seed: int = 0) -> None:
    topics: dict[str, set[str]] = {}
    for t in TOPICS:
        for e in entries(Path(src) / t):
            topics.setdefault(e, set()).add(t)
    rows = sorted((text, next(iter(ts))) for text, ts in topics.items() if len(ts) == 1)
    rng = random.Random(seed)
    splits: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
    for t in TOPICS:
        mine = [{"text": x, "label": t} for x, lab in rows if lab == t]
        rng.shuffle(mine)
        n_val = n_test = round(0.15 * len(mine))
        splits["validation"] += mine[:n_val]
        splits["test"] += mine[n_val : n_val + n_test]
        splits["train"] += mine[n_val + n_test :]
    Path(dest).mkdir(parents=True, exist_ok=True)
    for name, rs in splits.items():
        rng.shuffle(rs)
        with open(Path(dest) / f"{name}.jsonl", "w") as f:
            for r in rs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(name, len(rs), dict(sorted(Counter(r["label"] for r in rs).items())))
    print("dropped (in two topics):", sum(len(ts) > 1 for ts in topics.values()))


if __name__ == "__main__":
    main(*sys.argv[1:])
