"""The encoder classifier student on ONNX Runtime (CPU): `serve.runtime: onnx` or `onnx_int8`.

`OnnxClassifierStudent` is a `ClassifierStudent` (router.py) whose forward pass runs the graph
that `potstill export RUN --format onnx [--int8]` wrote (onnx_export.py) instead of torch: same
tokenizer, same (logits, embeddings) out of `forward`, so calibration (temperature, confidence
score, OOD statistics) and routing are shared unchanged. The export must come from the weights
being served: `onnx_meta.json`'s `source_version` is checked against the model directory's
weights hash; a missing or stale export is made on the spot (logged), like a stale calibration.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..onnx_export import FP32, INT8, META, export_onnx, session
from ..threads import limit_threads
from .confidence import NoOOD, OODStats
from .router import ClassifierStudent, student_version

log = logging.getLogger("potstill.serve")
RUNTIMES = ("torch", "onnx", "onnx_int8")


def ensure_export(model_dir: str | Path, onnx_dir: str | Path, int8: bool, max_length: int) -> Path:
    """The ONNX file for `model_dir`'s current weights, exported first when missing or stale."""
    model_dir, onnx_dir = Path(model_dir), Path(onnx_dir)
    want = onnx_dir / (INT8 if int8 else FP32)
    meta_path = onnx_dir / META
    why = None
    if not want.exists() or not meta_path.exists():
        why = f"no {want.name} in {onnx_dir}"
    elif json.loads(meta_path.read_text()).get("source_version") != student_version(model_dir):
        why = f"{onnx_dir} was exported from other weights than {model_dir}"
    if why:
        log.warning("exporting to ONNX first: %s", why)
        export_onnx(model_dir, onnx_dir, int8=int8, max_length=max_length)
    return want


class OnnxClassifierStudent(ClassifierStudent):
    """ClassifierStudent with the forward pass on ONNX Runtime (see module doc)."""

    def __init__(self, model_dir: str | Path, *, onnx_dir: str | Path, int8: bool = False,
                 temperature: float = 1.0, score: str = "max_prob", ood: OODStats | None = None,
                 embedding: str = "cls", max_length: int = 64, threads: int | None = None,
                 device: str = "auto"):
        from transformers import AutoConfig, AutoTokenizer

        # no super().__init__: that loads the torch model this class exists to avoid
        self.model_dir = Path(model_dir)
        path = ensure_export(self.model_dir, onnx_dir, int8, max_length)
        self.onnx_path = path
        limit_threads(threads)  # numpy's BLAS (OOD distances); the session takes its own count
        self.session = session(path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(Path(onnx_dir))
        cfg = AutoConfig.from_pretrained(Path(onnx_dir))
        self.labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
        self.identity = student_version(self.model_dir)  # the same weights as the torch student
        self.runtime = "onnx_int8" if int8 else "onnx"
        self.temperature = float(temperature)
        self.score = score
        self.ood = ood if ood is not None else NoOOD()
        self.embedding = embedding
        self.max_length = max_length
        self.model = None
        self.device = "cpu"

    def forward(self, texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N, C), embeddings (N, D)) float32, batches formed by length."""
        from ..students.hf import clip_for_tokenizer

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        logits = np.zeros((len(texts), len(self.labels)), np.float32)
        emb: np.ndarray | None = None
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            enc = self.tokenizer(clip_for_tokenizer([texts[i] for i in idx], self.max_length),
                                 padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="np")
            feed = {n: enc[n].astype(np.int64) for n in self.input_names}
            lg, h = self.session.run(["logits", "hidden"], feed)  # (B, C), (B, T, D)
            if self.embedding == "mean":
                m = feed["attention_mask"][..., None].astype(h.dtype)  # (B, T, 1)
                e = (h * m).sum(1) / np.maximum(m.sum(1), 1)
            else:
                e = h[:, 0]
            if emb is None:
                emb = np.zeros((len(texts), e.shape[-1]), np.float32)
            logits[idx] = lg
            emb[idx] = e
        if emb is None:
            emb = np.zeros((0, 0), np.float32)
        return logits, emb
