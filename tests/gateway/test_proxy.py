"""The proxy in-process: verification, forwarding, errors, bodies."""

from __future__ import annotations

import httpx
import orjson
import pytest

from gateway.server import Context, build_gateway_app
from gateway.store import KeyStore
from tests.gateway.conftest import GATEWAY, KeyMaker, Upstream, bearer, until_refused


async def test_a_good_key_is_forwarded_with_the_identity_and_without_the_key(
    client: httpx.AsyncClient, upstream: Upstream, make_key: KeyMaker
) -> None:
    record, key = await make_key("alice")
    response = await client.get("/rpa/api/v1/things?a=1&b=%2F", headers=bearer(key))
    assert response.status_code == 200
    assert response.json() == {
        "method": "GET",
        "path": "/rpa/api/v1/things",
        "query": "a=1&b=%2F",
        "body_length": 0,
    }
    seen = upstream.last
    assert seen.header("x-rpa-user-id") == "alice"
    assert seen.header("x-rpa-key-id") == record.id
    assert seen.header("authorization") is None
    assert key not in repr(seen.headers)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Authorization", id="bearer"),
        pytest.param("X-API-Key", id="x-api-key"),
        pytest.param("x-apikey", id="x-apikey"),
    ],
)
async def test_every_configured_header_carries_a_key_and_none_reaches_upstream(
    client: httpx.AsyncClient, upstream: Upstream, make_key: KeyMaker, header: str
) -> None:
    _, key = await make_key()
    value = f"Bearer {key}" if header == "Authorization" else key
    headers = {header: value, "X-API-Key": key, "x-apikey": key}
    response = await client.get("/x", headers=headers)
    assert response.status_code == 200
    names = upstream.last.names()
    assert not names & {"authorization", "x-api-key", "x-apikey"}


