"""Memory per key: in Redis, and in a gateway process's cache.

Redis: ``MEMORY USAGE ... SAMPLES 0`` (exact) of each key's record and its
id index, plus each key's share of the sets and hashes that list it (their
size divided by their member count).

Process: run as ``python -m bench.memory --keys 100000`` in a fresh
interpreter. It fills the verifier's cache the way the verifier does, with
strings made per entry as a Redis reply would make them, and reports the
growth of the resident set divided by the number of keys.
"""

from __future__ import annotations

import argparse
import gc
import json
import secrets
import time
from pathlib import Path
from typing import Any

from bench.keypool import USER_ID
from gateway import keys
from gateway.cache import Identity, KeyCache
from gateway.store import KeyStore

KEYS_PER_USER = 10


async def redis_bytes_per_key(store: KeyStore, key_ids: list[str]) -> dict[str, Any]:
    """Average Redis bytes per key, with the parts it is made of."""
    redis, ns = store.redis, store.ns
    hashes = await redis.mget([f"{ns}:id:{key_id}" for key_id in key_ids])
    async with redis.pipeline(transaction=False) as pipe:
        for key_id, key_hash in zip(key_ids, hashes, strict=True):
            pipe.memory_usage(f"{ns}:k:{key_hash}", samples=0)
            pipe.memory_usage(f"{ns}:id:{key_id}", samples=0)
        sizes = await pipe.execute()
    record = sum(sizes[0::2])
    index = sum(sizes[1::2])
    shares: dict[str, float] = {}
    for name, count_command in (
        ("keys", "SCARD"),
        (f"uk:{USER_ID}", "SCARD"),
        ("used", "HLEN"),
    ):
        full = f"{ns}:{name}"
        members = await redis.execute_command(count_command, full)
        if members:
            usage = await redis.memory_usage(full, samples=0) or 0
            shares[name] = usage / members
    count = len(key_ids)
    per_key = record / count + index / count + sum(shares.values())
    return {
        "bytes_per_key": round(per_key),
        "record": round(record / count),
        "id_index": round(index / count),
        "shares": {name: round(value, 1) for name, value in shares.items()},
        "keys_measured": count,
    }


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cache_bytes_per_key(count: int) -> dict[str, Any]:
    """Resident bytes the cache grows by per key, at ``count`` keys."""
    pepper = secrets.token_bytes(32)
    cache = KeyCache(ttl=10, negative_ttl=5, stale_bound=300, max_entries=count)
    expires = time.time() + 86_400
    gc.collect()
    before = _rss()
    for number in range(count):
        key_hash = keys.key_hash(pepper, "rpa_" + secrets.token_hex(23))
        identity = Identity(
            keys.new_key_id(), f"user-{number // KEYS_PER_USER:07d}", expires
        )
        cache.put(key_hash, identity, cache.generation)
    gc.collect()
    grown = _rss() - before
    if len(cache) != count:
        raise RuntimeError(f"The cache holds {len(cache)} keys, not {count}.")
    return {
        "bytes_per_key": round(grown / count),
        "keys": count,
        "keys_per_user": KEYS_PER_USER,
        "rss_growth_bytes": grown,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Cache bytes per key.")
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(cache_bytes_per_key(args.keys)))


if __name__ == "__main__":
    main()
