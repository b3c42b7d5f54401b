"""`make validate`: the real tree passes every check, and each check fails on a copy of the
tree broken in the one way that check exists to catch."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipeline_ops.paths import PROJECT_ROOT, TOOLS_DIR
from pipeline_ops.validate.__main__ import run_checks
from pipeline_ops.validate.checks import CHECKS
from pipeline_ops.validate.tree import RepoTree

IGNORED = shutil.ignore_patterns(
    ".git", ".venv", ".tools", ".local", "__pycache__", "*.egg-info", ".*_cache", "spark-warehouse"
)


def _tree(root: Path) -> RepoTree:
    return RepoTree(root, tools_bin=TOOLS_DIR / "bin")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("pristine") / "repo"
    shutil.copytree(PROJECT_ROOT, copy, ignore=IGNORED)
    return copy


@pytest.fixture
def repo(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(pristine, copy)
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _fails(root: Path, check: str, expected: str) -> None:
    problems = run_checks(_tree(root), [check])[check]
    assert problems, f"{check} passed a tree broken for it"
    assert any(expected in problem for problem in problems), problems


def test_the_project_passes_every_check():
    results = run_checks(_tree(PROJECT_ROOT))
    assert set(results) == set(CHECKS)
    assert {name: problems for name, problems in results.items() if problems} == {}


def test_kustomize_build_fails_on_a_missing_resource(repo: Path):
    (repo / "argo-apps/base/model-serving-pdb.yaml").unlink()
    _fails(repo, "kustomize-build", "model-serving-pdb.yaml")


def test_kubernetes_schemas_fail_on_a_misspelled_field(repo: Path):
    _edit(repo / "argo-apps/base/data-fetch-cronjob.yaml", "restartPolicy:", "restartPolicey:")
    _fails(repo, "kubernetes-schemas", "restartPolicey")


def test_custom_resource_schemas_fail_on_a_misspelled_rollout_field(repo: Path):
    _edit(
        repo / "argo-apps/base/model-serving-rollout.yaml",
        "prePromotionAnalysis:",
        "prePromotionAnalyses:",
    )
    _fails(repo, "custom-resource-schemas", "prePromotionAnalyses")


def test_custom_resource_schemas_fail_on_a_wrong_spark_type(repo: Path):
    _edit(
        repo / "argo-apps/base/spark-preprocess-scheduledsparkapplication.yaml",
        "instances: 2",
        "instances: two",
    )
    _fails(repo, "custom-resource-schemas", "'two'")


def test_actionlint_fails_on_an_unknown_job_dependency(repo: Path):
    _edit(repo / ".github/workflows/stage-image.yml", "needs: test", "needs: tset")
    _fails(repo, "actionlint", "tset")


def test_zizmor_fails_on_template_injection(repo: Path):
    _edit(
        repo / ".github/workflows/stage-image.yml",
        "run: |\n          make setup\n",
        'run: |\n          echo "${{ github.event.pull_request.title }}"\n',
    )
    _fails(repo, "zizmor", "template-injection")


def test_hadolint_fails_on_cd_in_run(repo: Path):
    _edit(repo / "model-serving/Dockerfile.load-gate", "WORKDIR /app", "RUN cd /app")
    _fails(repo, "hadolint", "DL3003")


def test_yamllint_fails_on_trailing_spaces(repo: Path):
    _edit(repo / "argo-apps/base/namespace.yaml", "name: mlops", "name: mlops   ")
    _fails(repo, "yamllint", "trailing-spaces")


def test_promtool_fails_on_a_rule_prometheus_cannot_parse(repo: Path):
    _edit(repo / "argo-apps/base/model-serving-prometheusrule.yaml", "> 0.01", "> > 0.01")
    _fails(repo, "promtool", "model-serving.rules.yaml")


def test_promtool_fails_on_a_broken_annotation_template(repo: Path):
    _edit(repo / "argo-apps/base/pipeline-prometheusrule.yaml", "{{ $labels.namespace }}",
          "{{ $labels.namespace }")  # fmt: skip
    _fails(repo, "promtool", "pipeline.rules.yaml")


def test_promtool_fails_on_a_dashboard_query_prometheus_cannot_parse(repo: Path):
    _edit(repo / "argo-apps/base/model-serving-dashboard.json", "max by (feature) (",
          "max by (feature) ((")  # fmt: skip
    _fails(repo, "promtool", "model-serving-dashboard.dashboard.rules.yaml")


def test_custom_resource_schemas_fail_on_a_misspelled_pod_monitor_field(repo: Path):
    _edit(repo / "argo-apps/base/model-serving-podmonitor.yaml", "podMetricsEndpoints:",
          "podMetricEndpoints:")  # fmt: skip
    _fails(repo, "custom-resource-schemas", "podMetricEndpoints")


def test_images_check_fails_on_an_image_no_workflow_builds(repo: Path):
    _edit(repo / ".github/workflows/model-serving.yml", "image: load-gate", "image: loadgate")
    _fails(repo, "images-have-dockerfile-and-workflow", "image load-gate is built by no workflow")


def test_images_check_fails_on_a_workflow_naming_a_missing_dockerfile(repo: Path):
    (repo / "model-serving/Dockerfile.load-gate").unlink()
    _fails(repo, "images-have-dockerfile-and-workflow", "Dockerfile.load-gate")


def test_workflow_paths_fail_on_a_filter_matching_nothing(repo: Path):
    _edit(repo / ".github/workflows/data-fetch.yml", "- data-fetch/**", "- data-fetcher/**")
    _fails(repo, "workflow-paths-exist", "data-fetcher/**")


def test_workflow_paths_fail_to_cover_a_copied_folder(repo: Path):
    # data-fetch's image ships the bundled sample: a new sample must rebuild it.
    _edit(repo / ".github/workflows/data-fetch.yml", "      - data/samples/**\n", "")
    _fails(
        repo,
        "workflow-paths-cover-inputs",
        ".github/workflows/data-fetch.yml: the pull_request paths: filter does not cover "
        "data/samples (COPY source of data-fetch/Dockerfile)",
    )


def test_workflow_paths_fail_to_cover_a_file_a_new_copy_adds(repo: Path):
    _edit(
        repo / "model-serving/Dockerfile",
        "COPY model-serving /src/model-serving",
        "COPY model-serving /src/model-serving\nCOPY ml-pipeline/pyproject.toml /src/ml.toml",
    )
    _fails(repo, "workflow-paths-cover-inputs", "does not cover ml-pipeline/pyproject.toml")


def test_workflow_paths_fail_to_cover_the_lock_of_the_tests(repo: Path):
    _edit(repo / ".github/workflows/spark-preprocess.yml", "      - requirements/dev.txt\n", "")
    _fails(repo, "workflow-paths-cover-inputs", "spark-preprocess.yml: the push paths: filter")


def test_workflow_paths_need_not_cover_what_dockerignore_keeps_out(repo: Path):
    # Notebooks left out of the image and out of the filter (a negated pattern)...
    (repo / "ml-pipeline/notebooks").mkdir()
    (repo / "ml-pipeline/notebooks/explore.ipynb").write_text("{}")
    _edit(
        repo / ".github/workflows/ml-training.yml",
        "      - ml-pipeline/**\n",
        "      - ml-pipeline/**\n      - '!ml-pipeline/notebooks/**'\n",
    )
    _fails(repo, "workflow-paths-cover-inputs", "ml-pipeline/notebooks/explore.ipynb would not")
    # ...pass once .dockerignore keeps them out of the build context.
    with (repo / ".dockerignore").open("a") as ignore:
        ignore.write("ml-pipeline/notebooks\n")
    assert run_checks(_tree(repo), ["workflow-paths-cover-inputs"]) == {
        "workflow-paths-cover-inputs": []
    }


def test_stage_workflow_triggers_fail_on_a_build_on_pushes_to_main(repo: Path):
    _edit(
        repo / ".github/workflows/ml-training.yml",
        "branches: [staging]",
        "branches: [staging, main]",
    )
    _fails(
        repo, "stage-workflow-triggers", "ml-training.yml: runs on pushes to ['staging', 'main']"
    )


def test_stage_workflow_triggers_fail_on_cancelling_pushes(repo: Path):
    _edit(
        repo / ".github/workflows/data-fetch.yml",
        "cancel-in-progress: ${{ github.event_name == 'pull_request' }}",
        "cancel-in-progress: true",
    )
    _fails(repo, "stage-workflow-triggers", "data-fetch.yml: concurrency cancel-in-progress True")


def test_stage_workflow_triggers_fail_on_one_bump_group_for_all_images(repo: Path):
    _edit(
        repo / ".github/workflows/stage-image.yml",
        "group: bump-${{ inputs.image }}-${{ github.ref }}",
        "group: bump-${{ github.ref }}",
    )
    _fails(repo, "stage-workflow-triggers", "job bump: concurrency group 'bump-${{ github.ref }}'")


def test_stage_workflow_triggers_fail_on_a_pin_pushed_with_github_token(repo: Path):
    # the defect as it was: the promotion pull request never saw the bump commits' checks
    _edit(
        repo / ".github/workflows/stage-image.yml",
        "GH_TOKEN: ${{ steps.app-token.outputs.token }}",
        "GH_TOKEN: ${{ secrets.GITHUB_TOKEN }}",
    )
    _fails(repo, "stage-workflow-triggers", "pushes the pin with GITHUB_TOKEN")


def test_workflow_paths_fail_to_cover_the_manifest_that_runs_the_image(repo: Path):
    _edit(
        repo / ".github/workflows/ml-training.yml",
        "      - argo-apps/base/ml-training-*.yaml\n",
        "",
    )
    _fails(
        repo,
        "workflow-paths-cover-inputs",
        "does not cover argo-apps/base/ml-training-cronjob.yaml (the manifest the image test",
    )


def test_pins_rebuild_nothing_fails_on_a_workflow_that_builds_on_any_manifest(repo: Path):
    # the defect as it was: every pin under argo-apps/base rebuilt and re-pinned five images
    _edit(
        repo / ".github/workflows/model-serving.yml",
        "      - argo-apps/base/model-serving-*.yaml\n",
        "      - argo-apps/base/**\n",
    )
    problems = run_checks(_tree(repo), ["pins-rebuild-nothing"])["pins-rebuild-nothing"]
    assert {p.split(" selects ")[1].split(",")[0] for p in problems} == {
        "argo-apps/base/kustomization.yaml",
        "argo-apps/base/model-serving-model.env",
        "argo-apps/base/vault.env",
    }, problems


def test_pins_rebuild_nothing_fails_on_a_stage_workflow_without_paths(repo: Path):
    text = (repo / ".github/workflows/data-fetch.yml").read_text(encoding="utf-8")
    start = text.index("    paths: &paths")
    end = text.index("  # Not on main")
    unfiltered = text[:start] + "    branches: [main]\n" + text[end:]
    unfiltered = unfiltered.replace("    paths: *paths\n", "")
    (repo / ".github/workflows/data-fetch.yml").write_text(unfiltered, encoding="utf-8")
    _fails(repo, "pins-rebuild-nothing", "data-fetch.yml: pull_request has no paths: filter")


def test_hosted_runner_steps_fail_on_make_test_without_sudo(repo: Path):
    # the defect as it was: ci.yml ran `make test` as the runner's user, which cannot start
    # the engine or the cluster, on every pull request
    _edit(repo / ".github/workflows/ci.yml", "run: make test-checks", "run: make test")
    _fails(repo, "hosted-runner-steps", "ci.yml: job checks, step 'lint, validate")


def test_hosted_runner_steps_fail_on_a_cluster_target_without_sudo(repo: Path):
    _edit(
        repo / ".github/workflows/ci.yml",
        'run: sudo --preserve-env=PR_ANOMALY_CACHE env "PATH=$PATH" make test',
        "run: make setup && PR_ANOMALY_CACHE=/tmp/cache make cluster-run",
    )
    _fails(repo, "hosted-runner-steps", "make cluster-run needs root")


def test_hosted_runner_steps_fail_on_apt_get_without_sudo(repo: Path):
    _edit(repo / ".github/workflows/ci.yml", "run: make test-checks", "run: apt-get install -y jq")
    _fails(repo, "hosted-runner-steps", "apt-get without sudo")


def test_pod_security_fails_on_a_namespace_that_does_not_enforce_restricted(repo: Path):
    _edit(
        repo / "argo-apps/base/namespace.yaml",
        "pod-security.kubernetes.io/enforce: restricted",
        "pod-security.kubernetes.io/enforce: baseline",
    )
    _fails(repo, "pod-security-restricted", "no label pod-security.kubernetes.io/enforce")


def test_pod_security_fails_on_a_container_that_may_escalate(repo: Path):
    _edit(
        repo / "argo-apps/base/data-fetch-cronjob.yaml",
        "allowPrivilegeEscalation: false",
        "allowPrivilegeEscalation: true",
    )
    _fails(
        repo,
        "pod-security-restricted",
        "CronJob/data-fetch: container data-fetch must set allowPrivilegeEscalation: false",
    )


def test_pod_security_fails_on_a_spark_executor_without_seccomp(repo: Path):
    path = repo / "argo-apps/base/spark-preprocess-scheduledsparkapplication.yaml"
    text = path.read_text(encoding="utf-8")
    executor = text.index("    executor:")
    cut = text.index("        seccompProfile:\n          type: RuntimeDefault\n", executor)
    path.write_text(
        text[:cut]
        + text[cut:].replace("        seccompProfile:\n          type: RuntimeDefault\n", "", 1),
        encoding="utf-8",
    )
    _fails(repo, "pod-security-restricted", "(executor): container executor needs a RuntimeDefault")


def test_service_account_tokens_fail_on_executors_sharing_the_drivers_identity(repo: Path):
    # the defect as it was: executors ran as the driver, which may create pods, with a token
    _edit(
        repo / "argo-apps/base/spark-preprocess-scheduledsparkapplication.yaml",
        "serviceAccount: spark-preprocess-executor",
        "serviceAccount: spark-preprocess",
    )
    _fails(repo, "service-account-tokens", "the executors run as spark-preprocess, which may")


def test_service_account_tokens_fail_on_an_unbound_identity_that_mounts_a_token(repo: Path):
    _edit(repo / "argo-apps/base/serviceaccounts.yaml", "automountServiceAccountToken: false\n", "")
    _fails(repo, "service-account-tokens", "ServiceAccount spark-preprocess-executor: neither")


def test_service_account_tokens_fail_on_a_pod_with_the_default_identitys_token(repo: Path):
    _edit(
        repo / "argo-apps/base/model-serving-analysistemplates.yaml",
        "automountServiceAccountToken: false",
        "automountServiceAccountToken: true",
    )
    _fails(
        repo,
        "service-account-tokens",
        "model-serving-pre-promotion: runs as ServiceAccount load-gate with a token",
    )


def test_dockerfile_copy_fails_on_a_missing_source(repo: Path):
    _edit(repo / "data-fetch/Dockerfile", "COPY data/samples", "COPY data/sample")
    _fails(repo, "dockerfile-copy-sources-exist", "data/sample ")


def test_rollout_references_fail_on_an_unknown_preview_service(repo: Path):
    _edit(
        repo / "argo-apps/base/model-serving-rollout.yaml",
        "previewService: model-serving-preview",
        "previewService: model-serving-canary",
    )
    _fails(repo, "rollout-references-exist", "model-serving-canary")


def test_rollout_references_fail_on_an_unknown_analysis_template(repo: Path):
    _edit(
        repo / "argo-apps/base/model-serving-rollout.yaml",
        "templateName: model-serving-post-promotion",
        "templateName: model-serving-error-rate",
    )
    _fails(repo, "rollout-references-exist", "model-serving-error-rate")


def test_rollout_references_fail_on_an_unknown_service_account(repo: Path):
    _edit(
        repo / "argo-apps/base/ml-training-cronjob.yaml",
        "serviceAccountName: ml-training",
        "serviceAccountName: trainer",
    )
    _fails(repo, "rollout-references-exist", "service account trainer")


def test_serving_guaranteed_fails_on_a_cpu_request_below_the_limit(repo: Path):
    _edit(repo / "argo-apps/base/model-serving-rollout.yaml", 'cpu: "1"', "cpu: 500m")
    _fails(repo, "serving-guaranteed", "cpu request 500m and limit 1 differ")


def test_serving_guaranteed_fails_on_a_fraction_of_a_core(repo: Path):
    _edit(repo / "argo-apps/base/model-serving-rollout.yaml", 'cpu: "1"', "cpu: 1500m")
    _edit(repo / "argo-apps/base/model-serving-rollout.yaml", 'cpu: "1"', "cpu: 1500m")
    _fails(repo, "serving-guaranteed", "CPU 1500m is not whole cores")


def test_model_pin_fails_on_an_alias(repo: Path):
    (repo / "argo-apps/base/model-serving-model.env").write_text(
        "SERVING_MODEL_URI=models:/pr-anomaly@champion\n"
    )
    _fails(repo, "model-pinned-by-version", "names an alias; pin a version")


def test_model_pin_fails_when_the_rollout_does_not_carry_it(repo: Path):
    kustomization = repo / "argo-apps/base/kustomization.yaml"
    text = kustomization.read_text()
    start = text.index("replacements:")
    kustomization.write_text(text[:start] + text[text.index("# Teach kustomize", start) :])
    _fails(repo, "model-pinned-by-version", "not the pinned models:/pr-anomaly/1")


def test_vault_contract_fails_when_a_stage_lacks_vault_role(repo: Path):
    _edit(
        repo / "argo-apps/base/ml-training-cronjob.yaml",
        "                - name: VAULT_ROLE\n                  value: ml-training\n",
        "",
    )
    _fails(repo, "vault-contract", "VAULT_ROLE")


def test_vault_contract_fails_when_a_stage_uses_another_stages_role(repo: Path):
    _edit(
        repo / "argo-apps/base/spark-preprocess-scheduledsparkapplication.yaml",
        "value: secret/mlops/spark-preprocess",
        "value: secret/mlops/data-fetch",
    )
    _fails(repo, "vault-contract", "must name stage spark-preprocess")


def test_registry_is_a_setting_fails_on_a_digest_from_repo_digests(repo: Path):
    # the defect as it was: the digest of `docker inspect`, which may name an older push
    _edit(
        repo / ".github/workflows/stage-image.yml",
        'echo "reference=$(ops/scripts/push-image.sh "$IMAGE" "$target")" >> "$GITHUB_OUTPUT"',
        'docker push "$target"\n'
        '          digest="$(docker inspect --format \'{{index .RepoDigests 0}}\' "$target")"',
    )
    _fails(repo, "registry-is-a-setting", "reads the digest from RepoDigests")


def test_registry_is_a_setting_fails_on_a_login_with_github_token_alone(repo: Path):
    _edit(
        repo / ".github/workflows/stage-image.yml",
        "password: ${{ secrets.registry-password || secrets.GITHUB_TOKEN }}",
        "password: ${{ secrets.GITHUB_TOKEN }}",
    )
    _fails(repo, "registry-is-a-setting", "logs in with GITHUB_TOKEN alone")


def test_images_pulled_with_credentials_fails_on_an_account_without_the_pull_secret(repo: Path):
    _edit(
        repo / "argo-apps/base/serviceaccounts.yaml",
        "    app.kubernetes.io/component: ml-training\nimagePullSecrets:\n"
        "  - name: registry-pull  # README: Any OCI registry\n",
        "    app.kubernetes.io/component: ml-training\n",
    )
    _fails(
        repo, "images-pulled-with-credentials", "ServiceAccount ml-training: no imagePullSecrets"
    )


def test_images_pulled_with_credentials_fails_on_a_pod_of_the_default_account(repo: Path):
    _edit(
        repo / "argo-apps/base/model-serving-analysistemplates.yaml",
        "                serviceAccountName: load-gate\n",
        "",
    )
    _fails(repo, "images-pulled-with-credentials", "runs as the default ServiceAccount")


def test_vault_contract_fails_on_a_plain_http_vault(repo: Path):
    _edit(repo / "argo-apps/base/vault.env", "VAULT_ADDR=https://", "VAULT_ADDR=http://")
    _fails(repo, "vault-contract", "VAULT_ADDR=http://vault.vault.svc:8200 is not https")


def test_vault_contract_fails_when_a_manifest_writes_where_vault_is(repo: Path):
    _edit(
        repo / "argo-apps/base/ml-training-cronjob.yaml",
        "                - name: VAULT_ROLE\n",
        "                - name: VAULT_ADDR\n                  value: https://vault.example:8200\n"
        "                - name: VAULT_ROLE\n",
    )
    _fails(repo, "vault-contract", "CronJob/ml-training: VAULT_ADDR written in the manifest")


def test_vault_contract_fails_when_a_workload_does_not_mount_vaults_ca(repo: Path):
    _edit(
        repo / "argo-apps/base/spark-preprocess-scheduledsparkapplication.yaml",
        "        - name: vault-ca  # the file VAULT_CACERT names\n"
        "          mountPath: /etc/pr-anomaly/vault-ca\n",
        "        - name: vault-ca  # the file VAULT_CACERT names\n"
        "          mountPath: /etc/vault-ca\n",
    )
    _fails(
        repo, "vault-contract",
        "ScheduledSparkApplication/spark-preprocess: mounts no ConfigMap vault-ca at "
        "/etc/pr-anomaly/vault-ca",
    )  # fmt: skip


def test_vault_contract_fails_on_a_workload_of_a_stage_not_in_the_list(repo: Path):
    _edit(
        repo / "argo-apps/base/data-fetch-cronjob.yaml",
        "    app.kubernetes.io/component: data-fetch",
        "    app.kubernetes.io/component: github-fetch",
    )
    _fails(
        repo,
        "vault-contract",
        "CronJob/data-fetch: label app.kubernetes.io/component names no Vault identity of "
        "pipeline_ops.stages (data-fetch, spark-preprocess, ml-training, model-serving, "
        "model-pin)",
    )
    _fails(repo, "vault-contract", "data-fetch has no workload in argo-apps/base")


def test_no_latest_fails_on_a_latest_image_tag(repo: Path):
    _edit(repo / "argo-apps/base/kustomization.yaml", "newTag: 0.1.0", "newTag: latest")
    _fails(repo, "no-latest-tags", "latest")


def test_no_latest_fails_on_an_untagged_base_image(repo: Path):
    """The base is a build argument's default (what the workflows build)."""
    dockerfile = repo / "data-fetch/Dockerfile"
    base = re.search(r"^ARG PYTHON_IMAGE=(python:\S+)", dockerfile.read_text(), re.M).group(1)
    _edit(dockerfile, f"ARG PYTHON_IMAGE={base}", "ARG PYTHON_IMAGE=python")
    _fails(repo, "no-latest-tags", "FROM python is not pinned")


