"""The scoring API."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

import pandas as pd
from fastapi import Body, FastAPI, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from model_serving.model_source import LoadedModel

log = logging.getLogger(__name__)


class PullRequestIn(BaseModel):
    """A GitHub REST-shaped pull request; fields the model does not use are ignored."""

    model_config = ConfigDict(extra="ignore")

    number: int | None = Field(default=None, ge=1)
    title: str = ""
    body: str | None = ""
    # strict: JSON true or "12" is not a count (data-fetch quarantines such records too)
    additions: int = Field(ge=0, strict=True)
    deletions: int = Field(ge=0, strict=True)
    changed_files: int = Field(ge=0, strict=True)
    commits: int = Field(ge=0, strict=True)
    created_at: datetime
    merged_at: datetime | None = None


class Verdict(BaseModel):
    number: int | None
    score: float
    threshold: float
    is_anomaly: bool
    top_features: list[str]
    model_name: str
    model_version: str


class ScoreResponse(BaseModel):
    results: list[Verdict]


class ModelHolder:
    """The model, loaded once per process in the background; /readyz says when."""

    def __init__(self, loader: Callable[[], LoadedModel]):
        self._loader = loader
        self.model: LoadedModel | None = None
        self.error: str | None = None

    def load(self) -> None:
        try:
            self.model = self._loader()
            log.info(
                "model loaded", extra={"model": self.model.name, "version": self.model.version}
            )
        except Exception as error:  # reported by /readyz; the process stays up for probes
            self.error = f"{type(error).__name__}: {error}"
            log.error("model load failed: %s", self.error)


def create_app(loader: Callable[[], LoadedModel], max_batch: int = 1000) -> FastAPI:
    holder = ModelHolder(loader)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=holder.load, name="model-loader", daemon=True).start()
        yield

    app = FastAPI(title="Pull-request anomaly scoring", version="1", lifespan=lifespan)
    app.state.holder = holder

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        if holder.model is None:
            detail = holder.error or "model is loading"
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=detail)
        return {"status": "ready", "model_version": holder.model.version}

    @app.post("/v1/score", response_model=ScoreResponse)
    def score(
        payload: Annotated[PullRequestIn | list[PullRequestIn], Body()],
    ) -> ScoreResponse:
        model = holder.model
        if model is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="model is loading")
        records = payload if isinstance(payload, list) else [payload]
        if not records:  # an empty batch has no rows to compute features from
            return ScoreResponse(results=[])
        if len(records) > max_batch:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                detail=f"{len(records)} records in one request; the maximum is {max_batch}",
            )
        frame = pd.DataFrame([r.model_dump() for r in records])
        verdicts = model.scorer.score_records(frame)
        return ScoreResponse(
            results=[
                Verdict(number=r.number, model_name=model.name, model_version=model.version, **v)
                for r, v in zip(records, verdicts, strict=True)
            ]
        )

    return app
