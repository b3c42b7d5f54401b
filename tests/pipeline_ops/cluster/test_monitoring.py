"""The monitoring stack's objects without a cluster (the fast suite): the table starts it
after CoreDNS and waits for it before anything can run an analysis; its images are the
pinned releases, static, each binary where the operator runs it; Prometheus selects
everything everywhere and alerts Alertmanager, which sends every alert to the receiver; the
objects are valid against Kubernetes' schemas and the operator's own CRDs. What it does in
a cluster: test_prometheus.py."""

from __future__ import annotations

import io
import ipaddress
import json
import struct
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline_ops.base.errors import CommandError
from pipeline_ops.cluster import ClusterError, images, monitoring, prometheus
from pipeline_ops.cluster.components import COMPONENTS, HostProcess
from pipeline_ops.cluster.layout import (
    BINARIES_TABLE,
    DNS_SERVICE_IP,
    SERVICE_CIDR,
    binaries,
)
from pipeline_ops.validate.checks import KUBERNETES_VERSION, _closed

NAMESPACE = monitoring.NAMESPACE


def _by(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _local_objects() -> list[dict[str, Any]]:
    """What monitoring applies beside the operator's (which come from its Go module)."""
    return [
        *monitoring.prometheus_objects(),
        *monitoring.alertmanager_objects(),
        *monitoring.receiver_objects(),
    ]


@pytest.fixture(scope="module")
def operator_module(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The operator's Go module from the local module cache only (never the network); the
    tests that read it are skipped where `make cluster-binaries` has not fetched it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GOPROXY", "off")
        patch.setenv("GOFLAGS", "-mod=mod")
        try:
            monitoring._source()
        except CommandError:
            pytest.skip("the Prometheus Operator's module is not in the Go module cache")


def test_the_table_starts_monitoring_after_coredns_and_waits_for_it_before_any_analysis() -> None:
    names = [c.name for c in COMPONENTS]
    assert names.index("coredns") < names.index("monitoring apply")
    # the Rollouts controller runs analyses once it is up; cluster-up returns after this wait
    assert names.index("monitoring apply") < names.index("monitoring")
    assert names.index("argo-rollouts") < names.index("monitoring") < names.index("argo-cd")
    assert not [c for c in COMPONENTS if isinstance(c, HostProcess) and "prometheus" in c.name]
    apply = next(c for c in COMPONENTS if c.name == "monitoring apply")
    assert apply.images == monitoring.IMAGES  # imported into containerd at its start


def test_every_image_is_a_pinned_static_binary_where_its_upstream_image_has_it() -> None:
    rows = {
        row[0]: row
        for row in (line.split("\t") for line in BINARIES_TABLE.read_text().splitlines())
        if row[0] and not row[0].startswith("#")
    }
    for image in monitoring.IMAGES:
        assert rows[image.binary][4] == "static", image
        assert image.ref == f"{image.name}:{binaries()[image.binary].version}"
    assert rows["prometheus-operator"][1] == rows["prometheus-config-reloader"][1] == "v0.94.1"
    assert rows["alertmanager"][1] == "v0.35.0"
    # a host (cgo) build of Prometheus is cached by another name: never put into an image
    assert "prometheus" not in rows
    assert monitoring.CONFIG_RELOADER.target == "/bin/prometheus-config-reloader"
    assert monitoring.PROMETHEUS.target == "/bin/prometheus"


def test_the_versions_the_operator_is_told_are_the_pinned_releases() -> None:
    objects = _local_objects()
    prometheus_spec = _by(objects, "Prometheus", "k8s")["spec"]
    assert prometheus_spec["image"] == monitoring.PROMETHEUS.ref
    # module v0.305.1 is Prometheus 3.5.1 (as build-cluster-binaries.sh stamps it)
    assert binaries()["prometheus-static"].version == "v0.305.1"
    assert prometheus_spec["version"] == "v3.5.1"
    alertmanager_spec = _by(objects, "Alertmanager", "main")["spec"]
    assert alertmanager_spec["image"] == monitoring.ALERTMANAGER.ref
    assert alertmanager_spec["version"] == "v0.35.0"
    for spec in (prometheus_spec, alertmanager_spec):
        assert spec["imagePullPolicy"] == "Never"  # imported, as the other add-ons' images


def test_prometheus_selects_everything_everywhere_and_alerts_alertmanager_main() -> None:
    objects = _local_objects()
    spec = _by(objects, "Prometheus", "k8s")["spec"]
    for kind in ("podMonitor", "serviceMonitor", "rule", "probe"):
        assert spec[f"{kind}Selector"] == {}, kind
        assert spec[f"{kind}NamespaceSelector"] == {}, kind
    assert spec["scrapeInterval"] == spec["evaluationInterval"] == "15s"
    (target,) = spec["alerting"]["alertmanagers"]
    assert (target["namespace"], target["name"]) == (NAMESPACE, "alertmanager-main")
    service = _by(objects, "Service", "alertmanager-main")
    assert target["port"] in [p["name"] for p in service["spec"]["ports"]]
    # it may discover pods, Services and their endpoints in every namespace
    account = spec["serviceAccountName"]
    rules = _by(objects, "ClusterRole", account)["rules"]
    resources = {r for rule in rules for r in rule.get("resources", [])}
    assert {"pods", "services", "endpoints", "endpointslices"} <= resources
    binding = _by(objects, "ClusterRoleBinding", account)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account,
                                    "namespace": NAMESPACE}]  # fmt: skip


