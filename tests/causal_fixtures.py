"""Tiny causal LMs for the causal-student tests: a Llama built from a config, with a byte-level BPE
tokenizer trained on the spot. Seconds to build, no hub."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = [
    "what is my balance", "how much money is in my account", "send money to mom",
    "transfer fifty dollars to savings", "will it rain tomorrow", "what is the weather like",
    "balance", "transfer", "weather", "the cat sat on the mat", "a quick brown fox jumps",
    "Rationale: asks about money held. Answer: balance", "[label]", "[rationale]",
]


def to_model(batch: dict, model) -> dict:
    """`batch`'s tensors on `model`'s device: potstill puts models on the GPU when torch sees one,
    so tests that feed a model by hand must too (bench/gpu_check.sh runs them there)."""
    device = next(model.parameters()).device
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def build_tokenizer(corpus: list[str] | None = None, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator((corpus or CORPUS) * 5, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def build_tiny_llama(path: Path, layers: int = 2, hidden: int = 32, tokenizer=None, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer or build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models train fastest on one thread; on a busy machine two spin-waiting threads ran
    tens of times slower. Imported by the causal test modules (autouse there)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
