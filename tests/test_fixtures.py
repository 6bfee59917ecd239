"""The test fixtures themselves: the tiny BERT every session builds is the same in every process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_the_tiny_bert_is_the_same_in_every_process(tmp_path):
    """Built in separate processes (each with its own hash seed), the tokenizer and weights are
    byte-identical, so every session trains the same tiny teacher."""
    files = []
    for i in range(2):
        out = tmp_path / f"b{i}"
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); "
                        f"from pathlib import Path; from conftest import build_tiny_bert; "
                        f"build_tiny_bert(Path({str(out)!r}))"], check=True, capture_output=True, timeout=300)
        files.append(((out / "tokenizer.json").read_bytes(), (out / "model.safetensors").read_bytes()))
    assert files[0] == files[1]
