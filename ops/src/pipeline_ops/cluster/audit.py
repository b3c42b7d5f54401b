"""The API server's audit log, read back: every write a person made since a moment (the
policy, ``ops/cluster/audit-policy.yaml``, records only those), each matched to the user's
action that README names, or reported as a violation.

What a user may write is README's list and nothing more (DESIGN.md, "The cluster run is a
user, not an operator"): install the AppProject and Applications, "run it now" for a CronJob,
``kubectl argo rollouts promote``. A write by anyone else who is a person (an administrator:
the harness doing an operator's work) is a violation, and so is a user's write that was
refused (the harness tried something no user action needs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline_ops.cluster import argo_cd, kube
from pipeline_ops.cluster.layout import ENVIRONMENT_NAMESPACES, USER, Layout

WRITES = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class Write:
    at: str  # the API server's stageTimestamp
    user: str
    verb: str
    resource: str  # GROUP/RESOURCE[/SUBRESOURCE] (core: RESOURCE)
    namespace: str
    name: str
    code: int  # the response's HTTP status

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Write:
        ref = event.get("objectRef") or {}
        parts = [ref.get("apiGroup", ""), ref.get("resource", ""), ref.get("subresource", "")]
        return cls(
            at=event.get("stageTimestamp", ""),
            user=(event.get("user") or {}).get("username", ""),
            verb=event.get("verb", ""),
            resource="/".join(p for p in parts if p),
            namespace=ref.get("namespace", ""),
            name=ref.get("name", ""),
            code=int((event.get("responseStatus") or {}).get("code", 0)),
        )


@dataclass(frozen=True)
class UserAction:
    name: str  # as README gives it
    verbs: frozenset[str]
    resources: frozenset[str]
    namespaces: frozenset[str]

    def allows(self, write: Write) -> bool:
        return (write.verb in self.verbs and write.resource in self.resources
                and write.namespace in self.namespaces)  # fmt: skip


def _action(name: str, verbs: Iterable[str], resources: Iterable[str],
            namespaces: Iterable[str]) -> UserAction:  # fmt: skip
    return UserAction(name, frozenset(verbs), frozenset(resources), frozenset(namespaces))


# argo-apps/access grants exactly these (test_audit.py checks that the two agree)
USER_ACTIONS = (
    _action("install the AppProject and Applications (argo-apps/argocd)",
            ("create", "patch", "update"),
            ("argoproj.io/appprojects", "argoproj.io/applications"), (argo_cd.NAMESPACE,)),
    _action("run it now: kubectl create job --from=cronjob/NAME (an experiment: the same Job "
            "with settings of its own)", ("create",), ("batch/jobs",), ENVIRONMENT_NAMESPACES),
    _action("kubectl argo rollouts promote", ("patch",),
            ("argoproj.io/rollouts", "argoproj.io/rollouts/status"), ENVIRONMENT_NAMESPACES),
)  # fmt: skip


def writes(log_files: Iterable[Path], since: datetime) -> list[Write]:
    """The writes recorded in ``log_files`` (JSON lines) at or after ``since``, oldest first."""
    found = []
    for path in log_files:
        for line in path.read_text().splitlines():
            event = json.loads(line) if line.strip() else {}
            if event.get("stage") != "ResponseComplete" or event.get("verb") not in WRITES:
                continue
            write = Write.from_event(event)
            if kube.when(write.at) >= since:
                found.append(write)
    return sorted(found, key=lambda w: kube.when(w.at))


def log_files(layout: Layout) -> list[Path]:
    """The audit log and its rotated backups (``audit-TIMESTAMP.log``)."""
    return sorted(layout.logs.glob(f"{layout.audit_log.stem}*{layout.audit_log.suffix}"))


def review(found: Iterable[Write], user: str = USER) -> dict[str, Any]:
    """Each write of ``user`` with the user's action that explains it; the violations: any
    other person's write, a user's write no action explains, a refused one."""
    user_writes: list[dict[str, Any]] = []
    violations: list[dict[str, Any]] = []
    for write in found:
        row = asdict(write)
        action = next((a.name for a in USER_ACTIONS if a.allows(write)), None)
        if write.user != user:
            violations.append({**row, "why": f"written by {write.user}, not the user"})
        elif write.code >= 400:
            violations.append({**row, "why": f"refused ({write.code}): no user action needs it"})
        elif action is None:
            violations.append({**row, "why": "no user action of README explains it"})
        else:
            user_writes.append({**row, "action": action})
    return {"user": user, "user_writes": user_writes, "violations": violations}


def review_since(layout: Layout, since: datetime) -> dict[str, Any]:
    return review(writes(log_files(layout), since))
