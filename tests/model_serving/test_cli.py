"""`model-serving` as a process: Vault secret -> MLflow registry -> HTTP, and its shutdown."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from ml_pipeline.feature_frames import score_frame


def test_the_server_serves_the_registered_model(served, registered_model, serving_records):
    version = served.get("/version").json()
    assert version["model_version"] == registered_model["version"]
    assert version["model_uri"] == registered_model["uri"]
    response = httpx.post(served.url + "/v1/score", json=serving_records[:3], timeout=10)
    assert response.status_code == 200, response.text
    verdicts = response.json()["results"]
    assert [v["number"] for v in verdicts] == [r["number"] for r in serving_records[:3]]
    assert {v["model_version"] for v in verdicts} == {registered_model["version"]}


def test_sigterm_lets_the_request_in_flight_finish(start_server, serving_records) -> None:
    server = start_server()
    server.wait_ready()
    body = json.dumps(serving_records[:50]).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as connection:
        connection.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:100]
        )
        time.sleep(0.3)  # the server has the request; half of its body is still to come
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.process.poll() is None, "exited with a request in flight"
        connection.sendall(body[100:])
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert len(json.loads(payload)["results"]) == 50
    assert server.stop() == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/healthz", timeout=2)


def test_a_missing_model_keeps_readyz_503_naming_it(start_server) -> None:
    server = start_server(SERVING_MODEL_ALIAS="no-such-alias")
    try:
        deadline = time.monotonic() + 60
        while True:
            response = server.get("/readyz")
            if response is not None and "no-such-alias" in response.text:
                break
            assert time.monotonic() < deadline, "the load error never showed in /readyz"
            assert server.process.poll() is None
            time.sleep(0.2)
        assert response.status_code == 503
        assert server.get("/healthz").status_code == 200
        assert "Traceback" not in response.text
    finally:
        assert server.stop() == 0


def test_a_malformed_model_uri_stops_the_start_with_exit_2(start_server) -> None:
    server = start_server(SERVING_MODEL_URI="runs:/abc/model")
    assert server.process.wait(timeout=60) == 2
    stderr = server.process.stderr.read()
    assert "SERVING_MODEL_URI" in stderr
    assert "models:/<name>@<alias>" in stderr
    assert "Traceback" not in stderr


def _slice_ns(pid: int | str) -> int:
    """The scheduler slice of a process's main thread (EEVDF, /proc/PID/sched)."""
    with open(f"/proc/{pid}/sched") as sched:
        text = sched.read()
    return int(re.search(r"se\.slice\s+:\s+(\d+)", text).group(1))


def test_the_server_asks_the_kernel_for_its_scheduler_slice(start_server) -> None:
    server = start_server(SERVING_SCHED_SLICE_US="250")
    try:
        server.wait_ready()
        assert _slice_ns(server.process.pid) == 250_000
        assert _slice_ns("self") != 250_000  # the test's own process keeps the default
    finally:
        assert server.stop() == 0


def test_two_workers_share_one_metrics_view(start_server, serving_records) -> None:
    server = start_server("--workers", "2")
    try:
        server.wait_ready(timeout=240)  # two processes import torch and load the model at once
        # each worker loads the model itself: wait until new connections keep finding ready ones
        deadline, streak = time.monotonic() + 240, 0
        while streak < 10:
            assert time.monotonic() < deadline, "the second worker never became ready"
            ready = server.get("/readyz")
            streak = streak + 1 if ready is not None and ready.status_code == 200 else 0
            time.sleep(0.05)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for record in serving_records[:20]:
                # a new connection each time: the kernel spreads them over both workers
                response = httpx.post(server.url + "/v1/score", json=record, timeout=10)
                assert response.status_code == 200
            metrics = client.get("/metrics").text
        counted = re.search(
            r'model_serving_scored_records_total\{input="pull_request"\} (\S+)', metrics
        )
        assert counted
        assert float(counted.group(1)) == 20
    finally:
        assert server.stop() == 0


def test_serving_scores_without_torch_or_pandas_installed(scorer, serving_records, tmp_path):
    """The serving image carries neither torch nor pandas: the serving path loads a saved
    scorer and scores raw pull requests with both imports blocked."""
    scorer.save(tmp_path / "scorer.npz")
    (tmp_path / "records.json").write_text(json.dumps(serving_records[:50]))
    code = (
        "import json, sys; sys.modules['torch'] = sys.modules['pandas'] = None\n"
        "from pathlib import Path\n"
        "import model_serving.cli, model_serving.model_source\n"
        "from model_serving.bodies import decode_pull_requests\n"
        "from pipeline_contracts.scorer import AnomalyScorer, find_scorer\n"
        "scorer = AnomalyScorer.load(find_scorer(Path(sys.argv[1])))\n"
        "body = Path(sys.argv[2]).read_bytes()  # decoded from JSON, as serving does\n"
        "records, _ = decode_pull_requests(body)\n"
        "where = records.repositories, records.authors\n"
        "verdicts = scorer.score_inputs(records.feature_inputs(), *where)\n"
        "print(json.dumps([v['score'] for v in verdicts]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), str(tmp_path / "records.json")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    expected = [v["score"] for v in score_frame(scorer, serving_records[:50])]
    assert json.loads(result.stdout) == pytest.approx(expected, rel=1e-6)
