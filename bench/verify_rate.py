"""Verifications per second in one process on one core, against real Redis.

Run by the harness as ``python -m bench.verify_rate`` pinned to one CPU,
with the gateway settings in ``RPA_GATEWAY_*`` and the key files in
``BENCH_HIT_FILE`` and ``BENCH_MISS_FILE``. Prints one JSON object.

- hit: one key, already cached, verified in a loop.
- miss: positive cache off, ``CONCURRENCY`` tasks, each with keys of its
  own, so no two concurrent lookups share a key and every verification
  costs one Redis lookup (the verifier merges lookups of the same key).
- miss_sequential: the same with one task: the latency-bound rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import uvloop

from gateway.settings import load_settings
from gateway.store import store_from_settings
from gateway.verifier import Verifier

CONCURRENCY = 32
_BATCH = 2000


async def hit_rate(verifier: Verifier, key: str, seconds: float) -> float:
    await verifier.verify(key)
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(_BATCH):
            await verifier.verify(key)
        count += _BATCH
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


async def miss_rate(
    verifier: Verifier, keys: list[str], seconds: float, concurrency: int
) -> float:
    deadline = time.perf_counter() + seconds
    counts = [0] * concurrency

    async def worker(index: int) -> None:
        own = keys[index::concurrency]
        position = 0
        while time.perf_counter() < deadline:
            await verifier.verify(own[position])
            position = (position + 1) % len(own)
            counts[index] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return sum(counts) / (time.perf_counter() - started)


def _keys(variable: str) -> list[str]:
    return [k for k in Path(os.environ[variable]).read_text().splitlines() if k]


async def measure(seconds: float) -> dict[str, float | int]:
    settings = load_settings()
    store = store_from_settings(settings)
    try:
        cached = Verifier.from_settings(settings, store)
        hit = await hit_rate(cached, _keys("BENCH_HIT_FILE")[0], seconds)
        uncached = Verifier.from_settings(
            settings.model_copy(update={"cache_ttl_seconds": 0.0}), store
        )
        pool = _keys("BENCH_MISS_FILE")
        concurrency = min(CONCURRENCY, len(pool))
        miss = await miss_rate(uncached, pool, seconds, concurrency)
        sequential = await miss_rate(uncached, pool, seconds / 2, 1)
        if uncached.hits:
            raise RuntimeError("The miss measurement was served from the cache.")
    finally:
        await store.redis.aclose()
    return {
        "hit": round(hit),
        "miss": round(miss),
        "miss_sequential": round(sequential),
        "miss_concurrency": concurrency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(json.dumps(uvloop.run(measure(args.seconds))))


if __name__ == "__main__":
    main()
