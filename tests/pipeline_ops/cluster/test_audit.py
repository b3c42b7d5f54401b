"""The audit log read back (no cluster): which writes are a user's actions, which are not, and
that argo-apps/access grants the user exactly those actions. The cluster run's own audit is
checked in test_cluster_run.py, on the real API server's log."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline_ops.cluster import access, audit
from pipeline_ops.cluster.layout import ADMIN, ENVIRONMENT_NAMESPACES, USER

SINCE = datetime(2026, 12, 6, 21, 0, tzinfo=UTC)


def _event(user: str, verb: str, resource: str, namespace: str, code: int = 201,
           at: str = "2026-12-06T21:05:00.123456Z", group: str = "",
           subresource: str = "") -> dict[str, Any]:  # fmt: skip
    ref = {"resource": resource, "namespace": namespace, "name": "x", "apiGroup": group}
    if subresource:
        ref["subresource"] = subresource
    return {"kind": "Event", "stage": "ResponseComplete", "verb": verb,
            "user": {"username": user}, "objectRef": ref, "responseStatus": {"code": code},
            "requestReceivedTimestamp": at, "stageTimestamp": at}  # fmt: skip


def _log(tmp_path: Path, *events: dict[str, Any]) -> Path:
    path = tmp_path / "audit.log"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_a_users_actions_are_listed_and_anything_else_is_a_violation(tmp_path: Path) -> None:
    log = _log(
        tmp_path,
        # before the run: not this run's
        _event(ADMIN, "patch", "configmaps", "kube-system", at="2026-12-06T20:59:59Z"),
        _event(USER, "patch", "applications", "argocd", 200, group="argoproj.io"),
        _event(USER, "create", "jobs", "mlops", group="batch"),
        _event(
            USER,
            "patch",
            "rollouts",
            "mlops-production",
            200,
            group="argoproj.io",
            subresource="status",
        ),
        # the harness doing an operator's work: as the administrator...
        _event(ADMIN, "create", "sparkapplications", "mlops", group="sparkoperator.k8s.io"),
        # ...or as the user, refused by its RBAC, or allowed by a too-broad grant
        _event(USER, "create", "pods", "mlops", 403),
        _event(USER, "create", "configmaps", "mlops"),
        # a job in a namespace that is not the pipeline's
        _event(USER, "create", "jobs", "kube-system", group="batch"),
    )
    found = audit.review(audit.writes([log], SINCE))

    actions = [w["action"] for w in found["user_writes"]]
    assert actions == [a.name for a in audit.USER_ACTIONS]
    whys = [(v["user"], v["resource"], v["why"]) for v in found["violations"]]
    assert whys == [
        (ADMIN, "sparkoperator.k8s.io/sparkapplications", f"written by {ADMIN}, not the user"),
        (USER, "pods", "refused (403): no user action needs it"),
        (USER, "configmaps", "no user action of README explains it"),
        (USER, "batch/jobs", "no user action of README explains it"),
    ]


def test_reads_and_unfinished_requests_are_not_writes(tmp_path: Path) -> None:
    started = {**_event(USER, "create", "jobs", "mlops", group="batch"), "stage": "ResponseStarted"}
    log = _log(tmp_path, _event(USER, "get", "pods", "mlops", 200), started)
    assert audit.writes([log], SINCE) == []


def _granted(objects: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    triples = set()
    for role in (o for o in objects if o["kind"] == "Role"):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        name = f"{group}/{resource}" if group else resource
                        triples.add((verb, name, role["metadata"]["namespace"]))
    return triples


def test_argo_apps_access_grants_the_user_exactly_its_actions_and_reading() -> None:
    """Every write README's user makes is granted, and no other: RBAC refuses the rest
    before the audit has to catch it. Reading is cluster-wide, Secrets excepted."""
    objects = access.objects()
    explained = {
        (verb, resource, namespace)
        for action in audit.USER_ACTIONS
        for verb in action.verbs
        for resource in action.resources
        for namespace in action.namespaces
    }
    assert _granted(objects) == explained
    assert {n for (_, _, n) in explained} >= set(ENVIRONMENT_NAMESPACES)
    read = next(o for o in objects if o["kind"] == "ClusterRole")
    assert all(set(rule["verbs"]) == {"get", "list", "watch"} for rule in read["rules"])
    assert not any("secrets" in rule["resources"] for rule in read["rules"])
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert {s["name"] for b in bindings for s in b["subjects"]} == {"pr-anomaly-mlops-users"}
