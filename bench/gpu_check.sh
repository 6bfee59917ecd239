#!/usr/bin/env bash
# potstill on a CUDA GPU, in one prepared run (about 8 minutes on an H200; figures in
# docs/RESULTS.md, "potstill's own loop on a CUDA GPU"):
#   1. potstill's dependencies that a bare GPU image lacks, from wheels in .whl/ (no network there):
#      pydantic(-core), annotated-types, typing-inspection, typing_extensions, openai, jiter, sniffio,
#      httpx2, httpcore2, truststore, anyio, fastapi, starlette, annotated-doc, opentelemetry-api,
#      importlib-metadata, uvicorn, jsonschema(-specifications), referencing, rpds-py, and
#      bitsandbytes (QLoRA); 48 MiB with the tree's 12 under the 64 MiB a call carries. Fetch them with
#      `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64
#      --platform manylinux_2_17_x86_64 -d .whl NAME==VERSION` (the versions of your venv).
#   2. pytest -m gpu (tests/test_gpu.py): bf16 on CUDA, KD from a cached teacher, QLoRA, an encoder run
#   3. bench/gpu_potstill.py: potstill's own loop on the snips-json teacher recipe (bf16, LoRA, QLoRA,
#      the 12-layer student shape) beside a plain PyTorch loop: tokens/s and peak GPU memory
#   4. the training, KD and causal-serving test modules again, now on CUDA (potstill moves its models
#      to the GPU when torch sees one), each test under a time limit
# Everything lands in $OUT (at most 8 files): device.txt, gpu_tests.log, gpu_potstill.{md,json,log},
# gpu_causal_same_shapes.{md,json}, suite.log. Stage time limits: T_GPU, T_BENCH, T_SUITE (seconds;
# 0 skips the stage).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'transformers', transformers.__version__, 'peft', peft.__version__)"; } > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
# a stage whose time limit is 0 is skipped
if [ "${T_GPU:-180}" != 0 ]; then
  echo "== 2. pytest -m gpu"
  timeout "${T_GPU:-180}" $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py --tb=short -rA \
    > "$OUT/gpu_tests.log" 2>&1
  tail -8 "$OUT/gpu_tests.log"
fi
if [ "${T_BENCH:-210}" != 0 ]; then
  echo "== 3. bench/gpu_potstill.py"
  timeout "${T_BENCH:-210}" $PY bench/gpu_potstill.py --steps "${STEPS:-50}" > "$OUT/gpu_potstill.log" 2>&1
  tail -12 "$OUT/gpu_potstill.log"
fi
[ "${T_SUITE:-150}" != 0 ] || exit 0
echo "== 4. the training and causal test modules on CUDA"
timeout "${T_SUITE:-150}" $PY -m pytest -q -p no:cacheprovider --timeout 90 --tb=short -rf \
  tests/test_causal_lm.py tests/test_prune_kd.py tests/test_hidden_kd.py tests/test_kd_losses.py \
  tests/test_losses.py tests/test_causal_stage.py tests/test_student.py tests/test_tagger.py \
  tests/test_serve_causal.py > "$OUT/suite.log" 2>&1
tail -15 "$OUT/suite.log"
exit 0
