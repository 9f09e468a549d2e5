"""The invalidation subscriber: eviction per message, clearing on reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.cache import Identity, KeyCache
from gateway.invalidation import InvalidationSubscriber
from gateway.redis_client import open_redis
from gateway.store import PRIVILEGES, KeyStore
from tests.gateway.conftest import PrivateRedis

FAR = 4102444800.0


def filled_cache() -> KeyCache:
    cache = KeyCache(ttl=60, negative_ttl=60, stale_bound=300, max_entries=100)
    cache.put("h-alice", Identity("K1", "alice", FAR), cache.generation)
    cache.put("h-bob", Identity("K2", "bob", FAR), cache.generation)
    cache.put("h-unknown", None, cache.generation)
    return cache


class Watched(InvalidationSubscriber):
    """Counts handled messages and lets a test await the next one."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.handled = asyncio.Queue[str]()

    def handle(self, data: str) -> None:
        super().handle(data)
        self.handled.put_nowait(data)


@pytest.fixture
async def watched(store: KeyStore) -> AsyncIterator[Watched]:
    subscriber = Watched(store.redis, store.channel, filled_cache())
    subscriber.start()
    await asyncio.wait_for(subscriber.subscribed.wait(), 5)
    # The first subscription clears the cache; fill it again for the test.
    cache = subscriber.cache
    cache.put("h-alice", Identity("K1", "alice", FAR), cache.generation)
    cache.put("h-bob", Identity("K2", "bob", FAR), cache.generation)
    cache.put("h-unknown", None, cache.generation)
    yield subscriber
    await subscriber.stop()


async def test_a_key_message_evicts_that_key_only(
    watched: Watched, store: KeyStore
) -> None:
    await store.redis.publish(store.channel, "k:h-alice")
    assert await asyncio.wait_for(watched.handled.get(), 5) == "k:h-alice"
    assert watched.cache.get("h-alice") is None
    assert watched.cache.get("h-bob") is not None


async def test_a_user_message_evicts_every_key_of_the_user(
    watched: Watched, store: KeyStore
) -> None:
    await store.redis.publish(store.channel, "u:bob")
    await asyncio.wait_for(watched.handled.get(), 5)
    assert watched.cache.get("h-bob") is None
    assert watched.cache.get("h-alice") is not None


async def test_an_unknown_message_clears_everything_to_be_safe(
    watched: Watched, store: KeyStore
) -> None:
    await store.redis.publish(store.channel, "something-new")
    await asyncio.wait_for(watched.handled.get(), 5)
    assert len(watched.cache) == 0


async def test_store_changes_publish_the_messages_the_subscriber_needs(
    watched: Watched, store: KeyStore
) -> None:
    await store.add_user("ivy", privileges=PRIVILEGES)
    assert await asyncio.wait_for(watched.handled.get(), 5) == "u:ivy"
    record, key = await store.create_key("ivy", name="n", expires_at=FAR)
    key_message = f"k:{store.hash_key(key)}"
    assert await asyncio.wait_for(watched.handled.get(), 5) == key_message
    await store.edit_key(record.id, name="renamed")
    assert await asyncio.wait_for(watched.handled.get(), 5) == key_message
    await store.revoke_key(record.id)
    assert await asyncio.wait_for(watched.handled.get(), 5) == key_message
    await store.update_user("ivy", disabled=True)
    assert await asyncio.wait_for(watched.handled.get(), 5) == "u:ivy"


@pytest.mark.redis
async def test_a_lost_subscription_expires_the_cache_and_the_reconnect_clears_it(
    private_redis: PrivateRedis,
) -> None:
    redis = open_redis(private_redis.url).client
    subscriber = InvalidationSubscriber(redis, "ns:invalidate", filled_cache())
    subscriber.start()
    try:
        await asyncio.wait_for(subscriber.subscribed.wait(), 5)
        cache = subscriber.cache
        cache.put("h-alice", Identity("K1", "alice", FAR), cache.generation)
        cache.put("h-unknown", None, cache.generation)

        await private_redis.stop()
        async with asyncio.timeout(5):
            while subscriber.subscribed.is_set():
                await asyncio.sleep(0.01)
        # Nothing is trusted any more, but identities stay for stale use.
        entry = cache.get("h-alice")
        assert entry is not None and entry.fresh_until == 0.0
        assert cache.get("h-unknown") is None

        await private_redis.start()
        await asyncio.wait_for(subscriber.subscribed.wait(), 10)
        assert len(cache) == 0
    finally:
        await subscriber.stop()
        await redis.aclose()