def test_alertmanager_sends_every_alert_to_the_receiver_soon() -> None:
    objects = _local_objects()
    secret = _by(objects, "Secret", "alertmanager-main")  # the operator's default name
    config = yaml.safe_load(secret["stringData"]["alertmanager.yaml"])
    route = config["route"]
    assert "routes" not in route  # one route: every alert
    (receiver,) = config["receivers"]
    assert route["receiver"] == receiver["name"]
    (hook,) = receiver["webhook_configs"]
    service = _by(objects, "Service", monitoring.RECEIVER)
    (port,) = service["spec"]["ports"]
    assert hook["url"] == f"http://{monitoring.RECEIVER}.{NAMESPACE}.svc:{port['port']}/alerts"
    deployment = _by(objects, "Deployment", monitoring.RECEIVER)
    (box,) = deployment["spec"]["template"]["spec"]["containers"]
    assert box["image"] == monitoring.ALERT_RECEIVER.ref
    assert f":{port['targetPort']}" in box["args"]
    # a test sees a notification within a minute of the alert firing
    assert _seconds(route["group_wait"]) <= 10
    assert _seconds(route["group_interval"]) <= 30


def _seconds(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def test_the_hosts_addresses_are_fixed_cluster_ips_of_services_that_select_the_pods() -> None:
    objects = _local_objects()
    static_band = list(ipaddress.ip_network(SERVICE_CIDR))[:256]
    selectors = {
        "prometheus-k8s": {"app.kubernetes.io/name": "prometheus",
                           "app.kubernetes.io/instance": "k8s"},
        "alertmanager-main": {"app.kubernetes.io/name": "alertmanager",
                              "app.kubernetes.io/instance": "main"},
    }  # fmt: skip
    addresses = {}
    for name in ("prometheus-k8s", "alertmanager-main", monitoring.RECEIVER):
        spec = _by(objects, "Service", name)["spec"]
        addresses[name] = f"http://{spec['clusterIP']}:{spec['ports'][0]['port']}"
        assert ipaddress.ip_address(spec["clusterIP"]) in static_band
        if name in selectors:  # the labels the operator gives its StatefulSets' pods
            assert spec["selector"] == selectors[name]
    assert len(set(addresses.values())) == 3
    assert DNS_SERVICE_IP not in "".join(addresses.values())
    assert addresses["prometheus-k8s"] == prometheus.url() == "http://198.19.128.90:9090"
    assert addresses["alertmanager-main"] == monitoring.alertmanager_url()
    assert addresses[monitoring.RECEIVER] == monitoring.receiver_url()


@pytest.mark.usefixtures("operator_module")
def test_the_operator_is_upstreams_example_in_monitoring_with_our_images() -> None:
    objects = monitoring.operator_objects()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
                     "ServiceAccount", "ServiceMonitor"]  # fmt: skip
    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]
    binding = _by(objects, "ClusterRoleBinding", "prometheus-operator")
    assert [s["namespace"] for s in binding["subjects"]] == [NAMESPACE]
    (box,) = _by(objects, "Deployment", "prometheus-operator")["spec"]["template"]["spec"][
        "containers"
    ]
    assert box["image"] == monitoring.OPERATOR.ref
    assert box["imagePullPolicy"] == "Never"
    assert f"--prometheus-config-reloader={monitoring.CONFIG_RELOADER.ref}" in box["args"]
    assert not [a for a in box["args"] if "quay.io" in a]


