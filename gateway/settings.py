"""Settings, read from ``RPA_GATEWAY_*`` environment variables and ``.env``.

A bad setting stops start-up with one line that names the variable; the
pepper and the Redis password never appear in a repr, a log or an error.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.assertion import load_public_key, load_signing_key

ENV_PREFIX = "RPA_GATEWAY_"

CommaList = Annotated[list[str], NoDecode]


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the variable."""


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def parse_hostport(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{value}' is not host:port with a port from 1 to 65535")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """A ``redis://`` or ``rediss://`` URL whose host part may be a list."""

    tls: bool
    hosts: tuple[tuple[str, int], ...]
    db: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


def parse_redis_url(url: str, default_port: int = 6379) -> RedisAddress:
    """Take a URL with one or more ``host[:port]`` apart.

    Errors name the hosts but never the URL, which may hold a password.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("the URL must start with redis:// or rediss://")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    hosts = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            raise ValueError("the URL names no host, or an empty one in its list")
        if item.endswith("]") or ":" not in item:
            hosts.append((item.strip("[]"), default_port))
        else:
            hosts.append(parse_hostport(item, "redis_url"))
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise ValueError(f"'/{path}' is not a database number")
    return RedisAddress(
        tls=parts.scheme == "rediss",
        hosts=tuple(hosts),
        db=int(path),
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


class Settings(BaseSettings):
    """Every setting of the gateway and the admin app."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # Store. The topology comes before the URL: the URL's check reads it.
    redis_sentinel_master: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # The sentinels' own password (their requirepass), apart from the URL's.
    redis_sentinel_password: SecretStr | None = None
    redis_cluster: bool = False
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # Each change waits for this many Redis replicas to confirm it.
    redis_wait_replicas: int = Field(0, ge=0, le=64)
    redis_wait_timeout_ms: int = Field(1000, ge=1, le=60_000)
    namespace: str = Field("rpagw", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    key_pepper: SecretStr
    max_key_lifetime_days: int = Field(366, ge=1, le=3660)
    expired_retention_days: int = Field(30, ge=0, le=3660)

    # Listeners and upstream
    listen: str = "127.0.0.1:8080"
    admin_listen: str = "127.0.0.1:8081"
    upstream_url: str | None = None
    upstream_connect_timeout: float = Field(5.0, gt=0, le=300)
    upstream_read_timeout: float = Field(60.0, gt=0, le=3600)
    upstream_max_connections: int = Field(256, ge=1, le=100_000)

    # Verification
    key_headers: CommaList = ["authorization", "x-api-key", "x-apikey"]
    allow_query_key: bool = False
    query_key_param: str = "api_key"
    cache_ttl_seconds: float = Field(10.0, ge=0, le=3600)
    negative_cache_ttl_seconds: float = Field(5.0, ge=0, le=3600)
    cache_max_entries: int = Field(200_000, ge=0)
    stale_if_error_seconds: float = Field(300.0, ge=0, le=86_400)
    realm: str = Field("rpa-gateway", pattern=r'^[^"\\\r\n]{1,64}$')

    # Forwarding
    user_id_header: str = Field("X-RPA-User-Id", pattern=r"^[A-Za-z0-9-]{1,64}$")
    key_id_header: str = Field("X-RPA-Key-Id", pattern=r"^[A-Za-z0-9-]{1,64}$")
    trusted_proxies: CommaList = []

    # Signed identity assertions: off unless a signing key file is set.
    assertion_key_file: str | None = None
    assertion_published_key_files: CommaList = []
    assertion_header: str = Field(
        "X-RPA-Identity-Assertion", pattern=r"^[A-Za-z0-9-]{1,64}$"
    )
    assertion_issuer: str = Field("rpa-gateway", min_length=1, max_length=256)
    assertion_audience: str = Field("rpa-manager", min_length=1, max_length=256)
    assertion_ttl_seconds: int = Field(60, ge=10, le=3600)

    # Admin
    admin_sso_header: str | None = None
    admin_sso_proxies: CommaList = []
    audit_max_len: int = Field(100_000, ge=100)

    # Operations
    log_level: str = Field("info", pattern=r"^(debug|info|warning|error)$")
    access_log: bool = True

    @field_validator(
        "key_headers",
        "trusted_proxies",
        "admin_sso_proxies",
        "assertion_published_key_files",
        mode="before",
    )
    @classmethod
    def _comma_lists(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("key_headers")
    @classmethod
    def _lower_headers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one header name is required")
        return [name.lower() for name in value]

    @field_validator("trusted_proxies", "admin_sso_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"'{item}' is not an IP address or network") from None
        return value

    @field_validator("key_pepper")
    @classmethod
    def _pepper_length(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 32:
            raise ValueError(
                "the pepper must be at least 32 characters of random data, "
                "for example from 'openssl rand -base64 32'"
            )
        return value

    @field_validator("listen", "admin_listen")
    @classmethod
    def _hostport(cls, value: str) -> str:
        parse_hostport(value, "")
        return value

    @field_validator("upstream_url")
    @classmethod
    def _upstream(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"'{value}' is not an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("redis_sentinel_master", "assertion_key_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("assertion_key_file")
    @classmethod
    def _signing_key(cls, value: str | None) -> str | None:
        if value is not None:
            load_signing_key(value)
        return value

    @field_validator("assertion_published_key_files")
    @classmethod
    def _published_keys(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if value and not info.data.get("assertion_key_file"):
            raise ValueError(
                f"published keys need a signing key in {ENV_PREFIX}ASSERTION_KEY_FILE"
            )
        for path in value:
            load_public_key(path)
        return value

    @field_validator("redis_sentinel_password", mode="before")
    @classmethod
    def _sentinel_password(cls, value: Any, info: ValidationInfo) -> Any:
        if value in ("", None):
            return None
        if not info.data.get("redis_sentinel_master"):
            raise ValueError(
                f"a sentinel password needs {ENV_PREFIX}REDIS_SENTINEL_MASTER"
            )
        return value

    @field_validator("redis_cluster")
    @classmethod
    def _one_topology(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("redis_sentinel_master"):
            raise ValueError(
                f"Cluster and Sentinel exclude each other; unset "
                f"{ENV_PREFIX}REDIS_CLUSTER or {ENV_PREFIX}REDIS_SENTINEL_MASTER"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        url = value.get_secret_value()
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix", "memory"):
            raise ValueError("the URL must start with redis://, rediss:// or unix://")
        sentinel = info.data.get("redis_sentinel_master")
        cluster = info.data.get("redis_cluster")
        topology = "Sentinel" if sentinel else "Cluster" if cluster else None
        if scheme in ("unix", "memory"):
            if topology:
                raise ValueError(f"{topology} needs a redis:// or rediss:// URL")
            return value
        address = parse_redis_url(url, 26379 if sentinel else 6379)
        if topology is None and len(address.hosts) > 1:
            raise ValueError(
                f"a list of hosts needs {ENV_PREFIX}REDIS_SENTINEL_MASTER "
                f"or {ENV_PREFIX}REDIS_CLUSTER"
            )
        if topology and urlsplit(url).query:
            raise ValueError(f"{topology} takes no ?options in the URL")
        if cluster and address.db != 0:
            raise ValueError("Redis Cluster has only database 0")
        return value

    @field_validator("redis_wait_replicas")
    @classmethod
    def _wait_replicas(cls, value: int, info: ValidationInfo) -> int:
        if not value:
            return value
        if info.data.get("redis_cluster"):
            raise ValueError(
                "waiting for replicas is not supported on Redis Cluster; "
                f"unset {ENV_PREFIX}REDIS_WAIT_REPLICAS"
            )
        url = info.data.get("redis_url")
        if url is not None and url.get_secret_value().startswith("memory://"):
            raise ValueError("the in-process store has no replicas to wait for")
        return value

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_hostport(self.listen, "listen")

    @property
    def admin_listen_address(self) -> tuple[str, int]:
        return parse_hostport(self.admin_listen, "admin_listen")

    @property
    def pepper(self) -> bytes:
        return self.key_pepper.get_secret_value().encode()


def describe_error(exc: ValidationError) -> str:
    """One line naming the first bad variable, without its value."""
    first = exc.errors(include_input=False, include_url=False)[0]
    field = str(first["loc"][0]) if first["loc"] else "settings"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "is required but not set"
    return f"Invalid setting {ENV_PREFIX}{field.upper()}: {message}."


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation error into ``SettingsError``."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_error(exc)) from None
