"""FetchJob: pull requests from a source, normalised, upserted page by page into MongoDB,
with the fetch state saved after every page so that a killed run resumes where it stopped."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from pymongo import MongoClient

from data_fetch.github import (
    GitHubClient,
    GraphQLUnavailableError,
    Page,
    graphql_pages,
    parse_timestamp,
    rest_pages,
)
from data_fetch.records import (
    InvalidRecordError,
    PullRequestRecord,
    graphql_to_rest,
    normalize_rest_pull_request,
)
from data_fetch.replay import read_replay_file
from data_fetch.settings import FetchSecret
from data_fetch.store import FetchState, PullRequestStore, WriteCounts

log = logging.getLogger(__name__)

PAGE_SIZE = 100


class Progress(Protocol):
    """What the job reports as it goes (a progress bar on a terminal, nothing otherwise)."""

    def page_done(self, repository: str, records: int, budget_left: int | None) -> None: ...


class _NoProgress:
    def page_done(self, repository: str, records: int, budget_left: int | None) -> None:
        pass


@dataclass
class RunCounts:
    pages: int = 0
    fetched: int = 0
    quarantined: int = 0
    writes: WriteCounts = field(default_factory=WriteCounts)

    def add(self, other: RunCounts) -> None:
        self.pages += other.pages
        self.fetched += other.fetched
        self.quarantined += other.quarantined
        self.writes.add(other.writes)

    def as_dict(self) -> dict[str, int]:
        return {
            "pages": self.pages,
            "fetched": self.fetched,
            "inserted": self.writes.inserted,
            "updated": self.writes.updated,
            "unchanged": self.writes.unchanged,
            "quarantined": self.quarantined,
        }


@dataclass
class FetchJob:
    """One run over one source. ``github`` needs ``client`` and ``repositories``;
    ``replay`` needs ``replay_files`` (``repositories``, if given, filters them)."""

    secret: FetchSecret
    replay_files: list[Path] = field(default_factory=list)
    source: str = "replay"
    repositories: list[str] = field(default_factory=list)
    client: GitHubClient | None = None
    api: str = "auto"  # github: graphql, rest, or auto (GraphQL, REST if it is missing)
    since: datetime | None = None
    max_pages: int | None = None  # per repository (github) or file (replay)
    limit_per_file: int | None = None
    dry_run: bool = False
    progress: Progress = field(default_factory=_NoProgress)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def run(self) -> dict[str, Any]:
        totals = RunCounts()
        per_repository: dict[str, dict[str, Any]] = {}
        mongo: MongoClient[dict[str, Any]] = MongoClient(
            self.secret.mongo_uri.get_secret_value(), tz_aware=True
        )
        with mongo:
            store = PullRequestStore(
                mongo, self.secret.mongo_database, self.secret.mongo_collection
            )
            if not self.dry_run:
                store.ensure_indexes()
            if self.source == "github":
                for repository in self.repositories:
                    per_repository[repository] = self._fetch_repository(store, repository, totals)
            else:
                for path in self.replay_files:
                    per_repository.update(self._replay_file(store, path, totals))
            total = store.pull_requests.count_documents({}) if not self.dry_run else 0
        summary = {
            "stage": "data-fetch",
            "run_id": self.run_id,
            "source": self.source,
            **totals.as_dict(),
            "records_read": totals.fetched,
            "requests_used": self.client.requests_made if self.client else 0,
            "rate_limit_remaining": self.client.budget.remaining if self.client else None,
            "dry_run": self.dry_run,
            "complete": all(r.get("complete", True) for r in per_repository.values()),
            "repositories": per_repository,
            "collection": f"{self.secret.mongo_database}.{self.secret.mongo_collection}",
            "collection_count": total,
        }
        log.info("fetch finished", extra={k: v for k, v in summary.items() if k != "stage"})
        return summary

    # -- github ----------------------------------------------------------------------------
    def _github_client(self) -> GitHubClient:
        if self.client is None:
            raise ValueError("the github source needs a GitHubClient (FetchJob.client)")
        return self.client

    def _fetch_repository(
        self, store: PullRequestStore, repository: str, totals: RunCounts
    ) -> dict[str, Any]:
        state = store.load_state("github", repository)
        resumed = state.in_progress
        if not resumed:
            state.cursor, state.pass_high_water_mark, state.pass_run_id = None, None, self.run_id
            state.reset_counts()
        # Stop at the mark of the last completed pass, or at --since if that is later.
        floor = max((t for t in (state.high_water_mark, self.since) if t is not None), default=None)
        log.info(
            "fetching %s",
            repository,
            extra={
                "repository": repository,
                "resumed_at_cursor": state.cursor if resumed else None,
                "high_water_mark": state.high_water_mark,
            },
        )
        run = RunCounts()
        reached_end = False
        for page in self._github_pages(repository, state.cursor, floor):
            kept, reached_floor = _above_floor(page.payloads, page.shape, floor)
            written = self._write_page(store, kept, page.shape, repository, f"github:{repository}")
            newest = _newest_updated_at(kept, page.shape)
            if newest and (
                state.pass_high_water_mark is None or newest > state.pass_high_water_mark
            ):
                state.pass_high_water_mark = newest
            state.cursor = page.next_cursor
            reached_end = reached_floor or page.next_cursor is None
            self._account(state, written, run, totals)
            if reached_end:
                state.high_water_mark = max(
                    (t for t in (state.high_water_mark, state.pass_high_water_mark) if t),
                    default=None,
                )
                state.cursor = state.pass_high_water_mark = state.pass_run_id = None
                state.last_completed_at = datetime.now(UTC)
            state.last_run_id = self.run_id
            if not self.dry_run:
                store.save_state(state)
            remaining = self._github_client().budget.remaining
            self.progress.page_done(repository, len(page.payloads), remaining)
            if reached_end or (self.max_pages is not None and run.pages >= self.max_pages):
                break
        return {**run.as_dict(), "complete": reached_end, "resumed": resumed}

    def _github_pages(
        self, repository: str, cursor: str | None, floor: datetime | None
    ) -> Iterator[Page]:
        client = self._github_client()
        if self.api in ("graphql", "auto"):
            try:
                yield from graphql_pages(client, repository, cursor)
                return
            except GraphQLUnavailableError:
                if self.api == "graphql":
                    raise
                log.warning("no GraphQL API at %s; using REST", client.api_url)
                self.api = "rest"
                cursor = None  # a GraphQL cursor means nothing to REST

        def is_new(item: Any) -> bool:
            updated = _updated_at(item, "rest")
            return floor is None or updated is None or updated > floor

        yield from rest_pages(client, repository, cursor, is_new)

    # -- replay ----------------------------------------------------------------------------
    def _replay_file(
        self, store: PullRequestStore, path: Path, totals: RunCounts
    ) -> dict[str, dict[str, Any]]:
        """A replay file is read whole (it has no order to stop on); writes are idempotent,
        so a re-run after a kill ends with the same collection."""
        source = f"replay:{path.name}"
        states: dict[str, FetchState] = {}
        runs: dict[str, RunCounts] = {}
        pages = _pages(read_replay_file(path), PAGE_SIZE, self.limit_per_file)
        for page_number, page in enumerate(pages, start=1):
            if self.max_pages is not None and page_number > self.max_pages:
                break
            by_repository: dict[str | None, list[tuple[int, Any]]] = {}
            for line_number, payload in page:
                repo = _repository_of(payload)
                if self.repositories and repo not in self.repositories:
                    continue
                if self.since and (_updated_at(payload, "rest") or self.since) < self.since:
                    continue
                by_repository.setdefault(repo, []).append((line_number, payload))
            for repo, lines in by_repository.items():
                key = repo or "unknown"
                run = runs.setdefault(key, RunCounts())
                if key not in states:
                    states[key] = store.load_state("replay", key)
                    states[key].reset_counts()
                state = states[key]
                written = self._write_page(
                    store,
                    [p for _, p in lines],
                    "rest",
                    None,
                    source,
                    line_numbers=[n for n, _ in lines],
                )
                newest = _newest_updated_at([p for _, p in lines], "rest")
                if newest and (state.high_water_mark is None or newest > state.high_water_mark):
                    state.high_water_mark = newest
                self._account(state, written, run, totals)
                state.last_run_id = self.run_id
                state.last_completed_at = datetime.now(UTC)
                if not self.dry_run:
                    store.save_state(state)
                self.progress.page_done(key, len(lines), None)
        log.info("replayed %s", path.name, extra={"records_read": totals.fetched})
        return {repo: {**run.as_dict(), "complete": True} for repo, run in runs.items()}

    # -- both ------------------------------------------------------------------------------
    def _write_page(
        self,
        store: PullRequestStore,
        payloads: list[Any],
        shape: str,
        repository: str | None,
        source: str,
        line_numbers: list[int] | None = None,
    ) -> RunCounts:
        """Normalise, quarantine and write one page; returns what happened to it."""
        run = RunCounts(pages=1)
        records: list[PullRequestRecord] = []
        kept: list[Any] = []
        page_index: dict[int, int] = {}  # id(payload) -> its index in the page

        def quarantine(index: int | None, payload: Any, reason: str) -> None:
            run.quarantined += 1
            line = line_numbers[index] if line_numbers and index is not None else None
            extra = {"source": source, "reason": reason, **({"line": line} if line else {})}
            log.warning("quarantined a record", extra=extra)
            if not self.dry_run:
                where = f"{source}:{line}" if line else source
                store.quarantine_payload(payload, reason, where, self.run_id)

        for index, payload in enumerate(payloads):
            run.fetched += 1
            try:
                rest = graphql_to_rest(payload) if shape == "graphql" else payload
                records.append(normalize_rest_pull_request(rest, repository=repository))
                kept.append(payload)
                page_index[id(payload)] = index
            except InvalidRecordError as error:
                quarantine(index, payload, error.reason)
        if records and not self.dry_run:
            written = store.upsert(records, kept)
            for refused in written.refused:
                quarantine(page_index.get(id(refused.payload)), refused.payload, refused.reason)
            written.refused = []
            run.writes.add(written)
        return run

    def _account(self, state: FetchState, page: RunCounts, *runs: RunCounts) -> None:
        """Add the counts of the page just written to the state and the running totals."""
        for name, value in page.as_dict().items():
            setattr(state, name, getattr(state, name) + value)
        for run in runs:
            run.add(page)


def _updated_at(payload: Any, shape: str) -> datetime | None:
    if not isinstance(payload, dict):
        return None
    return parse_timestamp(payload.get("updatedAt" if shape == "graphql" else "updated_at"))


def _newest_updated_at(payloads: list[Any], shape: str) -> datetime | None:
    """The newest ``updated_at`` of a page, but never past the present: a high-water mark
    in the future (one record's clock or data error) would make every later pass stop
    before the real updates. The present is the last whole second before now, since GitHub
    stamps whole seconds and a later update within this one would carry the same stamp."""
    stamps = [t for t in (_updated_at(p, shape) for p in payloads) if t is not None]
    newest = max(stamps, default=None)
    present = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    return newest and min(newest, present)


def _above_floor(payloads: list[Any], shape: str, floor: datetime | None) -> tuple[list[Any], bool]:
    """The payloads newer than ``floor`` and whether the floor was reached (pages come
    newest first, so everything after the first one at or below it is already stored).
    A payload without a readable ``updated_at`` is kept, to be quarantined."""
    if floor is None:
        return payloads, False
    for index, payload in enumerate(payloads):
        stamp = _updated_at(payload, shape)
        if stamp is not None and stamp <= floor:
            return payloads[:index], True
    return payloads, False


def _repository_of(payload: Any) -> str | None:
    if isinstance(payload, dict):
        base = payload.get("base")
        if isinstance(base, dict) and isinstance(base.get("repo"), dict):
            name = base["repo"].get("full_name")
            return name if isinstance(name, str) else None
    return None


def _pages(items: Iterable[Any], size: int, limit: int | None) -> Iterable[list[Any]]:
    page: list[Any] = []
    for index, item in enumerate(items):
        if limit is not None and index >= limit:
            break
        page.append(item)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page
