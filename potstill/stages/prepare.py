"""Stage `inputs`: load the data the spec names, fix the label set and the held-out splits.

Writes `inputs/{train,validation,test}.jsonl`, `inputs/labels.json` and a manifest with the
dataset hash. Every later stage reads these files, never the user's originals, so a run stays
consistent even if the source files change (a changed source makes a new dataset hash).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.inputs import Example, InputError, Inputs, examples_hash, load_splits, read_jsonl, write_jsonl
from ..errors import PotstillError
from ..manifest import file_hash, fingerprint, read_manifest, up_to_date, write_manifest
from ..paths import MANIFEST, SPLITS, RunPaths
from ..progress import log
from ..spec import TaskSpec
from ..tasks import get_task


def prepare_inputs(spec: TaskSpec, run: RunPaths) -> Inputs:
    task = get_task(spec.kind)
    d = spec.data
    sources = [p for p in (d.train, d.validation, d.test, *d.unlabelled) if p is not None]
    for p in sources:
        if not Path(p).exists():
            raise InputError(f"{p}: no such file (data.{_split_of(d, p)} in {spec.source})")
    fp = fingerprint(d.model_dump(mode="json"), spec.labels, spec.train.seed,
                     [file_hash(Path(p)) for p in sources],
                     *task.input_fingerprint(spec))
    if up_to_date(run.inputs, fp, "labels.json"):
        return load_inputs(run)
    splits = load_splits(d, seed=spec.train.seed)
    labels = task.label_set(spec, splits)  # checks every split's gold
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
        raise PotstillError(f"{run.inputs}: no prepared inputs; run an earlier stage first")
    m = read_manifest(run.inputs)
    labels = json.loads((run.inputs / "labels.json").read_text())
    splits = {n: [Example(r["id"], r["text"], r["label"]) for r in read_jsonl(run.inputs / f"{n}.jsonl")]
              for n in SPLITS}
    return Inputs(labels, splits["train"], splits["validation"], splits["test"], m["dataset_hash"])


def _split_of(d, p) -> str:
    return next((n for n in SPLITS if getattr(d, n) == p), "unlabelled")
