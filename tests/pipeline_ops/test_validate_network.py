"""validate.network: NetworkPolicy semantics as an enforcing CNI applies them, on small
policy sets whose outcome the API's documentation states."""

from __future__ import annotations

from typing import Any

from pipeline_ops.validate.network import Address, Pod, Target, allowed, probe

WEB = Pod("shop", {"app": "web"})
DB = Pod("shop", {"app": "db"})
OTHER = Pod("elsewhere", {"app": "web"})


def _policy(spec: dict[str, Any], namespace: str = "shop") -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": namespace}, "spec": spec}


DENY_ALL = _policy({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})


def test_no_policy_allows_everything_and_default_deny_refuses_everything():
    assert allowed([], WEB, Target(DB, 5432))
    assert allowed([], WEB, Target(Address("203.0.113.7"), 443))
    assert not allowed([DENY_ALL], WEB, Target(DB, 5432))
    assert not allowed([DENY_ALL], WEB, Target(Address("203.0.113.7"), 443))
    # another namespace's deny-all says nothing about this one
    assert allowed([_policy(DENY_ALL["spec"], "elsewhere")], WEB, Target(DB, 5432))


def test_a_connection_needs_both_the_source_egress_and_the_destination_ingress():
    out = _policy(
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5432}]}
            ],
        }
    )
    into = _policy(
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
        }
    )
    assert allowed([DENY_ALL, out, into], WEB, Target(DB, 5432))
    assert not allowed([DENY_ALL, out], WEB, Target(DB, 5432))  # db lets nobody in
    assert not allowed([DENY_ALL, out, into], WEB, Target(DB, 5433))  # not the port
    assert not allowed([DENY_ALL, out, into], WEB, Target(DB, 5432, "UDP"))
    assert not allowed([DENY_ALL, out, into], DB, Target(WEB, 5432))  # not the other way


def test_pod_selectors_stay_in_the_policys_namespace_unless_a_namespace_selector_says():
    same = _policy(
        {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
        }
    )
    assert not allowed([same], DB, Target(OTHER, 80))
    both = _policy(
        {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "elsewhere"}
                            },
                            "podSelector": {"matchLabels": {"app": "web"}},
                        }
                    ]
                }
            ],
        }
    )
    assert allowed([both], DB, Target(OTHER, 80))
    assert not allowed([both], DB, Target(Pod("elsewhere", {"app": "db"}), 80))


def test_ip_blocks_match_addresses_outside_their_exceptions_and_never_pods():
    spec = {
        "podSelector": {
            "matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]
        },
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                "ports": [{"port": 8000, "endPort": 8010}],
            }
        ],
    }
    policies = [_policy(spec)]
    assert allowed(policies, WEB, Target(Address("10.2.3.4"), 8005))
    assert not allowed(policies, WEB, Target(Address("10.1.3.4"), 8005))
    assert not allowed(policies, WEB, Target(Address("10.2.3.4"), 8011))
    assert not allowed(policies, WEB, Target(DB, 8005))
    assert allowed(policies, DB, Target(Address("192.0.2.1"), 1))  # not selected: unrestricted
    assert probe(spec["egress"][0]) == Target(Address("10.0.0.0"), 8000)
    first_out = {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/16"]}}]}
    assert probe(first_out) == Target(Address("10.1.0.0"), 1)
