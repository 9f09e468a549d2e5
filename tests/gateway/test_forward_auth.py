"""The forward-auth endpoint, as nginx, Traefik and Envoy call it."""

from __future__ import annotations

import httpx
import pytest

from gateway.server import Context, build_gateway_app
from gateway.store import KeyStore
from tests.gateway.conftest import GATEWAY, KeyMaker, Upstream, bearer, until_refused


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/_gateway/auth", id="nginx-traefik"),
        pytest.param("POST", "/_gateway/auth/rpa/api/v1/start", id="envoy-post"),
        pytest.param("DELETE", "/_gateway/auth/anything?x=1", id="envoy-delete"),
    ],
)
async def test_a_good_key_gets_200_with_the_identity_headers(
    client: httpx.AsyncClient,
    upstream: Upstream,
    make_key: KeyMaker,
    method: str,
    path: str,
) -> None:
    record, key = await make_key("alice")
    response = await client.request(method, path, headers={"x-apikey": key})
    assert response.status_code == 200
    assert response.headers["x-rpa-user-id"] == "alice"
    assert response.headers["x-rpa-key-id"] == record.id
    assert response.headers["x-request-id"]
    assert response.headers["content-length"] == "0"
    assert response.content == b""
    assert upstream.seen == []


async def test_a_missing_key_gets_401_without_an_error_code(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/_gateway/auth")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="rpa-gateway"'
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_revoked_key_gets_401_invalid_token(
    client: httpx.AsyncClient, store: KeyStore, make_key: KeyMaker
) -> None:
    record, key = await make_key()
    assert (await client.get("/_gateway/auth", headers=bearer(key))).status_code == 200
    await store.revoke_key(record.id)
    response = await until_refused(client, key, "/_gateway/auth")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_the_request_id_of_the_original_request_is_kept(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    _, key = await make_key()
    response = await client.get(
        "/_gateway/auth", headers={**bearer(key), "X-Request-ID": "from-nginx-1"}
    )
    assert response.headers["x-request-id"] == "from-nginx-1"


async def test_a_query_key_is_read_from_the_original_uri_only_when_allowed(
    context: Context, make_key: KeyMaker
) -> None:
    _, key = await make_key()
    uri = {"X-Forwarded-Uri": f"/rpa/api/v1/x?api_key={key}"}
    transport = httpx.ASGITransport(app=build_gateway_app(context))
    async with httpx.AsyncClient(transport=transport, base_url=GATEWAY) as client:
        assert (await client.get("/_gateway/auth", headers=uri)).status_code == 401
    allowing = context.settings.model_copy(update={"allow_query_key": True})
    ctx = Context.create(allowing, context.store)
    transport = httpx.ASGITransport(app=build_gateway_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url=GATEWAY) as client:
        assert (await client.get("/_gateway/auth", headers=uri)).status_code == 200


async def test_an_unparsable_original_uri_means_no_query_key_not_an_error(
    context: Context, make_key: KeyMaker
) -> None:
    allowing = context.settings.model_copy(update={"allow_query_key": True})
    ctx = Context.create(allowing, context.store)
    transport = httpx.ASGITransport(app=build_gateway_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url=GATEWAY) as client:
        response = await client.get(
            "/_gateway/auth", headers={"X-Original-URI": "//[::1/?api_key=x"}
        )
    assert response.status_code == 401
    assert response.json()["detail"] == "An API key is required."
