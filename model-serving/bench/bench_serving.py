"""`make bench-serving`: the same registered model served by `mlflow models serve` and by
model-serving, one worker each, driven by the same load generator, one after the other.

It starts its own platform (Vault, MongoDB, MLflow) in a temporary directory, trains a
small autoencoder on the bundled sample and registers it the way ml-training does, then
serves it three ways on core 0 while loadgen.py drives it from core 1:

- a bare FastAPI endpoint returning a constant (the ceiling of this machine),
- model-serving (Vault -> registry -> fast path), one uvicorn worker,
- ``mlflow models serve --env-manager local``, one worker.

Every server is stopped by pid. The whole run takes about three minutes.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
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
WARMUP, SECONDS = 2.0, 6.0
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
    reference = reference_distribution(features[:1600], FEATURE_NAMES)
    scorer = AnomalyScorer(
        model.dense_network(), mean, scale, threshold=0.0, context=context, reference=reference
    )
    scorer.threshold = float(np.quantile(scorer.errors(features[1600:]).mean(axis=1), 0.99))
    return scorer


def register_model(tracking_uri: str, name: str, records: list[dict], workdir: Path) -> str:
    import mlflow
    from mlflow import MlflowClient

    from ml_pipeline.training.pyfunc import log_scorer_model

    scorer = train_scorer(records)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("bench-serving")
    with mlflow.start_run():
        info = log_scorer_model(scorer, workdir, name)
    MlflowClient().set_registered_model_alias(name, ALIAS, info.registered_model_version)
    return ModelReference.at_alias(name, ALIAS).uri


class Server:
    def __init__(self, label: str, command: list[str], env: dict[str, str], port: int):
        self.label, self.port = label, port
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{label}-")  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            # mlflow's server finds uvicorn on PATH; one intra-op thread for every server
            env={**env, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{env.get('PATH', '')}"},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: mlflow's server runs uvicorn as a child
            preexec_fn=lambda: os.sched_setaffinity(0, SERVER_CPU),
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

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def drive(port: int, path: str, bodies: list[str], workdir: Path, **options) -> dict:
    bodies_file = workdir / "bodies.json"
    bodies_file.write_text(json.dumps(bodies))
    command = [sys.executable, str(HERE / "loadgen.py"), "--port", str(port), "--path", path]
    command += ["--bodies", str(bodies_file), "--warmup", str(WARMUP), "--seconds", str(SECONDS)]
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=WARMUP + SECONDS + 60,
        preexec_fn=lambda: os.sched_setaffinity(0, LOAD_CPU),
        check=True,
    )
    return json.loads(result.stdout)


def overload_figures(
    port: int, probe_port: int, records: list[dict], results: dict, workdir: Path
) -> list[dict]:
    """Goodput at 2x, 4x and 8x the closed-loop capacity with batches of 200 (open loop, a
    new connection per request, clients that give up after 2 s; 4 s each) and the probe
    port's latency meanwhile: README, "Under fire"."""
    body = workdir / "batch200.json"
    body.write_text(ours_bodies(records, 200)[0])
    results["ours batch 200"] = drive(port, "/v1/score", [body.read_text()], workdir, connections=4)
    capacity = results["ours batch 200"]["rps"]
    print(f"  capacity, batches of 200: {capacity:.0f} req/s; overload, 4 s at each multiple:")
    figures = []
    for multiple in (2, 4, 8):
        time.sleep(2)  # the previous run's queue drained
        command = [sys.executable, str(HERE / "overload.py"), "--port", str(port)]
        command += ["--probe-port", str(probe_port), "--body", str(body), "--seconds", "4"]
        command += ["--rate", f"{multiple * capacity:.0f}"]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=lambda: os.sched_setaffinity(0, LOAD_CPU),
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


