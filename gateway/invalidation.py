"""The subscriber that evicts cache entries on every key or user change.

Messages on ``<namespace>:invalidate`` are ``k:<hash>`` (a key changed) or
``u:<user id>`` (a user changed). While the subscription is down the replica
may miss revocations, so it clears its whole cache each time the
subscription is (re)established, and reports itself not ready meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.exceptions import RedisError

from gateway.cache import KeyCache

logger = logging.getLogger("gateway.error")

_IDLE_PING_SECONDS = 5.0
_MAX_BACKOFF_SECONDS = 2.0


class InvalidationSubscriber:
    def __init__(self, redis: Any, channel: str, cache: KeyCache) -> None:
        self.redis = redis
        self.channel = channel
        self.cache = cache
        self.subscribed = asyncio.Event()
        self.messages = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="invalidations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.subscribed.clear()

    def handle(self, data: str) -> None:
        kind, _, value = data.partition(":")
        if kind == "k":
            self.cache.evict_key(value)
        elif kind == "u":
            self.cache.evict_user(value)
        else:
            self.cache.clear()
        self.messages += 1

    async def _run(self) -> None:
        backoff = 0.05
        lost = False
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                # Whatever was published while we were away is lost: start over.
                self.cache.clear()
                self.subscribed.set()
                if lost:
                    logger.info("Resubscribed to key invalidations; cache cleared.")
                else:
                    logger.info("Subscribed to key invalidations.")
                backoff = 0.05
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.subscribed.is_set() or not lost:
                    logger.warning(
                        "Lost the key invalidation subscription: %s. Retrying.",
                        exc.__class__.__name__,
                    )
                lost = True
                self.subscribed.clear()
                # Not clear(): that would also throw away what stale-if-error
                # serves while Redis is down. The reconnect clears.
                self.cache.expire_all()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)

    async def _listen(self, pubsub: Any) -> None:
        idle = 0.0
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                idle += 1.0
                if idle >= _IDLE_PING_SECONDS:
                    # A dead connection only shows itself when we write to it.
                    await pubsub.ping()
                    idle = 0.0
                continue
            idle = 0.0
            if message.get("type") == "message":
                data = message["data"]
                self.handle(data if isinstance(data, str) else data.decode())
