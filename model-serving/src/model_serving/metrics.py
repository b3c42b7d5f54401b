"""Prometheus metrics of the scoring service, and the ASGI middleware that records them.

Each app gets its own registry (tests build several apps in one process). With more than
one uvicorn worker the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` aggregates
every worker's samples through prometheus_client's multiprocess collector.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from pipeline_contracts.drift import DriftWindow
from pipeline_contracts.scorer import AnomalyScorer

# Sub-millisecond to seconds: a single record takes 0.1-2 ms, a 1,000-record batch 3-15 ms.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# nginx's code for a client that closed the connection before its answer: a 4xx, so not
# in the analysis' error rate (status=~"5.."), and apart from the answers actually sent
CLIENT_CLOSED = 499
UNMATCHED_ROUTE = "unmatched"  # 404s: one label value, not one per probed path
DRIFT_WINDOW = 1000  # the last records scored, per process


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        labels = ("method", "route", "status")
        self.requests = Counter(
            "model_serving_requests_total",
            "HTTP requests by route and status",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "model_serving_request_duration_seconds",
            "HTTP request latency by route and status",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.scored = Counter(
            "model_serving_scored_records_total",
            "records scored, by input kind (raw pull requests or feature vectors)",
            ("input",),
            registry=self.registry,
        )
        self.anomalies = Counter(
            "model_serving_anomalous_records_total",
            "records whose score exceeded the threshold, by input kind",
            ("input",),
            registry=self.registry,
        )
        self.anomaly_ratio = Gauge(
            "model_serving_anomaly_ratio",
            "fraction of scored records flagged as anomalous since this process started "
            "(rate(anomalous)/rate(scored) gives it over a window)",
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.model_info = Gauge(
            "model_serving_model_info",
            "the loaded model (value 1)",
            ("model_name", "model_version", "model_uri", "feature_spec_version"),
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.feature_drift = Gauge(
            "model_serving_feature_drift_psi",
            "population stability index of each feature over the last scored records against "
            "the model's reference, the newest pull requests of each repository before it "
            "(over 0.25: the inputs have shifted)",
            ("feature",),
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.drift_window_records = Gauge(
            "model_serving_drift_window_records",
            "records in the drift window (the PSI means little over a few)",
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.shed = Counter(
            "model_serving_shed_requests_total",
            "scoring requests refused (429) by admission control, by the bound reached",
            ("reason",),
            registry=self.registry,
        )
        self.connections_cut = Counter(
            "model_serving_connections_cut_total",
            "client connections closed by the server: header_timeout, body_timeout, evicted "
            "(the longest-waiting one, to make room at the connection limit), refused",
            ("reason",),
            registry=self.registry,
        )
        self.drift: DriftWindow | None = None
        self._scored = 0
        self._flagged = 0
        # each label set's series, looked up once: `labels()` costs more than the update
        self._request_series: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._score_series: dict[str, tuple[Any, Any]] = {}

    def watch_drift(self, scorer: AnomalyScorer, window: int = DRIFT_WINDOW) -> None:
        """Measure drift against ``scorer``'s reference (a scorer without one: no drift)."""
        if scorer.reference:
            self.drift = DriftWindow(scorer.reference, scorer.feature_names, window)

    def observe_features(self, features: np.ndarray, repositories: Sequence[object] = ()) -> None:
        """Scored records into the drift window (with each one's repository: a feature
        vector scored alone has none, and is compared with the whole reference)."""
        if self.drift is not None:
            self.drift.observe(features, repositories)

    def observe_request(self, method: str, route: str, status: str, seconds: float) -> None:
        series = self._request_series.get((method, route, status))
        if series is None:
            labels = (method, route, status)
            series = self.requests.labels(*labels), self.latency.labels(*labels)
            self._request_series[labels] = series
        count, latency = series
        count.inc()
        latency.observe(seconds)

    def observe_scores(self, kind: str, scored: int, flagged: int) -> None:
        series = self._score_series.get(kind)
        if series is None:
            series = self._score_series[kind] = (
                self.scored.labels(kind),
                self.anomalies.labels(kind),
            )
        records, anomalies = series
        records.inc(scored)
        anomalies.inc(flagged)
        self._scored += scored
        self._flagged += flagged
        self.anomaly_ratio.set(self._flagged / self._scored if self._scored else 0.0)

    def exposition(self) -> tuple[bytes, str]:
        if self.drift is not None:  # computed when scraped, not per request
            for feature, psi in self.drift.psi().items():
                self.feature_drift.labels(feature).set(psi)
            self.drift_window_records.set(self.drift.records)
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: it costs a task and a queue per request)."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started ends as a 500

        async def send_recording_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or UNMATCHED_ROUTE
            seconds = time.perf_counter() - started
            self.metrics.observe_request(scope["method"], path, str(status), seconds)
