"""What model-serving's ``/readyz`` answers, and what a caller (promotion, a probe) reads
from it: 200 ``{"status": "ready", "model_version": ...}``; 503 with ``detail`` either
:data:`MODEL_LOADING` (wait) or the load's error (it will not recover: stop waiting)."""

from __future__ import annotations

READY = "ready"
MODEL_LOADING = "model is loading"


def load_failed(detail: object) -> bool:
    """Whether a 503's detail says the load failed (rather than that it is still running)."""
    return bool(detail) and detail != MODEL_LOADING
