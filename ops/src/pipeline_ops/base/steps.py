"""One step log: ``StepLog.step(name)`` times a block, records its outcome (``FAILED: …`` if
it raised, and re-raises) and any figures the block sets, and says both on the way in and out.
``table()`` is the one Markdown table of a run's steps that every report prints.

Used by ``make run`` (runner.py), the cluster run and the image tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Step:
    name: str
    started_at: float = field(default_factory=time.time)
    seconds: float = 0.0
    outcome: str = ""
    failed: bool = False
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _print(line: str) -> None:
    print(line, flush=True)


class StepLog:
    def __init__(self, say: Callable[[str], None] | None = _print, numbered: bool = True):
        self.steps: list[Step] = []
        self.say = say or (lambda _line: None)
        self.numbered = numbered

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        record = Step(name)
        label = f"[{len(self.steps) + 1}] {name}" if self.numbered else name
        self.say(f"==> {label}")
        started = time.monotonic()
        try:
            yield record
            record.outcome = record.outcome or "ok"
        except BaseException as error:
            record.failed = True
            record.outcome = f"FAILED: {error}" if str(error) else f"FAILED: {type(error).__name__}"
            raise
        finally:
            record.seconds = round(time.monotonic() - started, 1)
            self.steps.append(record)
            self.say(f"<== {label}: {record.seconds:.1f}s  {record.outcome}")

    def as_dicts(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.steps]

    @property
    def seconds(self) -> float:
        return round(sum(s.seconds for s in self.steps), 1)

    def table(self) -> str:
        """The steps as a Markdown table: time, share of the whole, outcome."""
        return steps_table(self.as_dicts())


STEP_COLUMNS = ("step", "seconds", "share", "outcome")


def step_rows(steps: list[dict[str, Any]]) -> list[list[str]]:
    """The cells of ``steps_table``, for a report that renders its own tables (HTML)."""
    total = sum(s["seconds"] for s in steps) or 1.0
    return [[str(s["name"]), f"{s['seconds']:.1f}", f"{s['seconds'] / total:.0%}",
             str(s["outcome"])] for s in steps]  # fmt: skip


def steps_table(steps: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(STEP_COLUMNS) + " |", "|---|---:|---:|---|"]
    for row in step_rows(steps):
        cells = [cell.replace("|", "\\|").replace("\n", " ") for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
