#!/usr/bin/env bash
# GPU run of bench/gpu_causal.py (see its docstring). On a machine without network: put the
# bitsandbytes wheel in .whl/ first (pip download bitsandbytes --no-deps --only-binary=:all:
# --platform manylinux_2_24_x86_64 --python-version 3.12 -d .whl), then
#   bash bench/gpu_causal.sh            # all variants; writes $OUT/gpu_causal.md (+ .json)
# Extra arguments go to the script (e.g. --steps 20 --variants lora-30,qlora-30).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import bitsandbytes" 2>/dev/null; then
  whl=$(ls .whl/bitsandbytes-*.whl 2>/dev/null | head -1 || true)
  if [ -n "$whl" ]; then
    $PY -m pip install --no-deps --no-index --quiet "$whl" || echo "bitsandbytes: install failed; QLoRA rows will be skipped" >&2
  else
    echo "bitsandbytes: no wheel in .whl/; QLoRA rows will be skipped" >&2
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec $PY bench/gpu_causal.py "$@"
