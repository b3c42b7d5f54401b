"""The ceiling: a bare FastAPI endpoint returning a constant, served like ours."""

from fastapi import FastAPI

app = FastAPI()
ANSWER = {"results": [{"score": 0.5, "threshold": 1.0, "is_anomaly": False}]}


@app.post("/v1/score")
async def constant() -> dict:
    return ANSWER