def test_project_permits_every_kind_fails_on_a_kind_argo_cd_would_refuse(repo: Path):
    _edit(repo / "argo-apps/argocd/appproject.yaml", '    - {group: "", kind: ConfigMap}\n', "")
    _fails(repo, "project-permits-every-kind", "kind ConfigMap (group 'core') is not in the")


def test_project_permits_every_kind_fails_on_a_kind_permitted_for_nothing(repo: Path):
    _edit(
        repo / "argo-apps/argocd/appproject.yaml",
        "    - {group: batch, kind: CronJob}\n",
        "    - {group: batch, kind: CronJob}\n    - {group: batch, kind: Job}\n",
    )
    _fails(repo, "project-permits-every-kind", "permits Job (group 'batch')")


def test_network_policies_fail_on_serving_reaching_object_storage(repo: Path):
    """The first version let model-serving out on 443 "for the model", which it loads
    through MLflow: its secret holds no object-storage keys."""
    _edit(
        repo / "argo-apps/base/networkpolicies.yaml",
        "values: [spark-preprocess, ml-training]}",
        "values: [spark-preprocess, ml-training, model-serving]}",
    )
    _fails(repo, "network-policies-right", "model-serving may reach object-storage")


def test_network_policies_fail_on_a_stage_cut_off_from_vault(repo: Path):
    _edit(
        repo / "argo-apps/base/networkpolicies.yaml",
        "values: [data-fetch, spark-preprocess, ml-training, model-serving,",
        "values: [data-fetch, spark-preprocess, model-serving,",
    )
    _fails(repo, "network-policies-right", "ml-training cannot reach vault")


