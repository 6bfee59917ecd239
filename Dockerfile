# potstill, CPU, serving a run directory:
#
#   docker build -t potstill .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/clinc150:/run:ro" \
#     -e POTSTILL_API_KEYS=sk-... potstill                      # serves /run on 0.0.0.0:8000
#
# The run directory is mounted, not baked in (rebuild nothing when a new round is promoted). It is
# mounted read-only, so the queue, request log and teacher cache must live elsewhere: set
# POTSTILL_DATABASE_URL to a PostgreSQL database (shared by every replica), or mount the run
# read-write. Extra arguments go to `potstill serve`, e.g. `... potstill --workers 2
# --set serve.runtime=onnx_int8`. Calibration and any ONNX export are made when missing, which
# needs a writable run directory: run `potstill calibrate` / `potstill export --format onnx`
# before mounting read-only.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# the CPU wheel of torch first, from PyTorch's CPU index, so nothing later pulls a CUDA build
ARG TORCH=torch==2.13.0
RUN pip install --index-url https://download.pytorch.org/whl/cpu "$TORCH"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY potstill ./potstill
RUN pip install ".[onnx]" \
 && useradd --system --uid 10001 --home-dir /app potstill

USER potstill
EXPOSE 8000
# /health answers without an API key; python is in the image, curl is not
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["potstill", "serve", "/run", "--host", "0.0.0.0", "--port", "8000"]
