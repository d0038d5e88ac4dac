"""Pods of the chart (services, hook jobs, the helm test pod) run hardened, probe over gRPC and
keep secrets out of ConfigMaps."""

from __future__ import annotations

import base64
from typing import Any

import pytest

SERVICES = ("identity", "profile", "segmentation", "scoring", "offer", "consent")


def pod_specs(manifests: Any) -> dict[str, dict[str, Any]]:
    """Every pod spec rendered: Deployments, Jobs and bare Pods, by kind/name."""
    specs: dict[str, dict[str, Any]] = {}
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "Job"):
            specs[f"{manifest['kind']}/{manifest['metadata']['name']}"] = manifest["spec"]["template"]["spec"]
        elif manifest["kind"] == "Pod":
            specs[f"Pod/{manifest['metadata']['name']}"] = manifest["spec"]
    return specs


@pytest.fixture(params=["default", "full"])
def manifests(request: pytest.FixtureRequest, default_manifests: Any, full_manifests: Any) -> Any:
    return default_manifests if request.param == "default" else full_manifests


def test_every_pod_kind_is_rendered(full_manifests: Any) -> None:
    kinds = {name.split("/")[0] for name in pod_specs(full_manifests)}
    assert kinds == {"Deployment", "Job", "Pod"}


def test_pods_run_as_non_root_with_runtime_default_seccomp(manifests: Any) -> None:
    for name, spec in pod_specs(manifests).items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] != 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, name


def test_containers_are_locked_down(manifests: Any) -> None:
    for name, spec in pod_specs(manifests).items():
        for container in spec["containers"]:
            context = container["securityContext"]
            where = f"{name}:{container['name']}"
            assert context["runAsNonRoot"] is True, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["privileged"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where


def test_tmp_is_the_only_writable_mount(manifests: Any) -> None:
    for name, spec in pod_specs(manifests).items():
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert set(volumes) == {"tmp"}, name
        assert "emptyDir" in volumes["tmp"], name
        for container in spec["containers"]:
            assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}], name


def test_containers_have_resource_requests_and_limits(manifests: Any) -> None:
    for name, spec in pod_specs(manifests).items():
        for container in spec["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert {"cpu", "memory"} <= set(resources["limits"]), name


def test_services_have_native_grpc_startup_readiness_and_liveness_probes(manifests: Any) -> None:
    deployments = manifests.kind("Deployment")
    assert deployments
    for name, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["ports"] == [{"name": "grpc", "containerPort": 50051, "protocol": "TCP"}], name
        for probe in ("startupProbe", "readinessProbe"):
            assert container[probe]["grpc"] == {"port": 50051}, f"{name} {probe}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["periodSeconds"] >= 1, f"{name} {probe}"
        startup = container["startupProbe"]
        # The startup probe holds liveness back for a generous boot window.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, name


def test_liveness_does_not_follow_the_database_and_nats(manifests: Any) -> None:
    """grpc.health.v1 is NOT_SERVING while PostgreSQL or NATS is unreachable (service.py): as a
    liveness probe it restarted every pod of every service during a database failover, and again
    (startup probe) until the database was back. Liveness is the gRPC port accepting connections."""
    for name, deployment in manifests.kind("Deployment").items():
        liveness = deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
        assert "grpc" not in liveness, name
        assert liveness["tcpSocket"] == {"port": 50051}, name


def test_service_containers_serve_their_service_on_the_cluster_grpc_port(full_manifests: Any) -> None:
    for service in SERVICES:
        deployment = full_manifests.one("Deployment", f"tailor-{service}")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["serve", service]
        assert container["envFrom"] == [{"configMapRef": {"name": f"tailor-{service}"}}]
        config = full_manifests.one("ConfigMap", f"tailor-{service}")["data"]
        assert config["TAILOR_GRPC_PORT"] == "50051"


def test_database_and_nats_urls_come_from_secrets(full_manifests: Any) -> None:
    for service in SERVICES:
        container = full_manifests.one("Deployment", f"tailor-{service}")["spec"]["template"]["spec"]["containers"][0]
        env = {item["name"]: item for item in container["env"]}
        database = env[f"TAILOR_{service.upper()}_DATABASE_URL"]
        nats = env["TAILOR_NATS_URL"]
        assert set(database) == {"name", "valueFrom"} and "secretKeyRef" in database["valueFrom"], service
        assert set(nats) == {"name", "valueFrom"} and "secretKeyRef" in nats["valueFrom"], service
    # existingSecret is referenced as is; a `url` is rendered into a chart Secret.
    identity = full_manifests.one("Deployment", "tailor-identity")["spec"]["template"]["spec"]["containers"][0]
    identity_env = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in identity["env"]}
    assert identity_env["TAILOR_IDENTITY_DATABASE_URL"] == {"name": "tailor-identity-database", "key": "url"}
    assert identity_env["TAILOR_NATS_URL"] == {"name": "tailor-nats", "key": "url"}
    consent = full_manifests.one("Deployment", "tailor-consent")["spec"]["template"]["spec"]["containers"][0]
    consent_env = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in consent["env"]}
    assert consent_env["TAILOR_CONSENT_DATABASE_URL"] == {"name": "tailor-consent-database", "key": "url"}
    secret = full_manifests.one("Secret", "tailor-consent-database")
    assert base64.b64decode(secret["data"]["url"]).decode() == (
        "postgresql+asyncpg://tailor_consent:change-me@postgres.db.svc:5432/tailor_consent"
    )
    assert base64.b64decode(full_manifests.one("Secret", "tailor-nats")["data"]["url"]).decode() == (
        "nats://tailor:change-me@nats.nats.svc:4222"
    )


