import pytest
from tailor_platform.config import ConfigError, ServiceSettings, database_url_for, load_settings


class DemoSettings(ServiceSettings):
    service_name = "demo"
    default_port = 50999


def test_service_database_is_derived_from_the_server_url() -> None:
    assert (
        database_url_for("postgresql://u:p@db:5432/postgres?sslmode=require", "consent")
        == "postgresql+asyncpg://u:p@db:5432/tailor_consent?sslmode=require"
    )
    assert database_url_for("postgresql://postgres:@/postgres?host=/tmp/pg", "identity") == (
        "postgresql+asyncpg://postgres:@/tailor_identity?host=/tmp/pg"
    )


def test_service_specific_variables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_DATABASE_URL", "postgresql://u@server/postgres")
    assert DemoSettings().service_database_url == "postgresql+asyncpg://u@server/tailor_demo"
    assert DemoSettings().grpc_port == 50999
    monkeypatch.setenv("TAILOR_DEMO_DATABASE_URL", "postgresql+asyncpg://u@elsewhere/demo")
    monkeypatch.setenv("TAILOR_DEMO_GRPC_PORT", "6000")
    monkeypatch.setenv("TAILOR_DEMO_DATABASE_READ_CONNECTIONS", "4")
    settings = DemoSettings()
    assert settings.service_database_url == "postgresql+asyncpg://u@elsewhere/demo"
    assert settings.grpc_port == 6000
    assert settings.database_read_connections == 4


def test_lists_come_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_CONSUMER_BACKOFF_S", "[0.5, 2]")
    assert DemoSettings().consumer_backoff_s == [0.5, 2.0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TAILOR_DEMO_WORKERS", "abc"),
        ("TAILOR_DEMO_WORKERS", "0"),
        ("TAILOR_DEMO_WORKERS", "500"),
        ("TAILOR_DEMO_DATABASE_READ_CONNECTIONS", "0"),
        ("TAILOR_DEMO_GRPC_PORT", "http"),
        ("TAILOR_DEMO_GRPC_PORT", "70000"),
        ("TAILOR_CONSUMER_MAX_DELIVER", "0"),
        ("TAILOR_CONSUMER_BATCH_SIZE", "0"),
        ("TAILOR_OUTBOX_BATCH_SIZE", "0"),  # the relay would query an empty batch forever
        ("TAILOR_CONSUMER_BACKOFF_S", "1,5,30"),
        ("TAILOR_CONSUMER_BACKOFF_S", "[-1]"),
        ("TAILOR_SHUTDOWN_GRACE_S", "ten"),
        ("TAILOR_SHUTDOWN_GRACE_S", "-3"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings(DemoSettings)
    assert str(raised.value).startswith(f"{variable}: ")


def test_a_bad_secret_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_CONSUMER_BACKOFF_S", '["s3cret"]')
    with pytest.raises(ConfigError) as raised:
        load_settings(DemoSettings)
    assert "s3cret" not in str(raised.value)
