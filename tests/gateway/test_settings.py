"""Settings: environment variables, defaults, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.settings import Settings, SettingsError, load_settings, parse_redis_url

GOOD_PEPPER = "x" * 40


def test_defaults_match_the_documented_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", GOOD_PEPPER)
    settings = load_settings()
    assert settings.listen_address == ("127.0.0.1", 8080)
    assert settings.admin_listen_address == ("127.0.0.1", 8081)
    assert settings.namespace == "rpagw"
    assert settings.max_key_lifetime_days == 366
    assert settings.key_headers == ["authorization", "x-api-key", "x-apikey"]
    assert settings.allow_query_key is False


def test_a_missing_pepper_names_the_variable() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == (
        "Invalid setting RPA_GATEWAY_KEY_PEPPER: is required but not set."
    )


def test_a_short_pepper_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", "tiny-secret-value")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "RPA_GATEWAY_KEY_PEPPER" in str(caught.value)
    assert "tiny-secret-value" not in str(caught.value)


def test_the_pepper_and_redis_password_stay_out_of_the_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", GOOD_PEPPER)
    monkeypatch.setenv("RPA_GATEWAY_REDIS_URL", "redis://:hunter2secret@db:6379/0")
    settings = load_settings()
    assert GOOD_PEPPER not in repr(settings)
    assert "hunter2secret" not in repr(settings)
    assert settings.pepper == GOOD_PEPPER.encode()


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        pytest.param("LISTEN", "8080", "host:port", id="listen-without-host"),
        pytest.param("ADMIN_LISTEN", "127.0.0.1:99999", "host:port", id="bad-port"),
        pytest.param("UPSTREAM_URL", "ftp://x", "http://", id="upstream-scheme"),
        pytest.param("NAMESPACE", "has space", "NAMESPACE", id="namespace"),
        pytest.param("MAX_KEY_LIFETIME_DAYS", "0", "greater than", id="lifetime"),
        pytest.param("TRUSTED_PROXIES", "10.0.0.0/8,nope", "'nope'", id="cidr"),
        pytest.param("REDIS_URL", "http://x", "redis://", id="redis-scheme"),
        pytest.param("KEY_HEADERS", " , ", "at least one", id="no-headers"),
    ],
)
def test_an_invalid_setting_stops_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", GOOD_PEPPER)
    monkeypatch.setenv(f"RPA_GATEWAY_{variable}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"Invalid setting RPA_GATEWAY_{variable}:")
    assert fragment in message
    assert "\n" not in message


def test_comma_lists_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", GOOD_PEPPER)
    monkeypatch.setenv("RPA_GATEWAY_KEY_HEADERS", "X-API-Key, Authorization")
    monkeypatch.setenv("RPA_GATEWAY_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")
    settings = load_settings()
    assert settings.key_headers == ["x-api-key", "authorization"]
    assert settings.trusted_proxies == ["10.0.0.0/8", "127.0.0.1"]


def test_a_dotenv_file_is_read(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(".env", "w") as env:
        env.write(
            f"RPA_GATEWAY_KEY_PEPPER={GOOD_PEPPER}\nRPA_GATEWAY_NAMESPACE=fromfile\n"
        )
    assert load_settings().namespace == "fromfile"


@pytest.mark.parametrize(
    ("environment", "variable", "fragment"),
    [
        pytest.param(
            {"REDIS_URL": "redis://a:6379,b:6379/0"},
            "REDIS_URL",
            "needs RPA_GATEWAY_REDIS_SENTINEL_MASTER or RPA_GATEWAY_REDIS_CLUSTER",
            id="host-list-without-topology",
        ),
        pytest.param(
            {"REDIS_CLUSTER": "true", "REDIS_SENTINEL_MASTER": "main"},
            "REDIS_CLUSTER",
            "exclude each other",
            id="cluster-and-sentinel",
        ),
        pytest.param(
            {"REDIS_CLUSTER": "true", "REDIS_URL": "unix:///run/redis.sock"},
            "REDIS_URL",
            "Cluster needs a redis:// or rediss:// URL",
            id="cluster-on-unix-socket",
        ),
        pytest.param(
            {"REDIS_SENTINEL_MASTER": "main", "REDIS_URL": "memory://demo"},
            "REDIS_URL",
            "Sentinel needs a redis:// or rediss:// URL",
            id="sentinel-in-memory",
        ),
        pytest.param(
            {"REDIS_CLUSTER": "true", "REDIS_URL": "redis://a:7000/1"},
            "REDIS_URL",
            "only database 0",
            id="cluster-database",
        ),
        pytest.param(
            {"REDIS_SENTINEL_MASTER": "main", "REDIS_URL": "redis://a?ssl_cert_reqs=x"},
            "REDIS_URL",
            "no ?options",
            id="sentinel-url-options",
        ),
        pytest.param(
            {"REDIS_SENTINEL_MASTER": "main", "REDIS_URL": "redis://a:1,:2"},
            "REDIS_URL",
            "host:port",
            id="sentinel-without-host",
        ),
        pytest.param(
            {"REDIS_SENTINEL_PASSWORD": "sentinel-secret"},
            "REDIS_SENTINEL_PASSWORD",
            "needs RPA_GATEWAY_REDIS_SENTINEL_MASTER",
            id="sentinel-password-without-sentinel",
        ),
        pytest.param(
            {"REDIS_CLUSTER": "true", "REDIS_WAIT_REPLICAS": "1"},
            "REDIS_WAIT_REPLICAS",
            "not supported on Redis Cluster",
            id="wait-on-cluster",
        ),
        pytest.param(
            {"REDIS_URL": "memory://x", "REDIS_WAIT_REPLICAS": "1"},
            "REDIS_WAIT_REPLICAS",
            "no replicas to wait for",
            id="wait-in-memory",
        ),
        pytest.param(
            {"REDIS_SENTINEL_MASTER": "no spaces"},
            "REDIS_SENTINEL_MASTER",
            "pattern",
            id="master-name",
        ),
    ],
)
def test_an_impossible_redis_topology_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    variable: str,
    fragment: str,
) -> None:
    monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", GOOD_PEPPER)
    for name, value in environment.items():
        monkeypatch.setenv(f"RPA_GATEWAY_{name}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"Invalid setting RPA_GATEWAY_{variable}:")
    assert fragment in message
    assert "\n" not in message


def test_a_redis_topology_is_read_without_echoing_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", GOOD_PEPPER)
    monkeypatch.setenv("RPA_GATEWAY_REDIS_SENTINEL_MASTER", "main")
    monkeypatch.setenv(
        "RPA_GATEWAY_REDIS_URL", "rediss://app:hunter2secret@s1:26379,s2/0"
    )
    monkeypatch.setenv("RPA_GATEWAY_REDIS_SENTINEL_PASSWORD", "sentinel-secret")
    settings = load_settings()
    assert settings.redis_sentinel_master == "main"
    assert settings.redis_cluster is False
    assert settings.redis_sentinel_password is not None
    assert settings.redis_sentinel_password.get_secret_value() == "sentinel-secret"
    assert "hunter2secret" not in repr(settings)
    assert "sentinel-secret" not in repr(settings)
    address = parse_redis_url(settings.redis_url.get_secret_value(), 26379)
    assert address.hosts == (("s1", 26379), ("s2", 26379))
    assert (address.tls, address.db, address.username) == (True, 0, "app")
    assert address.password == "hunter2secret"
    assert "hunter2secret" not in repr(address)


def test_a_bad_port_in_a_password_url_does_not_echo_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", GOOD_PEPPER)
    monkeypatch.setenv("RPA_GATEWAY_REDIS_CLUSTER", "true")
    monkeypatch.setenv("RPA_GATEWAY_REDIS_URL", "redis://:hunter2secret@a:x,b:1")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "'a:x'" in str(caught.value)
    assert "hunter2secret" not in str(caught.value)


def test_the_example_env_names_every_setting_and_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """config/example.env stays complete, and its values are valid as shown."""
    text = (Path(__file__).parents[2] / "config" / "example.env").read_text()
    shown = re.findall(r"^#? ?RPA_GATEWAY_([A-Z0-9_]+)=(.*)$", text, re.MULTILINE)
    assert {name.lower() for name, _ in shown} == set(Settings.model_fields)
    for line in text.splitlines():
        if line.startswith("RPA_GATEWAY_"):
            name, _, value = line.partition("=")
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", GOOD_PEPPER)
    settings = load_settings()
    assert settings.namespace == "rpagw"
