"""The scoring API.

Request bodies are read and decoded here rather than by FastAPI's body parameter: the body
size is checked while it streams in (413 before it is all buffered), and the body is
decoded from bytes in one pass into the feature spec's input columns (:mod:`.bodies`:
msgspec, with the pydantic models deciding anything it does not accept). Answers are
encoded in one pass too. Scoring goes through :class:`MicroBatcher`, so records of requests
that arrive together share one feature computation and one forward pass. The scoring
routes take the request and answer it themselves (:class:`DirectRoute`): FastAPI documents
them but solves no dependencies for them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, TypeAdapter
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from model_serving.admission import Admission, Overloaded
from model_serving.bodies import (
    FeatureScoreResponse,
    FeatureVector,
    PullRequestIn,
    PullRequests,
    ScoreResponse,
    decode_feature_vectors,
    decode_pull_requests,
    encode_verdicts,
)
from model_serving.connections import CUT_OFF_KEY, LIMITS_KEY, ConnectionLimits
from model_serving.metrics import CLIENT_CLOSED, MetricsMiddleware, ServingMetrics
from model_serving.model_source import LoadedModel
from model_serving.probes import Heartbeat, ProbeListener
from model_serving.settings import ServingSettings
from pipeline_common.redaction import redact_credentials
from pipeline_contracts.features import FEATURE_SPEC_VERSION
from pipeline_contracts.readiness import MODEL_LOADING, READY
from pipeline_contracts.registry import ModelReference
from pipeline_contracts.scorer import Scores

log = logging.getLogger(__name__)


def _service_version() -> str:
    try:
        return package_version("model-serving")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


class Problem(BaseModel):
    detail: str


class InvalidField(BaseModel):
    loc: list[str | int] = Field(description='where: ["body", index, field] in a list')
    msg: str
    type: str


class InvalidInput(BaseModel):
    detail: list[InvalidField]


class VersionInfo(BaseModel):
    service: str = "model-serving"
    service_version: str
    feature_spec_version: str
    model_uri: str | None  # as configured
    model_name: str | None
    model_version: str | None
    # what is served, as git pins it (`models:/NAME/VERSION`): the analysis compares the two
    served_model: str | None


_JSON = TypeAdapter(Any)


class BodyTooLarge(Exception):
    pass


class ModelHolder:
    """The model, loaded once per process in the background; /readyz says when.

    A failed load (MLflow down, the alias missing, an unservable scorer) is retried with a
    backoff doubling from ``retry_initial`` up to ``retry_max`` seconds, until it succeeds
    or the app stops: an instance started while MLflow is away is ready within
    ``retry_max`` seconds of its return, without a restart."""

    def __init__(
        self,
        loader: Callable[[], LoadedModel],
        on_loaded: Callable[[LoadedModel], None],
        retry_initial: float = 0.5,
        retry_max: float = 5.0,
    ):
        self._loader = loader
        self._on_loaded = on_loaded
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self.model: LoadedModel | None = None
        self.error: str | None = None
        self.attempts = 0

    def load(self) -> bool:
        """One attempt; whether the model is loaded."""
        self.attempts += 1
        try:
            model = self._loader()
            self._on_loaded(model)
        except Exception as error:  # reported by /readyz; the process stays up for probes
            # answered to anyone who asks /readyz: never a credential of the tracking URI
            self.error = redact_credentials(f"{type(error).__name__}: {error}")
            return False
        self.model, self.error = model, None
        log.info("model loaded", extra={"model": model.name, "version": model.version})
        return True

    def load_until_loaded(self, stop: threading.Event) -> None:
        delay = self._retry_initial
        while not stop.is_set() and not self.load():
            log.warning(
                "model load failed (attempt %d, next in %.1f s): %s",
                self.attempts,
                delay,
                self.error,
            )
            self.error = f"{self.error} (attempt {self.attempts}; next in {delay:g} s)"
            stop.wait(delay)
            delay = min(delay * 2, self._retry_max)


class MicroBatcher:
    """Scores the records of every request waiting at the same moment in one call.

    A request appends its records and awaits; the first one schedules a flush, by default
    two turns of the event loop later: the requests the loop reads meanwhile join it (on a
    loaded server, everything that arrived while it was busy), and none waits on a timer
    for others to come. With ``wait_seconds`` the flush waits that long instead. A loaded
    service amortises the fixed per-call cost of scoring (array set-up, one forward pass)
    over all waiting requests. Scoring must be row-independent for this, which the feature
    spec guarantees (context comes from the model's bundled snapshot, not from the other
    rows of a call).
    """

    def __init__(
        self,
        holder: ModelHolder,
        wait_seconds: float = 0.0,
        on_features: Callable[[np.ndarray, Sequence[object]], None] = lambda f, r: None,
    ):
        self._holder = holder
        self._wait = wait_seconds
        # each scored call's feature matrix and its records' repositories (drift)
        self._on_features = on_features
        self._pending: list[tuple[PullRequests, asyncio.Future]] = []
        self._scheduled = False

    async def score(self, records: PullRequests) -> Scores:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((records, future))
        if not self._scheduled:
            self._scheduled = True
            if self._wait:
                loop.call_later(self._wait, self._flush)
            else:  # the next turn reads what has arrived; the one after scores it
                loop.call_soon(loop.call_soon, self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        try:
            scores = self._score(PullRequests.concat([records for records, _ in pending]))
        except Exception:
            # Whatever one request carries must not fail the requests it was batched with:
            # each is scored on its own, and only the one that fails gets the error.
            for records, future in pending:
                try:
                    result = self._score_alone(records)
                except UnscorableRecordError as error:
                    if not future.done():
                        future.set_exception(error)
                else:
                    if not future.done():
                        future.set_result(result)
            return
        start = 0
        for records, future in pending:
            if not future.done():  # a client that went away cancelled its future
                future.set_result(scores[start : start + len(records)])
            start += len(records)

    def _score(self, records: PullRequests) -> Scores:
        model = self._holder.model
        if model is None:  # the scoring endpoints answer 503 until it is loaded
            raise RuntimeError("no model loaded to score with")
        scorer = model.scorer
        features = scorer.features_of(
            records.feature_inputs(), records.repositories, records.authors
        )
        scores = scorer.scores(features)
        self._on_features(features, records.repositories)
        return scores

    def _score_alone(self, records: PullRequests) -> Scores:
        """One request's verdicts, or :class:`UnscorableRecordError` naming its first record
        that cannot be scored."""
        try:
            return self._score(records)
        except Exception as error:
            for index in range(len(records)):
                try:
                    self._score(records[index : index + 1])
                except Exception as record_error:
                    raise UnscorableRecordError(index, record_error) from None
            raise UnscorableRecordError(None, error) from None


class UnscorableRecordError(Exception):
    """A record that passed validation but could not be scored: its request's 422."""

    def __init__(self, index: int | None, error: Exception):
        self.index = index
        self.problem = f"cannot be scored: {type(error).__name__}: {error}"
        super().__init__(self.problem)

    def detail(self, is_list: bool) -> list[dict[str, Any]]:
        where = ("body", self.index) if is_list and self.index is not None else ("body",)
        return [{"loc": list(where), "msg": self.problem, "type": "unscorable"}]


