"""model-serving under fire, as a hostile client and an unlucky operator would try it: the
real server on loopback, bounded load (a few seconds each), every figure printed (`-s`).

Overload is shed with 429 and goodput holds; slow clients are cut off while good ones are
served; a client that hangs up is counted apart; a model that cannot load (MLflow down)
is loaded when MLflow returns, without a restart; no credential of the tracking URI leaves
Vault's answer.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline_ops.paths import PROJECT_ROOT

BENCH = PROJECT_ROOT / "model-serving" / "bench"
PASSWORD = "pw-3f9c1e"  # planted in the tracking URI of the serving secret
SECRET_PATH = "mlops/model-serving"
LOADGEN_CLOSED = ("--connections", "4", "--warmup", "0.5", "--seconds", "2")


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in sample for k, v in labels.items()):
            total += float(value)
    return total


def _post(path: str, body: bytes, content_length: int | None = None) -> bytes:
    length = len(body) if content_length is None else content_length
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode() + body


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one answer read from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


@pytest.fixture(scope="module")
def batch_body(serving_records) -> bytes:
    """One request of 200 records, as the issue's overload sends."""
    return json.dumps(serving_records[:200]).encode()


@pytest.fixture(scope="module")
def overload_body(serving_records) -> bytes:
    """One request of 400 records for the overload: 8x the capacity in requests of 200 is
    more connections a second (5,000 since issue 26 made scoring faster) than the Python
    overload client opens on a shared core; its own lag then showed as late answers."""
    return json.dumps(serving_records[:400]).encode()


