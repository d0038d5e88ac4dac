"""Hooks: pre-install/pre-upgrade jobs migrate each service and provision the JetStream streams
before the new version starts; `helm test` checks every service's gRPC health."""

from __future__ import annotations

import base64
from typing import Any

SERVICES = ("identity", "profile", "segmentation", "scoring", "offer", "consent")
PRE = "pre-install,pre-upgrade"


def container(job: dict[str, Any]) -> dict[str, Any]:
    [only] = job["spec"]["template"]["spec"]["containers"]
    assert isinstance(only, dict)
    return only


def env_refs(item: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in item["env"] if "valueFrom" in e}


def test_one_migration_job_per_enabled_service(full_manifests: Any) -> None:
    jobs = full_manifests.kind("Job")
    for service in SERVICES:
        job = jobs[f"tailor-{service}-migrate"]
        annotations = job["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == PRE
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        assert job["spec"]["activeDeadlineSeconds"] == 900
        assert job["spec"]["backoffLimit"] == 2
        run = container(job)
        assert run["args"] == ["migrate", service]
        assert (
            run["image"]
            == full_manifests.one("Deployment", f"tailor-{service}")["spec"]["template"]["spec"]["containers"][0][
                "image"
            ]
        )
        assert f"TAILOR_{service.upper()}_DATABASE_URL" in env_refs(run)


def test_one_streams_job_runs_before_the_migrations(full_manifests: Any, default_manifests: Any) -> None:
    for manifests in (default_manifests, full_manifests):
        jobs = manifests.kind("Job")
        streams = jobs["tailor-streams"]
        assert streams["metadata"]["annotations"]["helm.sh/hook"] == PRE
        assert container(streams)["args"] == ["streams"]
        assert set(env_refs(container(streams))) == {"TAILOR_NATS_URL"}
        streams_weight = int(streams["metadata"]["annotations"]["helm.sh/hook-weight"])
        for name, job in jobs.items():
            if name != "tailor-streams":
                assert int(job["metadata"]["annotations"]["helm.sh/hook-weight"]) > streams_weight, name
    full_streams = container(full_manifests.one("Job", "tailor-streams"))
    assert full_streams["image"].startswith("ghcr.io/tailor-crm/tailor-consent:")
    plain_env = {item["name"]: item.get("value") for item in full_streams["env"]}
    assert plain_env["TAILOR_NATS_REPLICAS"] == "3"


def test_hook_jobs_can_be_turned_off(helm_template: Any) -> None:
    manifests = helm_template(set_values={"migrations.enabled": "false", "streams.enabled": "false"}).manifests
    assert manifests.kind("Job") == {}
    assert "tailor-hooks" not in manifests.kind("NetworkPolicy")


def test_hook_support_resources_exist_before_the_jobs(full_manifests: Any) -> None:
    """The release's own ServiceAccounts and Secrets do not exist yet during pre-install."""
    job_weights = [
        int(job["metadata"]["annotations"]["helm.sh/hook-weight"]) for job in full_manifests.kind("Job").values()
    ]
    for kind in ("ServiceAccount", "Secret", "NetworkPolicy"):
        support = full_manifests.one(kind, "tailor-hooks")
        annotations = support["metadata"]["annotations"]
        assert PRE in annotations["helm.sh/hook"], kind
        assert int(annotations["helm.sh/hook-weight"]) < min(job_weights), kind
    for job in full_manifests.kind("Job").values():
        assert job["spec"]["template"]["spec"]["serviceAccountName"] == "tailor-hooks"


def test_hook_jobs_read_url_values_from_the_hook_secret_and_existing_secrets_directly(full_manifests: Any) -> None:
    hook_secret = full_manifests.one("Secret", "tailor-hooks")
    data = {key: base64.b64decode(value).decode() for key, value in hook_secret["data"].items()}
    # Only values given as `url` are copied: NATS and consent's database in examples/full.yaml.
    assert data == {
        "nats-url": "nats://tailor:change-me@nats.nats.svc:4222",
        "consent-database-url": "postgresql+asyncpg://tailor_consent:change-me@postgres.db.svc:5432/tailor_consent",
    }
    consent = env_refs(container(full_manifests.one("Job", "tailor-consent-migrate")))
    assert consent["TAILOR_CONSENT_DATABASE_URL"] == {"name": "tailor-hooks", "key": "consent-database-url"}
    offer = env_refs(container(full_manifests.one("Job", "tailor-offer-migrate")))
    assert offer["TAILOR_OFFER_DATABASE_URL"] == {"name": "tailor-offer-database", "key": "url"}
    streams = env_refs(container(full_manifests.one("Job", "tailor-streams")))
    assert streams["TAILOR_NATS_URL"] == {"name": "tailor-hooks", "key": "nats-url"}


def test_no_hook_secret_when_every_url_comes_from_existing_secrets(default_manifests: Any) -> None:
    assert "tailor-hooks" not in default_manifests.kind("Secret")
    streams = env_refs(container(default_manifests.one("Job", "tailor-streams")))
    assert streams["TAILOR_NATS_URL"] == {"name": "tailor-nats", "key": "url"}


def test_helm_test_pod_checks_every_service_over_grpc_health(full_manifests: Any) -> None:
    pod = full_manifests.one("Pod", "tailor-test-health")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    checks = {c["name"]: c for c in pod["spec"]["containers"]}
    assert set(checks) == set(SERVICES)
    for service, check in checks.items():
        assert check["args"] == ["health", f"tailor-{service}:50051"]
        assert (
            check["image"]
            == full_manifests.one("Deployment", f"tailor-{service}")["spec"]["template"]["spec"]["containers"][0][
                "image"
            ]
        )
    service_account = full_manifests.one("ServiceAccount", "tailor-hooks")
    assert "test" in service_account["metadata"]["annotations"]["helm.sh/hook"].split(",")


def test_helm_test_pod_can_be_turned_off(helm_template: Any) -> None:
    manifests = helm_template(set_values={"tests.enabled": "false"}).manifests
    assert manifests.kind("Pod") == {}
    assert "test" not in manifests.one("ServiceAccount", "tailor-hooks")["metadata"]["annotations"]["helm.sh/hook"]


def test_streams_job_refuses_a_disabled_runner(helm_template: Any) -> None:
    result = helm_template(set_values={"streams.service": "offer"})
    assert result.returncode != 0
    assert 'streams.service: "offer" is not an enabled service' in result.stderr
