"""`make bench-serving`: the same registered model served by `mlflow models serve` and by
model-serving, one worker each, driven by the same load generator, one after the other.

It starts its own platform (Vault, MongoDB, MLflow) in a temporary directory, trains a
small autoencoder on the bundled sample and registers it the way ml-training does, then
serves it three ways on core 0 while loadgen.py drives it from core 1:

- a bare FastAPI endpoint returning a constant (the ceiling of this machine),
- model-serving (Vault -> registry -> fast path), one uvicorn worker,
- ``mlflow models serve --env-manager local``, one worker;

then model-serving with two workers on both cores, and the in-process profile of a request
(profile_request.py). It prints the issue's table (each figure with its goal), the tail at
25, 50 and 75 % of capacity, quiet and busy (``Neighbours``: CPU-bound processes on the
server's core), and busy without the server's favour, the workers' figures, where a
1,000-record batch's time goes against the decode-and-validate floor, and overload. Each
server's CPU time per request (from /proc) is printed beside its rate: unlike the rate it
hardly moves when other jobs load the machine, and the machine's own load is printed too.
Every server is stopped by pid. The whole run takes about five minutes and says how long
it took.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from pipeline_contracts.registry import ModelReference

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ALIAS = "bench"
SERVER_CPU, LOAD_CPU = {0}, {1}
WARMUP, SECONDS = 1.0, 5.0
# Closed loop: enough connections to keep a server busy while the generator turns answers
# into new requests (16 for single records), within the admission bounds (4,000 records in
# flight: 4 batches of 1,000)
BATCHES = ((100, 8), (1000, 4))
TAIL_LOADS = (0.25, 0.5, 0.75)  # of the closed-loop capacity with single records
TAIL_ROUNDS, TAIL_SECONDS = 3, 4.0  # per load; the median of the rounds is reported
# The goals (issue 26)
GOAL_SINGLE_OF_CEILING = 0.60
GOAL_BATCH_100_X_MLFLOW = 8.0
GOAL_BATCH_1000_X_MLFLOW = 5.0
GOAL_P99_HALF_CAPACITY_MS = 10.0
MODEL_FIELDS = (
    "number",
    "title",
    "body",
    "additions",
    "deletions",
    "changed_files",
    "commits",
    "created_at",
    "merged_at",
    "repository",
    "author",
)


def sample_records() -> list[dict]:
    records = []
    for path in sorted((ROOT / "data" / "samples").glob("*.prs.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                record["repository"] = record["base"]["repo"]["full_name"]
                record["author"] = (record.get("user") or {}).get("login")
                records.append(record)
    # What a client sends: the fields the model reads (the same bytes to every server).
    return [{k: r.get(k) for k in MODEL_FIELDS} for r in records]


def train_scorer(records: list[dict]):
    """A small autoencoder trained on the sample's first 2,000 pull requests with their
    context and drift reference, as ml-training builds a scorer (10 epochs: a few seconds)."""
    import numpy as np
    import pandas as pd

    from ml_pipeline.feature_frames import attach_context, compute_features, feature_context
    from ml_pipeline.training.settings import TrainingSettings
    from ml_pipeline.training.steps import fit_autoencoder
    from pipeline_contracts.drift import reference_distribution
    from pipeline_contracts.features import FEATURE_NAMES
    from pipeline_contracts.scorer import AnomalyScorer

    training = pd.DataFrame(records[:2000])
    context = feature_context(training)
    features = compute_features(attach_context(training, context)).to_numpy()
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale[scale == 0] = 1.0
    scaled = (features - mean) / scale
    model, _ = fit_autoencoder(scaled[:1600], scaled[1600:], TrainingSettings(max_epochs=10))
    # per repository, as ml-training's (the window then numbers each record's repository)
    repositories = training["repository"].to_numpy()[:1600]
    reference = reference_distribution(features[:1600], FEATURE_NAMES, repositories)
    scorer = AnomalyScorer(
        model.dense_network(), mean, scale, threshold=0.0, context=context, reference=reference
    )
    scorer.threshold = float(np.quantile(scorer.errors(features[1600:]).mean(axis=1), 0.99))
    return scorer


def register_model(
    tracking_uri: str, name: str, records: list[dict], workdir: Path
) -> tuple[str, Path]:
    """The model's URI at the bench alias, and its scorer file (for the profile)."""
    import mlflow
    from mlflow import MlflowClient

    from ml_pipeline.training.pyfunc import log_scorer_model

    scorer = train_scorer(records)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("bench-serving")
    with mlflow.start_run():
        info = log_scorer_model(scorer, workdir, name)
    MlflowClient().set_registered_model_alias(name, ALIAS, info.registered_model_version)
    scorer.save(workdir / "scorer.npz")
    return ModelReference.at_alias(name, ALIAS).uri, workdir / "scorer.npz"


