"""PyTorch vs ONNX Runtime (fp32, dynamic int8) for an encoder classifier student, side by side in
one process: accuracy, agreement, single-input p50/p95 latency, batch throughput, file size.
Rows come from `potstill.onnx_eval.evaluate_onnx`, the function `potstill eval` can report.

    .venv/bin/python bench/onnx_runtime.py runs/clinc150       # a trained run directory
    .venv/bin/python bench/onnx_runtime.py --quick-clinc150     # no trained run at hand (below)

`--quick-clinc150` builds a stand-in student when no trained CLINC150 run exists: the 2-layer
MiniLM cut (layers 0 and 5 of the packaged MiniLM-L6, the example's student shape; its pooler set
to pass tanh([CLS]) through, since the sentence encoder never trained one) with its
classification head fitted by logistic regression on those frozen features of the training
inputs (scikit-learn), written as a normal run directory. Its accuracy is lower than the
distilled student's; what the table measures is the runtimes' difference on the same weights.
Writes docs/bench_onnx.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def quick_clinc150(workdir: Path, n_train: int, threads: int) -> Path:
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from potstill.config import load_spec, run_paths
    from potstill.stages.prepare import prepare_inputs
    from potstill.students.hf import keep_layers, resolve_model_path

    torch.set_num_threads(threads)
    spec = load_spec(ROOT / "examples/clinc150/potstill.yaml")
    run = run_paths(spec, workdir)
    inputs = prepare_inputs(spec, run)
    labels = inputs.labels
    src = resolve_model_path("minilm")
    model = AutoModelForSequenceClassification.from_pretrained(
        src, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)})
    keep_layers(model, [0, 5])
    tok = AutoTokenizer.from_pretrained(src)
    model.eval()
    with torch.no_grad():  # the sentence encoder has no trained pooler: pass tanh([CLS]) through
        model.bert.pooler.dense.weight.copy_(torch.eye(model.config.hidden_size))
        model.bert.pooler.dense.bias.zero_()
    train = inputs.train[:n_train]
    feats = []
    with torch.inference_mode():
        for s in range(0, len(train), 128):
            enc = tok([e.text for e in train[s:s + 128]], padding=True, truncation=True,
                      max_length=spec.student.max_length, return_tensors="pt")
            out = model.bert(**enc)
            feats.append(out.pooler_output.numpy())  # what the classification head reads
    x = np.concatenate(feats)
    y = [labels.index(e.gold) for e in train]
    lr = LogisticRegression(max_iter=300, C=10.0).fit(x, y)
    with torch.no_grad():
        w = np.zeros((len(labels), x.shape[1]), np.float32)
        b = np.full(len(labels), -1e4, np.float32)  # labels absent from the sample never win
        w[lr.classes_] = lr.coef_
        b[lr.classes_] = lr.intercept_
        model.classifier.weight.copy_(torch.from_numpy(w))
        model.classifier.bias.copy_(torch.from_numpy(b))
    model.save_pretrained(run.root / "student")
    tok.save_pretrained(run.root / "student")
    (run.root / ORIGIN).write_text(origin_note(len(train)))
    return run.root


ORIGIN = "bench_origin.txt"


def origin_note(n_train: int) -> str:
    return (f"Student: made by `bench/onnx_runtime.py --quick-clinc150 --train {n_train}`: MiniLM-L6 "
            "layers 0 and 5, pooler passing tanh([CLS]) through, classification head fitted by "
            f"logistic regression on frozen features of {n_train} CLINC150 training inputs (not the "
            "distilled student of the example).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", type=Path)
    ap.add_argument("--quick-clinc150", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/potstill-bench-onnx"))
    ap.add_argument("--train", type=int, default=15000, help="--quick-clinc150: training inputs for the head")
    ap.add_argument("--test", type=int, default=None, help="evaluate on the first N test inputs")
    ap.add_argument("--latency-samples", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from potstill.onnx_eval import evaluate_onnx, markdown, run_dir_spec

    t0 = time.time()
    if a.run is None:
        if not a.quick_clinc150:
            ap.error("give a run directory or --quick-clinc150")
        a.run = quick_clinc150(a.workdir, a.train, a.threads)
    spec, run = run_dir_spec(a.run)
    upd = {"threads": a.threads, "latency_samples": a.latency_samples}
    spec = spec.model_copy(update={"eval": spec.eval.model_copy(update=upd)})
    if a.test:
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"max_test": a.test})})
    result = evaluate_onnx(spec, run)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"
    result["seconds"] = round(time.time() - t0, 1)
    table = markdown(result)
    print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    cmd = "bench/onnx_runtime.py " + " ".join(sys.argv[1:])
    (a.out / "bench_onnx.json").write_text(json.dumps(result, indent=2))
    (a.out / "bench_onnx.md").write_text(
        "# Encoder student: PyTorch vs ONNX Runtime (fp32, dynamic int8)\n\n"
        f"Command: `.venv/bin/python {cmd}`\n\n"
        + (((a.run / ORIGIN).read_text() + "\n\n") if (a.run / ORIGIN).exists() else "")
        + f"Machine: {result['machine']} (shared with other "
        "work while measured: absolute timings are noisy, the ratios were measured side by side "
        "in one process, one runtime after the other).\n\n" + table)


if __name__ == "__main__":
    main()
