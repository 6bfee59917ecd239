"""Stage `inputs`: load the data the spec names, fix the label set and the held-out splits.

Writes `inputs/{train,validation,test}.jsonl`, `inputs/labels.json` and a manifest with the
dataset hash. Every later stage reads these files, never the user's originals, so a run stays
consistent even if the source files change (a changed source makes a new dataset hash).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..manifest import fingerprint, read_manifest, up_to_date, write_manifest
from ..paths import MANIFEST, SPLITS, RunPaths
from ..progress import log
from ..spec import TaskSpec
from .inputs import Example, InputError, examples_hash, load_splits, read_jsonl, write_jsonl


@dataclass
class Inputs:
    labels: list[str]
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    dataset_hash: str


def prepare_inputs(spec: TaskSpec, run: RunPaths) -> Inputs:
    from ..manifest import file_hash

    d = spec.data
    sources = [p for p in (d.train, d.validation, d.test, *d.unlabelled) if p is not None]
    for p in sources:
        if not Path(p).exists():
            raise InputError(f"{p}: no such file (data.{_split_of(d, p)} in {spec.source})")
    fp = fingerprint(d.model_dump(mode="json"), spec.labels, spec.train.seed,
                     [file_hash(Path(p)) for p in sources],
                     *([spec.json_schema] if spec.kind == "extract" else []))
    if up_to_date(run.inputs, fp, "labels.json"):
        return load_inputs(run)
    splits = load_splits(d, seed=spec.train.seed)
    gold = sorted({ex.gold for ex in splits.train + splits.validation + splits.test if ex.gold})
    labels = list(spec.labels) if spec.labels else gold
    if spec.kind == "extract":  # labels = the schema's fields; each gold is a JSON object
        from ..extract_data import check_gold

        labels = check_gold(spec, splits)
    elif spec.kind == "generate":
        # free text has no label set: the gold answers (test ones included) must never reach a
        # prompt through {labels}; only labels listed in the spec do
        labels = list(spec.labels or [])
    elif len(labels) < 2:
        raise InputError(f"{d.train}: found {len(labels)} label(s) in the data; list `labels` in the spec")
    known = set(labels)
    for name, exs in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        for ex in exs:
            if ex.gold is not None and ex.gold not in known and spec.kind == "classify":
                raise InputError(f"{ex.id}: label {ex.gold!r} ({name} split) is not one of the spec's labels")
    for name in SPLITS:
        write_jsonl(run.inputs / f"{name}.jsonl",
                    [{"id": e.id, "text": e.text, "label": e.gold} for e in getattr(splits, name)])
    (run.inputs / "labels.json").write_text(json.dumps(labels, indent=1))
    dataset_hash = examples_hash(splits.train + splits.validation + splits.test)
    write_manifest(run.inputs, "inputs", spec, fingerprint=fp, dataset_hash=dataset_hash,
                   counts={"train": len(splits.train), "validation": len(splits.validation),
                           "test": len(splits.test), "labels": len(labels),
                           "duplicates_removed": splits.duplicates_removed,
                           "held_out_overlap_removed": splits.leaked_removed,
                           "train_with_gold": sum(e.gold is not None for e in splits.train)},
                   sources=[str(p) for p in sources])
    log(f"inputs: {len(splits.train)} train ({splits.duplicates_removed} duplicates removed, "
        f"{splits.leaked_removed} overlapping held-out data removed), {len(splits.validation)} "
        f"validation, {len(splits.test)} test, {len(labels)} labels")
    return Inputs(labels, splits.train, splits.validation, splits.test, dataset_hash)


def load_inputs(run: RunPaths) -> Inputs:
    if not (run.inputs / MANIFEST).exists():
        raise FileNotFoundError(f"{run.inputs}: no prepared inputs; run an earlier stage first")
    m = read_manifest(run.inputs)
    labels = json.loads((run.inputs / "labels.json").read_text())
    splits = {n: [Example(r["id"], r["text"], r["label"]) for r in read_jsonl(run.inputs / f"{n}.jsonl")]
              for n in SPLITS}
    return Inputs(labels, splits["train"], splits["validation"], splits["test"], m["dataset_hash"])


def _split_of(d, p) -> str:
    return next((n for n in SPLITS if getattr(d, n) == p), "unlabelled")
