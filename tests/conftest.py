"""Shared fixtures: a tiny BERT built from a config, with a tokenizer trained on the spot, and a
small synthetic intent task whose labels a tiny model can learn in seconds."""

from __future__ import annotations

import json
import os
import random
import signal
import string
import subprocess
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

INTENTS = {
    "balance": ["what is my balance", "how much money is in my account", "show my account balance",
                "balance please", "tell me my current balance"],
    "transfer": ["send money to mom", "transfer fifty dollars to savings", "move cash to checking",
                 "wire money to my landlord", "make a transfer to john"],
    "weather": ["will it rain tomorrow", "what is the weather like", "is it sunny outside",
                "forecast for the weekend", "how cold is it today"],
}
FILLERS = ["", "please", "now", "quickly", "thanks", "right now", "today", "if you can", "for me",
           "ok", "hey", "asap"]


def make_rows(n: int, seed: int) -> list[dict]:
    """`n` rows cycling over the intents; different seeds give disjoint texts (seed picks a
    slice of all template x filler x filler combinations), so splits never overlap."""
    rows = []
    for k, label in enumerate(INTENTS):
        combos = sorted({" ".join(f"{a} {t} {b}".split()) for t in INTENTS[label]
                         for a in FILLERS for b in FILLERS})
        random.Random(k).shuffle(combos)
        per = -(-n // len(INTENTS))
        start = (seed - 1) * 100  # each seed owns its own slice of 100 per intent
        assert per <= 100 and start + per <= len(combos), "not enough distinct combinations"
        rows.append([{"text": c, "label": label} for c in combos[start:start + per]])
    out = [r for trio in zip(*rows) for r in trio]
    return out[:n]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the process group `proc` leads (started with start_new_session=True), then
    SIGKILL to what is left of it after `grace` s; returns once no process of the group remains
    (or after another `grace` s). A group's helpers can outlive its leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + grace
        while time.monotonic() < end:
            proc.poll()  # reaps the leader, so only live members keep the group alive
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def build_tiny_bert(path: Path, layers: int = 4) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    # A fixed WordPiece vocabulary: every word of the intents and fillers whole, and every ASCII letter,
    # digit and punctuation mark alone and as a continuation ("##a"), so any ASCII text tokenizes. Not
    # `WordPieceTrainer`: its ties between equally frequent merges fall differently from one
    # process to the next, so each test session got a different vocabulary, model and teacher.
    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = sorted({w for s in [*(s for v in INTENTS.values() for s in v), *FILLERS]
                    for w, _ in pre.pre_tokenize_str(norm.normalize_str(s))})
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
             *(w for w in words if len(w) > 1)]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = norm, pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=layers,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture()
def task_dir(tmp_path, tiny_bert) -> Path:
    """A task folder with a spec whose teacher (fit) and student are the tiny BERT."""
    write_jsonl(tmp_path / "data/train.jsonl", make_rows(240, 1))
    write_jsonl(tmp_path / "data/validation.jsonl", make_rows(45, 2))
    write_jsonl(tmp_path / "data/test.jsonl", make_rows(60, 3))
    (tmp_path / "potstill.yaml").write_text(f"""
name: tiny
data: {{train: data/train.jsonl, validation: data/validation.jsonl, test: data/test.jsonl}}
teacher:
  kind: fit
  fit: {{model: {tiny_bert}, schedule: fixed, epochs: 4, lr: 0.002, batch_size: 8}}
student: {{model: {tiny_bert}, layers: [0, 3]}}
train: {{schedule: fixed, epochs: 3, lr: 0.002, batch_size: 8, precision: fp32, checkpoint_every: 5}}
eval: {{latency_samples: 5}}
""")
    return tmp_path


# -- markers: `pytest -m "not e2e"` (make test-fast) is the unit set ---------------------------------
E2E_FIXTURES = {"task_dir", "tiny_run", "report_task", "causal_run", "extract_run", "extract_task", "lms",
                "page", "tiny_lm", "tiny_teacher", "base"}
"""Fixtures that train models, run the pipeline or start servers and browsers."""
E2E_MODULES = {"test_cli", "test_compare", "test_rounds", "test_generate_run", "test_generate_resume",
               "test_report_browser", "test_serve_workers", "test_serve_pg", "test_faults_serve",
               "test_faults_label", "test_onnx", "test_openai_batch", "test_container", "test_journey",
               "test_fixtures"}
"""Modules whose tests are end to end throughout (subprocesses, servers, training)."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in E2E_MODULES or E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


def _one_thread() -> None:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")


_one_thread()  # the test process's default, set before any test runs


@pytest.fixture(autouse=True)
def _threads_restored():
    """Every test runs with torch and numpy's BLAS on one thread, and ends with them back there.
    One thread: tiny models train fastest so on shared cores, and every model a test builds
    (the session-scoped ones too) is trained under the same thread count, whatever ran before it
    (float sums differ between counts, and a tiny model's calibration with them). Back there:
    the eval stage and the server set both for the rest of their process (potstill/threads.py),
    and a test that changes them must not reach the next."""
    yield
    _one_thread()
