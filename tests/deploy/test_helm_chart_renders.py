"""The chart lints and renders with its default values and every example, and every rendered
manifest is valid against the Kubernetes 1.30 and latest OpenAPI schemas (strict: no unknown fields)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "tailor"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
VALUE_SETS = [pytest.param(None, id="default-values")] + [pytest.param(path, id=path.stem) for path in EXAMPLES]
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]


def test_examples_include_minimal_and_full() -> None:
    assert {"minimal", "full"} <= {path.stem for path in EXAMPLES}


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_passes(helm: Path, values: Path | None) -> None:
    cmd = [str(helm), "lint", str(CHART), "--strict", "--kube-version", "1.30.0"]
    if values:
        cmd += ["--values", str(values)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", VALUE_SETS)
def test_rendered_manifests_are_valid_kubernetes(helm_template: Any, values: Path | None) -> None:
    manifests = helm_template(*([values] if values else [])).manifests
    assert manifests, "nothing rendered"
    errors = []
    for manifest in manifests:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                errors.append(f"{manifest['kind']}/{manifest['metadata']['name']} ({version}) {path}: {error.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_resource_has_standard_labels_and_namespace(helm_template: Any, values: Path | None) -> None:
    for manifest in helm_template(*([values] if values else [])).manifests:
        labels = manifest["metadata"]["labels"]
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        assert labels["app.kubernetes.io/name"] == "tailor", name
        assert labels["app.kubernetes.io/instance"] == "tailor", name
        assert labels["app.kubernetes.io/managed-by"] == "Helm", name
        assert labels["app.kubernetes.io/version"] == "0.1.0", name
        assert labels["helm.sh/chart"] == "tailor-0.1.0", name
        assert manifest["metadata"]["namespace"] == "tailor", name


def test_default_values_deploy_consent_only(default_manifests: Any) -> None:
    assert set(default_manifests.kind("Deployment")) == {"tailor-consent"}
    for kind in ("Service", "ConfigMap"):
        assert set(default_manifests.kind(kind)) == {"tailor-consent"}, kind
    assert set(default_manifests.kind("ServiceAccount", hooks=False)) == {"tailor-consent"}


def test_full_example_deploys_all_six_services_with_every_optional_resource(full_manifests: Any) -> None:
    services = {"identity", "profile", "segmentation", "scoring", "offer", "consent"}
    expected = {f"tailor-{name}" for name in services}
    for kind in ("Deployment", "Service", "ConfigMap", "PodDisruptionBudget"):
        assert set(full_manifests.kind(kind)) == expected, kind
    assert set(full_manifests.kind("ServiceAccount", hooks=False)) == expected
    # consent overrides the default and turns autoscaling off; it keeps a fixed replica count.
    assert set(full_manifests.kind("HorizontalPodAutoscaler")) == expected - {"tailor-consent"}
    assert full_manifests.one("Deployment", "tailor-consent")["spec"]["replicas"] == 4
    assert "replicas" not in full_manifests.one("Deployment", "tailor-offer")["spec"]
    for deployment in full_manifests.kind("Deployment").values():
        assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]


def test_enabling_a_service_is_one_flag(helm_template: Any) -> None:
    manifests = helm_template(set_values={"services.identity.enabled": "true"}).manifests
    assert set(manifests.kind("Deployment")) == {"tailor-consent", "tailor-identity"}
    identity = manifests.one("Deployment", "tailor-identity")
    container = identity["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/tailor-crm/tailor-identity:0.1.0"
    assert container["args"] == ["serve", "identity"]
    assert set(manifests.kind("Job")) == {"tailor-streams", "tailor-consent-migrate", "tailor-identity-migrate"}


def test_service_exposes_grpc_with_app_protocol(full_manifests: Any) -> None:
    for name, service in full_manifests.kind("Service").items():
        assert service["spec"]["ports"] == [
            {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}
        ], name
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == name.removeprefix("tailor-")


def test_image_defaults_to_app_version_and_honours_tag_and_digest(default_manifests: Any, full_manifests: Any) -> None:
    image = default_manifests.one("Deployment", "tailor-consent")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/tailor-crm/tailor-consent:0.1.0"
    pinned = full_manifests.one("Deployment", "tailor-consent")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert pinned == "ghcr.io/tailor-crm/tailor-consent:0.1.0@sha256:" + "0" * 64


def test_service_values_override_defaults_deeply(full_manifests: Any) -> None:
    profile = full_manifests.one("Deployment", "tailor-profile")["spec"]["template"]["spec"]["containers"][0]
    # profile overrides only the memory limit; the rest of `default.resources` stays.
    assert profile["resources"] == {
        "requests": {"cpu": "250m", "memory": "384Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }
    scoring_hpa = full_manifests.one("HorizontalPodAutoscaler", "tailor-scoring")
    assert [m["resource"]["name"] for m in scoring_hpa["spec"]["metrics"]] == ["memory"]
    assert full_manifests.one("HorizontalPodAutoscaler", "tailor-profile")["spec"]["maxReplicas"] == 20
    assert full_manifests.one("PodDisruptionBudget", "tailor-offer")["spec"] == {
        "minAvailable": "50%",
        "selector": {
            "matchLabels": {
                "app.kubernetes.io/name": "tailor",
                "app.kubernetes.io/instance": "tailor",
                "app.kubernetes.io/component": "offer",
            }
        },
    }


def test_telemetry_settings_come_from_values(full_manifests: Any) -> None:
    consent = full_manifests.one("ConfigMap", "tailor-consent")["data"]
    assert consent["TAILOR_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc:4317"
    assert consent["OTEL_SERVICE_NAME"] == "tailor-consent-api"
    attributes = dict(pair.split("=", 1) for pair in consent["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    assert attributes["deployment.environment"] == "production"
    assert attributes["tailor.tier"] == "critical"
    assert attributes["k8s.namespace.name"] == "tailor"
    assert full_manifests.one("ConfigMap", "tailor-offer")["data"]["OTEL_SERVICE_NAME"] == "tailor-offer"
    assert consent["TAILOR_GRPC_PORT"] == "50051"
    assert consent["TAILOR_LOG_FORMAT"] == "json"


def test_each_service_is_told_where_its_callees_are(full_manifests: Any) -> None:
    config = full_manifests.one("ConfigMap", "tailor-offer")["data"]
    addresses = {key: value for key, value in config.items() if key.endswith("_ADDRESS")}
    assert addresses == {
        "TAILOR_CONSENT_ADDRESS": "tailor-consent:50051",
        "TAILOR_PROFILE_ADDRESS": "tailor-profile:50051",
        "TAILOR_SCORING_ADDRESS": "tailor-scoring:50051",
        "TAILOR_SEGMENTATION_ADDRESS": "tailor-segmentation:50051",
    }
    assert not [key for key in full_manifests.one("ConfigMap", "tailor-consent")["data"] if key.endswith("_ADDRESS")]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param(
            {
                "default.autoscaling.targetCPUUtilizationPercentage": "0",
                "default.autoscaling.targetMemoryUtilizationPercentage": "0",
            },
            "services.consent.autoscaling: targetCPUUtilizationPercentage and targetMemoryUtilizationPercentage "
            "are both 0",
            id="no-metric",
        ),
        pytest.param(
            {"services.consent.autoscaling.minReplicas": "5", "services.consent.autoscaling.maxReplicas": "3"},
            "services.consent.autoscaling: minReplicas (5) is above maxReplicas (3)",
            id="min-above-max",
        ),
    ],
)
def test_autoscaler_values_kubernetes_would_silently_change_or_reject_fail_the_render(
    helm_template: Any, overrides: dict[str, str], message: str
) -> None:
    # Without metrics the HPA rendered `metrics: null`, which the API server turns into 80% CPU
    # although the values say "0 disables it"; min above max was rendered for the API to refuse.
    result = helm_template(set_values={"default.autoscaling.enabled": "true", **overrides})
    assert result.returncode != 0, "rendered"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("variable", ["TAILOR_GRPC_PORT", "TAILOR_CONSENT_GRPC_PORT"])
def test_a_grpc_port_in_env_fails_the_render(helm_template: Any, variable: str) -> None:
    # The port in env moved the server off 50051, where the probes, the Service's target port and
    # the NetworkPolicies still pointed: pods never became ready and were restarted.
    result = helm_template(set_values={f"services.consent.env.{variable}": "50056"})
    assert result.returncode != 0, "rendered"
    assert f"services.consent.env.{variable}: the container always listens on 50051" in result.stderr, result.stderr


def test_services_provision_streams_with_the_replicas_of_the_streams_job(helm_template: Any) -> None:
    # Each service runs ensure_streams when it starts, updating every stream to its own
    # TAILOR_NATS_REPLICAS: without it (default 1) the first pod scaled the R3 streams the job
    # created on a clustered JetStream down to one replica.
    manifests = helm_template(set_values={"streams.replicas": "3", "services.identity.enabled": "true"}).manifests
    job = manifests.one("Job", "tailor-streams")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "TAILOR_NATS_REPLICAS", "value": "3"} in job["env"]
    for service in ("consent", "identity"):
        assert manifests.one("ConfigMap", f"tailor-{service}")["data"]["TAILOR_NATS_REPLICAS"] == "3", service