def test_network_policies_fail_on_mlflow_living_elsewhere_than_its_policy_says(repo: Path):
    """MLflow in a namespace the policy does not name: the stages that need it are cut off."""
    text = (repo / "argo-apps/base/networkpolicies.yaml").read_text(encoding="utf-8")
    mlflow = text.index("name: egress-to-mlflow")
    moved = text[:mlflow] + text[mlflow:].replace(
        "kubernetes.io/metadata.name: mlflow", "kubernetes.io/metadata.name: platform", 1
    )
    (repo / "argo-apps/base/networkpolicies.yaml").write_text(moved, encoding="utf-8")
    problems = run_checks(_tree(repo), ["network-policies-right"])["network-policies-right"]
    assert problems == []  # the probe follows the setting: the placement is the policy
    _edit(
        repo / "argo-apps/base/networkpolicies.yaml",
        "pr-anomaly-mlops/platform-service: mlflow",
        "pr-anomaly-mlops/platform-service: tracking",
    )
    _fails(repo, "network-policies-right", "pr-anomaly-mlops/platform-service: mlflow")


def test_network_policies_fail_on_another_stage_let_into_serving(repo: Path):
    _edit(
        repo / "argo-apps/base/networkpolicies.yaml",
        "values: [load-gate, quality-gate, model-champion]",
        "values: [load-gate, quality-gate, model-champion, ml-training]",
    )
    _edit(
        repo / "argo-apps/base/networkpolicies.yaml",
        "            matchLabels:\n              app.kubernetes.io/name: model-champion\n",
        "            matchExpressions:\n              - {key: app.kubernetes.io/name, operator: "
        "In, values: [model-champion, ml-training]}\n",
    )
    _fails(repo, "network-policies-right", "ml-training may connect to model-serving's pods")
