"""NetworkPolicy semantics (networking.k8s.io/v1), evaluated offline: is a connection from one
pod to a pod or an address allowed by a set of policies, as an enforcing CNI decides it.

A connection passes when the source's namespace lets it out (no policy with `Egress` selects
the source pod, or a rule of one that does matches the destination and port) and, for a pod,
the destination's namespace lets it in (the same with `Ingress`). ipBlock peers match
addresses only (whether they match pod addresses is left to the implementation by the API).
Named ports are not used by our manifests and match nothing here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: Labels = field(default_factory=dict)

    @property
    def namespace_labels(self) -> Labels:
        return {"kubernetes.io/metadata.name": self.namespace}

    def __str__(self) -> str:
        name = self.labels.get("app.kubernetes.io/name") or self.labels.get("k8s-app") or "pod"
        return f"{self.namespace}/{name}"


@dataclass(frozen=True)
class Address:
    ip: str

    def __str__(self) -> str:
        return self.ip


Peer = Pod | Address


@dataclass(frozen=True)
class Target:
    """Where a connection goes: a peer, a port and a protocol."""

    peer: Peer
    port: int
    protocol: str = "TCP"

    def __str__(self) -> str:
        return f"{self.peer}:{self.port}/{self.protocol}"


def selects(selector: Mapping[str, Any] | None, labels: Labels) -> bool:
    """Whether a label selector matches ``labels`` (an empty selector matches everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def allowed(policies: Iterable[Mapping[str, Any]], source: Pod, target: Target) -> bool:
    """Whether ``source`` may open a connection to ``target`` under ``policies`` (every
    NetworkPolicy of the cluster that matters: those of the source's and the target's
    namespaces)."""
    policies = list(policies)
    out = _direction_allows(policies, "egress", source, target.peer, target)
    if not isinstance(target.peer, Pod):
        return out
    return out and _direction_allows(policies, "ingress", target.peer, source, target)


def _direction_allows(
    policies: list[Mapping[str, Any]], direction: str, subject: Pod, peer: Peer, target: Target
) -> bool:
    selecting = [
        policy
        for policy in policies
        if policy["metadata"].get("namespace", subject.namespace) == subject.namespace
        and direction.capitalize() in _policy_types(policy)
        and selects(policy["spec"].get("podSelector"), subject.labels)
    ]
    if not selecting:
        return True
    key = "to" if direction == "egress" else "from"
    return any(
        _rule_matches(
            rule, key, policy["metadata"].get("namespace", subject.namespace), peer, target
        )
        for policy in selecting
        for rule in policy["spec"].get(direction) or []
    )


def _policy_types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy["spec"]
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if "egress" in spec else [])]


def _rule_matches(
    rule: Mapping[str, Any], key: str, namespace: str, peer: Peer, target: Target
) -> bool:
    ports = rule.get("ports") or []
    if ports and not any(_port_matches(port, target) for port in ports):
        return False
    peers = rule.get(key) or []
    return not peers or any(_peer_matches(p, namespace, peer) for p in peers)


def _port_matches(port: Mapping[str, Any], target: Target) -> bool:
    if port.get("protocol", "TCP") != target.protocol:
        return False
    number = port.get("port")
    if number is None:
        return True
    if not isinstance(number, int):
        return False  # a named port: none of ours
    return number <= target.port <= port.get("endPort", number)


def _peer_matches(rule_peer: Mapping[str, Any], namespace: str, peer: Peer) -> bool:
    if "ipBlock" in rule_peer:
        if not isinstance(peer, Address):
            return False
        block = rule_peer["ipBlock"]
        ip = ipaddress.ip_address(peer.ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(excepted) for excepted in block.get("except") or []
        )
    if not isinstance(peer, Pod):
        return False
    if "namespaceSelector" in rule_peer:
        if not selects(rule_peer["namespaceSelector"], peer.namespace_labels):
            return False
    elif peer.namespace != namespace:
        return False
    return "podSelector" not in rule_peer or selects(rule_peer["podSelector"], peer.labels)


def probe(rule: Mapping[str, Any]) -> Target:
    """A connection that the first peer and port of an egress rule name: a pod of the
    namespace and labels it selects, or the first address of its ipBlock outside `except`
    (any address where the rule names no peer)."""
    port = (rule.get("ports") or [{}])[0]
    number, protocol = port.get("port", 1), port.get("protocol", "TCP")
    if not rule.get("to"):
        return Target(Address("0.0.0.0"), number, protocol)  # any peer: an address will do
    peer_rule = rule["to"][0]
    if "ipBlock" in peer_rule:
        block = peer_rule["ipBlock"]
        ip = ipaddress.ip_network(block["cidr"]).network_address
        for excepted in sorted(ipaddress.ip_network(e) for e in block.get("except") or []):
            if ip in excepted:
                ip = excepted.broadcast_address + 1
        return Target(Address(str(ip)), number, protocol)
    namespace = (peer_rule.get("namespaceSelector") or {}).get("matchLabels", {})
    labels = (peer_rule.get("podSelector") or {}).get("matchLabels", {})
    return Target(Pod(namespace.get("kubernetes.io/metadata.name", "elsewhere"), labels),
                  number, protocol)  # fmt: skip
