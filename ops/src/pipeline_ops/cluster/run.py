"""`make cluster-run`: the whole GitOps loop on the local cluster, with the real controllers.

1. The platform servers (Vault with kubernetes auth, MongoDB, MLflow, S3) outside the
   cluster, reached by the Service names production uses (platform.py).
2. The images of `make images` pushed to the cluster's registry by digest (all this as the
   administrator; from here on the run is the user ``pr-anomaly-user`` of argo-apps/access,
   and nothing more); this checkout merged to ``staging`` and the digests pinned there by
   the workflows' own script.
3. Argo CD syncs ``staging``; data-fetch runs (a Job from its CronJob), the Spark Operator's
   schedule submits spark-preprocess (two executors, features to S3), ml-training runs (a
   Job from its CronJob) and registers a version, which the delivered model-pin CronJob pins on
   ``staging`` (or finds pinned: as shipped, version 1). The Rollout serves what git pins.
4. Promotion (``ops/scripts/promote.sh`` against the git server): production deploys; the
   delivered model-champion CronJob moves ``champion`` to what production serves.
5. Blue/green for real: training again, model-pin's commit is a new revision, the
   pre-promotion analysis runs its ``web`` metrics and the load-gate Job against the preview
   Service, the Rollout pauses, ``kubectl argo rollouts promote`` switches the active
   Service, and the post-promotion analysis reads Prometheus for the new pods; a client
   sends requests to the active Service all along and must see no failure. Then the failure
   path: a data scientist's experiment (ml-training on one repository only, a Job from the
   CronJob with a setting of its own) passes its own gate and is registered, model-pin pins
   it, and the pre-promotion analysis's quality gate fails it (it flags far more real pull
   requests than a sound version): aborted, active stays blue; the user pins the
   challenger again. The second promotion takes production through
   its own blue/green; the digests and models of both environments are compared. Then the
   rollback: the promotion reverted on ``main`` (production switches back, champion
   follows), and ``main`` merged into ``staging``, so both serve the same model again.
6. The witnesses: every write the API server's audit log recorded since step 2 is one of
   the user's actions (pipeline_ops.cluster.audit), every commit on ``staging`` and ``main``
   the user's or a delivered component's; anything else fails the run.
7. A report (``.local/cluster/run/report.md`` and ``.json``): steps and times, the
   AnalysisRuns' measurements, the promotion decisions, the user's writes and the commits.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import requests
from mlflow import MlflowClient

from pipeline_contracts.registry import CHAMPION, DEFAULT_MODEL_NAME, PINNED_IN_GIT, ModelReference
from pipeline_ops import stages
from pipeline_ops.base import commands
from pipeline_ops.base.polling import wait_until
from pipeline_ops.base.steps import StepLog, steps_table
from pipeline_ops.cluster import ClusterError, audit, gitops, kube
from pipeline_ops.cluster.launcher import Cluster
from pipeline_ops.cluster.layout import USER
from pipeline_ops.cluster.platform import ClusterPlatform
from pipeline_ops.cluster.registry import push
from pipeline_ops.samples import newest_sample_records

log = logging.getLogger(__name__)

STAGING, PRODUCTION = gitops.STAGING, gitops.PRODUCTION
# The stages the run starts as their schedules would (CronJobs, a ScheduledSparkApplication).
FETCH = stages.stage("data-fetch").name
PREPROCESS = stages.stage("spark-preprocess").name
TRAINING = stages.stage("ml-training").name
SERVING = kube.ROLLOUT
MODEL_PIN = stages.delivery_job("model-pin").name  # commits a registered version's pin
# Who may commit on staging and main during a run: the user (merges, the promotion, a
# revert) and the delivered components, model-pin and the workflows' image bump.
COMMITTERS = frozenset({USER, MODEL_PIN, gitops.WORKFLOW_BOT})
ACTIVE_SERVICE = f"{SERVING}-active"  # the Rollout's activeService
FINISHED = ("Successful", "Failed", "Error", "Inconclusive")  # an AnalysisRun's final phases
# The failure path's green: a data scientist's experiment, ml-training on one repository's
# pull requests only, which passes its own gate (on that repository's newest pull requests)
# and so is registered as the newest version of the production model, and model-pin pins
# it. It loads, becomes ready and is exactly what git pins: the pre-promotion analysis's
# quality gate (false alarms on real pull requests of both repositories) must fail it.
EXPERIMENT = {"TRAINING_REPOSITORIES": "pallets/flask"}
# The registry's copy of the five images (3.9 GB) and containerd's, packed and unpacked
# (12 GB), took 16 GB on a fresh clone, the 5.9 GB training image most of it; etcd, on the
# same disk, dies when the disk fills (a fresh clone's run did, mid-pull).
MIN_FREE_GB = 20


@dataclass
class Client:
    """Requests to a Service, one after another, from a thread; what failed, when (seconds
    since the client started), and what the run was doing then (``mark``). Each request
    scores the next of ``records`` (ordinary pull requests: one record sent over and over
    would be drifted traffic, and the drift alert would rightly fire on it)."""

    url: str
    records: list[dict[str, Any]]
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    _started: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _at(self) -> str:
        return f"{time.monotonic() - self._started:.1f}s"

    def mark(self, event: str) -> None:
        self.events.append(f"{self._at()} {event}")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sent += 1
            try:
                # a connection per request, as many independent clients make: a kept-alive
                # one stays with the pod it was opened to (conntrack), and would never see
                # the active Service switch to green
                response = self._score()
                if response.status_code != 200:
                    failure = f"HTTP {response.status_code}: {response.text[:200]}"
                    self.failures.append(f"{self._at()} {failure}")
            except requests.RequestException as error:
                self.failures.append(f"{self._at()} {type(error).__name__}: {error}")
            self._stop.wait(0.1)

    def _score(self) -> requests.Response:
        record = self.records[self.sent % len(self.records)]
        return requests.post(f"{self.url}/v1/score", json=record, timeout=5)

    def wait_answering(self, timeout: float = 120) -> None:
        """Until the Service answers a request: a Rollout is Healthy as soon as its pods are
        ready, a moment before kube-proxy sends the Service's traffic to them."""

        def answers() -> bool:
            try:
                return self._score().ok
            except requests.RequestException:
                return False

        wait_until(f"{self.url} answering", answers, timeout, every=0.5)

    @contextmanager
    def running(self) -> Iterator[Client]:
        self._started = time.monotonic()
        thread = threading.Thread(target=self._loop, name="active-client", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=10)

    def summary(self) -> dict[str, Any]:
        return {"sent": self.sent, "failed": len(self.failures),
                "first_failures": self.failures[:5], "events": self.events}  # fmt: skip


