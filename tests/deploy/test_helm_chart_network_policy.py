"""NetworkPolicies: a namespace-wide default deny; each service admits exactly its callers (from
the caller map in values.yaml), the helm test pod and the client namespaces, and reaches only DNS,
PostgreSQL, NATS, the OTLP endpoint and the services it calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

VALUES = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "tailor" / "values.yaml"
SERVICES = ("identity", "profile", "segmentation", "scoring", "offer", "consent")
# The application's contract on who calls whom over gRPC.
CALLS = {
    "identity": set(),
    "profile": {"identity", "consent", "segmentation", "scoring", "offer"},
    "segmentation": {"profile"},
    "scoring": {"profile"},
    "offer": {"consent", "profile", "scoring", "segmentation"},
    "consent": set(),
}
SELECTOR = {"app.kubernetes.io/name": "tailor", "app.kubernetes.io/instance": "tailor"}


def component(peer: dict[str, Any]) -> str | None:
    labels = peer.get("podSelector", {}).get("matchLabels", {})
    if "namespaceSelector" in peer or {k: labels.get(k) for k in SELECTOR} != SELECTOR:
        return None
    name = labels.get("app.kubernetes.io/component")
    return str(name) if name is not None else None


def namespaces(peers: list[dict[str, Any]]) -> set[str]:
    return {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for peer in peers
        if "namespaceSelector" in peer and "podSelector" not in peer
    }


def egress_ports(policy: dict[str, Any]) -> set[int]:
    return {port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]}


def test_values_carry_the_caller_map() -> None:
    services = yaml.safe_load(VALUES.read_text())["services"]
    assert set(services) == set(SERVICES)
    assert {name: set(service["calls"]) for name, service in services.items()} == CALLS
    assert {name for name, service in services.items() if service["enabled"]} == {"consent"}


def test_namespace_wide_default_deny(default_manifests: Any) -> None:
    policy = default_manifests.one("NetworkPolicy", "tailor-default-deny")
    assert policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_no_ingress_rule_is_open_to_everyone(full_manifests: Any, default_manifests: Any) -> None:
    for manifests in (default_manifests, full_manifests):
        for name, policy in manifests.kind("NetworkPolicy").items():
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from"), f"{name}: an ingress rule without `from` admits every pod"
                assert rule.get("ports"), f"{name}: an ingress rule without `ports` opens every port"


def test_each_service_admits_exactly_its_callers_the_test_pod_and_client_namespaces(full_manifests: Any) -> None:
    for service in SERVICES:
        policy = full_manifests.one("NetworkPolicy", f"tailor-{service}")
        assert policy["spec"]["podSelector"]["matchLabels"] == {**SELECTOR, "app.kubernetes.io/component": service}
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        [rule] = policy["spec"]["ingress"]
        assert rule["ports"] == [{"port": 50051, "protocol": "TCP"}]
        callers = {component(peer) for peer in rule["from"]} - {None}
        expected = {caller for caller, callees in CALLS.items() if service in callees}
        assert callers == expected | {"test"}, service
        extra_namespaces = {"channel-adapters"} if service == "offer" else set()
        assert namespaces(rule["from"]) == {"webshop", "pos", "callcenter"} | extra_namespaces, service
        assert {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
        } in rule["from"]


def test_each_service_reaches_infrastructure_and_exactly_the_services_it_calls(full_manifests: Any) -> None:
    for service in SERVICES:
        egress = full_manifests.one("NetworkPolicy", f"tailor-{service}")["spec"]["egress"]
        infra = {rule["ports"][0]["port"]: rule for rule in egress if rule["ports"][0]["port"] != 50051}
        assert set(infra) == {53, 5432, 4222, 4317}, service
        # Each narrowed to the peers that examples/full.yaml names.
        assert infra[5432]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}], service
        assert infra[4222]["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nats"}}}]
        assert infra[4317]["to"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}
        ]
        assert {port["protocol"] for port in infra[53]["ports"]} == {"UDP", "TCP"}
        grpc_rules = [rule for rule in egress if rule["ports"] == [{"port": 50051, "protocol": "TCP"}]]
        callees = {component(peer) for rule in grpc_rules for peer in rule["to"]}
        assert callees == CALLS[service], service
        assert len(egress) == len(infra) + len(grpc_rules), service


def test_default_egress_allows_dns_postgresql_and_nats_but_no_otlp_without_endpoint(default_manifests: Any) -> None:
    policy = default_manifests.one("NetworkPolicy", "tailor-consent")
    assert egress_ports(policy) == {53, 5432, 4222}
    ingress_from = policy["spec"]["ingress"][0]["from"]
    # consent has no callers among the services; only the helm test pod by default.
    assert [component(peer) for peer in ingress_from] == ["test"]


def test_otlp_egress_follows_the_endpoint(helm_template: Any) -> None:
    manifests = helm_template(set_values={"telemetry.otlpEndpoint": "http://collector:4317"}).manifests
    assert 4317 in egress_ports(manifests.one("NetworkPolicy", "tailor-consent"))


def test_callers_that_are_not_enabled_are_not_admitted(helm_template: Any) -> None:
    manifests = helm_template(set_values={"services.offer.enabled": "true"}).manifests
    consent_from = manifests.one("NetworkPolicy", "tailor-consent")["spec"]["ingress"][0]["from"]
    assert {component(peer) for peer in consent_from} - {None} == {"offer", "test"}
    offer_egress = manifests.one("NetworkPolicy", "tailor-offer")["spec"]["egress"]
    callees = {component(peer) for rule in offer_egress for peer in rule.get("to", [])} - {None}
    assert callees == {"consent"}  # profile, scoring and segmentation are not deployed


def test_without_callers_clients_or_test_pod_ingress_is_closed(helm_template: Any) -> None:
    manifests = helm_template(set_values={"tests.enabled": "false"}).manifests
    assert manifests.one("NetworkPolicy", "tailor-consent")["spec"]["ingress"] == []


def test_hook_jobs_and_test_pod_get_their_own_egress(full_manifests: Any) -> None:
    hooks = full_manifests.one("NetworkPolicy", "tailor-hooks")
    assert hooks["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert hooks["spec"]["podSelector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["migrations", "streams"]}
    ]
    assert hooks["spec"]["ingress"] == []
    assert egress_ports(hooks) == {53, 5432, 4222, 4317}
    test = full_manifests.one("NetworkPolicy", "tailor-test-health")
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert egress_ports(test) == {53, 50051}
    grpc_to = next(rule for rule in test["spec"]["egress"] if rule["ports"][0]["port"] == 50051)["to"]
    assert {component(peer) for peer in grpc_to} == set(SERVICES)


def test_network_policies_can_be_turned_off(helm_template: Any) -> None:
    manifests = helm_template(set_values={"networkPolicy.enabled": "false"}).manifests
    assert manifests.kind("NetworkPolicy") == {}
    without_deny = helm_template(set_values={"networkPolicy.defaultDeny": "false"}).manifests
    assert "tailor-default-deny" not in without_deny.kind("NetworkPolicy")
    assert "tailor-consent" in without_deny.kind("NetworkPolicy")
