"""The verifier: malformed keys, caching, races, and Redis outages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway import keys
from gateway.invalidation import InvalidationSubscriber
from gateway.problems import AuthError, StoreUnavailable
from gateway.server import Context, build_gateway_app
from gateway.settings import Settings
from gateway.store import PRIVILEGES, KeyStore
from gateway.verifier import EXPIRED, INVALID, MALFORMED, MISSING, Verifier
from tests.conftest import PEPPER
from tests.gateway.conftest import (
    GATEWAY,
    CommandCounter,
    KeyMaker,
    PrivateRedis,
    Upstream,
    bearer,
)


@pytest.fixture
def verifier(settings: Settings, store: KeyStore) -> Verifier:
    return Verifier.from_settings(settings, store)


@pytest.fixture
async def subscribed(
    verifier: Verifier, store: KeyStore
) -> AsyncIterator[InvalidationSubscriber]:
    subscriber = InvalidationSubscriber(store.redis, store.channel, verifier.cache)
    subscriber.start()
    await asyncio.wait_for(subscriber.subscribed.wait(), 5)
    yield subscriber
    await subscriber.stop()


def unknown_key() -> str:
    return keys.generate_key()


def mistyped(key: str) -> str:
    flipped = "A" if key[10] != "A" else "B"
    return key[:10] + flipped + key[11:]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("rpa_short", id="short"),
        pytest.param("xyz_" + "a" * 46, id="wrong-prefix"),
        pytest.param("rpa_" + "!" * 46, id="bad-alphabet"),
        pytest.param(None, id="missing"),
    ],
)
async def test_a_malformed_or_missing_key_is_refused_without_any_redis_command(
    verifier: Verifier, store: KeyStore, monkeypatch: pytest.MonkeyPatch, value: Any
) -> None:
    counter = CommandCounter(store.redis, monkeypatch)
    with pytest.raises(AuthError) as refused:
        await verifier.verify(value)
    assert refused.value in (MALFORMED, MISSING)
    assert counter.count == 0


async def test_a_key_with_a_wrong_checksum_costs_no_redis_command(
    client: httpx.AsyncClient,
    store: KeyStore,
    make_key: KeyMaker,
    monkeypatch: pytest.MonkeyPatch,
    upstream: Upstream,
) -> None:
    _, key = await make_key()
    counter = CommandCounter(store.redis, monkeypatch)
    response = await client.get("/x", headers=bearer(mistyped(key)))
    assert response.status_code == 401
    assert "malformed" in response.json()["detail"]
    assert counter.count == 0
    assert upstream.seen == []


async def test_a_good_key_costs_one_lookup_then_none_while_cached(
    verifier: Verifier,
    store: KeyStore,
    make_key: KeyMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record, key = await make_key()
    counter = CommandCounter(store.redis, monkeypatch)
    identity = await verifier.verify(key)
    assert (identity.user_id, identity.key_id) == ("alice", record.id)
    first = counter.count
    assert first == 1  # one script call reads the key and its user
    for _ in range(50):
        await verifier.verify(key)
    assert counter.count == first
    assert verifier.hits == 50


async def test_cached_grants_only_what_the_cache_alone_can_grant(
    verifier: Verifier,
    store: KeyStore,
    make_key: KeyMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record, key = await make_key()
    _, expiring = await make_key("bob", expires_in=0.3)
    counter = CommandCounter(store.redis, monkeypatch)
    # Nothing cached yet, and never anything that is not a well-formed key.
    for value in (key, None, "", "rpa_short", mistyped(key), unknown_key()):
        assert verifier.cached(value) is None
    assert counter.count == 0 and verifier.hits == 0
    stranger = unknown_key()
    await verifier.verify(key)
    await verifier.verify(expiring)
    with pytest.raises(AuthError):
        await verifier.verify(stranger)
    verifier.take_used()
    identity = verifier.cached(key)
    assert identity is not None and identity.key_id == record.id
    assert verifier.hits == 1 and verifier.take_used().keys() == {record.id}
    # A negative entry, an expired key and a stale entry are for verify().
    assert verifier.cached(stranger) is None
    await asyncio.sleep(0.35)
    assert verifier.cached(expiring) is None
    verifier.cache.expire_all()
    assert verifier.cached(key) is None
    assert verifier.hits == 1 and counter.count == 3


async def test_an_unknown_key_is_cached_negatively(
    verifier: Verifier, store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CommandCounter(store.redis, monkeypatch)
    key = unknown_key()
    for _ in range(10):
        with pytest.raises(AuthError) as refused:
            await verifier.verify(key)
        assert refused.value is INVALID
    assert counter.count == 1


async def test_a_flood_of_one_bad_key_costs_a_single_redis_call(
    verifier: Verifier, store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CommandCounter(store.redis, monkeypatch)
    key = unknown_key()
    results = await asyncio.gather(
        *(verifier.verify(key) for _ in range(500)), return_exceptions=True
    )
    assert all(result is INVALID for result in results)
    assert counter.count == 1


async def test_a_new_key_works_at_once_although_it_was_unknown_a_moment_ago(
    verifier: Verifier,
    store: KeyStore,
    subscribed: InvalidationSubscriber,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Creation publishes an invalidation, which drops the negative entry."""
    await store.add_user("dora", privileges=PRIVILEGES)
    planted = keys.generate_key()
    monkeypatch.setattr(keys, "generate_key", lambda: planted)
    with pytest.raises(AuthError):
        await verifier.verify(planted)
    await store.create_key("dora", name="n", expires_at=4102444800.0)
    async with asyncio.timeout(5):
        while True:
            try:
                await verifier.verify(planted)
                break
            except AuthError:
                await asyncio.sleep(0.002)