class ClusterRun:
    def __init__(self, cluster: Cluster | None = None, report_dir: Path | None = None):
        self.cluster = cluster or Cluster()
        # the environment (cluster, platform servers, registry) is made as its administrator;
        # everything after is done as the user (its own kubeconfig, argo-apps/access)
        self.admin = self.cluster.layout
        self.layout = self.admin.acting_as("user")
        self.report_dir = report_dir or self.layout.root / "run"
        self.platform = ClusterPlatform(self.admin)
        self.steps = StepLog(say=log.info)
        self.step = self.steps.step
        self.report: dict[str, Any] = {}
        self.stamp = time.strftime("%H%M%S")

    # -- the run ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        try:
            self._run()
            self.report["outcome"] = "ok"
        except Exception as error:
            self.report["outcome"] = f"FAILED: {error}"
            raise
        finally:
            self.report["seconds"] = round(time.monotonic() - started, 1)
            self._write_report()
        return self.report

    def _run(self) -> None:
        layout = self.layout
        # before anything is started or pushed
        self.report["disk_free_gb"] = _require_disk(layout.root, MIN_FREE_GB)
        with self.step("cluster up") as s:
            s.figures["timings"] = self.cluster.up()
        with self.step("platform (Vault kubernetes auth, MongoDB, MLflow, S3)") as s:
            s.figures["servers"] = self.platform.up()
        with self.step("images pushed by digest") as s:
            references = push(self.admin, list(stages.IMAGE_NAMES))
            s.figures["references"] = references
        # from here on, the user: the audit log and git's history must show nothing else
        user_from = time.time()
        self.report["user_from"] = datetime.fromtimestamp(user_from, UTC).isoformat()
        with self.step("merge to staging, pin digests") as s:
            s.figures["merged"] = gitops.merge_to_staging(layout)
            s.figures["staging"] = gitops.pin_images(layout, references)
        with self.step("Argo CD syncs staging") as s:
            gitops.apply_applications(layout, (STAGING,))
            s.figures["revision"] = self._synced(STAGING)
        ns = gitops.NAMESPACES[STAGING]
        with self.step(f"{FETCH} (Job from the CronJob)") as s:
            logs = kube.run_cronjob(layout, ns, FETCH, f"{FETCH}-{self.stamp}", 900)
            s.figures["summary"] = _brief(kube.summary_of(logs))
        fetched = datetime.now(UTC)
        with self.step(f"{PREPROCESS} (submitted by its schedule, Spark Operator)") as s:
            run = kube.scheduled_spark_run(layout, ns, fetched, 1200)
            status = run.pop("status")
            s.figures["run"] = run
            executors = s.figures["executors"] = len(status.get("executorState", {}))
            if executors < 2:
                raise ClusterError(f"{PREPROCESS} ran {executors} executor(s), not 2")
        trained = self._train(f"{TRAINING} (Job from the CronJob)", f"{TRAINING}-{self.stamp}")
        with self.step(
            "serving: the model git pins (model-pin pins what training registered)"
        ) as s:
            # as shipped, git pins version 1, the first version training registers: model-pin
            # finds it pinned already; a later version it commits on staging, and the
            # Rollout takes it through its blue/green
            s.figures["pin"] = self._pinned_by_model_pin(trained)
            self._synced(STAGING)
            s.figures.update(self._settle(STAGING))
        with self.step("promotion staging -> main (promote.sh): production deploys") as s:
            s.figures.update(self._promote())
        started = time.time()
        version = self._train(f"{TRAINING} again (a user's \"run it now\")",
                              f"{TRAINING}-{self.stamp}-2")  # fmt: skip
        with self.step("blue/green in staging: model-pin pins the new version") as s:
            challenger = ModelReference.at_version(DEFAULT_MODEL_NAME, version)
            pinned = partial(self._pin_commit, version)
            s.figures.update(self._follow(STAGING, "promoted", pinned, since=started))
            s.figures["model"] = challenger.uri
        started = time.time()
        experiment = self._train(
            f"an experiment: {TRAINING} on {EXPERIMENT['TRAINING_REPOSITORIES']} only",
            f"{TRAINING}-{self.stamp}-experiment", settings=EXPERIMENT,
        )  # fmt: skip
        with self.step("blue/green failure path: model-pin pins the experiment") as s:
            wrong = ModelReference.at_version(DEFAULT_MODEL_NAME, experiment)
            pinned = partial(self._pin_commit, experiment)
            s.figures.update(self._follow(STAGING, "aborted", pinned, since=started))
            s.figures["model"] = wrong.uri
            # the user's pull request that pins the challenger again (model-pin leaves a
            # version it pinned once alone, so the experiment stays unpinned)
            s.figures["reverted"] = gitops.pin_model(layout, challenger.uri)
            self._synced(STAGING)
            self._wait_healthy(STAGING)
        with self.step("promotion staging -> main: production's own blue/green") as s:
            s.figures.update(self._promote())
        with self.step("both environments run the same digests") as s:
            s.figures.update(self._compare_environments())
        with self.step("rollback: the promotion reverted on main, production's blue/green") as s:
            s.figures.update(
                self._follow(PRODUCTION, "promoted", partial(gitops.revert_promotion, layout))
            )
            s.figures["champion"] = self._champion_follows_production()
        with self.step("staging takes the rollback: main merged into staging") as s:
            update = partial(gitops.merge_main_into_staging, layout)
            s.figures.update(self._follow(STAGING, "promoted", update))
            s.figures.update(self._compare_environments())
        with self.step("the user's writes (audit log) and the commits (git)") as s:
            s.figures.update(self._witnesses(user_from))
        self.report["analysis_runs"] = {
            env: kube.analysis_runs(layout, gitops.NAMESPACES[env]) for env in (STAGING, PRODUCTION)
        }
        self.report["resources"] = _resources_held(layout)

    # -- steps --------------------------------------------------------------------------
    def _witnesses(self, since: float) -> dict[str, Any]:
        """What the user did, by the API server's audit log and by git: every write and
        commit since ``since``, each the user's or a delivered component's. Anything else
        (an administrator's write, a commit by another hand) fails the run."""
        writes = audit.review_since(self.layout, datetime.fromtimestamp(since, UTC))
        commits = gitops.commits_since(self.layout, since)
        strangers = [c for c in commits if c["committer"] not in COMMITTERS]
        self.report["audit"] = {**writes, "commits": commits, "foreign_commits": strangers}
        if writes["violations"] or strangers:
            seen = [f"{v['user']} {v['verb']} {v['resource']} {v['namespace']}/{v['name']} "
                    f"({v['why']})" for v in writes["violations"][:5]]  # fmt: skip
            seen += [f"commit {c['commit']} by {c['committer']}: {c['subject']}"
                     for c in strangers[:5]]  # fmt: skip
            raise ClusterError(
                f"the run did more than a user does ({len(writes['violations'])} writes, "
                f"{len(strangers)} commits; the report's audit section lists them): "
                + "; ".join(seen)
            )
        return {"user_writes": len(writes["user_writes"]), "commits": len(commits),
                "committers": sorted({c["committer"] for c in commits})}  # fmt: skip

    def _synced(self, environment: str) -> str:
        revision = gitops.head(self.layout, gitops.BRANCHES[environment]) or ""
        gitops.wait_synced(self.layout, environment, revision)
        return revision

    def _mlflow(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.platform.url("mlflow"))

    def _train(self, step: str, job: str, settings: dict[str, str] | None = None) -> str:
        """ml-training as a Job from its CronJob (a user's "run it now"; with ``settings``,
        an experiment); the version it registered, or an error with the gate's reason."""
        with self.step(step) as s:
            ns = gitops.NAMESPACES[STAGING]
            logs = kube.run_cronjob(self.layout, ns, TRAINING, job, 1800, settings)
            summary = kube.summary_of(logs) or {}
            s.figures["summary"] = _brief(summary)
            if not summary.get("registered"):
                raise ClusterError(f"{TRAINING} registered no challenger: {summary.get('gate')}")
        return str(summary["model_version"])

    def _pinned_by_model_pin(self, version: str, timeout: float = 240) -> dict[str, Any]:
        """Until the delivered model-pin CronJob has pinned ``version`` in git (its registry
        tag says where); the tag, what staging pins now and who made staging's head."""
        client = self._mlflow()
        started = time.monotonic()

        def tagged() -> str | None:
            tags = client.get_model_version(DEFAULT_MODEL_NAME, version).tags or {}
            return tags.get(PINNED_IN_GIT)

        tag = wait_until(f"model-pin to pin {DEFAULT_MODEL_NAME} v{version} in git", tagged,
                         timeout, every=5)  # fmt: skip
        staging = gitops.BRANCHES[STAGING]
        return {"tag": tag, "pinned": gitops.served_model(self.layout, staging),
                "head_by": gitops.committer(self.layout, staging),
                "waited_s": round(time.monotonic() - started, 1)}  # fmt: skip

    def _pin_commit(self, version: str) -> str:
        """The commit model-pin made for ``version`` (the change the blue/green follows)."""
        pin = self._pinned_by_model_pin(version)
        if pin["head_by"] != MODEL_PIN or not pin["pinned"].endswith(f"/{version}"):
            raise ClusterError(f"staging's pin did not come from {MODEL_PIN}: {pin}")
        return str(pin["tag"]).partition("@")[2]

    def _wait_healthy(self, environment: str, timeout: float = 600) -> dict[str, Any]:
        ns = gitops.NAMESPACES[environment]

        def healthy() -> dict[str, Any] | None:
            status = kube.rollout(self.layout, ns).get("status", {})
            ready = status.get("phase") == "Healthy" and status.get("stableRS")
            return status if ready else None

        return wait_until(f"Rollout model-serving Healthy in {ns}", healthy, timeout)

    def _promote(self) -> dict[str, Any]:
        """``make promote`` against the git server and the production Application's sync:
        a production that runs already takes a changed model or image through its own
        blue/green, with a client on its active Service; a first one goes straight to
        active. Then the delivered champion job moves ``champion`` to what production serves."""
        layout = self.layout
        main, staging = gitops.BRANCHES[PRODUCTION], gitops.BRANCHES[STAGING]

        def promote() -> str:
            commit = gitops.promote(layout)
            # a user installs the Applications once (README); applying them again is a no-op
            gitops.apply_applications(layout, (STAGING, PRODUCTION))
            return commit

        changes = gitops.served_model(layout, main) != gitops.served_model(layout, staging) or (
            gitops.differing_images(layout, main, staging)
        )
        if changes and self._deployed(PRODUCTION):
            outcome = {"blue_green": True, **self._follow(PRODUCTION, "promoted", promote)}
        else:
            outcome = {"main": promote()}
            self._synced(PRODUCTION)
            outcome.update(self._settle(PRODUCTION))
        outcome["champion"] = self._champion_follows_production()
        return outcome

    def _deployed(self, environment: str) -> bool:
        return self.layout.kubectl().exists(gitops.NAMESPACES[environment], "rollout", SERVING)

    def _champion_follows_production(self, timeout: float = 240) -> dict[str, Any]:
        """Until ``champion`` names the version production's git pins (moved by the delivered
        model-champion CronJob, not by this run); what production's active Service serves."""
        from mlflow.exceptions import MlflowException

        pinned = ModelReference.parse(gitops.served_model(self.layout, gitops.BRANCHES[PRODUCTION]))
        client = self._mlflow()
        started = time.monotonic()

        def champion() -> str | None:
            try:
                version = str(client.get_model_version_by_alias(pinned.name, CHAMPION).version)
            except MlflowException:
                return None
            return version if version == pinned.version else None

        wait_until(f"{pinned.name}@{CHAMPION} to follow production to v{pinned.version} "
                   "(the model-champion CronJob)", champion, timeout, every=5)  # fmt: skip
        url = kube.service_url(self.layout, gitops.NAMESPACES[PRODUCTION], ACTIVE_SERVICE)
        serves = requests.get(f"{url}/version", timeout=5).json().get("served_model")
        return {"champion": pinned.version, "production_serves": serves,
                "followed_in_s": round(time.monotonic() - started, 1)}  # fmt: skip

    def _settle(self, environment: str) -> dict[str, Any]:
        """The Rollout as the last sync left it: Healthy, or a new revision (new images, say)
        taken through its blue/green and promoted."""
        ns = gitops.NAMESPACES[environment]

        def known() -> dict[str, Any] | None:
            rollout = kube.rollout(self.layout, ns)
            status = rollout.get("status", {})
            # the controller has seen the spec the sync applied (else a new revision is
            # still to come, and the old one looks settled)
            seen = str(status.get("observedGeneration")) == str(rollout["metadata"]["generation"])
            return (
                status if seen and status.get("currentPodHash") and status.get("stableRS") else None
            )

        status = wait_until(f"the Rollout in {ns}", known, timeout=300)
        if status["currentPodHash"] == status["stableRS"]:
            self._wait_healthy(environment)
            return {"revision": status["stableRS"], "blue_green": False}
        return {"blue_green": True, **self._follow(environment, "promoted", None)}

    def _follow(
        self,
        environment: str,
        expect: str,
        change: Callable[[], str] | None,
        since: float | None = None,
    ) -> dict[str, Any]:
        """Make ``change`` (a commit; None: the sync already brought the new revision) and
        follow the blue/green with a client on the active Service all along."""
        layout, ns = self.layout, gitops.NAMESPACES[environment]
        status = kube.rollout(layout, ns).get("status", {})
        blue = status.get("stableRS", "")
        blue_serves = status.get("phase") == "Healthy" or bool(status.get("pauseConditions"))
        # the bundled sample's newest pull requests: the traffic the drift reference holds
        ordinary = newest_sample_records(1000)
        client = Client(kube.service_url(layout, ns, ACTIVE_SERVICE), ordinary)
        if blue_serves:
            client.wait_answering()
        outcome: dict[str, Any] = {"blue": blue}
        # the analyses of this revision, not an earlier one of the same pod template (a
        # rollback returns to one): those created since the change (or the sync before it)
        if since is None:
            since = time.time() - (5 if change is not None else 300)
        with client.running():
            if change is not None:
                outcome["commit"] = change()
                client.mark("committed")
                self._synced(environment)
                client.mark("synced")
            green = wait_until("a new revision", lambda: _new_hash(layout, ns, blue), timeout=300)
            outcome["green"] = green
            client.mark(f"green {green} created")
            if expect == "promoted" and self._fast_tracked(ns, green, since):
                # the revision whose pods are still up (a rollback within the Rollout's
                # scaleDownDelaySeconds): Argo Rollouts switches back at once, no analysis
                client.mark("fast-tracked back to pods still up")
                self._wait_healthy(environment)
                outcome.update(fast_tracked=True, active=_selector(layout, ns, ACTIVE_SERVICE))
                if outcome["active"] != green:
                    raise ClusterError(f"active Service selects {outcome['active']}, not {green}")
            else:
                outcome["fast_tracked"] = False
                outcome.update(self._analysed(environment, expect, green, blue, since, client))
        outcome["client"] = {**client.summary(), "blue_was_serving": blue_serves}
        if client.failures and blue_serves:
            failed = f"{len(client.failures)} of {client.sent} requests"
            raise ClusterError(f"the active Service failed {failed}: {client.failures[:3]}")
        return outcome

    def _analysed(
        self, environment: str, expect: str, green: str, blue: str, since: float, client: Client
    ) -> dict[str, Any]:
        """The blue/green of ``green`` through its analyses: promoted (then the
        post-promotion analysis) or aborted, as ``expect`` says."""
        layout, ns = self.layout, gitops.NAMESPACES[environment]
        outcome: dict[str, Any] = {}
        pre = self._analysis(ns, green, "PrePromotion", since, timeout=900)
        client.mark(f"pre-promotion analysis {pre['phase']}")
        outcome["pre_promotion"] = pre["phase"]
        outcome["pre_promotion_failed_metrics"] = [
            metric["name"]
            for metric in pre.get("metricResults", [])
            if metric.get("phase") in ("Failed", "Error")
        ]
        if expect == "aborted":
            status = wait_until("the Rollout aborted", lambda: _aborted(layout, ns), timeout=300)
            client.mark("aborted")
            active_hash = _selector(layout, ns, ACTIVE_SERVICE)
            outcome.update(aborted=True, reason=status.get("message", ""),
                           active_stays_blue=active_hash == blue)  # fmt: skip
            if pre["phase"] == "Successful" or active_hash != blue:
                raise ClusterError(f"the broken green was not stopped: {outcome}")
        else:
            if pre["phase"] != "Successful":
                message = pre.get("message", "")
                raise ClusterError(f"pre-promotion analysis {pre['phase']}: {message}")
            # as a user does: promote once the Rollout shows Paused. Argo Rollouts adds its
            # pause only after the pre-promotion analysis completes, and a promote before it
            # clears nothing: the pause that follows would hold green in preview for good
            wait_until("the Rollout paused for promotion", lambda: _paused(layout, ns), 300)
            layout.kubectl().rollouts(ns, "promote", kube.ROLLOUT)
            client.mark("promoted")
            post = self._analysis(ns, green, "PostPromotion", since, timeout=900)
            client.mark(f"post-promotion analysis {post['phase']}")
            outcome["post_promotion"] = post["phase"]
            if post["phase"] != "Successful":
                message = post.get("message", "")
                raise ClusterError(f"post-promotion analysis {post['phase']}: {message}")
            self._wait_healthy(environment)
            outcome["active"] = _selector(layout, ns, ACTIVE_SERVICE)
            if outcome["active"] != green:
                raise ClusterError(f"active Service selects {outcome['active']}, not {green}")
        return outcome

    def _fast_tracked(self, ns: str, green: str, since: float) -> bool:
        """Whether Argo Rollouts made ``green`` stable without analysis (a rollback to a
        revision within scaleDownDelaySeconds), rather than starting its pre-promotion one."""

        def decided() -> str | None:
            if kube.rollout(self.layout, ns).get("status", {}).get("stableRS") == green:
                return "fast"
            return "analysed" if self._analyses(ns, green, since) else None

        return wait_until(f"revision {green} analysed or fast-tracked", decided, 300) == "fast"

    def _analysis(
        self, ns: str, pod_hash: str, kind: str, since: float, timeout: float
    ) -> dict[str, Any]:
        """The finished AnalysisRun of ``kind`` for revision ``pod_hash``, created after
        ``since`` (a time.time())."""

        def finished() -> dict[str, Any] | None:
            for run in self._analyses(ns, pod_hash, since):
                status = run.get("status", {})
                of_kind = run["metadata"].get("labels", {}).get("rollout-type") == kind
                if of_kind and status.get("phase") in FINISHED:
                    return {"name": run["metadata"]["name"], **status}
            return None

        return wait_until(f"{kind} analysis of {pod_hash}", finished, timeout, every=5)

    def _analyses(self, ns: str, pod_hash: str, since: float) -> list[dict[str, Any]]:
        """The AnalysisRuns of revision ``pod_hash`` created since ``since``: this change's,
        not an earlier one's of the same pod template (a rollback returns to one)."""
        after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
        runs = self.layout.kubectl().items(
            ns, "analysisrun", "-l", f"rollouts-pod-template-hash={pod_hash}"
        )
        return [run for run in runs if run["metadata"]["creationTimestamp"] >= after]

    def _compare_environments(self) -> dict[str, Any]:
        """The digests of every image in git (main vs staging) and of what runs now."""
        differ = gitops.differing_images(
            self.layout, gitops.BRANCHES[PRODUCTION], gitops.BRANCHES[STAGING]
        )
        main = gitops.images_on(self.layout, gitops.BRANCHES[PRODUCTION])
        running = {env: _running_serving_digests(self.layout, gitops.NAMESPACES[env])
                   for env in (STAGING, PRODUCTION)}  # fmt: skip
        models = {env: gitops.served_model(self.layout, gitops.BRANCHES[env])
                  for env in (STAGING, PRODUCTION)}  # fmt: skip
        outcome = {"images": main, "running_model_serving": running, "models": models}
        if differ:
            raise ClusterError(f"main and staging pin different digests: {differ}")
        if running[STAGING] != running[PRODUCTION] or not running[STAGING]:
            raise ClusterError(f"model-serving runs different images: {running}")
        if models[STAGING] != models[PRODUCTION]:
            raise ClusterError(f"the environments serve different models: {models}")
        return outcome

    # -- report -------------------------------------------------------------------------
    def _write_report(self) -> None:
        self.report["steps"] = self.steps.as_dicts()
        self.report_dir.mkdir(parents=True, exist_ok=True)
        (self.report_dir / "report.json").write_text(json.dumps(self.report, indent=2, default=str))
        (self.report_dir / "report.md").write_text(render_report(self.report))


