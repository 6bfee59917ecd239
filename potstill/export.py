"""`potstill export RUN_DIR --format merged|adapter --out DIR`: the trained causal-LM student in a
form other servers load. (`--format onnx [--int8]`: an encoder classifier for ONNX Runtime, see
onnx_export.py.)

- `adapter`: the PEFT adapter as vLLM's `--lora-modules name=DIR` loads it:
  `adapter_config.json` + `adapter_model.safetensors` (+ the tokenizer files);
  `adapter_config.json`'s `base_model_name_or_path` names the base model vLLM must serve.
- `merged`: LoRA folded into the base weights: a plain transformers model directory
  (`config.json` + `model.safetensors` + tokenizer) that any server loads without peft.
  A fully fine-tuned student is already that, and is copied.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from .errors import MissingOutput, PotstillError

STUDENT_META = "potstill_student.json"  # = students.causal_lm.STUDENT_META (no torch import here)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model")


def student_dir(run_dir: str | Path, which: str = "student") -> Path:
    d = Path(run_dir) / which
    if not (d / STUDENT_META).exists():
        raise MissingOutput(f"{d}: no causal-LM student here ({STUDENT_META} missing); export is for "
                                "student.kind causal_lm — run `potstill train` first")
    return d


def export_student(run_dir: str | Path, fmt: Literal["merged", "adapter"], out: str | Path,
                   which: str = "student") -> Path:
    """Write the student of `run_dir` to `out` in `fmt`; returns `out`."""
    src = student_dir(run_dir, which)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    meta = json.loads((src / STUDENT_META).read_text())
    if fmt == "adapter":
        if not meta.get("adapter"):
            raise PotstillError(f"{src} holds a fully fine-tuned model, not an adapter; use --format merged")
        missing = [f for f in ADAPTER_FILES if not (src / f).exists()]
        if missing:
            raise MissingOutput(f"{src}: {', '.join(missing)} missing")
        out.mkdir(parents=True, exist_ok=True)
        for f in ADAPTER_FILES + TOKENIZER_FILES:
            if (src / f).exists():
                shutil.copy2(src / f, out / f)
        return out
    if fmt != "merged":
        raise PotstillError(f"--format {fmt!r}: one of merged, adapter")
    if not meta.get("adapter"):
        shutil.copytree(src, out, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("checkpoints", "manifest.json", "history.json"))
        return out
    from .students.causal_lm import load_causal_lm

    model, tok = load_causal_lm(src, merge=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def export_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding student/.")],
    format: Annotated[str, typer.Option("--format", help="merged (plain transformers model) or adapter "
                                        "(PEFT adapter, the layout of vLLM's --lora-modules name=DIR) "
                                        "for a causal-LM student; onnx for an encoder classifier "
                                        "(ONNX Runtime; `serve.runtime: onnx` serves it).")] = "adapter",
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder to write (must be new or empty; "
                                                "onnx: default RUN/onnx/WHICH, replaced).")] = None,
    which: Annotated[str, typer.Option(help="student or baseline.")] = "student",
    int8: Annotated[bool, typer.Option("--int8", help="onnx: also write the dynamically quantised "
                                       "int8 graph (model.int8.onnx).")] = False,
):
    """Export a student: a causal LM as merged weights or its PEFT adapter (vLLM / peft); an
    encoder classifier as an ONNX graph (fp32, and int8 with --int8)."""
    if format == "onnx":  # onnx_export.py
        from .onnx_export import export_onnx, onnx_dir

        src = Path(run_dir) / which
        if not (src / "config.json").exists():
            raise FileNotFoundError(f"{src}: no trained {which} (config.json missing); run `potstill train` first")
        dest = out or onnx_dir(run_dir, which)
        meta = export_onnx(src, dest, int8=int8)
        typer.echo(f"exported {which} of {run_dir} as ONNX to {dest} (max |logit diff| vs torch: "
                   f"fp32 {meta['max_abs_diff_fp32']:.2g}"
                   + (f", int8 {meta['max_abs_diff_int8']:.2g}" if int8 else "") + ")")
        return
    if int8:
        raise typer.BadParameter("--int8 goes with --format onnx")
    if format not in ("merged", "adapter"):
        raise typer.BadParameter("--format must be merged, adapter or onnx")
    out = out or Path("export")
    path = export_student(run_dir, format, out, which)  # type: ignore[arg-type]
    typer.echo(f"exported {which} of {run_dir} as {format} to {path}")