async def read_body(request: Request, limit: int) -> bytes:
    """The JSON request body, refusing (415) one not declared JSON and (413) a declared or
    streamed size over ``limit``."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=f"the body must be JSON sent with Content-Type: application/json, not "
            f"{media_type[:100] or 'no content type'}",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {declared} bytes; the maximum is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body over {limit} bytes; the maximum is {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(_JSON.dump_json(content), status_code, media_type="application/json")


def _raw_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The request body's OpenAPI: one ``model`` or a list of them (the schema itself is
    added to the document's components by :func:`_with_request_schemas`)."""
    one = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"anyOf": [one, {"type": "array", "items": one}]}}
            },
        }
    }


def _with_request_schemas(document: dict[str, Any], *models: type[BaseModel]) -> dict[str, Any]:
    """``document`` with the request models among its schemas: the bodies are read by
    pydantic from bytes, not by FastAPI, so FastAPI does not know about them."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return document


def _scoring_responses(what: str) -> dict[int | str, dict[str, Any]]:
    return {
        413: {"model": Problem, "description": f"too many {what} or too large a body"},
        415: {"model": Problem, "description": "the body is not declared JSON"},
        422: {"model": InvalidInput, "description": "invalid input; `loc` names the field"},
        429: {
            "model": Problem,
            "description": "overloaded: too much work in flight; retry after `Retry-After` s",
        },
        503: {"model": Problem, "description": "the model is not loaded (yet)"},
    }


@dataclass
class Serving:
    """What the routes share in one process: the model, the micro-batcher, the metrics and
    the request limits (``app.state.serving``; routes get it through :func:`serving`)."""

    holder: ModelHolder
    batcher: MicroBatcher
    metrics: ServingMetrics
    admission: Admission
    max_batch: int
    max_body_bytes: int

    def model(self) -> LoadedModel:
        """The model, or 503 while it loads (or, naming why, while its load fails)."""
        if self.holder.model is None:
            detail = self.holder.error or MODEL_LOADING
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=detail)
        return self.holder.model

    async def read(self, request: Request, decode: Callable[[bytes], tuple[Any, bool]]):
        """The request's items decoded by ``decode`` (a body of one or a list), within the
        size and count limits."""
        items, is_list = decode(await read_body(request, self.max_body_bytes))
        if len(items) > self.max_batch:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                detail=f"{len(items)} records in one request; the maximum is {self.max_batch}",
            )
        return items, is_list

    def respond(
        self,
        model: LoadedModel,
        kind: str,
        scores: Scores,
        numbers: list[int | None] | None = None,
    ) -> Response:
        """The one way a score endpoint answers: each verdict stamped with the model that
        gave it, counted in the metrics, encoded once."""
        self.metrics.observe_scores(kind, len(scores), int(scores.is_anomaly.sum()))
        body = encode_verdicts(scores, model, numbers)
        return Response(body, media_type="application/json")


# Dependencies are `async def`: FastAPI runs a plain `def` one in its thread pool, a hop
# that cost about 0.4 ms a request (measured: 2.5 ms against 2.9 ms for a single record).
async def serving(request: Request) -> Serving:
    return request.app.state.serving


ServingState = Annotated[Serving, Depends(serving)]


class DirectRoute(APIRoute):
    """A route whose endpoint takes the request and returns its response: FastAPI documents
    it (response model, responses, ``openapi_extra``) but neither solves dependencies nor
    reads the body for it, which took about a third of a single-record request's time in
    the app (``make profile-serving``). The scoring routes read and decode their bodies
    themselves anyway."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        return self.endpoint


