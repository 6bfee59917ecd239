"""`hf` teacher: a local transformers sequence-classification model, full distribution, batched."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import PotstillError
from ..manifest import file_hash
from ..students.classifier import (
    batch_throughput,
    classifier_timer,
    load_classifier,
    model_labels,
    predict_logits,
)
from ..students.hf import resolve_model_path
from ..timing import Timer
from .base import Answer


class HFTeacher:
    """Any `AutoModelForSequenceClassification` whose labels cover the task's labels.

    Its output columns are reordered to the task's label order; labels the model has but the
    task lacks get no mass (the distribution is renormalised over the task's labels).
    """

    def __init__(self, model: str, labels: list[str], batch_size: int = 64, max_length: int = 128):
        path = resolve_model_path(model)
        self.model, self.tokenizer = load_classifier(path)
        own = model_labels(self.model)
        missing = [l for l in labels if l not in own]
        if missing:
            raise PotstillError(
                f"teacher model {model}: its labels lack {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''} (it has {len(own)} labels)"
            )
        self.labels = labels
        self._cols = np.array([own.index(l) for l in labels])
        self.batch_size, self.max_length = batch_size, max_length
        self.identity = local_identity(path)

    def request(self, text: str) -> dict[str, Any]:
        return {"text": text, "max_length": self.max_length}

    def answer(self, texts: Sequence[str]) -> Iterator[tuple[int, Answer]]:
        chunk = self.batch_size * 8
        for s in range(0, len(texts), chunk):
            t0 = time.perf_counter()
            logits = predict_logits(self.model, self.tokenizer, texts[s : s + chunk],
                                    self.batch_size, self.max_length)[:, self._cols]
            z = logits - logits.max(-1, keepdims=True)
            probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)  # (n, C)
            ms = (time.perf_counter() - t0) * 1000 / max(len(probs), 1)
            for j, p in enumerate(probs):
                top = int(p.argmax())
                yield s + j, Answer(label=self.labels[top],
                                    probs=[float(f"{x:.6g}") for x in p], latency_ms=ms)


    def describe(self, texts: Sequence[str], ev: Any) -> dict[str, Any]:
        """Size and batch throughput on this machine (the evaluation's teacher row; its batch-1
        latency is timed through `timer`, in turn with the students)."""
        from ..students.hf import count_params

        return {"params": count_params(self.model), "layers": self.model.config.num_hidden_layers,
                **batch_throughput(self.model, self.tokenizer, list(texts), ev.batch_size, self.max_length)}

    def timer(self, ev: Any) -> Timer:
        """One input at a time, as the students are timed (timing.py)."""
        return classifier_timer(self.model, self.tokenizer, ev.latency_samples, self.max_length)


def local_identity(path: str | Path) -> str:
    """A local model's cache identity: its folder name and the hash of its weights."""
    weights = sorted(Path(path).glob("*.safetensors")) or sorted(Path(path).glob("*.bin"))
    digest = file_hash(*weights) if weights else "hub"
    return f"hf:{Path(path).name}@{digest}"