def _require_disk(where: Path, gigabytes: float) -> float:
    """The free space under ``where`` (made later if it is not there yet) in GB, or an error
    that names what to free. ``gigabytes`` is what a first run's state grows to: what the
    cluster's state already holds (a live cluster's registry and containerd have the images)
    counts towards it, down to a quarter of it for images that changed since."""
    existing = next(path for path in (where, *where.parents) if path.exists())
    free = shutil.disk_usage(existing).free / 2**30
    held = _size_gb(where) if where.exists() else 0.0
    needed = max(gigabytes - held, gigabytes / 4)
    if free < needed:
        raise ClusterError(
            f"{free:.1f} GB free under {where}; the run needs {needed:.1f} GB more for the "
            f"images in the registry and in containerd ({held:.1f} GB held already; etcd "
            "stops when the disk fills). Free space (`make clean` in other clones removes "
            "their cluster state) and run again"
        )
    return round(free, 1)


def _size_gb(path: Path) -> float:
    """What ``path`` holds on disk (``du``: one walk, hard links counted once). A live
    cluster removes files while du walks (a container's task directory): du says so, exits 1
    and still prints its total of what it could read, which is what this needs."""
    argv = ["du", "-sk", str(path)]
    result = commands.run(argv, what="measuring the cluster state", timeout=300, check=False)
    total = result.stdout.split()[:1]
    if result.returncode not in (0, 1) or not total or not total[0].isdigit():
        raise ClusterError(f"`du -sk {path}` exited {result.returncode}: {result.stderr[-500:]}")
    return int(total[0]) / 2**20


