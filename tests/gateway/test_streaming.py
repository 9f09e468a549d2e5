"""200 MB each way through a gateway process whose memory must stay flat."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.store import PRIVILEGES, KeyStore
from tests.gateway.conftest import (
    SUBSCRIBED,
    GatewayProcess,
    bearer,
    gateway_env,
    serving,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SIZE = 200 * 1024 * 1024
CHUNK = 256 * 1024
RSS_GROWTH_LIMIT = 50 * 1024 * 1024


def pattern(index: int) -> bytes:
    return bytes([index % 251]) * CHUNK


async def sink_and_source(scope: Any, receive: Any, send: Any) -> None:
    """PUT /sink hashes what it gets; GET /source sends SIZE bytes."""
    if scope["path"] == "/sink":
        digest, total = hashlib.sha256(), 0
        more = True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            digest.update(chunk)
            total += len(chunk)
            more = message.get("more_body", False)
        body = orjson.dumps({"bytes": total, "sha256": digest.hexdigest()})
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    length = str(SIZE).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", length)],
        }
    )
    for index in range(SIZE // CHUNK):
        await send(
            {"type": "http.response.body", "body": pattern(index), "more_body": True}
        )
    await send({"type": "http.response.body", "body": b""})


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values


async def test_200_mb_up_and_down_pass_through_with_flat_memory(
    real_redis: Any, namespace: str, real_store: KeyStore
) -> None:
    await real_store.add_user("alice", privileges=PRIVILEGES)
    _, key = await real_store.create_key("alice", name="n", expires_at=4102444800.0)
    async with serving(sink_and_source) as upstream_url:
        env, url, _ = gateway_env(namespace, upstream_url, access_log="false")
        process = GatewayProcess(env)
        await process.start()
        try:
            await process.wait_for(SUBSCRIBED)
            async with httpx.AsyncClient(timeout=60) as client:
                warm = await client.put(
                    f"{url}/sink", content=b"x", headers=bearer(key)
                )
                assert warm.json()["bytes"] == 1
                baseline = memory(process.pid)["VmRSS"]

                expected = hashlib.sha256()

                async def upload() -> AsyncIterator[bytes]:
                    for index in range(SIZE // CHUNK):
                        chunk = pattern(index)
                        expected.update(chunk)
                        yield chunk

                response = await client.put(
                    f"{url}/sink", content=upload(), headers=bearer(key)
                )
                assert response.json() == {
                    "bytes": SIZE,
                    "sha256": expected.hexdigest(),
                }

                received = 0
                async with client.stream(
                    "GET", f"{url}/source", headers=bearer(key)
                ) as download:
                    assert download.status_code == 200
                    assert download.headers["content-length"] == str(SIZE)
                    async for chunk in download.aiter_raw():
                        received += len(chunk)
                assert received == SIZE
                peak = memory(process.pid)["VmHWM"]
        finally:
            await process.stop()
    growth = peak - baseline
    print(f"\nGateway peak RSS grew {growth / 2**20:.1f} MB over 2 x 200 MB.")
    assert growth < RSS_GROWTH_LIMIT