probes = APIRouter()
scoring = APIRouter(prefix="/v1", route_class=DirectRoute)


@probes.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@probes.get("/readyz", responses={503: {"model": Problem, "description": "model not loaded"}})
async def readyz(state: ServingState) -> dict[str, str]:
    code, document = readiness(state.holder)
    if code != 200:
        raise HTTPException(code, detail=document["detail"])
    return document


def readiness(holder: ModelHolder) -> tuple[int, dict[str, str]]:
    """/readyz's answer, on the scoring port and the probes' own (:mod:`.probes`)."""
    if holder.model is None:
        return status.HTTP_503_SERVICE_UNAVAILABLE, {"detail": holder.error or MODEL_LOADING}
    return status.HTTP_200_OK, {"status": READY, "model_version": holder.model.version}


@probes.get("/version")
async def version(state: ServingState) -> VersionInfo:
    model = state.holder.model
    return VersionInfo(
        service_version=_service_version(),
        feature_spec_version=FEATURE_SPEC_VERSION,
        model_uri=model.uri if model else None,
        model_name=model.name if model else None,
        model_version=model.version if model else None,
        served_model=ModelReference.at_version(model.name, model.version).uri if model else None,
    )


@probes.get("/metrics", response_class=Response)
async def prometheus_metrics(state: ServingState) -> Response:
    content, media_type = state.metrics.exposition()
    return Response(content, media_type=media_type)


@scoring.post(
    "/score",
    response_model=ScoreResponse,
    openapi_extra=_raw_body_doc(PullRequestIn),
    responses=_scoring_responses("records"),
)
async def score(request: Request) -> Response:
    """Score one raw GitHub pull request (an object) or a batch (a list of them)."""
    state: Serving = request.app.state.serving
    model = state.model()
    with state.admission.request():
        records, is_list = await state.read(request, decode_pull_requests)
        if not records:
            return _json({"results": []})
        with state.admission.holding(len(records)):
            try:
                scores = await state.batcher.score(records)
            except UnscorableRecordError as error:
                log.warning("refused a request: record %s %s", error.index, error.problem)
                return _json(
                    {"detail": error.detail(is_list)}, status.HTTP_422_UNPROCESSABLE_CONTENT
                )
    return state.respond(model, "pull_request", scores, records.numbers)


@scoring.post(
    "/score/features",
    response_model=FeatureScoreResponse,
    openapi_extra=_raw_body_doc(FeatureVector),
    responses=_scoring_responses("vectors"),
)
async def score_features(request: Request) -> Response:
    """Score ready feature vectors (objects keyed by feature name), one or a list."""
    state: Serving = request.app.state.serving
    model = state.model()
    with state.admission.request():
        matrix, _ = await state.read(request, decode_feature_vectors)
        if not len(matrix):
            return _json({"results": []})
        with state.admission.holding(len(matrix)):
            scores = model.scorer.scores(matrix)
    state.metrics.observe_features(matrix)
    return state.respond(model, "features", scores)


