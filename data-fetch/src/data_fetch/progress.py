"""The progress bar on a terminal (pages, records, API budget left); nothing elsewhere,
where the JSON logs say the same."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any


class _Silent:
    def page_done(self, repository: str, records: int, budget_left: int | None) -> None:
        pass


class RichProgress:
    def __init__(self, progress: Any):
        self._progress = progress
        self._task = progress.add_task("fetching", total=None, pages=0, budget="?")
        self._pages = 0
        self._records = 0

    def page_done(self, repository: str, records: int, budget_left: int | None) -> None:
        self._pages += 1
        self._records += records
        self._progress.update(
            self._task,
            completed=self._records,
            description=repository,
            pages=self._pages,
            budget="?" if budget_left is None else str(budget_left),
        )


@contextlib.contextmanager
def progress_reporter(mode: str = "auto") -> Iterator[Any]:
    show = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
    if not show:
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.fields[pages]} pages"),
        TextColumn("{task.completed} records"),
        TextColumn("API budget left {task.fields[budget]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(file=sys.stderr), transient=False) as progress:
        yield RichProgress(progress)
