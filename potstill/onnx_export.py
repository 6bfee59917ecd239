"""The encoder classifier student as an ONNX graph, for ONNX Runtime on CPU, with dynamic int8
quantisation as an option: `potstill export RUN --format onnx [--int8]`.

The export goes through `torch.onnx.export` (the TorchScript-based exporter, `dynamo=False`: it
handles transformers' BERT-family encoders with dynamic batch and sequence axes without extra
packages). The graph takes the tokenizer's inputs (`input_ids`, `attention_mask`, and
`token_type_ids` when the model uses them), all int64 of shape (batch, seq), and returns
`logits` (batch, num_labels) and `hidden` (batch, seq, hidden), the last hidden states that the
server's OOD scores and calibration read. int8: `onnxruntime.quantization.quantize_dynamic`
(per-channel int8 weights of the encoder's MatMuls, activations quantised on the fly; the
embeddings and the classification head stay fp32), written beside the fp32 graph.

Layout of the output folder (default `<run>/onnx/student/`): `model.onnx`, `model.int8.onnx` (with
--int8), the model's `config.json` (labels) and tokenizer files, and `onnx_meta.json`: which
weights were exported (`source_version`, the hash of the student's safetensors), the input names,
the opset and the largest difference between torch and ONNX logits measured on export.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

META = "onnx_meta.json"
FP32 = "model.onnx"
INT8 = "model.int8.onnx"
OPSET = 17
_COPY = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "vocab.txt")


def export_onnx(model_dir: str | Path, out: str | Path, int8: bool = False,
                max_length: int = 64) -> dict[str, Any]:
    """Export the classifier in `model_dir` to `out` (see module doc); returns the meta dict."""
    import numpy as np
    import torch

    from .progress import log
    from .serve.router import student_version
    from .students.classifier import load_classifier

    model_dir, out = Path(model_dir), Path(out)
    model, tok = load_classifier(model_dir)
    if getattr(model.config, "problem_type", None) == "multi_label_classification":
        raise ValueError(f"{model_dir}: multi-label classifiers are not exported to ONNX yet")
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    enc = tok(["a short example", "and a second, slightly longer example to pad against"],
              padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]

    class Encoder(torch.nn.Module):  # (logits, last hidden states) from positional inputs
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            o = self.m(**dict(zip(names, args)), output_hidden_states=True)
            return o.logits, o.hidden_states[-1]

    wrapped = Encoder(model)
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    axes.update(logits={0: "batch"}, hidden={0: "batch", 1: "seq"})
    t0 = time.perf_counter()
    with torch.inference_mode(), warnings.catch_warnings():
        # the tracer warns that two shape tests in transformers' attention-mask code become
        # constants; for an encoder both are shape-independent (key length == mask length, no
        # causal mask), and the tests check other batch sizes and lengths than this example's
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, tuple(enc[n] for n in names), str(out / FP32),
                          input_names=names, output_names=["logits", "hidden"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        ref = model(**enc).logits.float().numpy()
    export_s = time.perf_counter() - t0
    for f in _COPY:
        if (model_dir / f).exists():
            shutil.copy2(model_dir / f, out / f)
    sess = session(out / FP32)
    got = sess.run(["logits"], {n: enc[n].numpy().astype(np.int64) for n in names})[0]
    meta: dict[str, Any] = {
        "source": str(model_dir), "source_version": student_version(model_dir), "inputs": names,
        "opset": OPSET, "max_length": max_length, "export_s": round(export_s, 2),
        "max_abs_diff_fp32": float(np.abs(got - ref).max()), "int8": False,
    }
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        # ONNX Runtime's recommended pre-processing (shape inference + graph optimisation), so
        # the quantiser sees fused MatMuls; then int8 weights, activations quantised at run time
        prep = out / "model.prep.onnx"
        try:
            quant_pre_process(str(out / FP32), str(prep), skip_symbolic_shape=True)
        except Exception as e:  # noqa: BLE001 - an optimisation only: quantise the plain graph
            log(f"onnx: pre-processing before quantisation failed ({type(e).__name__}: {e}); "
                "quantising the exported graph as is")
            shutil.copy2(out / FP32, prep)
        # per-channel int8 weights on the encoder's MatMuls only: the embedding Gather and the
        # pooler/classifier Gemms stay fp32. Measured on a 150-intent MiniLM student
        # (bench/onnx_runtime.py): the default (per-tensor, every op type) lost 1.3 points of
        # accuracy and agreed with fp32 on 96.1% of inputs; this keeps the accuracy (0.0 points)
        # at 98.7% agreement
        quantize_dynamic(str(prep), str(out / INT8), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul"])
        prep.unlink()
        got8 = session(out / INT8).run(["logits"], {n: enc[n].numpy().astype(np.int64) for n in names})[0]
        meta.update(int8=True, max_abs_diff_int8=float(np.abs(got8 - ref).max()))
    (out / META).write_text(json.dumps(meta, indent=2))
    return meta


def session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with full graph optimisation (`threads` intra-op threads)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    # idle pool threads sleep instead of spin-waiting for the next run: a server's event loop
    # and its other threads need those cycles between batches (see threads.py)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_dir(run_dir: str | Path, which: str = "student") -> Path:
    """Where `potstill export RUN --format onnx` writes, and `serve.runtime: onnx` reads."""
    return Path(run_dir) / "onnx" / which
