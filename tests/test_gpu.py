"""The training paths on a CUDA GPU: bf16 autocast for causal and encoder students, logit and
hidden-state KD from a cached teacher, QLoRA (`student.lora.quantize_4bit`: the frozen base in
4-bit NF4 through bitsandbytes), peak GPU memory in the training history.

Skipped where torch sees no CUDA device, so CI (CPU machines) skips the whole module; on a GPU
machine `pytest -m gpu` runs it (bench/gpu_check.sh does, with the rest of the suite).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from causal_fixtures import build_tiny_llama, one_torch_thread  # noqa: F401 (autouse)

from potstill.students.causal_lm import (
    LMRow,
    LMTrainConfig,
    build_causal_lm,
    generate,
    load_causal_lm,
    save_causal_lm,
    train_causal_lm,
)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROWS = [LMRow("what is my balance", "balance"), LMRow("send money to mom", "transfer"),
        LMRow("will it rain tomorrow", "weather"), LMRow("how much money is in my account", "balance")]


def _on_cuda(model) -> bool:
    return all(p.device.type == "cuda" for p in model.parameters())


def test_lora_student_trains_in_bf16_on_cuda_and_round_trips(tmp_path):
    path = build_tiny_llama(tmp_path / "lm", hidden=64)
    model, tok = build_causal_lm(str(path), "lora", r=8)
    assert _on_cuda(model)
    h = train_causal_lm(model, tok, ROWS * 8, LMTrainConfig(max_steps=24, batch_size=4, lr=3e-2, log_every=1,
                                                            warmup_ratio=0, precision="bf16"))
    assert h["precision"] == "bf16" and h["steps"] == 24
    assert h["peak_gpu_mib"] > 0 and h["tokens_per_s"] > 0
    losses = [x["loss"] for x in h["losses"]]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    save_causal_lm(model, tok, tmp_path / "out")
    again, tok2 = load_causal_lm(tmp_path / "out")
    again = again.to("cuda")
    gens = generate(again, tok2, [r.prompt for r in ROWS], max_new_tokens=4, batch_size=2)
    assert len(gens) == len(ROWS) and all(isinstance(g.text, str) for g in gens)


def test_pruned_student_learns_from_a_cached_teacher_with_hidden_kd_on_cuda(tmp_path):
    """Logit KD over chunks plus hidden-state KD against the teacher's cached states (one teacher
    pass, then every epoch reads the cache), bf16 on CUDA; the same batch's loss on CUDA in fp32
    matches the CPU's."""
    from potstill.students.causal_kd import chunked_lm_loss
    from potstill.students.causal_lm import collate, encode_row
    from potstill.students.prune import hidden_pairs

    teacher_path = build_tiny_llama(tmp_path / "teacher", layers=4, hidden=64)
    teacher, tok = build_causal_lm(str(teacher_path), "full")
    student, _ = build_causal_lm(str(teacher_path), "full", layers=[0, 3])
    assert _on_cuda(student) and len(student.model.layers) == 2
    cfg = LMTrainConfig(objective="logit_kd", max_steps=12, batch_size=4, lr=1e-3, log_every=1,
                        warmup_ratio=0, precision="bf16", hidden_weight=1.0, hidden_pairs=hidden_pairs([0, 3]))
    h = train_causal_lm(student, tok, ROWS * 4, cfg, teacher=teacher)
    assert h["precision"] == "bf16" and h["steps"] == 12
    assert all(math.isfinite(x[k]) for x in h["losses"] for k in ("loss", "kd", "ce", "hidden"))
    assert h["losses"][-1]["loss"] < h["losses"][0]["loss"]

    plain = LMTrainConfig(objective="logit_kd", precision="fp32", hidden_weight=1.0, hidden_pairs=hidden_pairs([0, 3]))
    batch = collate(tok, [encode_row(tok, r, 64) for r in ROWS], ROWS)
    with torch.no_grad():
        on_gpu, _ = chunked_lm_loss(student, {k: v.to("cuda") for k, v in batch.items()}, plain, teacher)
        on_cpu, _ = chunked_lm_loss(student.cpu(), batch, plain, teacher.cpu())
    assert torch.allclose(on_gpu.cpu(), on_cpu, rtol=1e-3, atol=1e-4)


def test_qlora_loads_the_base_in_4bit_trains_and_reloads(tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    path = build_tiny_llama(tmp_path / "lm", hidden=128)
    model, tok = build_causal_lm(str(path), "lora", r=8, quantize_4bit=True)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit, "no 4-bit linear layer: the base was not quantised"
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)  # the base is frozen
    h = train_causal_lm(model, tok, ROWS * 8, LMTrainConfig(max_steps=16, batch_size=4, lr=3e-2, log_every=1,
                                                            warmup_ratio=0, precision="bf16"))
    losses = [x["loss"] for x in h["losses"]]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert h["peak_gpu_mib"] > 0
    out = save_causal_lm(model, tok, tmp_path / "out")
    assert json.loads((out / "potstill_student.json").read_text())["adapter"] is True
    again, tok2 = load_causal_lm(out)
    gens = generate(again.to("cuda"), tok2, [r.prompt for r in ROWS], max_new_tokens=3, batch_size=4)
    assert len(gens) == len(ROWS)


def test_encoder_run_trains_in_bf16_on_cuda(task_dir):
    """`potstill run` on the tiny intent task with precision bf16: teacher, student and baseline
    train on the GPU under bf16 autocast, and the student still learns the task."""
    from test_cli import potstill

    spec = task_dir / "potstill.yaml"
    potstill("run", spec, "--set", "train.precision=bf16")
    run = task_dir / "runs" / "tiny"
    hist = json.loads((run / "student" / "history.json").read_text())
    assert hist["precision"] == "bf16" and hist["peak_gpu_mib"] > 0
    report = json.loads((run / "report.json").read_text())
    assert report["models"]["student"]["accuracy"] > 0.8
