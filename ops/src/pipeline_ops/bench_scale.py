"""`make bench-scale`: how each stage's wall time and peak memory grow with the number of
pull requests, on synthetic pull requests drawn from the bundled sample
(``pipeline_ops.synthetic_pulls``, seeded).

Each point is one process, started here and measured from outside: wall time, and the peak
resident memory of its whole process tree (Spark's JVM and Python workers included),
sampled from /proc every 50 ms. A process whose tree passes its memory cap is killed there,
as the kernel kills a container past its memory limit, and reported as out of memory.

- spark-preprocess (``ml-pipeline/bench/scale_preprocess.py``): Spark in local[*] against
  the single-process pandas reference, the same Parquet file of pull requests in, features
  and quarantine published; pandas runs under ``SCALE_PANDAS_MEMORY_GB``, Spark with
  ``SCALE_SPARK_DRIVER_MEMORY`` and a read and shuffle partition per
  ``SCALE_SPARK_ROWS_PER_PARTITION`` rows. With the local cluster up (`make cluster-up`
  first; the bench does not start it), the same work runs on it too: a SparkApplication, a
  driver and two executors (``pipeline_ops.bench_scale_cluster``: how it is measured);
  without the cluster that series is skipped and says so.
- ml-training (``ml-pipeline/bench/scale_train.py``): seconds per epoch over the training
  split, the process holding the published feature rows.
- data-fetch (``data-fetch/bench/scale_fetch.py``): API requests and wall time against the
  GitHub replay server, which enforces GitHub's budget (5,000 points per window, a GraphQL
  page costing ``SCALE_GRAPHQL_COST``) with the hour compressed into
  ``SCALE_RATE_WINDOW_SECONDS``.

Bounded in time (``SCALE_BUDGET_SECONDS``, default 20 minutes): every point runs once,
smallest first (a point whose linear estimate from the size before it does not fit in what
is left is skipped and says so), then the points that ran are repeated, cheapest first, up
to ``SCALE_REPEATS`` runs while the budget lasts; the tables give medians, the number of
runs and their spread. Loopback only; every process is stopped by pid. The tables are
printed; ``results.json``, the logs and one PNG per stage go to ``SCALE_OUT`` (default
``.local/bench-scale``).

    SCALE_SIZES=100000,1000000 SCALE_FETCH_SIZES=10000,100000 make bench-scale
    SCALE_SERIES=spark,spark-cluster SCALE_SIZES=100000 make bench-scale  # some series only
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import requests
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline_common.settings import ConfigError, load_settings
from pipeline_ops import stages, synthetic_pulls
from pipeline_ops.base import commands, processes
from pipeline_ops.base.errors import OpsError
from pipeline_ops.local_platform import LocalPlatform
from pipeline_ops.paths import LOCAL_DIR, PROJECT_ROOT

if TYPE_CHECKING:
    from pipeline_ops.bench_scale_cluster import Resources
    from pipeline_ops.cluster.layout import Layout

GIB = 1024**3
POLL_SECONDS = 0.05
GITHUB_POINTS_PER_HOUR = 5000  # per token, REST requests and GraphQL points alike
PAGE_SIZE = 100  # pull requests a GraphQL page (data-fetch's query)
PREPROCESS_WORKER = PROJECT_ROOT / "ml-pipeline" / "bench" / "scale_preprocess.py"
TRAIN_WORKER = PROJECT_ROOT / "ml-pipeline" / "bench" / "scale_train.py"
FETCH = stages.stage("data-fetch")
FETCH_WORKER = PROJECT_ROOT / FETCH.directory / "bench" / "scale_fetch.py"
# SCALE_SERIES' names: data-fetch, and the preprocess engines and training
SERIES = (FETCH.name, "pandas", "spark", "spark-cluster", "training")
CLUSTER_SERIES = "preprocess spark-cluster"
SPARK_MEMORY = r"^[0-9]+[mg]$"  # a Spark memory setting: 2g, 512m


class ScaleBenchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCALE_", extra="ignore")

    series: Annotated[list[str], NoDecode] = Field(
        default=list(SERIES),
        description=f"what to measure, comma-separated, of: {', '.join(SERIES)}",
    )
    sizes: Annotated[list[int], NoDecode] = Field(
        default=[100_000, 1_000_000, 3_000_000],
        description="pull requests for preprocessing and training, comma-separated",
    )
    fetch_sizes: Annotated[list[int], NoDecode] = Field(
        default=[10_000, 100_000, 300_000],
        description="pull requests for data-fetch, comma-separated",
    )
    budget_seconds: float = Field(default=1200, gt=0, description="the whole bench's time")
    pandas_memory_gb: float = Field(
        default=4, gt=0, description="pandas' memory cap (a container's memory limit)"
    )
    memory_gb: float = Field(default=8, gt=0, description="every process tree's memory cap")
    spark_driver_memory: str = Field(
        default="2g",
        pattern=SPARK_MEMORY,
        description="Spark's spark.driver.memory in local[*] (the stage's default, 1g, runs out "
        "of heap at 3,000,000 pull requests)",
    )
    spark_rows_per_partition: int = Field(
        default=250_000,
        ge=1,
        description="Spark's read and shuffle partitions: rows / this, at least the stage's 4",
    )
    cluster_executor_memory: str = Field(
        default="2g",
        pattern=SPARK_MEMORY,
        description="the cluster point's spark.executor.memory (two executors; the driver gets "
        "SCALE_SPARK_DRIVER_MEMORY, as local[*])",
    )
    cluster_memory_overhead: str = Field(
        default="1g",
        pattern=SPARK_MEMORY,
        description="the cluster point's memory overhead a pod (Python workers, off-heap), "
        "above its JVM memory: the pod's memory limit is the sum",
    )
    epochs: int = Field(default=2, ge=1, description="epochs timed per training point")
    repeats: int = Field(default=3, ge=1, description="runs a point, budget allowing (medians)")
    seed: int = Field(default=0, description="the synthetic pull requests' seed")
    pulls_per_repository: int = Field(default=1000, ge=1, description="mean repository size")
    rate_window_seconds: int = Field(
        default=30, ge=1, description="the replay server's stand-in for GitHub's hour"
    )
    graphql_cost: int = Field(
        default=2, ge=1, description="points a page of data-fetch's GraphQL query costs"
    )
    out: Path = Field(default=LOCAL_DIR / "bench-scale", description="results and plots")

    @field_validator("series", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("series")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in SERIES]
        if unknown or not value:
            raise ValueError(f"give some of {', '.join(SERIES)} (not {', '.join(unknown)})")
        return value

    @field_validator("sizes", "fetch_sizes", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return [int(part.replace("_", "")) for part in value.split(",") if part.strip()]
            except ValueError:
                raise ValueError(
                    "give whole numbers separated by commas, e.g. 100000,1000000"
                ) from None
        return value

    @field_validator("sizes", "fetch_sizes")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 1:
            raise ValueError("give at least one size, each at least 1")
        return sorted(set(value))


@dataclass
class Run:
    """One process of a point, measured from outside."""

    outcome: str  # ok, out of memory, timed out, failed
    wall_seconds: float
    peak_bytes: int
    result: dict[str, Any] = field(default_factory=dict)  # the worker's JSON line
    note: str = ""


@dataclass
class Point:
    """A stage (and engine) at one size: its runs (the first decides the outcome; repeats
    follow an ``ok`` first run while the budget lasts), or why it never ran."""

    series: str
    rows: int
    runs: list[Run] = field(default_factory=list)
    skipped: str = ""

    @property
    def outcome(self) -> str:
        return self.runs[0].outcome if self.runs else "skipped"

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def note(self) -> str:
        return self.runs[0].note if self.runs else self.skipped

    @property
    def good_runs(self) -> list[Run]:
        return [r for r in self.runs if r.outcome == "ok"]

    @property
    def seconds(self) -> float | None:
        """The median of the stage's own seconds as the worker timed them (no interpreter or
        JVM start)."""
        return _median([r.result.get("seconds") for r in self.good_runs])

    @property
    def wall_seconds(self) -> float | None:
        return _median([r.wall_seconds for r in self.good_runs])

    @property
    def peak_bytes(self) -> float | None:
        """The median peak of the good runs, or the peak a failed first run reached."""
        if self.good_runs:
            return _median([r.peak_bytes for r in self.good_runs])
        return self.runs[0].peak_bytes if self.runs else None

    def median(self, key: str) -> float | None:
        return _median([r.result.get(key) for r in self.good_runs])

    def spread(self) -> str:
        """min-max of the stage's seconds over the good runs (empty for one run)."""
        values = [float(r.result["seconds"]) for r in self.good_runs if "seconds" in r.result]
        if len(values) < 2:
            return ""
        return f"{figure(min(values))}-{figure(max(values))}"


