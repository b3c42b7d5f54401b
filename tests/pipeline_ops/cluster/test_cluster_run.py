"""`make cluster-run` for real (~15 minutes), as a user: staging synced by Argo CD from the
cluster's git server, the pipeline in pods (Spark started by its schedule), a blue/green of
the model pinned in git with the real analysis, an experiment that model-pin pinned aborted
by the quality gate, the promotion to production through production's own blue/green, both
environments running the same digests, a rollback by git revert, and the champion alias
following production by itself; the API server's audit log and git's history showing only
the user's actions and the delivered components'. Then what the run's report and the
cluster show, and a second run on the same cluster."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from kube_namespace import container, wait_for

from pipeline_contracts.registry import DEFAULT_MODEL_NAME, ModelReference
from pipeline_ops.base.errors import CommandError
from pipeline_ops.cluster import audit, gitops, kube, monitoring, platform, prometheus
from pipeline_ops.cluster.launcher import Cluster
from pipeline_ops.cluster.layout import ADMIN, BRIDGE_IP, GITHUB_CONTENTS_PORT, USER
from pipeline_ops.cluster.run import ACTIVE_SERVICE, COMMITTERS, SERVING, ClusterRun
from pipeline_ops.paths import PROJECT_ROOT
from pipeline_ops.samples import newest_sample_records
from pipeline_ops.validate.checks import POD_FLOWS, WORKLOADS, workload_needs
from pipeline_ops.validate.rules import DASHBOARD, dashboard_queries

# ~26 minutes: the run in the first test's fixture, and a second run in the last test
pytestmark = [pytest.mark.cluster, pytest.mark.cluster_run, pytest.mark.timeout(3000)]

STAGING_NS = gitops.NAMESPACES[gitops.STAGING]
DRIFT_ALERT = "ModelServingFeatureDrift"


@pytest.fixture(scope="module")
def cluster_run(cluster: Cluster) -> tuple[ClusterRun, dict[str, Any]]:
    run = ClusterRun(cluster)
    try:
        report = run.run()
    except Exception:
        print((run.report_dir / "report.md").read_text())
        raise
    # The environments stay deployed until the session's cluster stops: deleting the
    # Applications would delete their Namespaces too (resources-finalizer), and the cluster
    # tests after this one use the mlops namespace that cluster-up made.
    return run, report


def _step(report: dict[str, Any], prefix: str) -> dict[str, Any]:
    return next(s["figures"] for s in report["steps"] if s["name"].startswith(prefix))


def test_the_pipeline_runs_in_pods_from_what_argo_cd_synced(cluster_run) -> None:
    _, report = cluster_run
    assert report["outcome"] == "ok"
    assert _step(report, "spark-preprocess")["executors"] >= 2
    training = _step(report, "ml-training")["summary"]
    assert training["registered"] is True
    # this checkout reached staging as a merged pull request: its commit is in staging's history
    merged = _step(report, "merge to staging")["merged"]
    history = gitops.git(
        "--git-dir", str(gitops.bare(cluster_run[0].layout)), "rev-list", "staging"
    )
    assert merged["commit"] in history.split()
    staging = gitops.images_on(cluster_run[0].layout, "staging")
    assert all("@sha256:" in reference for reference in staging.values()), staging


def test_the_run_wrote_only_what_a_user_does_by_the_audit_log_and_git(cluster_run) -> None:
    """Under its own identity (argo-apps/access), the run's every write since the
    environment was made is one of README's user actions (the API server's audit log), and
    every commit on staging and main is the user's or a delivered component's."""
    _, report = cluster_run
    witnessed = report["audit"]
    assert witnessed["violations"] == []
    done = {w["action"] for w in witnessed["user_writes"]}
    assert done == {action.name for action in audit.USER_ACTIONS}
    assert {w["user"] for w in witnessed["user_writes"]} == {USER}
    committers = {c["committer"] for c in witnessed["commits"]}
    assert {USER, "model-pin"} <= committers <= COMMITTERS, witnessed["commits"]
    assert witnessed["foreign_commits"] == []


def test_an_operators_write_or_a_refused_one_fails_the_audit(cluster_run) -> None:
    """The audit is not blind: an administrator's write (what the harness did before:
    creating the Spark run, Argo CD's cluster secrets) and a user's write that RBAC refuses
    are both reported."""
    run, _ = cluster_run
    since = datetime.now(UTC)
    run.admin.kubectl()("label", "--overwrite", "namespace", "default",
                        "pr-anomaly.local/audit-probe=1")  # fmt: skip
    with pytest.raises(CommandError, match=r"(?i)forbidden"):
        run.layout.kubectl()("-n", STAGING_NS, "delete", "cronjob", "data-fetch")
    whys = {v["why"] for v in audit.review_since(run.layout, since)["violations"]}
    assert whys == {f"written by {ADMIN}, not the user",
                    "refused (403): no user action needs it"}  # fmt: skip


def test_spark_preprocess_was_submitted_by_its_schedule(cluster_run) -> None:
    """The Spark Operator's schedule controller created the run (owned by the
    ScheduledSparkApplication), after the user's fetch; nobody created it by hand."""
    run, report = cluster_run
    spark = _step(report, "spark-preprocess")["run"]
    assert spark["schedule"] == "*/5 * * * *"
    made = run.layout.kubectl().get(STAGING_NS, "sparkapplication", spark["name"])
    owners = [f"{o['kind']}/{o['name']}" for o in made["metadata"]["ownerReferences"]]
    assert owners == ["ScheduledSparkApplication/spark-preprocess"]


