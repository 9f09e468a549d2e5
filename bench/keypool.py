"""The keys a run uses, in a namespace of its own on the real Redis.

Keys are made through the gateway's own store, so their records have the
shape the gateway reads. The plaintext keys only ever go to files readable
by the owner (for wrk's script and the in-process measurements); they are
never printed, and the whole namespace is deleted when the run ends.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.redis_client import open_redis
from gateway.store import KeyStore

USER_ID = "bench-user"
KEY_LIFETIME_SECONDS = 86_400
_CREATE_BATCH = 50


@dataclass
class KeyPool:
    """Where the run's keys live and the files that hand them over."""

    redis_url: str
    namespace: str
    pepper: str
    directory: Path
    key_ids: list[str] = field(default_factory=list)
    hit_file: Path | None = None
    miss_file: Path | None = None

    def settings_env(self) -> dict[str, str]:
        """The gateway settings that point at this pool's namespace."""
        return {
            "RPA_GATEWAY_REDIS_URL": self.redis_url,
            "RPA_GATEWAY_NAMESPACE": self.namespace,
            "RPA_GATEWAY_KEY_PEPPER": self.pepper,
        }

    def store(self) -> KeyStore:
        return KeyStore(
            open_redis(self.redis_url).client, self.namespace, self.pepper.encode()
        )


def new_pool(redis_url: str, directory: Path) -> KeyPool:
    return KeyPool(
        redis_url=redis_url,
        namespace="bench-" + secrets.token_hex(4),
        pepper=secrets.token_urlsafe(48),
        directory=directory,
    )


def _write_private(path: Path, lines: list[str]) -> Path:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write("".join(line + "\n" for line in lines))
    return path


async def create_keys(store: KeyStore, count: int) -> list[tuple[str, str]]:
    """``count`` new keys of the bench user: (key id, plaintext) pairs."""
    expires = time.time() + KEY_LIFETIME_SECONDS
    made: list[tuple[str, str]] = []
    while len(made) < count:
        batch = min(_CREATE_BATCH, count - len(made))
        results = await asyncio.gather(
            *(
                store.create_key(USER_ID, name="bench", expires_at=expires)
                for _ in range(batch)
            )
        )
        made.extend((record.id, plaintext) for record, plaintext in results)
    return made


async def fill(pool: KeyPool, miss_keys: int) -> None:
    """Make the user, one key for the hit path and a pool for the miss path."""
    store = pool.store()
    try:
        await store.add_user(USER_ID, "Benchmark user")
        made = await create_keys(store, 1 + miss_keys)
    finally:
        await store.redis.aclose()
    pool.key_ids = [key_id for key_id, _ in made]
    plaintexts = [plaintext for _, plaintext in made]
    pool.hit_file = _write_private(pool.directory / "hit.keys", plaintexts[:1])
    pool.miss_file = _write_private(pool.directory / "miss.keys", plaintexts[1:])


def read_keys(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def forget_key_files(pool: KeyPool) -> None:
    for path in (pool.hit_file, pool.miss_file):
        if path is not None:
            path.unlink(missing_ok=True)


async def drop_namespace(redis_url: str, namespace: str) -> int:
    """Delete every Redis key under the namespace; the count deleted."""
    redis = open_redis(redis_url).client
    deleted = 0
    try:
        batch: list[str] = []
        async for name in redis.scan_iter(match=f"{namespace}:*", count=1000):
            batch.append(name)
            if len(batch) >= 500:
                deleted += await redis.delete(*batch)
                batch.clear()
        if batch:
            deleted += await redis.delete(*batch)
    finally:
        await redis.aclose()
    return int(deleted)
