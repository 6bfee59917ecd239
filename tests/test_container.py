"""The container recipe: the build context the Dockerfile needs passes .dockerignore and nothing
heavy does (Docker's rules: patterns in order, the last match wins, `!` re-includes); the image
serves a mounted run directory with a health check on /health. Building the image needs a Docker
daemon: `.ci/run` builds and smoke-tests it where one answers (none does on the dev machine)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore decision for the path `rel` (a parent's match covers children)."""
    parts = rel.split("/")
    out = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        if p.startswith("**/"):
            hit = any(fnmatch.fnmatch(x, p[3:]) for x in parts)
        else:
            hit = any(fnmatch.fnmatch("/".join(parts[: i + 1]), p) for i in range(len(parts)))
        if hit:
            out = not neg
    return out


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_heavy():
    pats = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
            if l.strip() and not l.startswith("#")]
    docker = (ROOT / "Dockerfile").read_text()
    copied = [src for line in re.findall(r"^COPY (.+)$", docker, re.M) for src in line.split()[:-1]]
    assert copied and all(not ignored(c, pats) for c in copied), copied
    assert not ignored("potstill/serve/app.py", pats)
    for heavy in (".venv/bin/python", "runs/clinc150/student/model.safetensors", ".git/HEAD",
                  "examples/clinc150/data/train.jsonl", "tests/conftest.py", "docs/RESULTS.md",
                  "potstill/__pycache__/cli.cpython-311.pyc"):
        assert ignored(heavy, pats), heavy
    sent = [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts
            and not ignored(p.relative_to(ROOT).as_posix(), pats)]
    assert sum(p.stat().st_size for p in sent) < 5 * 2**20  # the context stays small


def test_image_serves_a_mounted_run_with_a_health_check():
    docker = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim$", docker, re.M)
    torch_line = docker.index("download.pytorch.org/whl/cpu")
    assert torch_line < docker.index('pip install ".[onnx]"')  # the CPU wheel goes in first
    assert re.search(r"^HEALTHCHECK .*\n.*127\.0\.0\.1:8000/health", docker, re.M)
    assert 'ENTRYPOINT ["potstill", "serve", "/run", "--host", "0.0.0.0", "--port", "8000"]' in docker
    assert re.search(r"^USER potstill$", docker, re.M)