@pytest.mark.usefixtures("operator_module")
def test_every_object_is_valid_against_kubernetes_and_the_operators_crds() -> None:
    crds = {c["spec"]["names"]["kind"]: c for c in monitoring.crds()}
    assert {"Prometheus", "Alertmanager", "PodMonitor", "ServiceMonitor",
            "PrometheusRule"} <= crds.keys()  # fmt: skip
    problems = []
    for obj in monitoring.objects():
        group = obj["apiVersion"].split("/")[0]
        if group == "monitoring.coreos.com":
            (served,) = [v for v in crds[obj["kind"]]["spec"]["versions"]
                         if v["name"] == obj["apiVersion"].split("/")[1]]  # fmt: skip
            schema = _closed(served["schema"]["openAPIV3Schema"])
            problems += [f"{obj['kind']}: {e.message} at {list(e.absolute_path)}"
                         for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]  # fmt: skip
        else:
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{obj['kind']} {obj['metadata']['name']}: {error.message}")
    assert problems == []


# -- images FROM scratch -------------------------------------------------------------------
def _elf(path: Path, *program_headers: int) -> None:
    """A minimal ELF64 file with program headers of these types (3: PT_INTERP)."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 32, 64)  # e_phoff
    struct.pack_into("<HH", header, 54, 56, len(program_headers))  # e_phentsize, e_phnum
    table = b"".join(struct.pack("<I", kind) + bytes(52) for kind in program_headers)
    path.write_bytes(bytes(header) + table)
    path.chmod(0o755)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PR_ANOMALY_CACHE", str(tmp_path))
    bin_dir = tmp_path / "cluster" / "bin"
    bin_dir.mkdir(parents=True)
    return bin_dir


def _layer(archive: bytes) -> tuple[dict[str, Any], list[tuple[str, bool]]]:
    """An image archive's config and the names in its one layer."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as outer:

        def blob(digest: str) -> bytes:
            return outer.extractfile(f"blobs/sha256/{digest.split(':')[1]}").read()

        index = json.loads(outer.extractfile("index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        layer = blob(manifest["layers"][0]["digest"])
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        return config, [(m.name, m.isdir()) for m in inner.getmembers()]


def test_an_image_holds_its_binary_where_the_operator_runs_it(cache: Path) -> None:
    reloader = monitoring.CONFIG_RELOADER
    _elf(cache / f"{reloader.binary}-{binaries()[reloader.binary].version}", 1)  # PT_LOAD
    config, members = _layer(images.oci_archive(reloader))
    assert members == [("bin", True), ("bin/prometheus-config-reloader", False)]
    assert config["config"]["Entrypoint"] == ["/bin/prometheus-config-reloader"]


def test_a_dynamically_linked_binary_is_never_put_into_an_image(cache: Path) -> None:
    image = monitoring.PROMETHEUS
    _elf(cache / f"{image.binary}-{binaries()[image.binary].version}", 6, 3, 1)  # PT_INTERP
    with pytest.raises(ClusterError, match="dynamically linked"):
        images.oci_archive(image)