# The kernel favours a session's processes over other sessions' by its autogroup's nice
# value (processes' own nice values count only within their session). The servers and the
# load generator each run in a session of their own at this nice value, when the bench may
# set it (root or CAP_SYS_NICE), as a Guaranteed pod's CPU request secures its core against
# best-effort neighbours: on a machine busy with other jobs their figures then measure the
# software, not the wait for a core (README, model-serving: the tail). ``--as-is`` leaves
# them at the default.
FAVOURED_NICE = -20
FAVOUR = {"nice": FAVOURED_NICE}


def favoured(cpus: set[int]) -> None:
    """In a child, before exec: pin it to ``cpus`` and favour its session (see above)."""
    os.sched_setaffinity(0, cpus)
    if FAVOUR["nice"]:
        set_autogroup_nice(os.getpid(), FAVOUR["nice"])


def may_favour() -> bool:
    """Whether a child in a session of its own may raise its session's priority."""
    command = [sys.executable, "-c", f"open('/proc/self/autogroup', 'w').write('{FAVOURED_NICE}')"]
    return subprocess.run(command, start_new_session=True, capture_output=True).returncode == 0


# A busy machine, defined: while the tail is measured a second time, the bench runs
# NEIGHBOURS CPU-bound processes on the server's core, as best-effort pods (no CPU request)
# beside a pod that requests its core; the load generator, standing for clients on other
# machines, keeps its own core. The kubelet weighs such pods 2 against 1,024 for a 1-CPU
# request (cgroup cpu.shares); autogroup nice 8 against the server's -20 is the same ratio
# (172 against 88,761). Unfavoured (``--as-is``) they run at the default, as the server.
NEIGHBOURS, NEIGHBOUR_NICE = 2, 8


def set_autogroup_nice(pid: int, nice: int) -> None:
    with open(f"/proc/{pid}/autogroup", "w") as autogroup:
        autogroup.write(str(nice))


class Neighbours:
    """NEIGHBOURS CPU-bound processes on the server's core, each in a session of its own,
    stopped by pid."""

    def __init__(self) -> None:
        self.nice = NEIGHBOUR_NICE if FAVOUR["nice"] else 0
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-c", "while True: pass"],
                start_new_session=True,
                preexec_fn=self._start,
            )
            for _ in range(NEIGHBOURS)
        ]

    def _start(self) -> None:
        os.sched_setaffinity(0, SERVER_CPU)
        if self.nice:
            set_autogroup_nice(os.getpid(), self.nice)

    def renice(self, nice: int) -> None:
        for process in self.processes:
            set_autogroup_nice(process.pid, nice)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def group_stat(group: int) -> tuple[float, float]:
    """(CPU seconds, resident MB) of the live processes of a process group."""
    ticks = pages = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == group:  # pgrp
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            pages += int(fields[21])  # rss
    return ticks / os.sysconf("SC_CLK_TCK"), pages * os.sysconf("SC_PAGE_SIZE") / 1e6