def test_blue_green_promotes_with_real_analysis_and_no_failed_request(cluster_run) -> None:
    _, report = cluster_run
    rollout = _step(report, "blue/green in staging")
    assert rollout["pre_promotion"] == "Successful"
    assert rollout["post_promotion"] == "Successful"
    assert rollout["active"] == rollout["green"] != rollout["blue"]
    assert rollout["client"]["sent"] > 50
    assert rollout["client"]["failed"] == 0, rollout["client"]


def test_the_pin_of_the_new_version_is_committed_by_the_delivered_model_pin(cluster_run) -> None:
    """Training registered; model-pin (a CronJob of staging, its own Vault identity and git
    token) committed the pin through the git server's GitHub contents API; the run only
    waited for it."""
    run, report = cluster_run
    rollout = _step(report, "blue/green in staging")
    bare = str(gitops.bare(run.layout))
    made_by = gitops.git("--git-dir", bare, "log", "-1", "--format=%cn|%s", rollout["commit"])
    subject = f"serve {rollout['model']} on staging (model-pin: newest registered version)"
    assert made_by == f"model-pin|{subject}"
    first = _step(report, "serving: the model git pins")["pin"]
    assert first["tag"].startswith("staging@")


def test_an_experiment_pinned_by_model_pin_is_failed_by_the_quality_gate(cluster_run) -> None:
    """A real version of the production model, trained on one repository only: its own gate
    passed, model-pin pinned it, the preview serves exactly it, and the analysis's false
    alarms on real pull requests (the quality gate's Job) fail it."""
    run, report = cluster_run
    experiment = _step(report, "an experiment")["summary"]
    assert experiment["repositories"] == ["pallets/flask"]
    assert experiment["registered"] is True
    failed = _step(report, "blue/green failure path")
    assert failed["model"].startswith(f"models:/{DEFAULT_MODEL_NAME}/")
    assert failed["model"].endswith(f"/{experiment['model_version']}")
    bare = str(gitops.bare(run.layout))
    assert (
        gitops.git("--git-dir", bare, "log", "-1", "--format=%cn", failed["commit"]) == "model-pin"
    )
    assert failed["pre_promotion"] == "Failed"
    # the name and version checks pass: what fails it is what it does
    assert "preview-false-alarms" in failed["pre_promotion_failed_metrics"], failed
    assert not {"preview-model", "preview-model-name"} & set(failed["pre_promotion_failed_metrics"])
    assert failed["aborted"] is True
    assert failed["active_stays_blue"] is True
    assert failed["client"]["failed"] == 0


def test_production_runs_the_digests_and_model_staging_tested(cluster_run) -> None:
    run, report = cluster_run
    compared = _step(report, "both environments")
    running = compared["running_model_serving"]
    assert running["staging"] == running["production"] != []
    assert compared["models"]["staging"] == compared["models"]["production"]
    # git pins a version, never a moving alias, and staging moved off the shipped pin
    served = ModelReference.parse(compared["models"]["production"])
    assert served.version is not None
    assert served.uri != _step(report, "serving: the model git pins")["pin"]["pinned"]
    assert gitops.images_on(run.layout, "main") == gitops.images_on(run.layout, "staging")
    markdown = (run.report_dir / "report.md").read_text()
    assert "AnalysisRuns in staging" in markdown
    assert "PostPromotion" in markdown