def _capacity(port: int, body: bytes, tmp_path: Path) -> float:
    """Requests/s one server answers with ``body``, closed loop (2 s)."""
    bodies = tmp_path / "bodies.json"
    bodies.write_text(json.dumps([body.decode()]))
    command = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(port)]
    result = subprocess.run(
        [*command, "--path", "/v1/score", "--bodies", str(bodies), *LOADGEN_CLOSED],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return float(json.loads(result.stdout)["rps"])


def _overload(server, body: bytes, rate: float, seconds: float, tmp_path: Path) -> dict:
    path = tmp_path / "body.json"
    path.write_bytes(body)
    port, probes = str(server.port), str(server.probe_port)
    command = [sys.executable, str(BENCH / "overload.py"), "--port", port, "--probe-port", probes]
    result = subprocess.run(
        [*command, "--body", str(path), "--rate", f"{rate:.0f}", "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)


def test_overload_is_refused_at_once_goodput_holds_and_the_probes_answer(
    start_server, overload_body, tmp_path
) -> None:
    server = start_server()
    server.wait_ready()
    capacity = _capacity(server.port, overload_body, tmp_path)
    before = server.get("/metrics").text
    served_before = _metric(before, "model_serving_requests_total", status="200")
    figures = _overload(server, overload_body, 8 * capacity, 4, tmp_path)
    metrics = server.get("/metrics").text
    served = _metric(metrics, "model_serving_requests_total", status="200") - served_before
    print(
        f"\ncapacity {capacity:.0f} requests/s of 400 records; at 8x for 4 s: {figures}; "
        f"answers in time: {figures['ok']} of {served:.0f} served"
    )

    assert not figures["other"], figures  # 200, 429, or a connection refused: nothing else
    # Before, the server scored what had waited in a 2,048-deep queue: of ~2,600 answers
    # 123 reached a client still waiting (5 %), and over 20 s goodput fell to 5 % of
    # capacity. Now what it scores is fresh: most answers arrive in time, and goodput
    # stays a good share of capacity (a generous bound: the load generator and other
    # jobs share this machine's two cores).
    assert figures["ok"] >= 0.5 * served, figures
    assert figures["goodput"] >= 0.25 * capacity, figures
    # the probes never wait behind scoring (before: over 2 s in 9 of 10 samples): well
    # under the Rollout's 2 s probe timeout
    assert figures["probe_p50_ms"] < 200, figures
    assert figures["probe_max_ms"] < 2000, figures
    # recovery is immediate when the load stops (before: 8.5 s); a connection the kernel
    # refused at the end of the load is retried after 1 s
    assert figures["lone_after_load_ms"] < 5000, figures
    assert _metric(metrics, "model_serving_requests_total", status="429") == _metric(
        metrics, "model_serving_shed_requests_total"
    )
    assert _metric(metrics, "model_serving_requests_total", status="500") == 0


def test_a_shed_request_gets_retry_after_and_its_connection_stays_usable(
    start_server, batch_body
) -> None:
    server = start_server(SERVING_MAX_REQUESTS_IN_FLIGHT="1")
    server.wait_ready()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as holder:
        # headers, no body yet: this request holds the one place in flight
        holder.sendall(_post("/v1/score", b"", content_length=len(batch_body)))
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as other:
            other.sendall(_post("/v1/score", batch_body))
            status, headers, body = _read_answer(other)
            assert status == 429, body
            assert headers["retry-after"] == "1"
            assert "1 requests already in flight" in json.loads(body)["detail"]
            # the same keep-alive connection serves the next request
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _read_answer(other)[0] == 200
        holder.sendall(batch_body)
        assert _read_answer(holder)[0] == 200


class _SlowHeaders:
    """``count`` connections that send a request's headers a byte at a time."""

    def __init__(self, port: int, count: int):
        self.sockets = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            sock.setblocking(False)
            self.sockets.append(sock)

    def drip(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.send(b"a")

    def still_open(self) -> int:
        """Connections the server has not closed (a closed one reads EOF or its 408)."""
        still = 0
        for sock in self.sockets:
            try:
                sock.recv(4096)
            except BlockingIOError:  # nothing to read: still open
                still += 1
            except OSError:  # reset: closed
                pass
        return still

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def test_slow_clients_are_cut_off_and_good_clients_keep_their_service(
    start_server, batch_body
) -> None:
    server = start_server(
        SERVING_HEADER_TIMEOUT_SECONDS="1",
        SERVING_BODY_TIMEOUT_SECONDS="1",
        SERVING_MAX_CONNECTIONS="100",
        SERVING_OPEN_FILES_LIMIT="256",
    )
    server.wait_ready()
    slow = _SlowHeaders(server.port, 150)  # more than the connection limit
    answered, started = 0, time.monotonic()
    try:
        # a body that stalls halfway: cut off after the body timeout, counted as 408
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        stalled.sendall(_post("/v1/score", batch_body[:1000], content_length=len(batch_body)))
        for _ in range(12):  # good clients while the slow ones drip, for about 3 s
            slow.drip()
            response = httpx.post(
                server.url + "/v1/score",
                content=batch_body,
                headers={"content-type": "application/json"},
                timeout=2,
            )
            answered += response.status_code == 200
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        still_open = slow.still_open()
        print(
            f"\n150 slow connections: {still_open} open after {elapsed:.1f} s; good: {answered}/12"
        )
        assert answered == 12  # before: 0 of 181 once the slow ones held every descriptor
        assert still_open == 0  # before: all 1,200 still open after 30 s
        assert stalled.recv(4096) == b""  # its body stalled: closed after the body timeout
        stalled.close()
    finally:
        slow.close()
    metrics = server.get("/metrics").text
    cut = _metric(metrics, "model_serving_connections_cut_total")
    assert cut >= 150, metrics
    assert _metric(metrics, "model_serving_requests_total", status="408") == 1
    assert _metric(metrics, "model_serving_requests_total", status="500") == 0


def test_a_client_that_hangs_up_is_counted_apart_in_one_log_line(start_server, batch_body) -> None:
    server = start_server()
    server.wait_ready()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(_post("/v1/score", batch_body[:500], content_length=len(batch_body)))
            time.sleep(0.02)
    deadline = time.monotonic() + 10
    while True:
        metrics = server.get("/metrics").text
        gone = _metric(metrics, "model_serving_requests_total", status="499")
        if gone == 20 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert server.stop() == 0
    log = server.process.stderr.read()
    print(f"\n20 hang-ups: status 499 x{gone:.0f}, 500 x0, log {len(log)} bytes")
    assert gone == 20  # before: 20 samples of status="500"
    assert _metric(metrics, "model_serving_requests_total", status="500") == 0
    assert "Traceback" not in log  # before: a ~5 KB traceback each
    assert len(re.findall(r"client disconnected before its answer: POST /v1/score", log)) == 20


class _Switch:
    """A TCP forwarder to MLflow that can be switched off (connections refused) and on."""

    def __init__(self, target_port: int):
        from pipeline_ops.base.processes import free_port

        self.port = free_port()
        self.target_port = target_port
        self.listener: socket.socket | None = None
        self.connections: list[socket.socket] = []

    def on(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def off(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for sock in self.connections:
            sock.close()
        self.connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def mlflow_behind_a_switch(platform, local_env) -> Iterator[_Switch]:
    """The serving secret's tracking URI through a switchable forwarder, with a password in
    its user information (MLflow ignores it); the secret is restored afterwards."""
    import hvac

    vault = hvac.Client(url=platform.service("vault").url, token=platform.vault_root_token())
    switch = _Switch(platform.service("mlflow").port)
    secret = local_env.stage_secrets()["model-serving"]
    vault.secrets.kv.v2.create_or_update_secret(
        path=SECRET_PATH,
        secret={
            **secret,
            "mlflow_tracking_uri": f"http://serving:{PASSWORD}@127.0.0.1:{switch.port}",
        },
        mount_point="secret",
    )
    try:
        yield switch
    finally:
        switch.off()
        vault.secrets.kv.v2.create_or_update_secret(
            path=SECRET_PATH, secret=secret, mount_point="secret"
        )


def test_mlflow_down_at_start_then_back_is_survived_without_a_restart_or_a_leak(
    start_server, mlflow_behind_a_switch
) -> None:
    server = start_server()
    deadline = time.monotonic() + 30
    while True:  # the reason shows in /readyz, within one bounded attempt
        response = server.get("/readyz")
        if response is not None and response.status_code == 503 and "attempt" in response.text:
            break
        assert time.monotonic() < deadline, "no load error in /readyz within 30 s"
        time.sleep(0.2)
    reason = response.json()["detail"]
    assert PASSWORD not in response.text
    assert server.get("/healthz").status_code == 200  # liveness: a restart would not help
    time.sleep(3)  # a few failed attempts more

    mlflow_behind_a_switch.on()
    back = time.monotonic()
    ready = server.wait_ready(timeout=30)
    took = time.monotonic() - back
    print(f"\nreadyz while MLflow was down: {reason!r}; ready {took:.1f} s after it returned")
    assert took < 10  # before: still 503 60 s after MLflow was back
    assert PASSWORD not in ready.text
    for path in ("/version", "/metrics"):
        assert PASSWORD not in server.get(path).text
    assert server.stop() == 0
    log = server.process.stderr.read()
    assert PASSWORD not in log
    assert "model load failed (attempt 1" in log


@pytest.fixture(scope="module")
def unsound_models(local_env, scorer, tmp_path_factory) -> dict[str, str]:
    """The session's scorer registered with a NaN weight and with a NaN threshold."""
    import dataclasses

    import mlflow
    import numpy as np

    from ml_pipeline.training.pyfunc import log_scorer_model

    name = local_env.stage_secrets()["model-serving"]["model_name"]
    weights = list(scorer.network.weights)
    weights[1] = weights[1].copy()
    weights[1][0, 0] = np.nan
    variants = {
        "nan-weight": dataclasses.replace(
            scorer, network=dataclasses.replace(scorer.network, weights=tuple(weights))
        ),
        "nan-threshold": dataclasses.replace(scorer, threshold=float("nan")),
    }
    mlflow.set_tracking_uri(local_env.platform.service("mlflow").url)
    mlflow.set_experiment("registered-for-tests")
    versions = {}
    for label, variant in variants.items():
        with mlflow.start_run():
            info = log_scorer_model(variant, tmp_path_factory.mktemp(label), name)
        versions[label] = f"models:/{name}/{info.registered_model_version}"
    return versions


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("nan-weight", "weight_1 holds a value that is not a finite number"),
        ("nan-threshold", "threshold nan is not a finite positive number"),
    ],
)
def test_a_scorer_with_non_finite_values_is_not_served(
    start_server, unsound_models, variant, reason
) -> None:
    server = start_server(SERVING_MODEL_URI=unsound_models[variant])
    deadline = time.monotonic() + 60
    while True:
        response = server.get("/readyz")
        if response is not None and reason in response.text:
            break
        assert time.monotonic() < deadline, f"{reason!r} never showed in /readyz"
        time.sleep(0.2)
    assert response.status_code == 503
    scoring = httpx.post(server.url + "/v1/score", json={}, timeout=5)
    assert scoring.status_code == 503
    assert reason in scoring.json()["detail"]  # scoring says why too
    assert reason in httpx.get(server.probe_url + "/readyz", timeout=5).json()["detail"]
