"""Serving with routing: the student answers, the teacher is the safety net.

- `confidence.py` — temperature scaling, confidence and OOD scores, ECE (pure)
- `calibrate.py`  — `potstill calibrate`: thresholds for a target teacher share or accuracy
- `router.py`     — student backends (Protocol), the escalation decision, teacher client, Router
- `batching.py`   — micro-batching of concurrent requests
- `queue.py`      — review queue + request log in the run's SQLite store; `potstill queue list`
- `app.py`        — the OpenAI-compatible FastAPI app (`create_app`) and `potstill serve`

Importing this package builds nothing (and imports no model library).
"""
