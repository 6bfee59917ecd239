"""Resumable checkpoints of causal-LM training (`causal_lm.train_causal_lm`).

A checkpoint is a folder (the model directory's `checkpoints/` while it trains) holding
`state.pt` (the trainable parameters by name — LoRA/prefix adapters, or every weight for full
fine-tuning —, the optimizer and LR-scheduler states and torch's RNG state) and `progress.json`
(fingerprint, global step, epoch, batches done in that epoch, the loss log, tokens, seconds).
Both are written to temporary names and renamed, progress last, so a kill while saving leaves the
previous checkpoint usable. Batches are a pure function of (seed, epoch) (`length_grouped_batches`),
so skipping the batches done in the epoch and restoring these states continues the same run: the
resumed run ends with the weights an uninterrupted one ends with. A checkpoint whose fingerprint
differs (other data, spec or base weights) is ignored.

With the adaptive schedule the folder also holds `best.pt`, the trainable parameters at the best
validation so far (written at each new best), and `progress.json` the early-stopping state, so a
resumed run keeps the same best and the same count of validations without gain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

STATE = "state.pt"
PROGRESS = "progress.json"
BEST = "best.pt"


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the parameters that train (adapters, or every weight), by name."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, params: dict[str, torch.Tensor]) -> None:
    """Copy `trainable_state` output back into `model` (in place, on its device and dtype)."""
    by_name = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in params.items():
            by_name[n].copy_(v.to(by_name[n].device, by_name[n].dtype))


def save_best(ckpt: Path, params: dict[str, torch.Tensor]) -> None:
    ckpt = Path(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    tmp = ckpt / (BEST + ".tmp")
    torch.save(params, tmp)
    tmp.replace(ckpt / BEST)


def load_best(ckpt: Path) -> dict[str, torch.Tensor] | None:
    path = Path(ckpt) / BEST
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def save_lm_checkpoint(ckpt: Path, model, opt, sched, progress: dict[str, Any]) -> None:
    ckpt = Path(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    state = {"params": trainable_state(model),
             "opt": opt.state_dict(), "sched": sched.state_dict(), "rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    tmp = ckpt / (STATE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(ckpt / STATE)
    tmp = ckpt / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps(progress))
    tmp.replace(ckpt / PROGRESS)


def load_lm_checkpoint(ckpt: Path, fingerprint: str | None, model, opt, sched) -> dict[str, Any] | None:
    """Restore a matching checkpoint into model/opt/sched (in place) and return its progress;
    None when there is none or it is for another fingerprint."""
    ckpt = Path(ckpt)
    if not (ckpt / PROGRESS).exists() or not (ckpt / STATE).exists():
        return None
    progress = json.loads((ckpt / PROGRESS).read_text())
    if progress.get("fingerprint") != fingerprint:
        return None
    state = torch.load(ckpt / STATE, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    missing = [n for n in state["params"] if n not in params]
    if missing:
        raise ValueError(f"{ckpt / STATE}: parameters {missing[:3]} are not in the model; delete {ckpt} "
                         "to start afresh")
    load_trainable(model, state["params"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return progress
