"""manifest.json beside every artifact: what made it, from what, with which code."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from . import __version__
from .errors import MissingOutput
from .paths import MANIFEST


def git_commit() -> str | None:
    """The commit of the potstill source tree, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def file_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def is_main_process() -> bool:
    """False on the other ranks of a multi-process launch (torchrun / accelerate launch)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def write_manifest(directory: Path, stage: str, spec: Any, **fields: Any) -> dict[str, Any]:
    """Write `directory/manifest.json`; `spec` is a TaskSpec (its resolved form is stored).

    Only the main process writes; other ranks of a multi-process launch get the document back.
    """
    doc = {
        "stage": stage,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "spec_hash": spec.spec_hash(),
        **fields,
        "config": spec.resolved(),
        "versions": {
            "potstill": __version__,
            "python": platform.python_version(),
            "torch": _version("torch"),  # not torch.__version__: importing torch costs seconds
            "transformers": _version("transformers"),
        },
        "git_commit": git_commit(),
    }
    if not is_main_process():
        return doc
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(directory / MANIFEST)
    return doc


def read_manifest(directory: Path) -> dict[str, Any]:
    p = directory / MANIFEST
    if not p.exists():
        raise MissingOutput(f"{p}: missing; run the stage that makes {directory.name}/ first")
    return json.loads(p.read_text())


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def fingerprint(*parts: Any) -> str:
    """Hash of what a stage's output depends on (configs, upstream hashes)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def up_to_date(directory: Path, fp: str, *outputs: str) -> bool:
    """True when `directory` holds a finished stage made from the same inputs (`fp`)."""
    p = directory / MANIFEST
    if not p.exists() or not all((directory / o).exists() for o in outputs):
        return False
    try:
        return json.loads(p.read_text()).get("fingerprint") == fp
    except json.JSONDecodeError:
        return False