def test_existing_secret_needs_no_chart_secret(default_manifests: Any) -> None:
    assert default_manifests.kind("Secret") == {}
    container = default_manifests.one("Deployment", "tailor-consent")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container["env"]}
    assert env == {
        "TAILOR_CONSENT_DATABASE_URL": {"name": "tailor-consent-database", "key": "url"},
        "TAILOR_NATS_URL": {"name": "tailor-nats", "key": "url"},
    }


def test_no_secret_value_in_configmaps_or_plain_env(full_manifests: Any) -> None:
    secret_values = ["change-me", "postgresql", "nats://"]
    for name, config_map in full_manifests.kind("ConfigMap").items():
        for key, value in config_map["data"].items():
            assert "DATABASE_URL" not in key and "NATS_URL" not in key, f"{name}: {key}"
            assert not any(secret in value for secret in secret_values), f"{name}: {key}={value}"
    for name, spec in pod_specs(full_manifests).items():
        for container in spec["containers"]:
            for item in container.get("env", []):
                assert not any(secret in str(item.get("value", "")) for secret in secret_values), name


def test_pods_roll_when_their_config_changes(helm_template: Any, default_manifests: Any) -> None:
    def annotations(manifests: Any) -> Any:
        return manifests.one("Deployment", "tailor-consent")["spec"]["template"]["metadata"]["annotations"]

    before = annotations(default_manifests)
    after_config = annotations(helm_template(set_values={"services.consent.logLevel": "DEBUG"}).manifests)
    after_secret = annotations(
        helm_template(set_values={"services.consent.database.url": "postgresql+asyncpg://h/db"}).manifests
    )
    assert after_config["checksum/config"] != before["checksum/config"]
    assert after_secret["checksum/secret"] != before["checksum/secret"]


def test_identity_keys_come_from_a_secret_never_the_configmap(full_manifests: Any) -> None:
    container = full_manifests.one("Deployment", "tailor-identity")["spec"]["template"]["spec"]["containers"][0]
    from_secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert from_secrets["TAILOR_IDENTITY_ENCRYPTION_KEY"] == {"name": "tailor-identity-keys", "key": "encryption-key"}
    assert from_secrets["TAILOR_IDENTITY_BLIND_INDEX_KEY"] == {"name": "tailor-identity-keys", "key": "blind-index-key"}
    config = full_manifests.one("ConfigMap", "tailor-identity")["data"]
    assert not [key for key in config if "KEY" in key]
