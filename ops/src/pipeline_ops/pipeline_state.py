"""What the local pipeline remembers between runs (``.local/pipeline/state.json``): the input
snapshot last preprocessed and its feature run, the feature run last trained on and that
training's summary, and the serving instance ``make run KEEP_SERVING=1`` left running.

Every change is written whole to a temporary file and renamed over the old one, so a run
killed mid-write leaves the previous state, never half of one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_ops.paths import LOCAL_DIR


@dataclass
class PipelineState:
    path: Path = field(default_factory=lambda: LOCAL_DIR / "pipeline" / "state.json")

    def read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def update(self, **changes: Any) -> dict[str, Any]:
        state = {**self.read(), **changes}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.path)
        return state
