"""The platform's MLflow server: MLflow's own app, plus one answer it lacks.

When the artifact store cannot take a file (the disk is full: ENOSPC; or read-only,
unwritable, over quota), MLflow's artifact route fails with an unhandled ``OSError`` and
answers 500, which every MLflow client retries for about four minutes before giving up with
"too many 500 error responses", naming neither the cause nor the place. Here that error is
answered at once with 507 Insufficient Storage (which clients do not retry), the error's
name and the path it could not write.

``mlflow server --app-name pr-anomaly`` serves ``app`` (an ``mlflow.app`` entry point, the
way MLflow's own basic-auth app is plugged in); ``local_platform`` gives the server that
entry point and the artifact directory (``ARTIFACTS_VARIABLE``) for the message.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

APP_NAME = "pr-anomaly"
ARTIFACTS_VARIABLE = "PLATFORM_MLFLOW_ARTIFACTS"
ARTIFACT_ROUTE = "/mlflow-artifacts/artifacts/"
STORAGE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def app() -> FastAPI:
    """MLflow's FastAPI app with ``NamedStorageErrors`` (a factory: uvicorn calls it)."""
    from mlflow.server.fastapi_app import app as mlflow_app

    mlflow_app.add_middleware(NamedStorageErrors)
    return mlflow_app


class NamedStorageErrors:
    """An artifact upload that the store cannot write: 507, the error and the path."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or ARTIFACT_ROUTE not in scope["path"]:
            await self.app(scope, receive, send)
            return
        body_read = False

        async def tracked() -> Message:
            nonlocal body_read
            message = await receive()
            body_read = message["type"] != "http.request" or not message.get("more_body")
            return message

        try:
            await self.app(scope, tracked, send)
        except OSError as error:
            if error.errno not in STORAGE_ERRORS:
                raise
            # The client may still be sending the file: read it to its end, so that it
            # reads this answer rather than a reset connection (which it would retry).
            while not body_read:
                await tracked()
            await _send_json(send, 507, _storage_error(scope["path"], error))


def _storage_error(route: str, error: OSError) -> dict[str, Any]:
    artifact = route.split(ARTIFACT_ROUTE, 1)[1]
    store = os.environ.get(ARTIFACTS_VARIABLE, "the artifact store")
    name = errno.errorcode.get(error.errno or 0, str(error.errno))
    return {
        "error_code": "RESOURCE_EXHAUSTED" if error.errno == errno.ENOSPC else "INTERNAL_ERROR",
        "message": f"the MLflow server cannot store {posixpath.join(store, artifact)}: "
        f"{name} ({error.strerror}); free or fix its artifact store, then log it again",
    }


async def _send_json(send: Send, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
