"""How long a revoked key keeps working on another replica.

Two gateway replicas share the run's Redis namespace. For each sample: make
a key through the store, send it twice through each replica so both have it
cached, revoke it through the store, and poll replica B with the key until
it answers 401. The time runs from the start of the revoke call to that
answer, so it includes the revoke's own round trips and one request through
B; the resolution is one request (its median is reported as
``poll_rtt_ms``). Replica A is then asked once, to confirm it refuses too.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from bench.configs import KEY_HEADER, PATH
from bench.keypool import KeyPool, create_keys
from bench.stats import percentile

GIVE_UP_SECONDS = 2.0


class RevocationError(RuntimeError):
    """A replica answered with something other than 200 or 401."""


async def _status(http: aiohttp.ClientSession, url: str, key: str) -> int:
    async with http.get(url, headers={KEY_HEADER: key}) as response:
        await response.read()
        return response.status


async def measure(
    pool: KeyPool, port_a: int, port_b: int, samples: int
) -> dict[str, Any]:
    url_a = f"http://127.0.0.1:{port_a}{PATH}"
    url_b = f"http://127.0.0.1:{port_b}{PATH}"
    store = pool.store()
    delays: list[float] = []
    since_return: list[float] = []
    polls: list[float] = []
    late = a_accepted = 0
    connector = aiohttp.TCPConnector(limit=4)
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            for _ in range(samples):
                [(key_id, key)] = await create_keys(store, 1)
                for url in (url_a, url_b, url_a, url_b):
                    began = time.perf_counter()
                    status = await _status(http, url, key)
                    polls.append(time.perf_counter() - began)
                    if status != 200:
                        raise RevocationError(f"A fresh key got {status}, not 200.")
                started = time.perf_counter()
                await store.revoke_key(key_id)
                returned = time.perf_counter()
                while True:
                    status = await _status(http, url_b, key)
                    now = time.perf_counter()
                    if status == 401:
                        break
                    if status != 200:
                        raise RevocationError(f"A revoked key got {status}.")
                    if now - started > GIVE_UP_SECONDS:
                        late += 1
                        break
                delays.append((now - started) * 1000)
                since_return.append((now - returned) * 1000)
                if await _status(http, url_a, key) != 401:
                    a_accepted += 1
    finally:
        await store.redis.aclose()
    return {
        "p50": round(percentile(delays, 0.50), 3),
        "p99": round(percentile(delays, 0.99), 3),
        "max": round(max(delays), 3),
        "samples": samples,
        "after_revoke_returned_p99": round(percentile(since_return, 0.99), 3),
        "poll_rtt_ms": round(percentile(polls, 0.50) * 1000, 3),
        "not_refused_within_2s": late,
        "replica_a_still_accepting": a_accepted,
    }