def partitions_for(rows: int, rows_per_partition: int) -> int:
    """Spark's read and shuffle partitions: one per ``rows_per_partition``, at least the
    stage's 4 (local[*] and the cluster alike)."""
    return max(4, math.ceil(rows / rows_per_partition))


def _median(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return statistics.median(numbers) if numbers else None


# -- measuring a process tree ---------------------------------------------------------------
def tree_pids(root: int) -> list[int]:
    """``root`` and its living descendants (every thread's children, from /proc)."""
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        found.append(pid)
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                frontier.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def resident_bytes(pids: Iterable[int]) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


@dataclass
class TreeRun:
    """What :func:`run_measured` saw of one process tree."""

    exit_code: int | None  # None: killed here
    wall_seconds: float
    peak_bytes: int
    stopped: str | None  # why it was killed here: "memory" or "time"
    log: Path


def run_measured(
    name: str,
    argv: list[str],
    *,
    log: Path,
    memory_cap: int,
    timeout: float,
    env: dict[str, str],
) -> TreeRun:
    """Run ``argv`` to its end, sampling its tree's resident memory; kill the tree (its
    process group, started here) past ``memory_cap`` bytes or ``timeout`` seconds."""
    started = time.monotonic()
    record = processes.start(name, argv, log_file=log, env=env, cwd=PROJECT_ROOT)
    peak, stopped, exit_code = 0, None, None
    while True:
        pid, status = os.waitpid(record.pid, os.WNOHANG)
        if pid:
            exit_code = os.waitstatus_to_exitcode(status)
            break
        peak = max(peak, resident_bytes(tree_pids(record.pid)))
        if peak > memory_cap:
            stopped = "memory"
        elif time.monotonic() - started > timeout:
            stopped = "time"
        if stopped:
            _kill_group(record.pid)
            os.waitpid(record.pid, 0)
            break
        time.sleep(POLL_SECONDS)
    return TreeRun(exit_code, time.monotonic() - started, peak, stopped, log)


def _kill_group(pid: int) -> None:
    descendants = tree_pids(pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # the worker's own group (started in a new session)
    for other in descendants[1:]:  # one that moved to a group of its own
        with contextlib.suppress(ProcessLookupError):
            os.kill(other, signal.SIGKILL)
    # the next point starts only once this one's memory is free
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(processes.start_ticks(p) for p in descendants[1:]):
        time.sleep(POLL_SECONDS)


def worker_result(log: Path) -> dict[str, Any]:
    """The JSON line a worker prints last on stdout (its log holds stderr too)."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return {}


# -- the bench ------------------------------------------------------------------------------
@dataclass
class Bench:
    """Every point once, smallest first, then repeats of the points that ran, cheapest
    first, while ``SCALE_BUDGET_SECONDS`` lasts."""

    settings: ScaleBenchSettings
    work: Path
    started: float = field(default_factory=time.monotonic)
    points: list[Point] = field(default_factory=list)
    _runners: dict[tuple[str, int], Callable[[], Run]] = field(default_factory=dict)

    @property
    def left(self) -> float:
        return self.settings.budget_seconds - (time.monotonic() - self.started)

    def run_point(
        self, series: str, rows: int, runner: Callable[[], Run], skipped: str = ""
    ) -> Point:
        point = Point(series, rows, skipped=skipped or self._skip_reason(series, rows))
        self.points.append(point)
        if not point.skipped:
            point.runs.append(runner())
            self._runners[(series, rows)] = runner
        print(f"  {describe(point)}", flush=True)
        return point

    def repeat_points(self) -> None:
        """Up to ``SCALE_REPEATS`` runs a point, cheapest first, each only if its last run's
        time fits in what is left of the budget."""
        for round_number in range(2, self.settings.repeats + 1):
            candidates = sorted((p for p in self.points if p.ok), key=lambda p: p.wall_seconds or 0)
            if not candidates:
                return
            print(f"\nround {round_number} of {self.settings.repeats} (repeats for medians)")
            for point in candidates:
                expected = point.runs[-1].wall_seconds
                if expected > self.left:
                    continue
                run = self._runners[(point.series, point.rows)]()
                if run.outcome == "ok":
                    point.runs.append(run)
                print(f"  {describe(point)}", flush=True)

    def measure(self, name: str, rows: int, argv: list[str], *, memory_gb: float) -> Run:
        cap = int(min(memory_gb, self.settings.memory_gb) * GIB)
        log = self.settings.out / "logs" / f"{name.replace(' ', '-')}-{rows}.log"
        tree = run_measured(
            name, argv, log=log, memory_cap=cap, timeout=max(self.left, 1),
            env=worker_environment(),
        )  # fmt: skip
        run = Run("ok", tree.wall_seconds, tree.peak_bytes, worker_result(log))
        if tree.stopped == "memory":
            run.outcome = "out of memory"
            run.note = f"passed its {cap / GIB:g} GiB cap after {tree.wall_seconds:.0f} s"
        elif tree.stopped == "time":
            run.outcome, run.note = "timed out", "ran past SCALE_BUDGET_SECONDS"
        elif tree.exit_code != 0 or not run.result:
            run.outcome, run.note = "failed", f"exit code {tree.exit_code}; see {log}"
            if "java.lang.OutOfMemoryError" in log.read_text(errors="replace"):
                run.outcome = "out of memory"
                run.note = (
                    f"Java heap space (spark.driver.memory {self.settings.spark_driver_memory})"
                )
        return run

    def _skip_reason(self, series: str, rows: int) -> str:
        earlier = [p for p in self.points if p.series == series and p.rows < rows]
        if any(p.outcome == "out of memory" for p in earlier):
            return "a smaller size already ran out of memory"
        done = [p for p in earlier if p.ok]
        if done:
            last = max(done, key=lambda p: p.rows)
            expected = (last.wall_seconds or 0) * rows / last.rows
            if expected > self.left:
                return (
                    f"about {expected:.0f} s expected (linear from {last.rows:,}), "
                    f"{max(self.left, 0):.0f} s left of SCALE_BUDGET_SECONDS"
                )
        if self.left <= 0:
            return "no time left of SCALE_BUDGET_SECONDS"
        return ""

    # -- stages ---------------------------------------------------------------------------
    def fetch_curve(self, mongo_uri: str) -> None:
        s = self.settings
        print(
            f"\ndata-fetch: GraphQL against the replay server, {GITHUB_POINTS_PER_HOUR:,} points "
            f"a window of {s.rate_window_seconds} s (GitHub: an hour), {s.graphql_cost} points "
            "a page",
            flush=True,
        )
        for rows in s.fetch_sizes:
            folder = self.work / f"fetch-{rows}"
            folder.mkdir()
            frame = synthetic_pulls.synthetic_pull_requests(
                rows, s.seed, pulls_per_repository=s.pulls_per_repository
            )
            with (folder / "pulls.prs.jsonl").open("w") as out:
                for payload in synthetic_pulls.rest_payloads(frame):
                    out.write(json.dumps(payload) + "\n")
            (folder / "repositories.txt").write_text("\n".join(frame["repository"].unique()))
            del frame
            self.run_point(FETCH.name, rows, partial(self._fetch_run, rows, folder, mongo_uri))

    def _fetch_run(self, rows: int, folder: Path, mongo_uri: str) -> Run:
        """One fetch against a fresh replay server (a full budget)."""
        s = self.settings
        port = processes.free_port()
        server = processes.start(
            "github-replay",
            [sys.executable, "-m", "pipeline_ops.github_replay_server", "--samples", folder,
             "--port", str(port), "--rate-limit", str(GITHUB_POINTS_PER_HOUR),
             "--window-seconds", str(s.rate_window_seconds),
             "--graphql-cost", str(s.graphql_cost)],
            log_file=s.out / "logs" / f"github-replay-{rows}.log",
            env=worker_environment(), cwd=PROJECT_ROOT, ports={"main": port},
        )  # fmt: skip
        try:
            processes.wait_healthy(server, lambda: _answers(f"{server.url}/rate_limit"), 300)
            return self.measure(
                FETCH.name,
                rows,
                [sys.executable, "-u", str(FETCH_WORKER), "--api-url", server.url,
                 "--mongo-uri", mongo_uri, "--repositories", str(folder / "repositories.txt")],
                memory_gb=s.memory_gb,
            )  # fmt: skip
        finally:
            processes.stop(server, timeout=10)

    def preprocess_and_training_curves(self) -> None:
        s = self.settings
        engines = [e for e in ("pandas", "spark", "spark-cluster") if e in s.series]
        if not engines and "training" not in s.series:
            return
        cluster = self._cluster() if "spark-cluster" in engines else None
        print(
            f"\nspark-preprocess (Spark local[*], driver memory {s.spark_driver_memory}, a "
            f"partition per {s.spark_rows_per_partition:,} rows; pandas capped at "
            f"{s.pandas_memory_gb:g} GiB) and ml-training ({s.epochs} epochs timed)",
            flush=True,
        )
        for rows in s.sizes:
            source = self.work / f"pulls-{rows}.parquet"
            started = time.perf_counter()
            synthetic_pulls.write_parquet(
                source, rows, s.seed, pulls_per_repository=s.pulls_per_repository
            )
            print(
                f"  {rows:,} synthetic pull requests written in "
                f"{time.perf_counter() - started:.1f} s ({source.stat().st_size / 1e6:,.0f} MB)",
                flush=True,
            )
            partitions = partitions_for(rows, s.spark_rows_per_partition)
            for engine in engines:
                if engine == "spark-cluster":
                    self._cluster_point(cluster, rows, source, partitions)
                    continue
                cap = s.pandas_memory_gb if engine == "pandas" else s.memory_gb
                out = self.work / f"{engine}-{rows}"
                argv = [sys.executable, "-u", str(PREPROCESS_WORKER), "--engine", engine,
                        "--input", str(source), "--out", str(out), "--partitions", str(partitions),
                        "--driver-memory", s.spark_driver_memory]  # fmt: skip
                self.run_point(
                    f"preprocess {engine}",
                    rows,
                    partial(self._preprocess_run, engine, rows, argv, cap),
                )
            if "training" in s.series:
                argv = [sys.executable, "-u", str(TRAIN_WORKER), "--input", str(source),
                        "--epochs", str(s.epochs)]  # fmt: skip
                self.run_point(
                    "training",
                    rows,
                    partial(self.measure, "training", rows, argv, memory_gb=s.memory_gb),
                )

    def _preprocess_run(self, engine: str, rows: int, argv: list[str], cap: float) -> Run:
        try:
            return self.measure(f"preprocess {engine}", rows, argv, memory_gb=cap)
        finally:
            shutil.rmtree(self.work / f"{engine}-{rows}", ignore_errors=True)

    # -- the cluster point (bench_scale_cluster) ------------------------------------------
    def _cluster(self) -> tuple[Layout, str] | str:
        """(layout, Spark image) of the local cluster, or why its series is skipped (the
        cluster's client is imported only for it)."""
        from pipeline_ops import bench_scale_cluster

        try:
            layout, image = bench_scale_cluster.ready()
        except OpsError as error:  # no kubectl built, or no admin's kubeconfig here
            layout, image = None, f"{bench_scale_cluster.NOT_UP} ({commands.tail(str(error), 120)})"
        if layout is None:
            print(f"\n{CLUSTER_SERIES}: skipped: {image}", flush=True)
            return image
        print(
            f"\n{bench_scale_cluster.describe_resources(self._resources(), 'the partitions as')}"
            " local[*]'s",
            flush=True,
        )
        return layout, image

    def _resources(self) -> Resources:
        from pipeline_ops.bench_scale_cluster import Resources

        s = self.settings
        return Resources(s.spark_driver_memory, s.cluster_executor_memory,
                         s.cluster_memory_overhead)  # fmt: skip

    def _cluster_point(
        self, cluster: tuple[Layout, str] | str | None, rows: int, source: Path, partitions: int
    ) -> None:
        from pipeline_ops import bench_scale_cluster

        if not isinstance(cluster, tuple):
            self.run_point(CLUSTER_SERIES, rows, _never, skipped=str(cluster))
            return
        # the pods' folder (hostPath): the Parquet file linked in, their output beside it;
        # open to the pods' user (uid 10001)
        share = self.work / "cluster"
        share.mkdir(exist_ok=True)
        share.chmod(0o777)
        linked = share / source.name
        if not linked.exists():
            os.link(source, linked)
        layout, image = cluster

        def run() -> Run:
            name = f"bench-scale-{rows}-{secrets.token_hex(3)}"
            try:
                return bench_scale_cluster.run_application(
                    layout, image, name=name, source=linked, partitions=partitions,
                    resources=self._resources(),
                    log=self.settings.out / "logs" / f"preprocess-spark-cluster-{rows}.log",
                    timeout=max(self.left, 1),
                )  # fmt: skip
            finally:
                shutil.rmtree(share / f"out-{name}", ignore_errors=True)

        self.run_point(CLUSTER_SERIES, rows, run)


def _never() -> Run:
    raise AssertionError("a skipped point never runs")


def worker_environment() -> dict[str, str]:
    return processes.minimal_environment(
        {
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


# -- report ---------------------------------------------------------------------------------
def describe(point: Point) -> str:
    head = f"{point.series:<20}{point.rows:>11,}"
    if not point.ok:
        return f"{head}  {point.outcome}: {point.note}"
    extra = ""
    if point.series == FETCH.name:
        requests_made, waited = point.median("requests") or 0, point.median("waited_seconds")
        extra = f", {requests_made:,.0f} requests, {figure(waited)} s waiting for the budget"
    whole = "process"
    if point.series == CLUSTER_SERIES:
        whole = "submission to COMPLETED"
        cgroups = gib(point.median("cgroup_peak_bytes"))
        extra = f" (the pods' processes); the pods' cgroup peaks {cgroups:.2f} GiB"
    runs = len(point.good_runs)
    return (
        f"{head}  {figure(point.seconds):>8} s ({whole} {figure(point.wall_seconds)} s), "
        f"peak {gib(point.peak_bytes):.2f} GiB{extra}"
        + (f"; median of {runs} runs" if runs > 1 else "")
    )


def figure(value: float | None) -> str:
    """Seconds or bytes ratios to about three significant digits, never in e-notation."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def gib(value: float | None) -> float:
    return (value or 0) / GIB


def ratio(a: float | None, b: float | None) -> str:
    return f"{figure(a / b)}x" if a and b else "-"


def print_tables(points: list[Point], settings: ScaleBenchSettings) -> None:
    series = list(dict.fromkeys(p.series for p in points))
    print("\nGrowth per stage (x: against the size before it)")
    header = (
        f"  {'stage':<20}{'rows':>11}{'runs':>5}{'seconds':>10}{'min-max':>14}{'peak GiB':>10}"
        f"{'rows x':>8}{'time x':>8}{'memory x':>10}  outcome"
    )
    print(header)
    for name in series:
        before: Point | None = None
        for point in (p for p in points if p.series == name):
            seconds = figure(point.seconds) if point.ok else "-"
            peak = f"{gib(point.peak_bytes):.2f}" if point.peak_bytes else "-"
            grows = (
                (ratio(point.rows, before.rows), ratio(point.seconds, before.seconds),
                 ratio(point.peak_bytes, before.peak_bytes))
                if before and point.ok else ("", "", "")
            )  # fmt: skip
            outcome = point.outcome if point.ok else f"{point.outcome}: {point.note}"
            print(
                f"  {name:<20}{point.rows:>11,}{len(point.good_runs):>5}{seconds:>10}"
                f"{point.spread():>14}{peak:>10}"
                f"{grows[0]:>8}{grows[1]:>8}{grows[2]:>10}  {outcome}"
            )
            if point.ok:
                before = point
    spark = {p.rows: p for p in points if p.series == "preprocess spark"}
    pandas = {p.rows: p for p in points if p.series == "preprocess pandas"}
    on_cluster = {p.rows: p for p in points if p.series == CLUSTER_SERIES}
    if len([engine for engine in (spark, pandas, on_cluster) if engine]) > 1:
        print(
            "\nspark-preprocess against pandas (pandas seconds / Spark seconds; >1: Spark "
            "faster); cluster: a driver and 2 executors, the job's seconds, the pods' memory"
        )
        print(
            f"  {'rows':>11}{'pandas s':>10}{'GiB':>7}{'Spark s':>10}{'GiB':>7}{'speed':>8}"
            f"{'cluster s':>11}{'GiB':>7}{'speed':>8}"
        )
        for rows in sorted(set(spark) | set(pandas) | set(on_cluster)):
            a, b, c = pandas.get(rows), spark.get(rows), on_cluster.get(rows)

            def cell(p: Point | None, width: int = 10) -> str:
                if p is None or not p.ok:
                    return f"{(p.outcome if p else 'not run'):>{width + 7}}"
                return f"{figure(p.seconds):>{width}}{gib(p.peak_bytes):>7.2f}"

            def speed(reference: Point | None, p: Point | None) -> str:
                if reference and p and reference.ok and p.ok:
                    return ratio(reference.seconds, p.seconds)
                return "-"

            print(f"  {rows:>11,}{cell(a)}{cell(b)}{speed(a, b):>8}{cell(c, 11)}{speed(a, c):>8}")
    fetched = [p for p in points if p.series == FETCH.name and p.ok]
    if fetched:
        print(
            f"\ndata-fetch under GitHub's budget ({GITHUB_POINTS_PER_HOUR:,} points an hour a "
            f"token, {settings.graphql_cost} points a page; here an hour is "
            f"{settings.rate_window_seconds} s)"
        )
        print(
            f"  {'pull requests':>14}{'requests':>10}{'per 1,000':>10}{'points':>9}"
            f"{'resets':>8}{'here s':>8}{'waiting s':>11}{'PRs/s working':>15}"
            f"{'token-hours on GitHub':>23}"
        )
        for p in fetched:
            requests_made = int(p.median("requests") or 0)
            points_used = requests_made * settings.graphql_cost
            waited = p.median("waited_seconds") or 0.0
            working = (p.seconds or 0.0) - waited
            print(
                f"  {p.rows:>14,}{requests_made:>10,}{1000 * requests_made / p.rows:>10.1f}"
                f"{points_used:>9,}{math.ceil(points_used / GITHUB_POINTS_PER_HOUR) - 1:>8}"
                f"{figure(p.seconds):>8}{figure(waited):>11}"
                f"{p.rows / working if working > 0 else 0:>15,.0f}"
                f"{points_used / GITHUB_POINTS_PER_HOUR:>23.2f}"
            )


def plot(points: list[Point], out: Path, settings: ScaleBenchSettings) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups = {
        "preprocess": ["preprocess pandas", "preprocess spark", CLUSTER_SERIES],
        "training": ["training"],
        "fetch": [FETCH.name],
    }
    for name, members in groups.items():
        measured = [p for p in points if p.series in members and p.peak_bytes]
        if not measured:
            continue
        fetch = name == "fetch"
        figure, axes = plt.subplots(
            1, 3 if fetch else 2, figsize=(15 if fetch else 10, 4), layout="constrained"
        )
        time_axis, memory_axis = axes[-2], axes[-1]
        for series in members:
            mine = [p for p in measured if p.series == series]
            done = [p for p in mine if p.ok]
            label = series.replace("preprocess ", "")
            if series == CLUSTER_SERIES:
                label = "spark-cluster (driver + 2 executors)"
            if done:
                time_axis.plot([p.rows for p in done], [p.seconds for p in done], "o-", label=label)
                memory_axis.plot(
                    [p.rows for p in done], [gib(p.peak_bytes) for p in done], "o-", label=label
                )
            for p in mine:
                if p.outcome == "out of memory":
                    memory_axis.plot([p.rows], [gib(p.peak_bytes)], "rx", markersize=10)
                    memory_axis.annotate(
                        f"{label}: out of memory ",
                        (p.rows, gib(p.peak_bytes)),
                        fontsize=8,
                        ha="right",
                        va="bottom",
                    )
        if name == "preprocess":
            memory_axis.axhline(
                settings.pandas_memory_gb, color="grey", linestyle=":", label="pandas cap"
            )
        if fetch:
            done = [p for p in measured if p.ok]
            rows = [p.rows for p in done]
            pages = [p.median("requests") or 0 for p in done]
            axes[0].plot(rows, pages, "o-", label="API requests (GraphQL pages)")
            axes[0].plot(
                rows,
                [n * settings.graphql_cost for n in pages],
                "s--",
                label=f"budget points ({settings.graphql_cost} a page)",
            )
            axes[0].set_yscale("log")
            axes[0].set_ylabel("requests, points")
            time_axis.plot(
                rows,
                [p.median("waited_seconds") for p in done],
                "s--",
                label=f"waiting for the budget (an hour = {settings.rate_window_seconds} s)",
            )
        for axis in axes:
            axis.set_xscale("log")
            axis.set_xlabel("pull requests")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=8)
        if not fetch:
            time_axis.set_yscale("log")
        unit = "seconds per epoch" if name == "training" else "seconds"
        time_axis.set_ylabel(unit)
        memory_axis.set_ylim(0, memory_axis.get_ylim()[1] * 1.15)
        memory_axis.set_ylabel("peak resident memory (GiB)")
        whose = "of the process tree" + (
            "; of the pods' processes on the cluster" if name == "preprocess" else ""
        )
        figure.suptitle(f"make bench-scale: {name} (memory {whose})")
        path = out / f"{name}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def _load() -> str:
    """The 1, 5 and 15 minute load averages: how busy the shared machine was."""
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> int:
    try:
        settings = load_settings(ScaleBenchSettings)
    except ConfigError as error:
        print(f"bench-scale: {error}", file=sys.stderr)
        return 2
    settings.out.mkdir(parents=True, exist_ok=True)
    print(
        f"bench-scale: {', '.join(settings.series)}; sizes {settings.sizes}, fetch sizes "
        f"{settings.fetch_sizes}, seed "
        f"{settings.seed}, budget {settings.budget_seconds:.0f} s, memory caps: pandas "
        f"{settings.pandas_memory_gb:g} GiB, every run {settings.memory_gb:g} GiB; "
        f"{os.cpu_count()} cores, load average {_load()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as work:
        bench = Bench(settings, Path(work))
        platform = LocalPlatform(Path(work) / "platform")  # MongoDB: data-fetch's state
        try:
            if FETCH.name in settings.series:
                platform.up(["mongo"])
                bench.fetch_curve(f"mongodb://127.0.0.1:{platform.service('mongo').port}/")
            bench.preprocess_and_training_curves()
            bench.repeat_points()
        finally:
            platform.down()
    print_tables(bench.points, settings)
    results = settings.out / "results.json"
    summary = [
        {"series": p.series, "rows": p.rows, "outcome": p.outcome, "note": p.note,
         "seconds": p.seconds, "wall_seconds": p.wall_seconds, "peak_bytes": p.peak_bytes,
         "runs": [asdict(r) for r in p.runs]}
        for p in bench.points
    ]  # fmt: skip
    results.write_text(
        json.dumps({"settings": settings.model_dump(mode="json"), "points": summary}, indent=1)
    )
    plots = plot(bench.points, settings.out, settings)
    print(f"\nwrote {results} and {', '.join(str(p) for p in plots)}")
    total = time.monotonic() - bench.started
    print(
        f"bench-scale took {total:.0f} s (budget {settings.budget_seconds:.0f} s); "
        f"load average {_load()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
