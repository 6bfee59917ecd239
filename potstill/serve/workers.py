"""`potstill serve RUN --workers N`: N server processes on one port.

uvicorn's own multi-process mode: a supervisor binds the port and starts N worker processes
(spawned, so nothing of the parent's torch state is shared), each importing `app.worker_app_factory`,
which builds the app from the same `ServeConfig` (passed through the environment as JSON) with
its own student, micro-batcher and store connection. The kernel spreads connections over the
workers; a worker that dies is restarted by the supervisor.

Shared state: the queue, the request log and the teacher cache live in the run's store: the
SQLite file (WAL, every write its own transaction, a 30 s busy timeout: concurrent writers wait
for each other instead of failing) or PostgreSQL (`POTSTILL_DATABASE_URL`, store.py's PgStore).
Calibration and the ONNX export are made once by the parent (`serve_command` builds the app
before starting workers), so workers never race to write them.

Per worker, not shared: /metrics (each worker's own counters; a scrape sees one worker), the
queue depth on /health (read from the store at start, counted locally after), the teacher
spending cap (`teacher.max_spend_usd` bounds each process).

Threads: unless `serve.threads` is set, each worker's model gets max(1, (cores - N) // N) threads
(`worker_threads`): one core per worker is left to its event loop, which parses, routes and answers
every request while the model runs. Torch using every core instead oversubscribes the CPU: on 2
cores, 1 worker, 64 clients, 2 threads gave 205 requests/s and 1 thread 223 (bench/serve_load.py
--threads; docs/RESULTS.md, "Serving under load").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

ENV = "POTSTILL_SERVE_CONFIG"
log = logging.getLogger("potstill.serve")


def config_json(cfg: Any) -> str:
    """The parts of a ServeConfig a worker rebuilds from (what `potstill serve` can set)."""
    if cfg.student is not None or cfg.spec is not None or cfg.teacher not in ("auto", None):
        raise ValueError("--workers rebuilds the app in each process: only configurations "
                         "made of files and flags can be shared (no injected student/teacher/spec)")
    return json.dumps({
        "run_dir": str(cfg.run_dir), "overrides": list(cfg.overrides), "teacher": cfg.teacher,
        "db_path": str(cfg.db_path) if cfg.db_path else None, "teacher_share": cfg.teacher_share,
        "model": cfg.model, "routing": cfg.routing, "recalibrate": False,
        "adapters": {k: str(v) for k, v in cfg.adapters.items()}})


def worker_threads(workers: int, cores: int | None = None) -> int:
    """Model threads per server process: the cores left once each process's event loop has one,
    shared out; at least 1."""
    return max(1, ((cores or os.cpu_count() or 1) - workers) // workers)


def run_workers(cfg: Any, svc: Any, host: str | None, port: int | None, workers: int, *,
                log_level: str = "info", access_log: bool = False) -> None:
    """Start `workers` processes serving `cfg` on one port (blocks until shut down)."""
    import uvicorn

    sv = svc.spec.serve
    host = host or sv.host
    port = sv.port if port is None else port
    if host not in ("127.0.0.1", "localhost", "::1") and not svc.api_keys:
        log.warning("binding %s without API keys: anyone who reaches this port can use the "
                    "server (set %s)", host, sv.api_keys_env)
    overrides = list(cfg.overrides)
    if sv.threads is None:
        overrides.append(f"serve.threads={worker_threads(workers)}")
    try:
        svc.store.close()  # the parent only supervises
    except Exception:  # noqa: BLE001
        pass
    os.environ[ENV] = config_json(dataclasses.replace(cfg, overrides=overrides))
    log.info("starting %d workers on %s:%d", workers, host, port)
    uvicorn.run("potstill.serve.app:worker_app_factory", factory=True, workers=workers, host=host,
                port=port, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=5)