def _blue_green_passed(figures: dict[str, Any]) -> None:
    assert figures["pre_promotion"] == "Successful", figures
    assert figures["post_promotion"] == "Successful", figures
    assert figures["active"] == figures["green"] != figures["blue"]
    assert figures["client"]["blue_was_serving"] is True
    assert figures["client"]["sent"] > 50
    assert figures["client"]["failed"] == 0, figures["client"]


def _switched_back(figures: dict[str, Any]) -> None:
    """A rollback: within the Rollout's scaleDownDelaySeconds the previous pods are still up
    and Argo Rollouts switches to them at once (no analysis); later, a full blue/green."""
    if figures["fast_tracked"]:
        assert figures["active"] == figures["green"] != figures["blue"]
        assert figures["client"]["failed"] == 0, figures["client"]
        assert figures["client"]["sent"] > 10
    else:
        _blue_green_passed(figures)


def test_production_takes_the_promotion_through_its_own_blue_green(cluster_run) -> None:
    _, report = cluster_run
    promoted = _step(report, "promotion staging -> main: production's own blue/green")
    assert promoted["blue_green"] is True
    _blue_green_passed(promoted)


def test_a_rollback_by_revert_brings_the_previous_model_back_with_no_failed_request(
    cluster_run,
) -> None:
    run, report = cluster_run
    before = _step(report, "both environments")["models"]["production"]
    _switched_back(_step(report, "rollback: the promotion reverted on main"))
    # main's head is the revert of the promotion; production and staging serve the model
    # production served before it, on the same digests
    layout = run.layout
    subject = gitops.git("--git-dir", str(gitops.bare(layout)), "log", "-1", "--format=%s", "main")
    assert subject.startswith('Revert "Promote staging to production')
    back = _step(report, "staging takes the rollback")
    assert back["models"]["production"] == back["models"]["staging"] != before
    assert back["running_model_serving"]["staging"] == back["running_model_serving"]["production"]
    _switched_back(back)


def test_the_champion_follows_production_moved_by_the_delivered_job(cluster_run) -> None:
    """``champion`` names what production serves after the promotion and after the rollback,
    and the run never moves it: the model-champion CronJob's Jobs (production only) do."""
    run, report = cluster_run
    promoted = _step(report, "promotion staging -> main: production's own blue/green")
    rolled_back = _step(report, "rollback: the promotion reverted on main")
    for figures in (promoted, rolled_back):
        champion = figures["champion"]
        assert champion["production_serves"].endswith(f"/{champion['champion']}"), champion
    assert promoted["champion"]["champion"] != rolled_back["champion"]["champion"]
    layout = run.layout
    production = gitops.NAMESPACES[gitops.PRODUCTION]
    jobs = layout.kubectl().items(production, "job", "-l", "app.kubernetes.io/name=model-champion")
    owners = {o["kind"] + "/" + o["name"] for j in jobs for o in j["metadata"]["ownerReferences"]}
    assert owners == {"CronJob/model-champion"}, owners
    assert (
        layout.kubectl().items(STAGING_NS, "job", "-l", "app.kubernetes.io/name=model-champion")
        == []
    )  # staging shares the registry: its copy of the job is suspended


VAULT_PROBE = """
import json, os
from pipeline_common.settings import VaultSettings
from pipeline_common.vault import VaultClient
client = VaultClient(VaultSettings()).login()
own = sorted(client.read_secret())
try:
    client.read_secret("secret/mlops/ml-training")
    other = "read"
except Exception as error:
    other = type(error).__name__ + ": " + str(error)
try:  # the same login trusting only the system's CAs, not the cluster's vault-ca
    VaultClient(VaultSettings(cacert="")).login()
    untrusted = "logged in"
except Exception as error:
    untrusted = type(error).__name__ + ": " + str(error)
print(json.dumps({"own": own, "other": other, "addr": os.environ["VAULT_ADDR"],
                  "untrusted": untrusted}))
"""