class MachineLoad:
    """How busy both cores were since the start (every process, ours included)."""

    def __init__(self) -> None:
        self.started, self.load_at_start = self._ticks(), os.getloadavg()[0]

    @staticmethod
    def _ticks() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = values[3] + values[4]  # idle, iowait
        return sum(values) - idle, sum(values)

    def summary(self) -> str:
        (busy0, total0), (busy1, total1) = self.started, self._ticks()
        busy = (busy1 - busy0) / max(total1 - total0, 1)
        return (
            f"load average {self.load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at "
            f"the end on {os.cpu_count()} cores; both cores {busy:.0%} busy over the run "
            "(ours: a server on one core at most, the load generator on the other)"
        )


class Server:
    def __init__(
        self,
        label: str,
        command: list[str],
        env: dict[str, str],
        port: int,
        cpus: set[int] = SERVER_CPU,
    ):
        self.label, self.port = label, port
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{label}-")  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            # mlflow's server finds uvicorn on PATH; one intra-op thread for every server
            env={**env, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{env.get('PATH', '')}"},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: mlflow's server runs uvicorn as a child
            preexec_fn=lambda: favoured(cpus),
        )

    def wait(self, path: str, body: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{self.port}{path}",
                    content=body,
                    headers={"content-type": "application/json"},
                    timeout=10,
                )
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        self.log.seek(0)
        raise RuntimeError(f"{self.label} did not serve: {self.log.read()[-2000:].decode()}")

    def cpu_seconds(self) -> float:
        return group_stat(self.process.pid)[0]

    def resident_mb(self) -> float:
        return group_stat(self.process.pid)[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def drive(
    server: Server,
    path: str,
    bodies: list[str],
    workdir: Path,
    cpus: set[int] = LOAD_CPU,
    seconds: float = SECONDS,
    **options,
) -> dict:
    """loadgen.py's figures, and the server's CPU time per answered request."""
    bodies_file = workdir / "bodies.json"
    bodies_file.write_text(json.dumps(bodies))
    command = [sys.executable, str(HERE / "loadgen.py"), "--port", str(server.port)]
    command += ["--path", path, "--bodies", str(bodies_file)]
    command += ["--warmup", str(WARMUP), "--seconds", str(seconds)]
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    cpu_before = server.cpu_seconds()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=WARMUP + seconds + 60,
        start_new_session=True,
        preexec_fn=lambda: favoured(cpus),
        check=True,
    )
    figures = json.loads(result.stdout)
    cpu = server.cpu_seconds() - cpu_before
    figures["cpu_us"] = 1e6 * cpu / max(figures["exchanges"], 1)
    figures["resident_mb"] = server.resident_mb()
    return figures


def overload_figures(
    server: Server, probe_port: int, records: list[dict], results: dict, workdir: Path
) -> list[dict]:
    """Goodput at 2x, 4x and 8x the closed-loop capacity with batches of 400 (open loop, a
    new connection per request, clients that give up after 2 s; 4 s each) and the probe
    port's latency meanwhile: README, "Under fire"."""
    body = workdir / "batch400.json"
    body.write_text(ours_bodies(records, 400)[0])
    results["ours batch 400"] = drive(
        server, "/v1/score", [body.read_text()], workdir, connections=4
    )
    capacity = results["ours batch 400"]["rps"]
    print(f"  capacity, batches of 400: {capacity:.0f} req/s; overload, 4 s at each multiple:")
    figures = []
    for multiple in (2, 4, 8):
        time.sleep(2)  # the previous run's queue drained
        command = [sys.executable, str(HERE / "overload.py"), "--port", str(server.port)]
        command += ["--probe-port", str(probe_port), "--body", str(body), "--seconds", "4"]
        command += ["--rate", f"{multiple * capacity:.0f}"]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=120,
            start_new_session=True,
            preexec_fn=lambda: favoured(LOAD_CPU),
        )
        if result.returncode != 0:
            raise RuntimeError(f"overload.py failed: {result.stderr[-2000:]}")
        figure = {"multiple": multiple, "capacity": capacity, **json.loads(result.stdout)}
        figures.append(figure)
        print(
            f"  {multiple}x: goodput {figure['goodput']:.0f} req/s "
            f"({figure['goodput'] / capacity:.0%} of capacity), 429 {figure['shed']}, "
            f"refused {figure['error']}, late {figure['late']}; /healthz p50 "
            f"{figure['probe_p50_ms']:.0f} ms, max {figure['probe_max_ms']:.0f} ms",
            flush=True,
        )
    return figures


