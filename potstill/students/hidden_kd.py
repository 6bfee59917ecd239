"""Which teacher a student's hidden-state loss reads, and with which layer map.

The loss itself is `losses.hidden_state_loss`; the training loop runs it when
`students.classifier.train_classifier` gets a `teacher`. This module decides whether there is
one: only a local encoder teacher (teacher.kind fit, or hf with a local encoder) that shares the
student's tokenizer, only for the distilled student (never the gold-only baseline), and only when
`train.hidden_weight` > 0. An API teacher has no hidden states to give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..manifest import file_hash
from ..progress import log
from .hf import local_teacher_or_none


def hidden_teacher_hash(spec, run, objective: str) -> str | None:
    """Hash of the teacher weights the hidden-state loss would read (for the student's
    fingerprint), or None when the loss is off."""
    if spec.train.hidden_weight <= 0 or objective == "gold":
        return None
    d = local_teacher_or_none(spec, run)
    if d is None:
        return None
    weights = sorted(d.glob("*.safetensors"))
    return file_hash(*weights) if weights else str(d)


def hidden_teacher(spec, run, student, student_tok, objective: str, init: str
                   ) -> tuple[Any, list[tuple[int, int]] | None, str | None]:
    """(teacher encoder or None, layer map or None, weights hash or None) for the hidden-state loss.

    The teacher loads as a bare encoder (AutoModel: the head is not needed). The map is
    `losses.default_layer_map`: student layer i <- the teacher layer `student.layers[i]` when the
    student was cut from the teacher (init from it), else the uniform TinyBERT map by depth."""
    from transformers import AutoModel, AutoTokenizer

    from ..losses import default_layer_map
    t = spec.train
    if t.hidden_weight <= 0 or objective == "gold":
        return None, None, None
    d = local_teacher_or_none(spec, run)
    if d is None:
        log("train: train.hidden_weight is set but the teacher is not a local encoder: hidden-state loss off")
        return None, None, None
    ttok = AutoTokenizer.from_pretrained(d)
    if ttok.get_vocab() != student_tok.get_vocab():
        log("train: the teacher's vocabulary differs from the student's: hidden-state loss off")
        return None, None, None
    teacher = AutoModel.from_pretrained(d)
    n_s, n_t = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    init_from_teacher = Path(init).resolve() == d.resolve() if Path(init).exists() else False
    layers = spec.student.layers if init_from_teacher else None
    layer_map = default_layer_map(layers, n_s, n_t)
    log(f"train: hidden-state loss x{t.hidden_weight} against the teacher in {d}, "
        f"pairs (student, teacher) {layer_map}")
    weights = sorted(d.glob("*.safetensors"))
    return teacher, layer_map, (file_hash(*weights) if weights else str(d))
