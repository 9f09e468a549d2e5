"""The store, the verifier and invalidations on Sentinel and on Cluster.

Each test starts its own servers on free ports of 127.0.0.1: one master and
one sentinel (quorum 1), or three cluster masters without replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from gateway.invalidation import InvalidationSubscriber
from gateway.problems import AuthError, StoreUnavailable
from gateway.redis_client import open_redis
from gateway.settings import Settings
from gateway.store import explain as describe
from gateway.store import store_from_settings
from gateway.verifier import Verifier
from tests.conftest import PEPPER, RedisProcess, free_port, require_binary

pytestmark = pytest.mark.redis

MASTER_NAME = "rpa-main"
T = TypeVar("T")
IN_A_MONTH = time.time() + 30 * 86400


class Servers:
    """Redis processes of one test, all stopped however the test ends."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[RedisProcess] = []

    async def start(self, name: str, *args: str, ready: bytes) -> None:
        """Start one server and wait for the log line that says it is up."""
        workdir = self.directory / name
        workdir.mkdir()
        self.processes.append(
            await RedisProcess.start(name, workdir, *args, ready=ready)
        )

    def kill(self, name: str) -> None:
        """SIGKILL one server, as a crash would stop it."""
        (process,) = (p for p in self.processes if p.name == name)
        process.process.kill()

    async def stop(self) -> None:
        for process in self.processes:
            await process.stop()


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Servers]:
    started = Servers(tmp_path)
    try:
        yield started
    finally:
        await started.stop()


async def start_sentinel(
    servers: Servers,
    directory: Path,
    master: int,
    *,
    password: str | None = None,
    down_after_ms: int = 5000,
) -> str:
    """One sentinel (quorum 1) watching the master; a URL that names it."""
    port = free_port()
    config = directory / "sentinel.conf"
    lines = [
        f"port {port}",
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 1",
        f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
    ]
    if password:
        lines.append(f"requirepass {password}")
    config.write_text("\n".join(lines) + "\n")
    await servers.start("sentinel", str(config), "--sentinel", ready=b"+monitor master")
    return f"redis://127.0.0.1:{port}/0"


async def start_master(servers: Servers) -> int:
    port = free_port()
    await servers.start(
        "master", "--port", str(port), ready=b"Ready to accept connections"
    )
    return port


async def start_replica(servers: Servers, master: int) -> int:
    """A replica of the master, in sync when this returns; its port."""
    port = free_port()
    await servers.start(
        "replica",
        "--port",
        str(port),
        "--replicaof",
        "127.0.0.1",
        str(master),
        ready=b"MASTER <-> REPLICA sync: Finished",
    )
    # The replica has loaded the data, but the master counts it for WAIT only
    # once it has seen the replica's first acknowledgement.
    on_master = aioredis.Redis(port=master, decode_responses=True)
    try:
        async with asyncio.timeout(10):
            while await on_master.execute_command("WAIT", 1, 100) < 1:
                pass
    finally:
        await on_master.aclose()
    return port


@pytest.fixture
async def sentinel_url(servers: Servers, tmp_path: Path) -> str:
    """A master and one sentinel watching it; the URL names the sentinel."""
    return await start_sentinel(servers, tmp_path, await start_master(servers))


