"""Choosing the Redis client from the settings, without a server."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.redis_client import GatewayCluster, SentinelRedis, open_redis
from gateway.settings import Settings
from gateway.store import store_from_settings
from tests.conftest import PEPPER


def settings_for(url: str, **topology: Any) -> Settings:
    return Settings(key_pepper=PEPPER, redis_url=url, **topology)


async def test_a_plain_url_opens_one_redis_that_may_use_multi_exec() -> None:
    client, atomic = open_redis("redis://127.0.0.1:6399/2")
    assert type(client) is aioredis.Redis
    assert atomic is True
    await client.aclose()


async def test_sentinel_follows_the_named_master_and_keeps_multi_exec() -> None:
    settings = settings_for(
        "redis://:hunter2secret@10.0.0.1,10.0.0.2:26380/3",
        redis_sentinel_master="main",
    )
    client, atomic = open_redis(settings)
    assert isinstance(client, SentinelRedis)
    assert atomic is True
    pool = client.connection_pool
    assert pool.service_name == "main"
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "hunter2secret"
    sentinels = [
        (
            s.connection_pool.connection_kwargs["host"],
            s.connection_pool.connection_kwargs["port"],
        )
        for s in pool.sentinel_manager.sentinels
    ]
    assert sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    # The sentinels are asked without the master's password.
    assert all(
        s.connection_pool.connection_kwargs.get("password") is None
        for s in pool.sentinel_manager.sentinels
    )
    assert "hunter2secret" not in repr(client) + repr(pool)
    await client.aclose()


async def test_sentinels_with_a_password_of_their_own_get_it() -> None:
    settings = settings_for(
        "redis://:hunter2secret@10.0.0.1/0",
        redis_sentinel_master="main",
        redis_sentinel_password="sentinel-secret",
    )
    client, _ = open_redis(settings)
    pool = client.connection_pool
    assert pool.connection_kwargs["password"] == "hunter2secret"
    (sentinel,) = pool.sentinel_manager.sentinels
    assert sentinel.connection_pool.connection_kwargs["password"] == "sentinel-secret"
    assert "sentinel-secret" not in repr(client) + repr(pool) + repr(sentinel)
    await client.aclose()


async def test_cluster_writes_step_by_step() -> None:
    settings = settings_for(
        "redis://:hunter2secret@10.0.0.1:7000,10.0.0.2", redis_cluster=True
    )
    client, atomic = open_redis(settings)
    assert isinstance(client, GatewayCluster)
    assert atomic is False
    assert store_from_settings(settings, client).atomic is False
    assert "hunter2secret" not in repr(client)
    await client.aclose()


@pytest.mark.parametrize(
    ("topology", "atomic"),
    [
        pytest.param({}, True, id="standalone"),
        pytest.param({"redis_cluster": True}, False, id="cluster"),
    ],
)
async def test_a_client_passed_in_keeps_the_topology_of_the_settings(
    topology: dict[str, Any], atomic: bool
) -> None:
    client = aioredis.Redis()
    settings = settings_for("redis://127.0.0.1:6399", **topology)
    assert store_from_settings(settings, client).atomic is atomic
    await client.aclose()
