"""``rpa-gateway serve`` on real sockets and real Redis: listeners, workers."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import orjson
import pytest

from gateway.server import Context, build_admin_app
from gateway.store import PRIVILEGES, KeyStore
from tests.gateway.conftest import (
    SUBSCRIBED,
    GatewayProcess,
    Upstream,
    bearer,
    gateway_env,
)

pytestmark = pytest.mark.redis


async def _key(store: KeyStore, user: str = "alice") -> tuple[Any, str]:
    await store.add_user(user, privileges=PRIVILEGES)
    return await store.create_key(user, name="n", expires_at=4102444800.0)


async def test_serve_runs_the_gateway_and_the_admin_listener_in_one_process(
    serving_gateway: tuple[GatewayProcess, str, str],
    real_store: KeyStore,
    upstream: Upstream,
) -> None:
    process, url, admin = serving_gateway
    record, key = await _key(real_store)
    async with httpx.AsyncClient(timeout=10) as client:
        proxied = await client.get(f"{url}/rpa/api/v1/x?y=1", headers=bearer(key))
        assert proxied.status_code == 200
        assert upstream.last.header("x-rpa-key-id") == record.id
        assert upstream.last.query == b"y=1"
        assert (await client.get(f"{url}/_gateway/health")).status_code == 200
        assert (await client.get(f"{url}/_gateway/ready")).status_code == 200
        metrics = await client.get(f"{admin}/metrics")
    assert metrics.status_code == 200
    assert 'rpa_gateway_requests_total{outcome="proxied"} 1.0' in metrics.text
    assert "rpa_gateway_cache_misses_total 1.0" in metrics.text
    # Access lines are written in batches, at least once a second.
    await process.wait_for(record.id, stream="stdout")
    access = [orjson.loads(line) for line in process.lines["stdout"]]
    assert any(line["key_id"] == record.id for line in access)


async def test_both_listeners_refuse_a_head_beyond_64_kib(
    serving_gateway: tuple[GatewayProcess, str, str],
) -> None:
    _, url, admin = serving_gateway
    for listener in (url, admin):
        host, port = listener.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = "GET /api/me HTTP/1.1\r\nHost: t\r\nX-Big: " + "a" * 70_000
        try:
            writer.write(f"{head}\r\n\r\n".encode())
            answer = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 431 "), listener


async def test_the_client_address_is_the_socket_peer_not_a_forwarded_header(
    serving_gateway: tuple[GatewayProcess, str, str],
    real_store: KeyStore,
    upstream: Upstream,
) -> None:
    _, url, _ = serving_gateway
    _, key = await _key(real_store)
    async with httpx.AsyncClient(timeout=10) as client:
        await client.get(
            f"{url}/x", headers={**bearer(key), "X-Forwarded-For": "6.6.6.6"}
        )
    assert upstream.last.header("x-forwarded-for") == "127.0.0.1"
    assert upstream.last.header("x-forwarded-proto") == "http"


async def test_sigterm_stops_serve_cleanly_and_flushes_last_used(
    real_redis: Any, namespace: str, upstream: Upstream, real_store: KeyStore
) -> None:
    env, url, _ = gateway_env(namespace, upstream.url)
    process = GatewayProcess(env)
    await process.start()
    await process.wait_for(SUBSCRIBED)
    record, key = await _key(real_store)
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{url}/x", headers=bearer(key))).status_code == 200
    assert await process.stop(signal.SIGTERM) == 0
    stored = await real_store.get_key(record.id)
    assert stored is not None and stored.last_used_at is not None


async def test_a_busy_port_stops_serve_with_one_clear_line(
    real_redis: Any, namespace: str, upstream: Upstream
) -> None:
    env, _, _ = gateway_env(namespace, upstream.url)
    env["RPA_GATEWAY_LISTEN"] = upstream.url.removeprefix("http://")
    process = GatewayProcess(env)
    await process.start()
    assert await process.stop(sig=None) == 1
    assert process.count("Cannot listen on") == 1


async def test_workers_share_the_sockets_and_metrics_add_up_across_them(
    real_redis: Any, namespace: str, upstream: Upstream, real_store: KeyStore
) -> None:
    env, url, admin = gateway_env(namespace, upstream.url)
    process = GatewayProcess(env, "serve", "--workers", "2")
    await process.start()
    try:
        await process.wait_for(SUBSCRIBED, count=2, timeout=40)
        _, key = await _key(real_store)
        # No keep-alive: a new connection each time, for either worker.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            for _ in range(40):
                response = await client.get(f"{url}/x", headers=bearer(key))
                assert response.status_code == 200
            # Each worker hands its counts to the shared files every second.
            expected = 'rpa_gateway_requests_total{outcome="proxied"} 40.0'
            deadline = asyncio.get_running_loop().time() + 5
            while True:
                text = (await client.get(f"{admin}/metrics")).text
                if expected in text or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.2)
    finally:
        assert await process.stop() == 0
    assert expected in text
    ids = {orjson.loads(line)["request_id"] for line in process.lines["stdout"]}
    assert len(ids) == 40


async def test_the_admin_listener_serves_metrics_first(context: Context) -> None:
    app = build_admin_app(context)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
        response = await c.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "rpa_gateway_auth_seconds_bucket" in response.text


async def test_serve_reports_at_start_up_whether_redis_persists_data(
    serving_gateway: tuple[GatewayProcess, str, str], real_store: KeyStore
) -> None:
    process, _, _ = serving_gateway
    durable, how = await real_store.persistence()
    if durable is False:
        # The machine's own Redis keeps nothing on disk: the warning is loud.
        await process.wait_for("Redis does not persist data", stream="stderr")
    else:
        await process.wait_for(
            "Redis persistence:" if durable else "Cannot tell", stream="stderr"
        )
    assert any(how in line for line in process.lines["stderr"])