@pytest.fixture
async def cluster_url(servers: Servers) -> str:
    """Three masters sharing the slots; the URL names two of them as seeds."""
    ports = [free_port() for _ in range(3)]
    for port in ports:
        await servers.start(
            f"node-{port}",
            "--port",
            str(port),
            # The bus port defaults to port + 10000, which may be taken or
            # beyond 65535 for an ephemeral port.
            "--cluster-port",
            str(free_port()),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            ready=b"Ready to accept connections",
        )
    create = await asyncio.create_subprocess_exec(
        require_binary("redis-cli"),
        "--cluster",
        "create",
        *(f"127.0.0.1:{port}" for port in ports),
        "--cluster-replicas",
        "0",
        "--cluster-yes",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(20):
        output, _ = await create.communicate()
    assert create.returncode == 0, output.decode(errors="replace")
    async with asyncio.timeout(10):
        for port in ports:
            await _until_cluster_ok(port)
    return f"redis://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"


async def _until_cluster_ok(port: int) -> None:
    node = aioredis.Redis(port=port, decode_responses=True)
    try:
        # No event announces it: the nodes agree on the slots by gossip.
        while (await node.cluster("INFO")).get("cluster_state") != "ok":
            await asyncio.sleep(0.1)
    finally:
        await node.aclose()


class Watched(InvalidationSubscriber):
    """Lets a test await each invalidation message it handles."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.handled = asyncio.Queue[str]()

    def handle(self, data: str) -> None:
        super().handle(data)
        self.handled.put_nowait(data)


def topology_settings(url: str, **topology: Any) -> Settings:
    return Settings(
        key_pepper=PEPPER,
        namespace="topo",
        redis_url=url,
        upstream_url="http://127.0.0.1:9",
        **topology,
    )


async def exercise_store(settings: Settings, *, atomic: bool) -> None:
    """Users and keys, verification, and a revoke evicting the cache entry."""
    store = store_from_settings(settings)
    assert store.atomic is atomic
    verifier = Verifier.from_settings(settings, store)
    subscriber = Watched(store.redis, store.channel, verifier.cache)
    subscriber.start()
    try:
        await asyncio.wait_for(subscriber.subscribed.wait(), 5)
        await store.add_user("alice", "Alice", ["user_api_key.create"])
        first, plaintext = await store.create_key(
            "alice", name="robot", expires_at=IN_A_MONTH
        )
        second, _ = await store.create_key(
            "alice", name="backup", expires_at=IN_A_MONTH
        )
        everyone = await store.list_keys()
        assert [record.id for record in everyone] == [first.id, second.id]
        edited = await store.edit_key(first.id, name="robot-2", description="d")
        assert (edited.name, edited.description) == ("robot-2", "d")
        assert [record.name for record in await store.list_keys("alice")] == [
            "robot-2",
            "backup",
        ]
        # The create and the edit each announced the key: let both arrive
        # before the cache is filled, or they would evict the entry.
        await handled(subscriber, f"k:{first.key_hash}", times=2)

        identity = await verifier.verify(plaintext)
        assert (identity.key_id, identity.user_id) == (first.id, "alice")
        assert verifier.cache.get(first.key_hash) is not None

        await store.revoke_key(first.id)
        await handled(subscriber, f"k:{first.key_hash}")
        assert verifier.cache.get(first.key_hash) is None
        with pytest.raises(AuthError):
            await verifier.verify(plaintext)
        remaining = await store.list_keys("alice")
        assert [record.id for record in remaining] == [second.id]
        assert await store.remove_user("alice") == 1
        assert await store.list_keys() == []
        assert await store.list_users() == []
    finally:
        await subscriber.stop()
        await store.redis.aclose()


async def handled(subscriber: Watched, message: str, *, times: int = 1) -> None:
    """Wait until the subscriber has handled ``message`` that many times."""
    async with asyncio.timeout(5):
        while times:
            if await subscriber.handled.get() == message:
                times -= 1


async def test_sentinel_serves_the_store_verifier_and_invalidations(
    sentinel_url: str,
) -> None:
    settings = topology_settings(sentinel_url, redis_sentinel_master=MASTER_NAME)
    await exercise_store(settings, atomic=True)


async def test_cluster_serves_the_store_verifier_and_invalidations(
    cluster_url: str,
) -> None:
    settings = topology_settings(cluster_url, redis_cluster=True)
    await exercise_store(settings, atomic=False)


async def test_cluster_spreads_one_key_over_several_nodes(cluster_url: str) -> None:
    """So the writes above did cross slots, where MULTI/EXEC would fail."""
    client = open_redis(topology_settings(cluster_url, redis_cluster=True)).client
    try:
        await client.initialize()
        names = ["topo:k:some-hash", "topo:id:some-id", "topo:keys", "topo:users"]
        assert len({client.get_node_from_key(name).name for name in names}) > 1
    finally:
        await client.aclose()


async def test_sentinels_with_a_password_need_it_and_say_so_without_it(
    servers: Servers, tmp_path: Path
) -> None:
    url = await start_sentinel(
        servers, tmp_path, await start_master(servers), password="sentinel-pw-1"
    )
    settings = topology_settings(
        url,
        redis_sentinel_master=MASTER_NAME,
        redis_sentinel_password="sentinel-pw-1",
    )
    await exercise_store(settings, atomic=True)

    without = store_from_settings(
        topology_settings(url, redis_sentinel_master=MASTER_NAME)
    )
    try:
        with pytest.raises(StoreUnavailable) as refused:
            await without.ping()
    finally:
        await without.redis.aclose()
    # What check and the start-up report say: which sentinel, and why.
    reason = describe(refused.value)
    assert f"No master found for '{MASTER_NAME}' : 127.0.0.1:" in reason
    assert "AuthenticationError" in reason
    assert "<redis." not in reason


async def test_after_a_sentinel_failover_keys_verify_and_revocations_arrive(
    servers: Servers, tmp_path: Path
) -> None:
    """The master dies; the sentinel promotes its replica; the gateway follows."""
    master = await start_master(servers)
    replica = await start_replica(servers, master)
    # Shorter than this, the promoted replica can itself look down while
    # the sentinel reconnects to it after the switch, and fail over again.
    url = await start_sentinel(servers, tmp_path, master, down_after_ms=1000)
    sentinel = aioredis.Redis.from_url(url, decode_responses=True)
    settings = topology_settings(url, redis_sentinel_master=MASTER_NAME)
    store = store_from_settings(settings)
    verifier = Verifier.from_settings(settings, store)
    subscriber = Watched(store.redis, store.channel, verifier.cache)
    subscriber.start()
    try:
        async with asyncio.timeout(10):
            # The sentinel learns of the replica from the master's INFO.
            while not await sentinel.sentinel_slaves(MASTER_NAME):
                await asyncio.sleep(0.05)
        await asyncio.wait_for(subscriber.subscribed.wait(), 5)
        await store.add_user("alice", "Alice", ["user_api_key.create"])
        record, plaintext = await store.create_key(
            "alice", name="robot", expires_at=IN_A_MONTH
        )
        assert await store.redis.wait(1, 2000) == 1  # on the replica too
        # The create's own invalidation, out of the way of the revoke's.
        await handled(subscriber, f"k:{record.key_hash}")

        servers.kill("master")
        async with asyncio.timeout(20):
            while True:
                address = await sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
                if int(address[1]) == replica:
                    break
                await asyncio.sleep(0.05)
            # Each dead pooled connection fails once, and just after the
            # switch the sentinel may not vouch for the new master yet: 503s
            # for a moment, as clients would see them, then none.
            identity = await eventually(lambda: verifier.verify(plaintext))
            second, second_key = await eventually(
                lambda: store.create_key("alice", name="after", expires_at=IN_A_MONTH)
            )
            await subscriber.subscribed.wait()
        assert identity.key_id == record.id
        # Writes went to the new master, and its invalidations reach the cache.
        assert (await verifier.verify(second_key)).key_id == second.id
        await store.revoke_key(record.id)
        await handled(subscriber, f"k:{record.key_hash}")
        with pytest.raises(AuthError):
            await verifier.verify(plaintext)
    finally:
        await subscriber.stop()
        await store.redis.aclose()
        await sentinel.aclose()


async def eventually(action: Callable[[], Awaitable[T]]) -> T:
    """The action's result once the store answers (the caller bounds the time)."""
    while True:
        try:
            return await action()
        except StoreUnavailable:
            await asyncio.sleep(0.05)


async def test_waiting_for_a_replica_confirms_each_change_or_says_it_did_not(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    master = await start_master(servers)
    replica = await start_replica(servers, master)
    settings = topology_settings(
        f"redis://127.0.0.1:{master}/0",
        redis_wait_replicas=1,
        redis_wait_timeout_ms=1000,
    )
    store = store_from_settings(settings)
    on_replica = aioredis.Redis(port=replica, decode_responses=True)
    try:
        await store.add_user("alice", "Alice", ["user_api_key.create"])
        record, _ = await store.create_key("alice", name="robot", expires_at=IN_A_MONTH)
        # The answer came after the replica confirmed: it has the record.
        name = f"topo:k:{record.key_hash}"
        assert await on_replica.hget(name, "id") == record.id
        assert not [r for r in caplog.records if r.levelname == "WARNING"]

        # A step that fails inside the transaction is reported.
        await store.redis.set("topo:keys", "not a set")
        with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
            await store.create_key("alice", name="second", expires_at=IN_A_MONTH)
        await store.redis.delete("topo:keys")

        servers.kill("replica")
        started = time.monotonic()
        await store.revoke_key(record.id)
        assert time.monotonic() - started >= 0.9  # it waited, then gave up
        assert await store.get_key(record.id) is None  # the master has it
        (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
        assert "confirmed by 0 of 1 Redis replicas within 1000 ms" in warning.message
    finally:
        await on_replica.aclose()
        await store.redis.aclose()