def create_app(
    loader: Callable[[], LoadedModel],
    settings: ServingSettings | None = None,
    load_before_serving: bool = False,
    probe_host: str | None = None,
) -> FastAPI:
    """``load_before_serving``: with several workers on one socket, a worker that has not
    loaded its model must not accept connections (its 503s would reach clients of a pod
    that reports ready), so each worker loads (retrying) before it starts serving.
    ``probe_host``: where the probes' own listener binds (``settings.probe_port``)."""
    settings = settings or ServingSettings()
    metrics = ServingMetrics()

    def on_loaded(model: LoadedModel) -> None:
        metrics.model_info.labels(
            model.name, model.version, model.uri, model.scorer.feature_spec_version
        ).set(1)
        metrics.watch_drift(model.scorer)
        # What is loaded by now (libraries, app, model: ~70,000 objects) lives as long as
        # the process, and no request leaves a reference cycle: the garbage collector's full
        # passes need not walk it again. They cost ~20 µs a request on average, several ms
        # each (make bench-serving, README).
        gc.collect()
        gc.freeze()

    holder = ModelHolder(
        loader, on_loaded, settings.load_retry_initial_seconds, settings.load_retry_max_seconds
    )
    batcher = MicroBatcher(holder, settings.batch_wait_ms / 1000, metrics.observe_features)
    admission = Admission(
        settings.max_requests_in_flight,
        settings.max_records_in_flight,
        settings.retry_after_seconds,
        on_shed=lambda reason: metrics.shed.labels(reason).inc(),
    )

    async def shed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A scoring request refused by the server's protocol while admission is full."""
        error = admission.refusal()
        metrics.requests.labels(scope["method"], scope["path"], "429").inc()
        body = _JSON.dump_json({"detail": str(error)})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(error.retry_after).encode()),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    connection_limits = ConnectionLimits(
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        max_connections=settings.max_connections,
        on_cut=lambda reason: metrics.connections_cut.labels(reason).inc(),
        admission=admission,
        scoring_paths=frozenset(route.path for route in scoring.routes),  # type: ignore[attr-defined]
        shed=shed,
    )

    heartbeat = Heartbeat()

    def liveness() -> tuple[int, dict[str, str]]:
        stalled = heartbeat.age()
        if stalled > settings.liveness_stall_seconds:
            return 503, {"detail": f"the event loop has not run for {stalled:.0f} s"}
        return 200, {"status": "ok"}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = threading.Event()
        heartbeat.start(asyncio.get_running_loop())
        listener = None
        if settings.probe_port is not None:
            listener = ProbeListener(
                probe_host or "127.0.0.1",
                settings.probe_port,
                {"/healthz": liveness, "/readyz": lambda: readiness(holder)},
            )
            listener.start()
        if load_before_serving:
            await asyncio.to_thread(holder.load_until_loaded, stop)
        else:
            threading.Thread(
                target=holder.load_until_loaded, args=(stop,), name="model-loader", daemon=True
            ).start()
        # the lifespan state reaches uvicorn's protocol (model_serving.connections)
        yield {LIMITS_KEY: connection_limits}
        stop.set()
        heartbeat.stop()
        if listener is not None:
            listener.stop()

    # No OpenTelemetry of FastAPI's own: the service exports Prometheus metrics, and asking
    # whether telemetry is configured cost ~3 % of a single-record request.
    app = FastAPI(
        title="Pull-request anomaly scoring",
        version="1",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.serving = Serving(
        holder, batcher, metrics, admission, settings.max_batch, settings.max_body_bytes
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_exception_handler(BodyTooLarge, _body_too_large)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    # The routes themselves, the busiest first (they are tried in order): an included
    # router re-derives its route list on every request (~7 % of a single-record one).
    app.router.routes.extend([*scoring.routes, *probes.routes])

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            app.openapi_schema = _with_request_schemas(document, PullRequestIn, FeatureVector)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _body_too_large(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status.HTTP_413_CONTENT_TOO_LARGE)


async def _overloaded(request: Request, error: Exception) -> JSONResponse:
    """Shed before the body is read: the connection stays usable (uvicorn skips the rest
    of the body), and the client is told when to come back."""
    assert isinstance(error, Overloaded)
    return JSONResponse(
        {"detail": str(error)},
        status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": str(error.retry_after)},
    )


async def _client_gone(request: Request, error: Exception) -> Response:
    """The client hung up (or was cut off for sending too slowly) before its answer: not a
    server error. One line, no traceback; counted under its own status (499, or 408 for a
    cut). Nobody reads the answer."""
    cut_off = request.scope.get(CUT_OFF_KEY)
    log.info(
        "client %s before its answer: %s %s",
        f"cut off ({cut_off})" if cut_off else "disconnected",
        request.method,
        request.url.path,
    )
    code = status.HTTP_408_REQUEST_TIMEOUT if cut_off else CLIENT_CLOSED
    return Response(status_code=code)