def _new_hash(layout, ns: str, blue: str) -> str | None:
    current = kube.rollout(layout, ns).get("status", {}).get("currentPodHash")
    return current if current and current != blue else None


def _paused(layout, ns: str) -> dict[str, Any] | None:
    status = kube.rollout(layout, ns).get("status", {})
    reasons = {condition.get("reason") for condition in status.get("pauseConditions") or []}
    return status if "BlueGreenPause" in reasons else None


def _aborted(layout, ns: str) -> dict[str, Any] | None:
    status = kube.rollout(layout, ns).get("status", {})
    return status if status.get("abort") else None


def _selector(layout, ns: str, service: str) -> str:
    selector = layout.kubectl().get(ns, "service", service)["spec"].get("selector", {})
    return selector.get("rollouts-pod-template-hash", "")


def _running_serving_digests(layout, ns: str) -> list[str]:
    """The image digests the ready model-serving pods of the active revision run."""
    active = _selector(layout, ns, ACTIVE_SERVICE)
    pods = layout.kubectl().items(ns, "pod", "-l", f"rollouts-pod-template-hash={active}")
    digests = {
        status["imageID"].rsplit("@", 1)[-1]
        for pod in pods
        for status in pod.get("status", {}).get("containerStatuses", [])
        if status.get("ready")
    }
    return sorted(digests)