def test_each_stage_pod_reads_its_own_secret_over_tls_and_is_denied_another(cluster_run) -> None:
    """Vault's kubernetes auth for real, over TLS: the pod's projected ServiceAccount token,
    reviewed by this cluster's TokenReview API, logs in as data-fetch at vault.env's https
    address, trusting the CA of the ConfigMap vault-ca (without it the login is refused);
    ml-training's secret is refused."""
    run, _ = cluster_run
    layout = run.admin  # a probe pod: the operator's, after the run (a user creates none)
    cronjob = layout.kubectl().get(STAGING_NS, "cronjob", "data-fetch")
    template = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    container = template["spec"]["containers"][0]
    name = f"vault-probe-{secrets.token_hex(3)}"
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": STAGING_NS},
        "spec": {**template["spec"], "restartPolicy": "Never",
                 "containers": [{**container, "command": ["python", "-c", VAULT_PROBE],
                                 "args": []}]},
    }  # fmt: skip
    layout.kubectl()("apply", "-f", "-", stdin=json.dumps(pod))
    try:
        wait_for(
            "the probe pod finished",
            lambda: (
                layout.kubectl().get(STAGING_NS, "pod", name)["status"].get("phase")
                in ("Succeeded", "Failed")
            ),
            180,
        )
        logs = layout.kubectl()("-n", STAGING_NS, "logs", name)
        said = json.loads(logs.strip().splitlines()[-1])
        assert "mongo_uri" in said["own"]
        assert "permission denied" in said["other"].lower() or "403" in said["other"], said
        assert said["addr"] == "https://vault.vault.svc:8200", said
        assert "certificate is not trusted by the system's CAs" in said["untrusted"], said
    finally:
        layout.kubectl()("-n", STAGING_NS, "delete", "pod", name, "--wait=false")


# Where a pod of the staging environment finds each platform service and the serving pods
# (the addresses the stages use; GitHub's stand-in is the cluster's contents API).
REACHABLE = {
    **{s.placement: f"{s.host}:{s.port}" for s in platform.SERVICE_NAMES},
    "github": f"{BRIDGE_IP}:{GITHUB_CONTENTS_PORT}",
    "kubernetes-api": "kubernetes.default.svc.cluster.local:443",
    "dns": "kube-dns.kube-system.svc.cluster.local:53",
    "model-serving pods": f"{ACTIVE_SERVICE}.{STAGING_NS}.svc.cluster.local:8080",
}


def test_each_workload_reaches_what_it_needs_and_is_refused_the_rest(
    cluster_run, capsys: pytest.CaptureFixture[str]
) -> None:
    """NetworkPolicies enforced (kube-network-policies): a pod labelled as each workload of
    the staging environment tries every platform service and the serving pods at once;
    what `make validate` says it needs answers, the rest times out (dropped by the policy,
    not refused by a closed port). The matrix is printed, passed or not."""
    run, _ = cluster_run
    kubectl = run.admin.kubectl()  # probe pods: the operator's, after the run
    targets = list(REACHABLE)
    names = {w: f"reach-{w}-{secrets.token_hex(2)}" for w in WORKLOADS}
    for workload, name in names.items():
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": STAGING_NS,
                            "labels": {"app.kubernetes.io/name": workload}},
               "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                        "containers": [container("reach", ["connect", "8",
                                                           *REACHABLE.values()])]}}  # fmt: skip
        kubectl("apply", "-f", "-", stdin=json.dumps(pod))
    try:
        rows, wrong = [], []
        for workload, name in names.items():
            wait_for(f"{name} finished", lambda n=name: kubectl.get(STAGING_NS, "pod", n)[
                "status"].get("phase") in ("Succeeded", "Failed"), 120)  # fmt: skip
            lines = kubectl("-n", STAGING_NS, "logs", name).strip().splitlines()
            verdicts = dict(zip(targets, lines, strict=True))
            needs = workload_needs(workload) | (
                {"model-serving pods"} if (workload, SERVING, 8080) in POD_FLOWS else set()
            )
            row = []
            for target, line in verdicts.items():
                reached = line.startswith("ok ")
                row.append(f"{target}: {'reached' if reached else 'refused'}")
                if reached != (target in needs) or (not reached and "timeout" not in line):
                    wrong.append(f"{workload} -> {target}: {line}")
            rows.append(f"{workload:16} " + ", ".join(row))
        with capsys.disabled():  # the matrix in `make test`'s output, passed or not
            print("\nNetworkPolicies, staging, each workload's connections:\n" + "\n".join(rows))
        assert not wrong, "\n".join(wrong)
    finally:
        kubectl("-n", STAGING_NS, "delete", "pod", *names.values(), "--wait=false")


def _score(url: str, records: list[dict[str, Any]]) -> None:
    for start in range(0, len(records), 100):
        answer = requests.post(f"{url}/v1/score", json=records[start : start + 100], timeout=30)
        assert answer.status_code == 200, answer.text[:300]