def app_latency_buckets(server: Server) -> dict[float, float]:
    """The server's own latency histogram of 200s on /v1/score (its /metrics): the count of
    requests at or under each bucket's bound (seconds), from the moment the app had each."""
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text
    pattern = (
        r'model_serving_request_duration_seconds_bucket\{le="([^"]+)",method="POST",'
        r'route="/v1/score",status="200"\} (\S+)'
    )
    return {float(bound): float(count) for bound, count in re.findall(pattern, text)}


def app_p99_bound_ms(before: dict[float, float], after: dict[float, float]) -> float:
    """The smallest histogram bound (ms) that 99 % of the requests between two reads of
    the histogram were answered within, in the app."""
    counts = {bound: after[bound] - before.get(bound, 0) for bound in after}
    total = counts[math.inf]
    return 1000 * min(b for b, count in counts.items() if count >= 0.99 * total)


def tail_figures(
    server: Server,
    single: list[str],
    capacity: float,
    workdir: Path,
    loads: tuple[float, ...] = TAIL_LOADS,
) -> dict:
    """p50, p99 and p99.9 (and the generator's own lag) at each of ``loads`` of
    ``capacity``, open loop, each the median of ``TAIL_ROUNDS`` rounds; and the bound of
    the server's own histogram that 99 % of them were answered within, in the app."""
    figures = {}
    for share in loads:
        rate = share * capacity
        histogram = app_latency_buckets(server)
        rounds = [
            drive(
                server,
                "/v1/score",
                single,
                workdir,
                seconds=TAIL_SECONDS,
                mode="open",
                rate=rate,
                connections=64,
            )
            for _ in range(TAIL_ROUNDS)
        ]
        figures[share] = {
            "rate": rate,
            **{
                key: statistics.median(r[key] for r in rounds)
                for key in (
                    "p50_ms",
                    "p99_ms",
                    "p999_ms",
                    "lag_p99_ms",
                    "started_p99_ms",
                    "started_p999_ms",
                    "cpu_us",
                )
            },
            "p99_rounds": [r["p99_ms"] for r in rounds],
            "errors": sum(r["errors"] for r in rounds),
            "app_p99_ms": app_p99_bound_ms(histogram, app_latency_buckets(server)),
        }
        f = figures[share]
        print(
            f"  {share:.0%} of capacity ({rate:,.0f} req/s): p50 {f['p50_ms']:.2f} ms, p99 "
            f"{f['p99_ms']:.2f} ms, p99.9 {f['p999_ms']:.2f} ms; generator lag p99 "
            f"{f['lag_p99_ms']:.2f} ms, p99 without it {f['started_p99_ms']:.2f} ms (rounds' p99: "
            f"{', '.join(f'{p:.1f}' for p in f['p99_rounds'])})",
            flush=True,
        )
    return figures


def batches(records: list[dict], size: int, count: int = 8) -> list[list[dict]]:
    """Up to ``count`` disjoint batches of exactly ``size`` records (records/s = size x req/s)."""
    return [records[i : i + size] for i in range(0, len(records) - size + 1, size)][:count]


def ours_bodies(records: list[dict], size: int) -> list[str]:
    if size == 1:
        return [json.dumps(r) for r in records[:500]]
    return [json.dumps(batch) for batch in batches(records, size)]