def _resources_held(layout) -> dict[str, Any]:
    """What the machine holds at the end: memory in use, pods per namespace, the registry."""
    meminfo = dict(
        (line.split(":")[0], int(line.split()[1]))
        for line in Path("/proc/meminfo").read_text().splitlines()
    )
    pods: dict[str, int] = {}
    for pod in layout.kubectl().items("", "pods"):
        if pod.get("status", {}).get("phase") == "Running":
            namespace = pod["metadata"]["namespace"]
            pods[namespace] = pods.get(namespace, 0) + 1
    registry = sum(
        p.stat().st_size
        for store in ("registry", "project-registry")  # the add-ons', the project's
        for p in (layout.root / store).rglob("*")
        if p.is_file()
    )
    return {
        "memory_in_use_gb": round((meminfo["MemTotal"] - meminfo["MemAvailable"]) / 2**20, 1),
        "running_pods": pods,
        "registry_gb": round(registry / 2**30, 1),
    }


def _brief(summary: dict[str, Any] | None) -> dict[str, Any]:
    if not summary:
        return {}
    keys = (
        "upserted", "fetched", "rows", "run_id", "features_path", "model_version", "registered",
        "gate", "test_roc_auc", "isolation_forest_test_roc_auc", "quarantined", "repositories",
    )  # fmt: skip
    return {k: summary[k] for k in keys if k in summary}


def render_report(report: dict[str, Any]) -> str:
    lines = ["# Cluster run", "", f"Outcome: **{report.get('outcome')}** in "
             f"{report.get('seconds', 0):.0f} s", "", steps_table(report["steps"])]  # fmt: skip
    for step in report["steps"]:
        if step["figures"]:
            lines += ["", f"## {step['name']}", "", "```json", json.dumps(step["figures"],
                      indent=2, default=str), "```"]  # fmt: skip
    for env, runs in (report.get("analysis_runs") or {}).items():
        header = "| run | kind | phase | metric | measurements |"
        lines += ["", f"## AnalysisRuns in {env}", "", header, "|---|---|---|---|---|"]
        for run in runs:
            for metric in run["metrics"] or [{"name": "", "phase": "", "measurements": []}]:
                values = ", ".join(str(v) for v in metric["measurements"])[:120]
                lines.append(f"| {run['name']} | {run['kind']} | {run['phase']} | "
                             f"{metric['name']} ({metric['phase']}) | {values} |")  # fmt: skip
    resources = report.get("resources")
    if resources:
        lines += ["", "## Resources held at the end", "", "```json",
                  json.dumps(resources, indent=2), "```"]  # fmt: skip
    return "\n".join(lines) + "\n"