def _drift_firing() -> list[dict[str, Any]]:
    return prometheus.query(
        f'ALERTS{{alertname="{DRIFT_ALERT}",namespace="{STAGING_NS}",alertstate="firing"}}'
    )


def test_drifted_traffic_fires_the_drift_alert_delivered_by_alertmanager(cluster_run) -> None:
    """Staging's active model-serving gets ordinary traffic (the bundled sample's newest pull
    requests, what the model's drift reference holds) until no drift alert fires, then the
    same pull requests with 50 times the additions: ModelServingFeatureDrift fires in the
    Operator's Prometheus (its `for` shortened by the local environment, its level as
    shipped) and Alertmanager delivers it to the receiver, naming log_additions."""
    run, _ = cluster_run
    url = kube.service_url(run.layout, STAGING_NS, ACTIVE_SERVICE)
    ordinary = newest_sample_records(1000)
    drifted = [{**r, "additions": r["additions"] * 50} for r in ordinary]
    # each serving process keeps its last 1,000 records: three rounds refill every window;
    # a pod that took other traffic (the load gate's, on a preview) counts for 5 minutes
    for _ in range(3):
        _score(url, ordinary)
    wait_for("no drift alert firing on ordinary traffic", lambda: not _drift_firing(), 420)
    started = datetime.now(UTC)
    for _ in range(3):
        _score(url, drifted)

    def delivered() -> dict[str, Any] | None:
        for notification in reversed(monitoring.received()):
            for alert in notification["payload"]["alerts"]:
                labels = alert["labels"]
                fresh = datetime.fromisoformat(alert["startsAt"]) >= started
                if (labels.get("alertname") == DRIFT_ALERT and alert["status"] == "firing"
                        and labels.get("namespace") == STAGING_NS and fresh):  # fmt: skip
                    return {"at": notification["at"], **alert}
        return None

    alert = wait_for("the drift alert delivered to the receiver", delivered, 300)
    features = {a["metric"]["feature"] for a in _drift_firing()}
    assert "log_additions" in features, features
    took = datetime.fromisoformat(alert["at"]) - started
    print(f"delivered {took.total_seconds():.0f} s after the first drifted request: "
          f"{json.dumps(alert, indent=2)}")  # fmt: skip
    assert alert["annotations"]["summary"].startswith(f"{STAGING_NS}: feature ")


def test_every_dashboard_query_returns_data_from_the_clusters_prometheus(cluster_run) -> None:
    """The model-serving dashboard as shipped, each panel's query with its variables filled
    in for staging, answered by the Operator's Prometheus with a number (traffic first, so
    that every rate has samples)."""
    run, _ = cluster_run
    _score(kube.service_url(run.layout, STAGING_NS, ACTIVE_SERVICE), newest_sample_records(200))
    queries = dashboard_queries(PROJECT_ROOT / DASHBOARD, STAGING_NS)

    def unanswered() -> list[str]:
        return [title for title, expr in queries.items()
                if not any(r["value"][1] != "NaN" for r in prometheus.query(expr))]  # fmt: skip

    try:
        wait_for("every dashboard query answered", lambda: not unanswered(), 120)
    except AssertionError:
        pytest.fail(f"dashboard panels with no data: {unanswered()}")
    # and the Argo Rollouts controller's rollout_info, which ModelServingPinNotServed reads
    info = prometheus.query(f'rollout_info{{namespace="{STAGING_NS}",name="model-serving"}}')
    assert [r["metric"]["phase"] for r in info] == ["Completed"], info  # its word for healthy


def test_a_second_run_on_the_live_cluster_passes_as_the_user(cluster_run, cluster) -> None:
    """Idempotent: `make cluster-run` again on the cluster the first run left (its branches,
    its Applications, its registry and models) passes end to end, still only as the user.
    Last in this file: it changes what the tests above read."""
    first, _ = cluster_run
    again = ClusterRun(cluster, report_dir=first.report_dir.parent / "run-2")
    report = again.run()
    assert report["outcome"] == "ok"
    assert report["audit"]["violations"] == []
    assert report["audit"]["foreign_commits"] == []
    _blue_green_passed(_step(report, "blue/green in staging"))
    _blue_green_passed(_step(report, "promotion staging -> main: production's own blue/green"))
    _switched_back(_step(report, "rollback: the promotion reverted on main"))