async def test_revoking_while_many_lookups_are_in_flight_never_reinserts_the_key(
    verifier: Verifier,
    store: KeyStore,
    subscribed: InvalidationSubscriber,
    make_key: KeyMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lookups that read the record before the revocation finish after it."""
    record, key = await make_key()
    key_hash = store.hash_key(key)
    read_done = asyncio.Event()
    release = asyncio.Event()
    original_lookup = store.identities

    async def slow_lookup(wanted: list[str]) -> Any:
        found = await original_lookup(wanted)
        read_done.set()
        await release.wait()
        return found

    monkeypatch.setattr(store, "identities", slow_lookup)
    evicted = asyncio.Event()
    original_handle = subscribed.handle

    def handle(data: str) -> None:
        original_handle(data)
        if data == f"k:{key_hash}":
            evicted.set()

    monkeypatch.setattr(subscribed, "handle", handle)

    in_flight = [asyncio.create_task(verifier.verify(key)) for _ in range(200)]
    await asyncio.wait_for(read_done.wait(), 5)
    await store.revoke_key(record.id)
    await asyncio.wait_for(evicted.wait(), 5)
    release.set()
    results = await asyncio.gather(*in_flight, return_exceptions=True)

    # They began before the revocation, so either answer is linearizable;
    # what must never happen is the stale answer landing in the cache.
    assert all(not isinstance(r, BaseException) or r is INVALID for r in results)
    assert verifier.cache.get(key_hash) is None
    monkeypatch.setattr(store, "identities", original_lookup)
    with pytest.raises(AuthError) as refused:
        await verifier.verify(key)
    assert refused.value is INVALID


async def test_revoked_keys_stay_refused_under_repeated_races(
    verifier: Verifier,
    store: KeyStore,
    subscribed: InvalidationSubscriber,
    make_key: KeyMaker,
) -> None:
    """Lookups and revocations interleave freely; a revoked key never returns."""
    for _ in range(10):
        record, key = await make_key()
        lookups = [asyncio.create_task(verifier.verify(key)) for _ in range(20)]
        await store.revoke_key(record.id)
        await asyncio.gather(*lookups, return_exceptions=True)
        async with asyncio.timeout(5):
            while verifier.cache.get(store.hash_key(key)) is not None and (
                verifier.cache.get(store.hash_key(key)).identity is not None  # type: ignore[union-attr]
            ):
                await asyncio.sleep(0.002)
        with pytest.raises(AuthError):
            await verifier.verify(key)


# Batched misses ------------------------------------------------------------


async def test_a_burst_of_distinct_misses_costs_one_command_with_an_answer_per_key(
    verifier: Verifier,
    store: KeyStore,
    make_key: KeyMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    known = [await make_key() for _ in range(8)]
    _, disabled = await make_key("bob")
    await store.update_user("bob", disabled=True)
    unknown = [unknown_key() for _ in range(8)]
    burst = [key for _, key in known] * 2 + [disabled] + unknown
    counter = CommandCounter(store.redis, monkeypatch)

    results = await asyncio.gather(
        *(verifier.verify(key) for key in burst), return_exceptions=True
    )

    assert (counter.pipelines, counter.count) == (0, 1)
    found = dict(zip(burst, results, strict=True))
    for record, key in known:
        assert found[key] == verifier.cache.get(store.hash_key(key)).identity  # type: ignore[union-attr]
        assert (found[key].key_id, found[key].user_id) == (record.id, "alice")  # type: ignore[union-attr]
    assert all(found[key] is INVALID for key in [disabled, *unknown])


async def test_a_burst_of_misses_reloads_the_script_after_redis_forgot_it(
    verifier: Verifier, store: KeyStore, make_key: KeyMaker
) -> None:
    """After a restart or SCRIPT FLUSH, EVALSHA answers NOSCRIPT."""
    known = [await make_key() for _ in range(3)]
    await store.redis.script_flush()
    identities = await asyncio.gather(*(verifier.verify(key) for _, key in known))
    assert [i.key_id for i in identities] == [record.id for record, _ in known]


async def test_an_unreadable_record_fails_its_own_key_and_no_other(
    settings: Settings,
    store: KeyStore,
    make_key: KeyMaker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record of the wrong type or with a garbled expiry, amid good ones."""
    uncached = settings.model_copy(update={"cache_ttl_seconds": 0.0})
    verifier = Verifier.from_settings(uncached, store)
    good = [await make_key() for _ in range(3)]
    (_, wrong_type), (garbled, garbled_key) = await make_key(), await make_key()
    wrong_name = f"{store.ns}:k:{store.hash_key(wrong_type)}"
    await store.redis.delete(wrong_name)
    await store.redis.set(wrong_name, "not a hash")
    await store.redis.hset(
        f"{store.ns}:k:{garbled.key_hash}", "expires_at", "next tuesday"
    )
    burst = [key for _, key in good] + [wrong_type, garbled_key]
    counter = CommandCounter(store.redis, monkeypatch)

    results = await asyncio.gather(
        *(verifier.verify(key) for key in burst), return_exceptions=True
    )

    assert (counter.pipelines, counter.count) == (0, 1)
    assert [r.key_id for r in results[:3]] == [r.id for r, _ in good]  # type: ignore[union-attr]
    wrong, unreadable = results[3:]
    for error in (wrong, unreadable):
        assert isinstance(error, StoreUnavailable)
        assert error.detail == (
            "The key store holds an unreadable record for this key."
        )
    logged = [r.getMessage() for r in caplog.records if r.name == "gateway.error"]
    assert len(logged) == 2
    assert "WRONGTYPE" in logged[0]
    assert f"key {garbled.id} has expires_at 'next tuesday'" in logged[1]
    assert verifier.cache.get(store.hash_key(wrong_type)) is None
    assert verifier.cache.get(garbled.key_hash) is None
    # Alone, without a batch, the same errors.
    for key in (wrong_type, garbled_key):
        with pytest.raises(StoreUnavailable):
            await verifier.verify(key)


async def test_revoking_during_a_batched_lookup_never_reinserts_the_key(
    verifier: Verifier,
    store: KeyStore,
    subscribed: InvalidationSubscriber,
    make_key: KeyMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch read every record before the revocation and ends after it."""
    made = [await make_key() for _ in range(5)]
    revoked, revoked_key = made[0]
    revoked_hash = store.hash_key(revoked_key)
    read_done = asyncio.Event()
    release = asyncio.Event()
    original_identities = store.identities
    batches: list[int] = []

    async def slow_identities(hashes: list[str]) -> Any:
        batches.append(len(hashes))
        found = await original_identities(hashes)
        read_done.set()
        await release.wait()
        return found

    monkeypatch.setattr(store, "identities", slow_identities)
    evicted = asyncio.Event()
    original_handle = subscribed.handle

    def handle(data: str) -> None:
        original_handle(data)
        if data == f"k:{revoked_hash}":
            evicted.set()

    monkeypatch.setattr(subscribed, "handle", handle)

    burst = [key for _, key in made] * 10
    in_flight = [asyncio.create_task(verifier.verify(key)) for key in burst]
    await asyncio.wait_for(read_done.wait(), 5)
    await store.revoke_key(revoked.id)
    await asyncio.wait_for(evicted.wait(), 5)
    release.set()
    await asyncio.gather(*in_flight, return_exceptions=True)

    assert batches == [5]
    assert verifier.cache.get(revoked_hash) is None
    monkeypatch.setattr(store, "identities", original_identities)
    with pytest.raises(AuthError) as refused:
        await verifier.verify(revoked_key)
    assert refused.value is INVALID
    assert (await verifier.verify(made[1][1])).key_id == made[1][0].id


async def test_on_cluster_each_miss_is_looked_up_on_its_own(
    settings: Settings, store: KeyStore, make_key: KeyMaker
) -> None:
    """Without one-slot scripts there is nothing to batch: the old path."""
    known = [await make_key() for _ in range(4)]
    cluster = KeyStore(store.redis, store.ns, PEPPER.encode(), atomic=False)
    verifier = Verifier.from_settings(settings, cluster)
    calls: list[str] = []
    original_lookup = cluster.lookup

    async def counting_lookup(key_hash: str) -> Any:
        calls.append(key_hash)
        return await original_lookup(key_hash)

    cluster.lookup = counting_lookup  # type: ignore[method-assign]
    identities = await asyncio.gather(*(verifier.verify(key) for _, key in known))
    assert [i.key_id for i in identities] == [record.id for record, _ in known]
    assert len(calls) == 4


async def test_an_expired_key_in_the_cache_is_refused_as_expired(
    verifier: Verifier, make_key: KeyMaker
) -> None:
    _, key = await make_key(expires_in=-5)
    with pytest.raises(AuthError) as refused:
        await verifier.verify(key)
    assert refused.value is EXPIRED


async def test_last_used_times_are_collected_and_flushed_to_the_store(
    context: Context, make_key: KeyMaker
) -> None:
    record, key = await make_key()
    await context.verifier.verify(key)
    await context.flush_used()
    stored = await context.store.get_key(record.id)
    assert stored is not None and stored.last_used_at is not None
    assert context.verifier.take_used() == {}


# Redis outages -------------------------------------------------------------


@contextlib.asynccontextmanager
async def outage_gateway(
    private_redis: PrivateRedis,
    settings: Settings,
    upstream: Upstream,
    **overrides: Any,
) -> AsyncIterator[tuple[Context, httpx.AsyncClient]]:
    """A started gateway context on the private Redis, and a client for it."""
    configured = settings.model_copy(
        update={
            "redis_url": SecretStr(private_redis.url),
            "upstream_url": upstream.url,
            **overrides,
        }
    )
    context = Context.create(configured)
    await context.start()
    try:
        await asyncio.wait_for(context.subscriber.subscribed.wait(), 5)
        transport = httpx.ASGITransport(app=build_gateway_app(context))
        async with httpx.AsyncClient(transport=transport, base_url=GATEWAY) as client:
            yield context, client
    finally:
        await context.aclose()


@pytest.mark.redis
async def test_when_redis_is_down_known_keys_work_and_unknown_keys_get_503(
    private_redis: PrivateRedis, settings: Settings, upstream: Upstream
) -> None:
    async with outage_gateway(
        private_redis, settings, upstream, cache_ttl_seconds=0.0
    ) as (context, client):
        store = context.store
        await store.add_user("erin", privileges=PRIVILEGES)
        _, key = await store.create_key("erin", name="n", expires_at=4102444800.0)
        assert (await client.get("/x", headers=bearer(key))).status_code == 200

        await private_redis.stop()
        served = await client.get("/x", headers=bearer(key))
        assert served.status_code == 200
        assert context.verifier.stale_served >= 1

        unknown = await client.get("/x", headers=bearer(unknown_key()))
        assert unknown.status_code == 503
        assert int(unknown.headers["retry-after"]) > 0
        assert unknown.json()["request_id"] == unknown.headers["x-request-id"]
        assert "www-authenticate" not in unknown.headers

        ready = await client.get("/_gateway/ready")
        assert ready.status_code == 503


@pytest.mark.redis
async def test_stale_serving_ends_at_the_stale_bound(
    private_redis: PrivateRedis, settings: Settings, upstream: Upstream
) -> None:
    async with outage_gateway(
        private_redis,
        settings,
        upstream,
        cache_ttl_seconds=0.0,
        stale_if_error_seconds=0.0,
    ) as (context, client):
        await context.store.add_user("fay", privileges=PRIVILEGES)
        _, key = await context.store.create_key(
            "fay", name="n", expires_at=4102444800.0
        )
        assert (await client.get("/x", headers=bearer(key))).status_code == 200
        await private_redis.stop()
        assert (await client.get("/x", headers=bearer(key))).status_code == 503


@pytest.mark.redis
async def test_expiry_is_enforced_even_when_serving_from_the_stale_cache(
    private_redis: PrivateRedis, settings: Settings, upstream: Upstream
) -> None:
    async with outage_gateway(
        private_redis, settings, upstream, cache_ttl_seconds=0.0
    ) as (context, client):
        store = context.store
        await store.add_user("gus", privileges=PRIVILEGES)
        record, key = await store.create_key("gus", name="n", expires_at=4102444800.0)
        assert (await client.get("/x", headers=bearer(key))).status_code == 200
        # Make the cached identity expire without waiting for the clock.
        key_hash = store.hash_key(key)
        entry = context.verifier.cache.get(key_hash)
        assert entry is not None and entry.identity is not None
        expired = type(entry.identity)(record.id, "gus", 1.0)
        context.verifier.cache.put(key_hash, expired, context.verifier.cache.generation)
        await private_redis.stop()
        refused = await client.get("/x", headers=bearer(key))
        assert refused.status_code == 401
        assert "expired" in refused.json()["detail"]


@pytest.mark.redis
async def test_the_gateway_recovers_by_itself_when_redis_returns(
    private_redis: PrivateRedis, settings: Settings, upstream: Upstream
) -> None:
    async with outage_gateway(private_redis, settings, upstream) as (context, client):
        store = context.store
        await store.add_user("hal", privileges=PRIVILEGES)
        _, key = await store.create_key("hal", name="n", expires_at=4102444800.0)
        assert (await client.get("/x", headers=bearer(key))).status_code == 200
        assert len(context.verifier.cache) == 1

        await private_redis.stop(save=True)
        other = unknown_key()
        assert (await client.get("/x", headers=bearer(other))).status_code == 503
        async with asyncio.timeout(5):
            while context.subscriber.subscribed.is_set():
                await asyncio.sleep(0.01)

        await private_redis.start()
        await asyncio.wait_for(context.subscriber.subscribed.wait(), 10)
        # Whatever was published meanwhile is lost: the cache starts over.
        assert len(context.verifier.cache) == 0
        assert (await client.get("/x", headers=bearer(key))).status_code == 200
        assert (await client.get("/x", headers=bearer(other))).status_code == 401
        assert (await client.get("/_gateway/ready")).status_code == 200


async def test_store_unavailable_is_never_reported_as_an_auth_failure(
    verifier: Verifier, store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(hashes: list[str]) -> Any:
        raise StoreUnavailable("The key store cannot be reached.")

    monkeypatch.setattr(store, "identities", broken)
    with pytest.raises(StoreUnavailable):
        await verifier.verify(unknown_key())


async def test_a_redis_error_during_a_batch_fails_each_lookup_alike(
    settings: Settings,
    store: KeyStore,
    make_key: KeyMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys verified before are served stale; the others get StoreUnavailable."""
    uncached = settings.model_copy(update={"cache_ttl_seconds": 0.0})
    verifier = Verifier.from_settings(uncached, store)
    known = [await make_key() for _ in range(2)]
    for _, key in known:
        await verifier.verify(key)

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("Connection refused.")

    monkeypatch.setattr(store.redis, "evalsha", refuse)
    burst = [key for _, key in known] + [unknown_key(), unknown_key()]
    results = await asyncio.gather(
        *(verifier.verify(key) for key in burst), return_exceptions=True
    )

    assert [r.key_id for r in results[:2]] == [r.id for r, _ in known]  # type: ignore[union-attr]
    assert all(isinstance(r, StoreUnavailable) for r in results[2:])
    assert (verifier.stale_served, verifier.redis_errors) == (2, 4)