def main() -> int:
    from pipeline_ops.base.processes import free_port
    from pipeline_ops.local_env import LocalEnvironment
    from pipeline_ops.local_platform import LocalPlatform

    if len(os.sched_getaffinity(0)) < 2:
        print("bench-serving needs 2 cores (server on one, load on the other)", file=sys.stderr)
        return 2
    records = sample_records()
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    platform = LocalPlatform(work / "platform")
    servers: list[Server] = []
    results: dict[str, dict] = {}
    under_fire: list[dict] = []
    try:
        print("starting Vault, MongoDB, MLflow; training and registering the model ...")
        platform.up(["vault", "mongo", "mlflow"])
        env = LocalEnvironment(platform, work / "data")
        env.configure_vault()
        tracking_uri = platform.service("mlflow").url
        name = env.stage_secrets()["model-serving"]["model_name"]
        model_uri = register_model(tracking_uri, name, records, work)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "SERVING_"))}

        def run_server(label, command, env_extra, path, probe) -> Server:
            port = free_port()
            server = Server(label, [*command, "--port", str(port)], {**base_env, **env_extra}, port)
            servers.append(server)
            server.wait(path, probe)
            return server

        def measure(label, server, path, bodies, **options) -> None:
            results[label] = drive(server.port, path, bodies, work, **options)
            r = results[label]
            print(
                f"  {label:<28} {r['rps']:>8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}",
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
            {
                **env.stage_env("model-serving"),
                "SERVING_MODEL_URI": model_uri,
                "SERVING_PROBE_PORT": str(probe_port := free_port()),
            },
            "/v1/score",
            single[0],
        )
        measure("ours single", ours, "/v1/score", single, connections=16)
        measure("ours batch 100", ours, "/v1/score", ours_bodies(records, 100), connections=4)
        measure("ours batch 1000", ours, "/v1/score", ours_bodies(records, 1000), connections=2)
        half = results["ours single"]["rps"] / 2
        measure(
            "ours single @ half capacity",
            ours,
            "/v1/score",
            single,
            mode="open",
            rate=half,
            connections=64,
        )
        under_fire = overload_figures(ours.port, probe_port, records, results, work)
        ours.stop()

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
        measure("mlflow batch 100", mlflow_server, path, mlflow_bodies(records, 100), connections=4)
        measure(
            "mlflow batch 1000", mlflow_server, path, mlflow_bodies(records, 1000), connections=2
        )
        mlflow_server.stop()
    finally:
        for server in servers:
            server.stop()
        platform.down()

    report(results, body_costs(ours_bodies(records, 1000)[0]))
    report_overload(under_fire)
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
    """Median ms to decode one 1,000-record body: the stdlib JSON parser, and ours (parse
    and validate into records). Any server must at least decode the body it is sent."""
    import statistics

    from model_serving.app import _RECORDS

    def median_ms(work) -> float:
        times = []
        for _ in range(15):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    data = body.encode()
    return {
        "kb": len(data) / 1000,
        "json_ms": median_ms(lambda: json.loads(data)),
        "validate_ms": median_ms(lambda: _RECORDS.validate_json(data)),
    }


def report(r: dict[str, dict], body: dict[str, float]) -> None:
    ours, theirs = r["ours single"], r["mlflow single"]
    print("\n| measure | mlflow models serve | model-serving | ratio |")
    print("|---|---|---|---|")
    print(
        f"| single record, req/s | {theirs['rps']:,.0f} | {ours['rps']:,.0f} "
        f"| {ours['rps'] / theirs['rps']:.1f}x |"
    )
    print(f"| single record, p50 ms | {theirs['p50_ms']:.2f} | {ours['p50_ms']:.2f} | |")
    print(f"| single record, p99 ms | {theirs['p99_ms']:.2f} | {ours['p99_ms']:.2f} | |")
    for size in (100, 1000):
        a, b = r[f"mlflow batch {size}"], r[f"ours batch {size}"]
        print(
            f"| batch of {size:,}, records/s | {a['rps'] * size:,.0f} | {b['rps'] * size:,.0f} "
            f"| {b['rps'] / a['rps']:.1f}x |"
        )
    ceiling, half = r["ceiling single"], r["ours single @ half capacity"]
    print(
        f"\nceiling (bare FastAPI constant): {ceiling['rps']:,.0f} req/s; ours single is "
        f"{ours['rps'] / ceiling['rps']:.0%} of it"
    )
    print(
        f"ours at half capacity ({half['rps']:,.0f} req/s offered open-loop): "
        f"p50 {half['p50_ms']:.2f} ms, p99 {half['p99_ms']:.2f} ms"
    )
    mlflow_batch_ms = 1000 / r["mlflow batch 1000"]["rps"]
    print(
        f"batch of 1,000 ({body['kb']:,.0f} kB of JSON): MLflow takes {mlflow_batch_ms:.1f} ms "
        f"per batch, so 10x its rate allows {mlflow_batch_ms / 10:.1f} ms; decoding the body "
        f"alone takes {body['json_ms']:.1f} ms (stdlib json), {body['validate_ms']:.1f} ms "
        "(ours, parse and validate)"
    )
    batches_10x = all(
        r[f"ours batch {s}"]["rps"] >= 10 * r[f"mlflow batch {s}"]["rps"] for s in (100, 1000)
    )
    goals = [
        ("single req/s >= 3x mlflow", ours["rps"] >= 3 * theirs["rps"]),
        ("batch records/s >= 10x mlflow", batches_10x),
        ("p99 < 25 ms at half capacity", half["p99_ms"] < 25),
    ]
    print("goals: " + "; ".join(f"{g}: {'met' if ok else 'NOT met'}" for g, ok in goals))


if __name__ == "__main__":
    sys.exit(main())
