"""One record of the host's own sysctls for the engine and the cluster together: the first
to start records, the last to stop restores (a fake /proc, so the host is never touched)."""

from __future__ import annotations

import pytest

from pipeline_ops import host_sysctls


@pytest.fixture
def host(tmp_path, monkeypatch) -> dict:
    state = {"values": {"net.ipv4.ip_forward": "0"}, "bridges": []}
    monkeypatch.setattr(host_sysctls, "record_file", lambda: tmp_path / "host-sysctls.json")
    monkeypatch.setattr(host_sysctls, "read_sysctl", lambda name: state["values"].get(name))
    monkeypatch.setattr(
        host_sysctls, "write_sysctl", lambda name, value: state["values"].__setitem__(name, value)
    )
    monkeypatch.setattr(
        host_sysctls,
        "other_project_bridges",
        lambda own: [b for b in state["bridges"] if b != own],
    )
    return state


def test_the_second_to_start_gets_the_machines_value_and_the_last_to_stop_restores_it(
    host,
) -> None:
    names = ("net.ipv4.ip_forward",)
    assert host_sysctls.originals(names) == {"net.ipv4.ip_forward": "0"}  # the engine starts
    host["values"]["net.ipv4.ip_forward"] = "1"
    host["bridges"].append("docker0")
    assert host_sysctls.originals(names) == {"net.ipv4.ip_forward": "0"}  # then the cluster
    host["bridges"].append("pra-cni0")

    assert host_sysctls.restore(names, own_bridge="docker0") == []  # the cluster still runs
    host["bridges"].remove("docker0")
    assert host["values"]["net.ipv4.ip_forward"] == "1"

    assert host_sysctls.restore(names, own_bridge="pra-cni0") == ["sysctl net.ipv4.ip_forward=0"]
    assert host["values"]["net.ipv4.ip_forward"] == "0"
    assert not host_sysctls.record_file().exists(), "the next start records afresh"
