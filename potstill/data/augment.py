"""Unlabelled inputs made from real ones, for the teacher to label.

Distillation, unlike fine-tuning, can learn from inputs nobody labelled: the teacher labels them.
When real unlabelled traffic is scarce, light perturbations of the training inputs (a word
dropped, two neighbours swapped) give the student more of the teacher's function to match
(as in TinyBERT's and DistilBERT's data augmentation). Pure and deterministic in the seed.
"""

from __future__ import annotations

import random

from .inputs import Example


def perturb(text: str, rng: random.Random, p_drop: float = 0.15) -> str:
    """Drop each word with probability `p_drop` (keeping at least one), then maybe swap a pair."""
    words = text.split()
    if len(words) < 3:
        return text
    kept = [w for w in words if rng.random() >= p_drop] or [rng.choice(words)]
    if len(kept) >= 2 and rng.random() < 0.5:
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return " ".join(kept)


def augment(examples: list[Example], copies: int, seed: int) -> list[Example]:
    """`copies` perturbed versions of each example, without gold, skipping texts that exist."""
    if copies <= 0:
        return []
    seen = {ex.text for ex in examples}
    out = []
    for ex in examples:
        rng = random.Random(f"{seed}:{ex.id}")
        for k in range(copies):
            text = perturb(ex.text, rng)
            if text not in seen:
                seen.add(text)
                out.append(Example(f"{ex.id}#aug{k}", text, None))
    return out
