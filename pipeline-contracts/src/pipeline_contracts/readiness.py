"""What model-serving's ``/readyz`` answers, and what a caller (promotion, a probe) reads
from it: 200 ``{"status": "ready", "model_version": ...}``; 503 with ``detail`` either
:data:`MODEL_LOADING` (wait) or the last load's error (the server keeps retrying with a
backoff, so a transient cause such as MLflow restarting clears by itself; a caller for whom
any failed load is final, such as a promotion, stops waiting)."""

from __future__ import annotations

READY = "ready"
MODEL_LOADING = "model is loading"


def load_failed(detail: object) -> bool:
    """Whether a 503's detail says the load failed (rather than that it is still running)."""
    return bool(detail) and detail != MODEL_LOADING