def mlflow_bodies(records: list[dict], size: int) -> list[str]:
    # dataframe_split: MLflow's compact and fastest input form
    def split(rows):
        return json.dumps(
            {
                "dataframe_split": {
                    "columns": list(MODEL_FIELDS),
                    "data": [[r[k] for k in MODEL_FIELDS] for r in rows],
                }
            }
        )

    if size == 1:
        return [split([r]) for r in records[:500]]
    return [split(batch) for batch in batches(records, size)]


def profile_figures(scorer: Path) -> dict[str, list[tuple[str, float]]]:
    """profile_request.py's phases at batch 1 and 1,000, in its own process on core 0."""
    result = subprocess.run(
        [sys.executable, str(HERE / "profile_request.py"), "--scorer", str(scorer), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
        preexec_fn=lambda: favoured(SERVER_CPU),
        check=True,
    )
    return json.loads(result.stdout)


def main() -> int:
    from pipeline_ops.base.processes import free_port
    from pipeline_ops.local_env import LocalEnvironment
    from pipeline_ops.local_platform import LocalPlatform

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--as-is",
        action="store_true",
        help="leave the servers and the load generator at the default priority (FAVOURED_NICE)",
    )
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("bench-serving needs 2 cores (server on one, load on the other)", file=sys.stderr)
        return 2
    started, machine = time.monotonic(), MachineLoad()
    FAVOUR["nice"] = 0 if args.as_is or not may_favour() else FAVOURED_NICE
    print(
        f"servers and load generator: sessions of their own at autogroup nice {FAVOUR['nice']}"
        + ("" if FAVOUR["nice"] or args.as_is else " (raising it is not permitted here)")
    )
    records = sample_records()
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    platform = LocalPlatform(work / "platform")
    servers: list[Server] = []
    results: dict[str, dict] = {}
    under_fire: list[dict] = []
    busy: dict[float, dict] = {}
    unfavoured: dict = {}
    try:
        print("starting Vault, MongoDB, MLflow; training and registering the model ...")
        platform.up(["vault", "mongo", "mlflow"])
        env = LocalEnvironment(platform, work / "data")
        env.configure_vault()
        tracking_uri = platform.service("mlflow").url
        name = env.stage_secrets()["model-serving"]["model_name"]
        model_uri, scorer_file = register_model(tracking_uri, name, records, work)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "SERVING_"))}
        ours_env = {**env.stage_env("model-serving"), "SERVING_MODEL_URI": model_uri}

        def run_server(label, command, env_extra, path, probe, cpus=SERVER_CPU) -> Server:
            port = free_port()
            server = Server(
                label, [*command, "--port", str(port)], {**base_env, **env_extra}, port, cpus
            )
            servers.append(server)
            server.wait(path, probe)
            return server

        def measure(label, server, path, bodies, **options) -> None:
            results[label] = drive(server, path, bodies, work, **options)
            r = results[label]
            print(
                f"  {label:<28} {r['rps']:>8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                f"p99 {r['p99_ms']:7.2f} ms  server CPU {r['cpu_us']:7.0f} µs/request  "
                f"errors {r['errors']}",
                flush=True,
            )

        single = ours_bodies(records, 1)
        print("ceiling: bare FastAPI constant endpoint")
        ceiling = run_server(
            "ceiling",
            [str(BIN / "uvicorn"), "--app-dir", str(HERE), "ceiling_app:app", "--no-access-log"],
            {},
            "/v1/score",
            single[0],
        )
        measure("ceiling single", ceiling, "/v1/score", single, connections=16)
        ceiling.stop()

        print("model-serving (ours), 1 worker")
        ours = run_server(
            "ours",
            [str(BIN / "model-serving")],
            {**ours_env, "SERVING_PROBE_PORT": str(probe_port := free_port())},
            "/v1/score",
            single[0],
        )
        measure("ours single", ours, "/v1/score", single, connections=16)
        for size, connections in BATCHES:
            bodies = ours_bodies(records, size)
            measure(f"ours batch {size}", ours, "/v1/score", bodies, connections=connections)
        print("  open loop, single records (latency from the moment each request was due):")
        capacity = results["ours single"]["rps"]
        tail = tail_figures(ours, single, capacity, work)
        print(
            f"  the same, {NEIGHBOURS} CPU-bound neighbours on the server's core (autogroup "
            f"nice {NEIGHBOUR_NICE if FAVOUR['nice'] else 0}: best-effort pods):"
        )
        neighbours = Neighbours()
        try:
            busy = tail_figures(ours, single, capacity, work)
            if FAVOUR["nice"]:
                print("  and without the server's core (it and the neighbours at nice 0):")
                set_autogroup_nice(ours.process.pid, 0)
                neighbours.renice(0)
                unfavoured = tail_figures(ours, single, capacity, work, loads=(0.5,))[0.5]
                set_autogroup_nice(ours.process.pid, FAVOUR["nice"])
            else:
                unfavoured = busy[0.5]
        finally:
            neighbours.stop()
        under_fire = overload_figures(ours, probe_port, records, results, work)
        ours.stop()

        print("model-serving (ours), 1 and 2 workers on both cores (the generator on both too)")
        both = set(os.sched_getaffinity(0))
        for workers in (1, 2):
            server = run_server(
                f"ours-{workers}",
                [str(BIN / "model-serving"), "--workers", str(workers)],
                ours_env,
                "/v1/score",
                single[0],
                cpus=both,
            )
            for size, connections in ((1, 32), (100, 8)):
                label = f"{workers} workers batch {size}"
                results[label] = drive(
                    server,
                    "/v1/score",
                    ours_bodies(records, size),
                    work,
                    cpus=both,
                    connections=connections,
                )
                f = results[label]
                print(
                    f"  {label:<28} {f['rps'] * size:>8.0f} records/s  server CPU "
                    f"{f['cpu_us']:7.0f} µs/request",
                    flush=True,
                )
            server.stop()
        print("mlflow models serve --env-manager local, 1 worker")
        mlflow_server = run_server(
            "mlflow",
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                model_uri,
                "--env-manager",
                "local",
                "--workers",
                "1",
                "--host",
                "127.0.0.1",
            ],
            {"MLFLOW_TRACKING_URI": tracking_uri},
            "/invocations",
            mlflow_bodies(records, 1)[0],
        )
        path = "/invocations"
        measure("mlflow single", mlflow_server, path, mlflow_bodies(records, 1), connections=16)
        for size, connections in BATCHES:
            bodies = mlflow_bodies(records, size)
            measure(f"mlflow batch {size}", mlflow_server, path, bodies, connections=connections)
        mlflow_server.stop()
        print("profile of a request, in-process (profile_request.py) ...", flush=True)
        profile = profile_figures(scorer_file)
    finally:
        for server in servers:
            server.stop()
        platform.down()
        shutil.rmtree(work, ignore_errors=True)

    report(results, tail, busy, unfavoured)
    report_workers(results)
    report_floor(results, profile, body_costs(ours_bodies(records, 1000)[0]))
    report_overload(under_fire)
    print(f"\n{machine.summary()}")
    print(f"bench-serving took {time.monotonic() - started:.0f} s")
    return 0


