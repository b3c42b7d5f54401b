"""What the local pipeline remembers between runs (``.local/pipeline/state.json``): the input
snapshot last preprocessed and its feature run, and the feature run last trained on and that
training's summary. (What a run leaves running is in the platform's state record, which
`make down` reads.)

Every change is written whole to a temporary file and renamed over the old one
(``StateFile``), so a run killed mid-write leaves the previous state, never half of one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_ops.base.processes import StateFile
from pipeline_ops.paths import LOCAL_DIR


@dataclass
class PipelineState:
    path: Path = field(default_factory=lambda: LOCAL_DIR / "pipeline" / "state.json")

    def read(self) -> dict[str, Any]:
        return StateFile(self.path).read()

    def update(self, **changes: Any) -> dict[str, Any]:
        state = {**self.read(), **changes}
        StateFile(self.path).write(state)
        return state
