"""The replay server's primary budget, as GitHub's: points a window, a GraphQL query costing
``graphql_cost``, a refusal (X-RateLimit-Remaining 0) when the points left cannot pay, and a
fresh budget when the window resets."""

from __future__ import annotations

import time

import requests

from pipeline_ops.github_replay_server import GitHubReplayServer, load_samples
from pipeline_ops.paths import SAMPLES_DIR

FLASK = "pallets/flask"
QUERY = "query { repository { pullRequests(first: 100) { nodes { number } } } }"


def _page(server: GitHubReplayServer) -> requests.Response:
    variables = {"owner": "pallets", "name": "flask", "first": 100}
    return requests.post(
        f"{server.url}/graphql", json={"query": QUERY, "variables": variables}, timeout=10
    )


def test_graphql_pages_cost_their_points_until_the_window_resets() -> None:
    pulls = load_samples(SAMPLES_DIR)[FLASK][:300]
    with GitHubReplayServer(
        {FLASK: pulls}, rate_limit=5, window_seconds=2, graphql_cost=2
    ) as server:
        answers = [_page(server) for _ in range(3)]
        rest = requests.get(f"{server.url}/repos/{FLASK}/pulls", timeout=10)
        time.sleep(max(0.0, int(answers[-1].headers["X-RateLimit-Reset"]) - time.time()) + 0.1)
        after_reset = _page(server)

    remaining = [a.headers["X-RateLimit-Remaining"] for a in answers]
    assert remaining == ["3", "1", "0"]  # the third needs 2 points, 1 is left: refused
    assert answers[0].json()["data"]["rateLimit"]["cost"] == 2
    assert answers[2].json()["errors"][0]["type"] == "RATE_LIMITED"
    assert rest.status_code == 403  # REST shares the budget
    assert after_reset.json()["data"]["repository"]["pullRequests"]["nodes"]
    assert after_reset.headers["X-RateLimit-Remaining"] == "3"