def report_overload(figures: list[dict]) -> None:
    print("\n| offered | goodput req/s | of capacity | 429 | refused | late | probe p50/max ms |")
    print("|---|---|---|---|---|---|---|")
    for f in figures:
        print(
            f"| {f['multiple']}x ({f['rate']:,.0f} req/s) | {f['goodput']:,.0f} "
            f"| {f['goodput'] / f['capacity']:.0%} | {f['shed']:,} | {f['error']:,} "
            f"| {f['late']:,} | {f['probe_p50_ms']:.0f} / {f['probe_max_ms']:.0f} |"
        )


def body_costs(body: str) -> dict[str, float]:
    """Median ms to decode one 1,000-record body with the stdlib's JSON parser (untyped):
    what any Python server pays at least to read the body it is sent."""
    data = body.encode()
    times = []
    for _ in range(25):
        start = time.perf_counter()
        json.loads(data)
        times.append(time.perf_counter() - start)
    return {"kb": len(data) / 1000, "json_ms": statistics.median(times) * 1000}


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(
    r: dict[str, dict], tail: dict[float, dict], busy: dict[float, dict], unfavoured: dict
) -> None:
    ours, theirs, ceiling = r["ours single"], r["mlflow single"], r["ceiling single"]
    of_ceiling = ours["rps"] / ceiling["rps"]
    print("\n| measure | mlflow models serve | model-serving | ratio | goal | |")
    print("|---|---|---|---|---|---|")
    print(
        f"| single record, req/s | {theirs['rps']:,.0f} | {ours['rps']:,.0f} "
        f"| {ours['rps'] / theirs['rps']:.1f}x; {of_ceiling:.0%} of the bare-FastAPI "
        f"ceiling ({ceiling['rps']:,.0f}) | >= {GOAL_SINGLE_OF_CEILING:.0%} of the ceiling "
        f"| {_met(of_ceiling >= GOAL_SINGLE_OF_CEILING)} |"
    )
    for size, goal in ((100, GOAL_BATCH_100_X_MLFLOW), (1000, GOAL_BATCH_1000_X_MLFLOW)):
        a, b = r[f"mlflow batch {size}"], r[f"ours batch {size}"]
        ratio = b["rps"] / a["rps"]
        print(
            f"| batch of {size:,}, records/s | {a['rps'] * size:,.0f} | {b['rps'] * size:,.0f} "
            f"| {ratio:.1f}x | >= {goal:.0f}x | {_met(ratio >= goal)} |"
        )
    busy_label = f", busy: {NEIGHBOURS} CPU-bound neighbours on its core"
    for label, figures in (("", tail), (busy_label, busy)):
        half = figures[0.5]
        print(
            f"| p99 at half capacity{label} ({half['rate']:,.0f} req/s, open loop, median of "
            f"{TAIL_ROUNDS} rounds) | - | {half['p99_ms']:.1f} ms ({half['started_p99_ms']:.1f} "
            f"without the generator's own lag; <= {half['app_p99_ms']:g} in the app) | "
            f"| < {GOAL_P99_HALF_CAPACITY_MS:.0f} ms "
            f"| {_met(half['p99_ms'] < GOAL_P99_HALF_CAPACITY_MS)} |"
        )
    failed = {label: f["errors"] for label, f in r.items() if f.get("errors")}
    if failed:
        print(f"**answers other than 200** (the figures above count them): {failed}")
    print("\nServer CPU per request (its processes' CPU time over the requests answered; it")
    print("hardly moves when other jobs share the cores, where the rates do):")
    print("\n| requests | ceiling | mlflow models serve | model-serving | ours vs the other |")
    print("|---|---|---|---|---|")
    print(
        f"| single record | {ceiling['cpu_us']:,.0f} µs | {theirs['cpu_us']:,.0f} µs "
        f"| {ours['cpu_us']:,.0f} µs | ceiling's CPU is {ceiling['cpu_us'] / ours['cpu_us']:.0%} "
        "of ours |"
    )
    for size in (100, 1000):
        a, b = r[f"mlflow batch {size}"], r[f"ours batch {size}"]
        print(
            f"| batch of {size:,} | | {a['cpu_us']:,.0f} µs | {b['cpu_us']:,.0f} µs "
            f"| {a['cpu_us'] / b['cpu_us']:.1f}x less |"
        )
    for title, figures in (("quiet", tail), ("busy", busy)):
        print(
            f"\n| offered load (single records), {title} | req/s | p50 ms | p99 ms | p99.9 ms "
            "| generator's lag, p99 ms | p99 / p99.9 ms without it | p99 in the app |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for share, f in figures.items():
            print(
                f"| {share:.0%} of capacity | {f['rate']:,.0f} | {f['p50_ms']:.2f} | "
                f"{f['p99_ms']:.2f} | {f['p999_ms']:.2f} | {f['lag_p99_ms']:.2f} | "
                f"{f['started_p99_ms']:.2f} / {f['started_p999_ms']:.2f} | "
                f"<= {f['app_p99_ms']:g} ms |"
            )
    print(
        "(each the median of its rounds; latency counts from the moment a request was due. "
        "The generator's lag is how late it started requests itself: on a busy machine it "
        "waits for a core too; the next column counts from the moment it started each; the "
        "last is the server's own histogram, from the moment the app had the request to its "
        "answer, at its buckets' resolution. Busy: CPU-bound processes on the server's "
        "core, as best-effort pods beside a pod that requests its core)"
    )
    print(
        f"Without its core (the server at the neighbours' priority, as a pod without a CPU "
        f"request among busy ones), at half capacity: p99 {unfavoured['p99_ms']:.1f} ms, "
        f"<= {unfavoured['app_p99_ms']:g} ms in the app: the wait for a core, not the code "
        "(README, model-serving: the tail)"
    )


def report_workers(r: dict[str, dict]) -> None:
    print(
        "\n| SERVING_WORKERS (both cores, the generator too) | single records, req/s "
        "| CPU µs/request | batches of 100, records/s | CPU µs/request | resident MB |"
    )
    print("|---|---|---|---|---|---|")
    for workers in (1, 2):
        one, hundred = r[f"{workers} workers batch 1"], r[f"{workers} workers batch 100"]
        print(
            f"| {workers} | {one['rps']:,.0f} | {one['cpu_us']:,.0f} | "
            f"{hundred['rps'] * 100:,.0f} | {hundred['cpu_us']:,.0f} | "
            f"{hundred['resident_mb']:,.0f} |"
        )
    one, two = r["1 workers batch 100"], r["2 workers batch 100"]
    print(
        f"two workers give {two['rps'] / one['rps']:.2f}x one (batches of 100) on this "
        "2-core machine, the load generator sharing the cores"
    )


def report_floor(r: dict[str, dict], profile: dict, body: dict[str, float]) -> None:
    """Where a 1,000-record batch's time goes, against decoding and validating its body."""
    from profile_request import TYPED, WHOLE

    ours, theirs = r["ours batch 1000"], r["mlflow batch 1000"]
    phases = dict(profile["1000"])
    served_ms, cpu_ms = 1000 / ours["rps"], ours["cpu_us"] / 1000
    mlflow_ms = 1000 / theirs["rps"]
    print(
        f"\nbatch of 1,000 ({body['kb']:,.0f} kB of JSON): one answered every {served_ms:.2f} "
        f"ms (4 connections), {cpu_ms:.2f} ms of server CPU each; MLflow every "
        f"{mlflow_ms:.1f} ms, so 5x its rate allows {mlflow_ms / 5:.2f} ms. The floor, "
        f"decoding and validating the body: {phases[TYPED] * 1000:.2f} ms (msgspec, typed, "
        f"in-process; the stdlib's untyped json.loads alone takes {body['json_ms']:.2f} ms)."
    )
    print("\n| where a 1,000-record request's server time goes | ms | of the floor |")
    print("|---|---|---|")
    for name, seconds in profile["1000"]:
        print(f"| {name} | {seconds * 1000:.2f} | {seconds / phases[TYPED]:.1f}x |")
    rest = cpu_ms - phases[WHOLE] * 1000
    print(
        f"| socket, HTTP parsing, event loop (server CPU less the in-process whole) | "
        f"{rest:.2f} | {rest / (phases[TYPED] * 1000):.1f}x |"
    )


if __name__ == "__main__":
    sys.exit(main())
