"""`hf` teacher for `kind: generate`: a local causal LM (`AutoModelForCausalLM`, or a potstill
causal student's adapter directory) answering greedily, batched.

Its answers are records like an API teacher's (answers.py): `output`, and under the
rationale objective `rationale`; `confidence` is exp(mean logprob) of the generated tokens (EOS
included). No top-k logprobs are kept: `train.objective: logit_kd` runs this teacher's forward
pass on every batch and distils its full logits (students/causal_lm.py), which needs the student to
share its tokenizer (`causal_lm.check_shared_vocab`). Answers at most `teacher.max_tokens` tokens
when the spec sets it, else `student.max_new_tokens`; prompts are cut from the left to
`teacher.max_length` tokens minus that. `teacher.samples` > 1 is refused: generation is greedy.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..answers import generate_answer
from ..errors import PotstillError
from ..spec import TaskSpec
from ..tasks.generate import generate_prompt
from ..timing import Timer
from .base import Answer
from .hf_local import local_identity


def teacher_max_new_tokens(spec: TaskSpec) -> int:
    t = spec.teacher
    return t.max_tokens if "max_tokens" in t.model_fields_set else spec.student.max_new_tokens


class HFCausalTeacher:
    def __init__(self, spec: TaskSpec, labels: list[str]):
        from ..students.causal_lm import load_causal_lm, resolve_causal_path

        t = spec.teacher
        if t.samples > 1:
            raise PotstillError("teacher.samples > 1 needs sampling; a local causal-LM teacher (teacher.kind "
                             "hf) generates greedily: set teacher.samples=1")
        path = resolve_causal_path(t.model or "")
        if Path(path).exists() and not (Path(path) / "adapter_config.json").exists():
            from transformers import AutoConfig

            arch = (AutoConfig.from_pretrained(path).architectures or [""])[0]
            if arch and not arch.endswith("ForCausalLM"):
                raise PotstillError(f"teacher.model {t.model}: a {arch}, not a causal LM; kind 'generate' "
                                 "needs a teacher that writes text")
        self.spec, self.labels = spec, list(labels)
        self.model, self.tokenizer = load_causal_lm(path)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.max_new_tokens = teacher_max_new_tokens(spec)
        self.batch_size, self.max_length = t.batch_size, t.max_length
        self.rationale = spec.train.objective == "rationale"
        self.json_keys = spec.json_keys()
        self.identity = local_identity(path).replace("hf:", "hf-causal:", 1)

    def request(self, text: str) -> dict[str, Any]:
        req = {"prompt": generate_prompt(self.spec, text, self.labels),
               "max_new_tokens": self.max_new_tokens, "max_length": self.max_length}
        # in the cache key only when on, so answers cached before json_decoding existed still count
        return {**req, "json_decoding": "schema"} if self.json_keys else req

    def answer(self, texts: Sequence[str]) -> Iterator[tuple[int, Answer]]:
        from ..students.causal_lm import generate

        chunk = self.batch_size * 4
        for s in range(0, len(texts), chunk):
            prompts = [self.request(t)["prompt"] for t in texts[s:s + chunk]]
            t0 = time.perf_counter()
            gens = generate(self.model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size,
                            max_length=self.max_length, json_keys=self.json_keys)
            ms = (time.perf_counter() - t0) * 1000 / max(len(gens), 1)
            for j, g in enumerate(gens):
                conf = math.exp(g.mean_logprob) if g.token_logprobs else None
                a = generate_answer([g.text], None, self.rationale, confidences=[conf])
                a.latency_ms = ms
                yield s + j, a

    def describe(self, texts: Sequence[str], ev: Any) -> dict[str, Any]:
        """Size on this machine (the evaluation's teacher row; its batch-1 generation latency is
        timed through `timer`, in turn with the students)."""
        return {"params": self.params, "layers": getattr(self.model.config, "num_hidden_layers", None)}

    def timer(self, ev: Any) -> Timer:
        """One answer at a time from this teacher's own prompt, as the students are timed."""
        from ..students.causal_lm import generation_timer

        return generation_timer(self.model, self.tokenizer, self.max_new_tokens, self.max_length,
                                samples=ev.latency_samples_generate, render=lambda t: self.request(t)["prompt"],
                                json_keys=self.json_keys)
