"""Instant revocation across replicas: two processes, real sockets, real Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from gateway.store import PRIVILEGES, KeyStore
from tests.gateway.conftest import (
    SUBSCRIBED,
    GatewayProcess,
    Upstream,
    bearer,
    gateway_env,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

LIMIT_SECONDS = 0.100


async def test_a_revoked_key_is_refused_by_the_other_replica_within_100_ms(
    real_redis: Any, namespace: str, upstream: Upstream, real_store: KeyStore
) -> None:
    replicas = []
    for _ in range(2):
        env, url, _ = gateway_env(namespace, upstream.url)
        replicas.append((GatewayProcess(env), url))
    try:
        await asyncio.gather(*(process.start() for process, _ in replicas))
        await asyncio.gather(*(process.wait_for(SUBSCRIBED) for process, _ in replicas))
        await real_store.add_user("alice", privileges=PRIVILEGES)
        record, key = await real_store.create_key(
            "alice", name="n", expires_at=4102444800.0
        )
        (_, first), (_, second) = replicas
        async with httpx.AsyncClient(timeout=5) as client:
            # Warm both caches: from here on neither asks Redis about the key.
            for url in (first, second):
                for _ in range(3):
                    response = await client.get(f"{url}/x", headers=bearer(key))
                    assert response.status_code == 200

            started = time.perf_counter()
            await real_store.revoke_key(record.id)
            async with asyncio.timeout(5):
                while True:
                    response = await client.get(f"{second}/x", headers=bearer(key))
                    if response.status_code == 401:
                        break
                    assert response.status_code == 200
            delay = time.perf_counter() - started
            refused_by_first = await client.get(f"{first}/x", headers=bearer(key))
    finally:
        for process, _ in replicas:
            await process.stop()
    print(f"\nRevocation reached the other replica in {delay * 1000:.1f} ms.")
    assert refused_by_first.status_code == 401
    assert delay < LIMIT_SECONDS
