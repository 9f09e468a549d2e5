"""Real nginx with the shipped snippet, asking the gateway about each request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import keys
from gateway.problems import StoreUnavailable
from gateway.server import Context, build_gateway_app
from gateway.settings import Settings
from gateway.store import KeyStore
from tests.conftest import free_port, record_process_output, require_binary
from tests.gateway.conftest import KeyMaker, Upstream, bearer, serving
from tests.gateway.signing import decode, new_key, pem_file

pytestmark = pytest.mark.nginx

SNIPPET = Path(__file__).parents[2] / "config" / "nginx" / "rpa-gateway.conf"

MAIN = """\
worker_processes 1;
error_log stderr warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/rpa-gateway.conf;
}}
"""


@contextlib.asynccontextmanager
async def nginx(tmp: Path, gateway: str, backend: str) -> AsyncIterator[str]:
    """nginx on a free port with the snippet pointed at our two servers."""
    binary = require_binary("nginx")
    port = free_port()
    snippet = (
        SNIPPET.read_text()
        .replace("127.0.0.1:8080", gateway.removeprefix("http://"))
        .replace("127.0.0.1:9000", backend.removeprefix("http://"))
        .replace("listen 8000;", f"listen 127.0.0.1:{port};")
    )
    (tmp / "rpa-gateway.conf").write_text(snippet)
    (tmp / "nginx.conf").write_text(MAIN.format(tmp=tmp))
    process = await asyncio.create_subprocess_exec(
        binary,
        "-p",
        str(tmp),
        "-c",
        str(tmp / "nginx.conf"),
        "-g",
        "daemon off;",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # nginx says nothing when it is ready; wait for its port to accept.
        async with asyncio.timeout(10):
            while True:
                assert process.returncode is None, "nginx exited at start-up."
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        out, err = await process.communicate()
        record_process_output("nginx", (out + err).decode(errors="replace"))


@pytest.fixture
async def through_nginx(
    context: Context, upstream: Upstream, tmp_path: Path
) -> AsyncIterator[str]:
    async with (
        serving(build_gateway_app(context)) as gateway,
        nginx(tmp_path, gateway, upstream.url) as url,
    ):
        yield url


async def test_nginx_forwards_the_gateways_signed_assertion(
    gateway_settings: Settings,
    store: KeyStore,
    upstream: Upstream,
    make_key: KeyMaker,
    tmp_path: Path,
) -> None:
    key_file = pem_file(tmp_path, "signing.pem", new_key("ES256"))
    signing = gateway_settings.model_copy(update={"assertion_key_file": str(key_file)})
    context = Context.create(signing, store)
    await context.start()
    record, key = await make_key("alice")
    try:
        async with (
            serving(build_gateway_app(context)) as gateway,
            nginx(tmp_path, gateway, upstream.url) as url,
            httpx.AsyncClient(timeout=10) as client,
        ):
            forged = {"x-apikey": key, "X-RPA-Identity-Assertion": "forged"}
            response = await client.get(f"{url}/rpa/api/v1/whoami", headers=forged)
    finally:
        await context.aclose()
    assert response.status_code == 200
    assert context.asserter is not None
    token = upstream.last.header("x-rpa-identity-assertion")
    assert token is not None and token != "forged"
    claims = decode(context.asserter, token).claims
    assert claims["sub"] == "alice" and claims["key_id"] == record.id


async def test_nginx_forwards_an_allowed_request_with_the_identity_and_no_key(
    through_nginx: str, upstream: Upstream, make_key: KeyMaker
) -> None:
    record, key = await make_key("alice")
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(
            f"{through_nginx}/rpa/api/v1/executions/e1/status",
            headers={
                "x-apikey": key,
                "X-RPA-User-Id": "root",
                "X_RPA_User_Id": "root",
                "X-RPA-Identity-Assertion": "root",
            },
        )
    assert response.status_code == 200
    seen = upstream.last
    assert seen.path == "/rpa/api/v1/executions/e1/status"
    assert seen.header("x-rpa-user-id") == "alice"
    assert seen.header("x-rpa-key-id") == record.id
    assert seen.header("x-apikey") is None
    assert "root" not in repr(seen.headers)
    assert response.headers["x-request-id"] == seen.header("x-request-id")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-key"),
        pytest.param({"Authorization": "Bearer rpa_bad"}, id="malformed"),
    ],
)
async def test_nginx_rejects_a_request_the_gateway_refuses(
    through_nginx: str, upstream: Upstream, headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{through_nginx}/rpa/api/v1/x", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="')
    assert upstream.seen == []


async def test_nginx_rejects_a_key_once_it_is_revoked(
    through_nginx: str, upstream: Upstream, store: KeyStore, make_key: KeyMaker
) -> None:
    record, key = await make_key()
    async with httpx.AsyncClient(timeout=10) as client:
        url = f"{through_nginx}/rpa/api/v1/x"
        assert (await client.get(url, headers=bearer(key))).status_code == 200
        await store.revoke_key(record.id)
        async with asyncio.timeout(5):
            while (await client.get(url, headers=bearer(key))).status_code != 401:
                pass
    assert len(upstream.seen) >= 1


async def test_nginx_says_503_when_the_gateway_cannot_check_keys(
    through_nginx: str, context: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(hashes: list[str]) -> Any:
        raise StoreUnavailable("The key store cannot be reached.")

    monkeypatch.setattr(context.store, "identities", unreachable)
    key = keys.generate_key()
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{through_nginx}/x", headers=bearer(key))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