async def test_a_missing_key_is_401_without_an_error_code(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    response = await client.get("/x")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="rpa-gateway"'
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 401
    assert body["request_id"] == response.headers["x-request-id"]
    assert upstream.seen == []


async def test_unknown_and_revoked_keys_get_the_same_answer(
    client: httpx.AsyncClient, store: KeyStore, make_key: KeyMaker
) -> None:
    record, revoked = await make_key()
    _, unknown_source = await make_key("bob")
    await store.revoke_key(record.id)
    bob = await store.list_keys("bob")
    await store.revoke_key(bob[0].id)
    first = await client.get("/x", headers=bearer(revoked))
    second = await client.get("/x", headers=bearer(unknown_source))
    for response in (first, second):
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert first.json()["detail"] == second.json()["detail"]
    assert first.headers["www-authenticate"] == second.headers["www-authenticate"]


async def test_an_expired_key_is_refused_and_the_answer_says_expired(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    _, key = await make_key(expires_in=-1.0)
    response = await client.get("/x", headers=bearer(key))
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_a_disabled_users_keys_stop_working(
    client: httpx.AsyncClient, store: KeyStore, make_key: KeyMaker
) -> None:
    _, key = await make_key("carol")
    assert (await client.get("/x", headers=bearer(key))).status_code == 200
    await store.update_user("carol", disabled=True)
    await until_refused(client, key)


async def test_a_revoked_key_is_refused_right_after_revocation(
    client: httpx.AsyncClient, store: KeyStore, make_key: KeyMaker
) -> None:
    record, key = await make_key()
    assert (await client.get("/x", headers=bearer(key))).status_code == 200
    await store.revoke_key(record.id)
    await until_refused(client, key)


async def test_a_request_body_reaches_the_upstream_intact(
    client: httpx.AsyncClient, upstream: Upstream, make_key: KeyMaker
) -> None:
    _, key = await make_key()
    payload = bytes(range(256)) * 1000
    response = await client.put("/upload", content=payload, headers=bearer(key))
    assert response.json()["body_length"] == len(payload)
    assert upstream.last.body == payload
    assert upstream.last.method == "PUT"


async def test_a_chunked_request_body_is_forwarded(
    client: httpx.AsyncClient, upstream: Upstream, make_key: KeyMaker
) -> None:
    _, key = await make_key()

    async def parts():  # type: ignore[no-untyped-def]
        for part in (b"a" * 10, b"b" * 20, b"c" * 30):
            yield part

    response = await client.post("/upload", content=parts(), headers=bearer(key))
    assert response.json()["body_length"] == 60
    assert upstream.last.body == b"a" * 10 + b"b" * 20 + b"c" * 30


async def test_redirects_from_upstream_pass_through_untouched(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    _, key = await make_key()
    response = await client.get("/redirect", headers=bearer(key))
    assert response.status_code == 302
    assert response.headers["location"] == "/elsewhere?x=1"


@pytest.mark.parametrize("status", [204, 304, 404, 500])
async def test_upstream_statuses_pass_through(
    client: httpx.AsyncClient, make_key: KeyMaker, status: int
) -> None:
    _, key = await make_key()
    response = await client.get(f"/status/{status}", headers=bearer(key))
    assert response.status_code == status
    assert response.content == b""
    assert response.headers["etag"] == '"v1"'


async def test_a_head_request_gets_headers_and_no_body(
    client: httpx.AsyncClient, upstream: Upstream, make_key: KeyMaker
) -> None:
    _, key = await make_key()
    response = await client.head("/anything", headers=bearer(key))
    assert response.status_code == 200
    assert response.content == b""
    assert upstream.last.method == "HEAD"
    assert int(response.headers["content-length"]) > 0


async def test_a_chunked_upstream_response_arrives_whole(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    _, key = await make_key()
    response = await client.get("/chunked", headers=bearer(key))
    assert response.content == b"one,two,three"


async def test_hop_by_hop_response_headers_are_removed_and_ours_added(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    _, key = await make_key()
    response = await client.get(
        "/hop", headers={**bearer(key), "X-Request-ID": "req-123"}
    )
    assert response.headers["x-upstream-public"] == "fine"
    assert "x-upstream-private" not in response.headers
    assert "keep-alive" not in response.headers
    assert response.headers.get_list("x-request-id") == ["req-123"]


async def test_the_path_is_forwarded_byte_for_byte(
    client: httpx.AsyncClient, upstream: Upstream, make_key: KeyMaker
) -> None:
    _, key = await make_key()
    await client.get("/a%2Fb/%7Ec/d%20e", headers=bearer(key))
    assert upstream.last.path == "/a%2Fb/%7Ec/d%20e"


async def test_a_refused_upstream_connection_is_502_problem_json(
    context: Context, make_key: KeyMaker
) -> None:
    settings = context.settings.model_copy(
        update={"upstream_url": "http://127.0.0.1:9"}
    )
    ctx = Context.create(settings, context.store)
    transport = httpx.ASGITransport(app=build_gateway_app(ctx))
    _, key = await make_key()
    async with httpx.AsyncClient(transport=transport, base_url=GATEWAY) as client:
        response = await client.get("/x", headers=bearer(key))
    await ctx.upstream.aclose()
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    # The upstream is internal (and its URL may hold credentials): unnamed.
    assert body["detail"] == "The upstream refused the connection."


async def test_an_upstream_that_does_not_answer_in_time_is_504(
    context: Context, upstream: Upstream, make_key: KeyMaker
) -> None:
    settings = context.settings.model_copy(update={"upstream_read_timeout": 0.2})
    ctx = Context.create(settings, context.store)
    transport = httpx.ASGITransport(app=build_gateway_app(ctx))
    _, key = await make_key()
    async with httpx.AsyncClient(transport=transport, base_url=GATEWAY) as client:
        response = await client.get("/stall", headers=bearer(key))
    upstream.release.set()
    await ctx.upstream.aclose()
    assert response.status_code == 504
    assert response.json()["type"].endswith("upstream-timeout")


async def test_a_problem_body_is_valid_json_with_the_required_members(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/x", headers={"X-API-Key": "rpa_nonsense"})
    body = orjson.loads(response.content)
    assert set(body) >= {"type", "title", "status", "detail", "request_id"}
    assert body["detail"].endswith(".")


async def test_unknown_reserved_paths_are_404_and_never_proxied(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    response = await client.get("/_gateway/nothing")
    assert response.status_code == 404
    assert upstream.seen == []


async def test_health_is_always_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/_gateway/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_is_200_when_redis_answers_and_invalidations_flow(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/_gateway/ready")).status_code == 200


async def test_ready_is_503_when_the_subscription_is_down(
    client: httpx.AsyncClient, context: Context
) -> None:
    await context.subscriber.stop()
    response = await client.get("/_gateway/ready")
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.json()["type"].endswith("not-ready")


async def test_a_key_taken_from_the_query_is_not_forwarded(
    context: Context, upstream: Upstream, make_key: KeyMaker
) -> None:
    allowing = context.settings.model_copy(update={"allow_query_key": True})
    ctx = Context.create(allowing, context.store)
    transport = httpx.ASGITransport(app=build_gateway_app(ctx))
    _, key = await make_key()
    async with httpx.AsyncClient(transport=transport, base_url=GATEWAY) as client:
        response = await client.get(f"/x?a=1&api_key={key}&b=%20&api%5Fkey={key}")
        alone = await client.get(f"/y?api_key={key}")
    await ctx.upstream.aclose()
    assert response.status_code == alone.status_code == 200
    assert upstream.seen[-2].query == b"a=1&b=%20"
    assert (upstream.last.path, upstream.last.query) == ("/y", b"")
