"""Clients for the Redis topologies the store runs on.

    RPA_GATEWAY_REDIS_URL alone          one Redis (``redis.asyncio.Redis``)
    + RPA_GATEWAY_REDIS_SENTINEL_MASTER  the URL's hosts are sentinels; the
                                         client follows that master
      (+ RPA_GATEWAY_REDIS_SENTINEL_PASSWORD, the sentinels' own password)
    + RPA_GATEWAY_REDIS_CLUSTER=true     the URL's hosts seed a Redis Cluster

``memory://NAME`` is an in-process Redis for the demo. In each case the URL's
user, password, database and ``rediss://`` apply to the data nodes.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.settings import Settings, parse_redis_url

_TIMEOUTS: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 2.0}
_MEMORY_SERVERS: dict[str, Any] = {}


class Opened(NamedTuple):
    """A client, and whether the store may wrap its writes in MULTI/EXEC."""

    client: Any
    atomic: bool


def _retrying() -> dict[str, Any]:
    # One immediate retry on a broken connection: after a Redis restart or
    # failover every pooled connection is dead, and without it each one
    # would fail a request with 503 before being replaced.
    return {
        "health_check_interval": 15,
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError],
    }


def open_redis(source: Settings | str) -> Opened:
    """A client for the settings' topology; a bare URL means one Redis."""
    sentinel_password = None
    if isinstance(source, str):
        url, master, cluster = source, None, False
    else:
        url = source.redis_url.get_secret_value()
        master, cluster = source.redis_sentinel_master, source.redis_cluster
        if source.redis_sentinel_password is not None:
            sentinel_password = source.redis_sentinel_password.get_secret_value()
    if url.startswith("memory://"):
        return Opened(_memory(url), atomic=True)
    if master:
        return Opened(_sentinel(url, master, sentinel_password), atomic=True)
    if cluster:
        # One MULTI/EXEC cannot span slots: the store writes step by step.
        return Opened(_cluster(url), atomic=False)
    client = aioredis.Redis.from_url(
        url, decode_responses=True, **_TIMEOUTS, **_retrying()
    )
    return Opened(client, atomic=True)


def _memory(url: str) -> Any:
    import fakeredis

    server = _MEMORY_SERVERS.setdefault(url, fakeredis.FakeServer())
    return fakeredis.FakeAsyncRedis(server=server, decode_responses=True)


class SentinelRedis(aioredis.Redis):
    """A master's client that also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = cast(SentinelConnectionPool, self.connection_pool)
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def _sentinel(url: str, master: str, password: str | None) -> SentinelRedis:
    address = parse_redis_url(url, default_port=26379)
    # The sentinels get TLS like the data nodes but a password of their own
    # (Sentinel's requirepass): the URL's credentials are the master's.
    sentinels = Sentinel(
        list(address.hosts),
        sentinel_kwargs={**_TIMEOUTS, "ssl": address.tls, "password": password},
    )
    client: SentinelRedis = sentinels.master_for(
        master,
        redis_class=SentinelRedis,
        decode_responses=True,
        username=address.username,
        password=address.password,
        db=address.db,
        ssl=address.tls,
        **_TIMEOUTS,
        **_retrying(),
    )
    return client


class _ClusterPubSub(ClusterPubSub):
    async def subscribe(self, *args: Any, **kwargs: Any) -> None:
        # redis-py 8.1 picks the node for the channel's slot from the slot
        # map without loading it first: a KeyError on a fresh client.
        await self.cluster.initialize()
        await super().subscribe(*args, **kwargs)


class GatewayCluster(RedisCluster):
    """A cluster client whose pub/sub works before any other command ran.

    Classic PUBLISH reaches every node of a cluster, so the subscription on
    the node that owns the channel's slot receives every invalidation.
    """

    def pubsub(
        self,
        node: ClusterNode | None = None,
        host: str | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> ClusterPubSub:
        return _ClusterPubSub(self, node=node, host=host, port=port, **kwargs)


def _cluster(url: str) -> GatewayCluster:
    address = parse_redis_url(url)
    return GatewayCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.hosts],
        username=address.username,
        password=address.password,
        ssl=address.tls,
        decode_responses=True,
        **_TIMEOUTS,
    )
