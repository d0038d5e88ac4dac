"""values.schema.json is strict: wrong, misspelt or missing values fail `helm install` (which
validates like `helm template`) with a message naming the offending value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "tailor"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
COMBINATORS = {"if", "then", "else", "not", "anyOf", "allOf", "oneOf"}

BAD_VALUES = [
    pytest.param(
        {"set_values": {"services.consent.replicas": "-1"}},
        ["services.consent.replicas", "greater than or equal to 0"],
        id="negative-service-replicas",
    ),
    pytest.param(
        {"set_values": {"default.replicas": "-3"}},
        ["default.replicas", "greater than or equal to 0"],
        id="negative-default-replicas",
    ),
    pytest.param(
        {"set_values": {"services.billing.enabled": "true"}},
        ["services", "Additional property billing is not allowed"],
        id="unknown-service",
    ),
    pytest.param(
        {"set_values": {"services.consent.replica": "3"}},
        ["services.consent", "Additional property replica is not allowed"],
        id="misspelt-service-key",
    ),
    pytest.param(
        {"set_values": {"default.autoscaling.enable": "true"}},
        ["default.autoscaling", "Additional property enable is not allowed"],
        id="misspelt-default-key",
    ),
    pytest.param(
        {"set_values": {"networkPolicies.enabled": "false"}},
        ["Additional property networkPolicies is not allowed"],
        id="misspelt-top-level-key",
    ),
    pytest.param(
        {"set_values": {"services.consent.database.existingSecret": ""}},
        ["services.consent.database.existingSecret", "String length must be greater than or equal to 1"],
        id="missing-database-url-and-secret",
    ),
    pytest.param(
        {"set_values": {"services.consent.database.existingSecret": "null"}},
        ["services.consent.database", "existingSecret is required"],
        id="database-secret-removed",
    ),
    pytest.param(
        {"set_values": {"services.consent.database": "null"}},
        ["services.consent", "database is required"],
        id="database-block-removed",
    ),
    pytest.param(
        {"set_values": {"services.profile.enabled": "true", "services.profile.database.existingSecret": ""}},
        ["services.profile.database.existingSecret"],
        id="enabled-service-without-database",
    ),
    pytest.param(
        {"set_values": {"nats.existingSecret": ""}},
        ["nats.existingSecret", "String length must be greater than or equal to 1"],
        id="missing-nats-url-and-secret",
    ),
    pytest.param(
        {"set_values": {"services.consent.database.url": "mysql://db/consent"}},
        ["services.consent.database.url", "Does not match pattern"],
        id="database-url-not-postgresql",
    ),
    pytest.param(
        {"set_json": {"services.offer.calls": ["consent", "billing"]}},
        ["services.offer.calls.1", "must be one of the following"],
        id="call-to-unknown-service",
    ),
    pytest.param(
        {"set_values": {"default.logFormat": "xml"}},
        ["default.logFormat", "must be one of the following"],
        id="bad-log-format",
    ),
    pytest.param(
        {"set_json": {"default.replicas": "two"}},
        ["default.replicas", "Invalid type. Expected: integer, given: string"],
        id="replicas-not-a-number",
    ),
    pytest.param(
        {"set_values": {"default.env.CONSENT_DATABASE_URL": "postgresql://u:p@h/db"}},
        ["default.env", "CONSENT_DATABASE_URL"],
        id="secret-in-plain-env",
    ),
    # Identity's keys (and the old ones during a rotation) would be plain text in the ConfigMap.
    pytest.param(
        {"set_values": {"services.identity.env.TAILOR_IDENTITY_ENCRYPTION_KEY": "c2VjcmV0"}},
        ["services.identity.env", "TAILOR_IDENTITY_ENCRYPTION_KEY"],
        id="identity-key-in-plain-env",
    ),
    pytest.param(
        {"set_json": {"services.identity.env.TAILOR_IDENTITY_OLD_BLIND_INDEX_KEYS": '{"1": "c2VjcmV0"}'}},
        ["services.identity.env", "TAILOR_IDENTITY_OLD_BLIND_INDEX_KEYS"],
        id="old-identity-keys-in-plain-env",
    ),
    # The services open the URL with SQLAlchemy's asyncpg dialect: postgresql:// loads psycopg2
    # (not installed) and postgres:// no dialect at all, so the migration job failed at install.
    pytest.param(
        {"set_values": {"services.consent.database.url": "postgresql://u:p@db:5432/tailor_consent"}},
        ["services.consent.database.url", "Does not match pattern"],
        id="database-url-without-asyncpg",
    ),
    pytest.param(
        {"set_values": {"services.consent.database.url": "postgres://u:p@db:5432/tailor_consent"}},
        ["services.consent.database.url", "Does not match pattern"],
        id="database-url-postgres-scheme",
    ),
    pytest.param(
        {"set_json": {"services.consent.secretEnv.TAILOR_EXTRA_KEY": {"secretName": "keys"}}},
        ["services.consent.secretEnv.TAILOR_EXTRA_KEY", "key is required"],
        id="secret-env-without-key",
    ),
    pytest.param(
        {"set_values": {"streams.service": "billing"}},
        ["streams.service", "must be one of the following"],
        id="streams-runner-unknown",
    ),
    pytest.param(
        {"set_values": {"streams.replicas": "7"}},
        ["streams.replicas", "less than or equal to 5"],
        id="too-many-stream-replicas",
    ),
]


@pytest.mark.parametrize(("overrides", "messages"), BAD_VALUES)
def test_bad_values_are_rejected_with_a_clear_message(
    helm_template: Any, overrides: dict[str, Any], messages: list[str]
) -> None:
    result = helm_template(**overrides)
    assert result.returncode != 0, f"accepted: {overrides}"
    assert "values don't meet the specifications of the schema" in result.stderr
    for message in messages:
        assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(
            {"set_values": {"services.identity.database.existingSecret": ""}}, id="disabled-service-needs-no-database"
        ),
        pytest.param(
            {
                "set_values": {
                    "services.consent.database.url": "postgresql+asyncpg://u:p@db:5432/tailor_consent",
                    "services.consent.database.existingSecret": "",
                }
            },
            id="database-url-instead-of-secret",
        ),
        pytest.param(
            {"set_values": {"nats.url": "nats://nats:4222", "nats.existingSecret": ""}}, id="nats-url-instead-of-secret"
        ),
        pytest.param({"set_values": {"services.consent.replicas": "0"}}, id="zero-replicas"),
        pytest.param(
            {"set_values": {"services.identity.env.TAILOR_IDENTITY_ENCRYPTION_KEY_ID": "2"}},
            id="identity-key-id-in-env",
        ),
    ],
)
def test_good_values_are_accepted(helm_template: Any, overrides: dict[str, Any]) -> None:
    result = helm_template(**overrides)
    assert result.returncode == 0, result.stderr


def _object_schemas(node: Any, path: str = "#") -> list[tuple[str, dict[str, Any]]]:
    """Every schema that declares `properties`, outside if/then/anyOf-style constraints."""
    found = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((path, node))
        for key, value in node.items():
            if key not in COMBINATORS:
                found += _object_schemas(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _object_schemas(value, f"{path}/{index}")
    return found


def test_schema_objects_forbid_additional_properties() -> None:
    objects = _object_schemas(SCHEMA)
    assert len(objects) > 20
    loose = [path for path, schema in objects if schema.get("additionalProperties") is not False]
    assert not loose, f"schemas without additionalProperties: false: {loose}"


def test_schema_is_valid_draft7_and_accepts_defaults_and_examples() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft7Validator(SCHEMA)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    validator.validate(defaults)
    for example in sorted((CHART / "examples").glob("*.yaml")):
        values = yaml.safe_load(example.read_text()) or {}
        # Examples are overrides; the schema applies to them merged over the defaults.
        merged = _merge(json.loads(json.dumps(defaults)), values)
        errors = [e.message for e in validator.iter_errors(merged)]
        assert not errors, f"{example.name}: {errors}"


def test_every_default_key_can_be_overridden_per_service() -> None:
    workload = set(SCHEMA["definitions"]["workload"]["properties"])
    for name, service in SCHEMA["properties"]["services"]["properties"].items():
        definition = SCHEMA["definitions"][service["$ref"].rsplit("/", 1)[1]]
        assert workload <= set(definition["properties"]), name


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base
