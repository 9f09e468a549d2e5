"""Header rewriting: spoofing, hop-by-hop, forwarding, request ids."""

from __future__ import annotations

import httpx
import pytest

from gateway.headers import (
    RequestRewriter,
    TrustedProxies,
    request_id_from,
    strip_response_headers,
)
from gateway.settings import Settings
from tests.gateway.conftest import KeyMaker, Upstream, bearer

CREDENTIALS = frozenset({b"authorization", b"x-api-key", b"x-apikey"})


def rewrite(
    settings: Settings,
    headers: list[tuple[bytes, bytes]],
    client: str | None = "203.0.113.7",
    scheme: str = "https",
) -> dict[str, list[str]]:
    rewriter = RequestRewriter(settings, CREDENTIALS)
    out = rewriter.upstream_headers(headers, scheme, client, "rid", "alice", "K1")
    result: dict[str, list[str]] = {}
    for name, value in out:
        result.setdefault(name.lower(), []).append(value)
    return result


@pytest.mark.parametrize(
    "name",
    [
        "x-rpa-user-id",
        "X-RPA-USER-ID",
        "X-Rpa-User-Id",
        "x_rpa_user_id",
        "X_RPA_User-Id",
        "x-rpa_key-id",
        "X-RPA-KEY-ID",
    ],
)
def test_incoming_identity_headers_are_removed_in_every_spelling(
    settings: Settings, name: str
) -> None:
    out = rewrite(settings, [(name.encode(), b"mallory")])
    assert out["x-rpa-user-id"] == ["alice"]
    assert out["x-rpa-key-id"] == ["K1"]
    assert "mallory" not in repr(out)


def test_configured_identity_header_names_are_the_ones_stripped_and_set(
    settings: Settings,
) -> None:
    custom = settings.model_copy(
        update={"user_id_header": "X-User", "key_id_header": "X-Key"}
    )
    out = rewrite(custom, [(b"x_user", b"mallory"), (b"x-key", b"forged")])
    assert out["x-user"] == ["alice"]
    assert out["x-key"] == ["K1"]


def test_credentials_and_hop_by_hop_headers_are_removed(settings: Settings) -> None:
    out = rewrite(
        settings,
        [
            (b"authorization", b"Bearer secret"),
            (b"x-apikey", b"secret"),
            (b"connection", b"keep-alive, X-Private"),
            (b"x-private", b"drop me"),
            (b"keep-alive", b"timeout=5"),
            (b"te", b"trailers"),
            (b"upgrade", b"websocket"),
            (b"proxy-authorization", b"Basic abc"),
            (b"transfer-encoding", b"chunked"),
            (b"x-kept", b"yes"),
        ],
    )
    assert "secret" not in repr(out)
    for name in (
        "connection",
        "x-private",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "transfer-encoding",
    ):
        assert name not in out
    assert out["x-kept"] == ["yes"]


def test_connection_tokens_listed_after_the_header_they_name_still_count(
    settings: Settings,
) -> None:
    out = rewrite(settings, [(b"x-private", b"1"), (b"connection", b"x-private")])
    assert "x-private" not in out


def test_forwarded_headers_from_an_untrusted_client_are_replaced(
    settings: Settings,
) -> None:
    out = rewrite(
        settings,
        [
            (b"host", b"api.example.com"),
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"x-forwarded-proto", b"http"),
            (b"x-forwarded-host", b"evil.example"),
            (b"forwarded", b"for=1.2.3.4"),
        ],
    )
    assert out["x-forwarded-for"] == ["203.0.113.7"]
    assert out["x-forwarded-proto"] == ["https"]
    assert out["x-forwarded-host"] == ["api.example.com"]
    assert "forwarded" not in out
    assert "host" not in out


def test_forwarded_headers_from_a_trusted_proxy_are_kept_and_extended(
    settings: Settings,
) -> None:
    trusting = settings.model_copy(update={"trusted_proxies": ["10.0.0.0/8", "::1"]})
    out = rewrite(
        trusting,
        [
            (b"host", b"internal:8080"),
            (b"x-forwarded-for", b"198.51.100.1"),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", b"api.example.com"),
        ],
        client="10.1.2.3",
        scheme="http",
    )
    assert out["x-forwarded-for"] == ["198.51.100.1, 10.1.2.3"]
    assert out["x-forwarded-proto"] == ["https"]
    assert out["x-forwarded-host"] == ["api.example.com"]


def test_trusted_proxies_match_networks_and_single_addresses() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "::1"])
    assert "10.9.9.9" in trusted
    assert "::1" in trusted
    assert "11.0.0.1" not in trusted
    assert "not-an-address" not in trusted
    assert "10.0.0.1" not in TrustedProxies([])


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([(b"x-request-id", b"abc-123")], "abc-123", id="request-id"),
        pytest.param(
            [(b"x-correlation-id", b"corr.9"), (b"x-request-id", b"bad id!")],
            "corr.9",
            id="correlation-when-request-id-malformed",
        ),
        pytest.param(
            [(b"x-correlation-id", b"corr"), (b"x-request-id", b"req")],
            "req",
            id="request-id-wins",
        ),
        pytest.param(
            [(b"x-request-id", b"first"), (b"x-request-id", b"second")],
            "first",
            id="the-first-of-two",
        ),
    ],
)
def test_a_well_formed_incoming_request_id_is_reused(
    headers: list[tuple[bytes, bytes]], expected: str
) -> None:
    assert request_id_from(headers) == expected


@pytest.mark.parametrize(
    "value",
    [b"", b"has space", b"x" * 129, b"semi;colon", "é".encode()],
)
def test_a_malformed_request_id_is_replaced_by_a_new_one(value: bytes) -> None:
    made = request_id_from([(b"x-request-id", value)])
    assert made.encode() != value
    assert len(made) == 32


def test_response_headers_lose_hop_by_hop_and_get_the_request_id() -> None:
    out = strip_response_headers(
        [
            (b"Connection", b"close, X-Internal"),
            (b"X-Internal", b"1"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-Request-ID", b"theirs"),
            (b"Content-Type", b"text/plain"),
        ],
        b"ours",
    )
    assert out == [(b"content-type", b"text/plain"), (b"x-request-id", b"ours")]


def test_names_listed_in_any_of_several_connection_headers_are_dropped() -> None:
    out = strip_response_headers(
        [
            (b"Connection", b"X-First"),
            (b"X-First", b"1"),
            (b"Connection", b"X-Second"),
            (b"X-Second", b"2"),
            (b"X-Kept", b"3"),
        ],
        b"ours",
    )
    assert out == [(b"x-kept", b"3"), (b"x-request-id", b"ours")]


async def test_a_spoofed_identity_never_reaches_the_upstream_end_to_end(
    client: httpx.AsyncClient, upstream: Upstream, make_key: KeyMaker
) -> None:
    _, key = await make_key("alice")
    spoofed = [
        ("X-RPA-User-Id", "root"),
        ("x_rpa_user_id", "root"),
        ("X-Rpa-Key-Id", "forged"),
    ]
    headers = httpx.Headers([*bearer(key).items(), *spoofed])
    response = await client.get("/x", headers=headers)
    assert response.status_code == 200
    values = [v.decode() for _, v in upstream.last.headers]
    assert "root" not in values and "forged" not in values
    assert upstream.last.header("x-rpa-user-id") == "alice"


async def test_the_request_id_is_generated_forwarded_and_echoed(
    client: httpx.AsyncClient, upstream: Upstream, make_key: KeyMaker
) -> None:
    _, key = await make_key()
    response = await client.get("/x", headers=bearer(key))
    request_id = response.headers["x-request-id"]
    assert upstream.last.header("x-request-id") == request_id
    reused = await client.get(
        "/x", headers={**bearer(key), "X-Correlation-ID": "flow-42"}
    )
    assert reused.headers["x-request-id"] == "flow-42"
    assert upstream.last.header("x-correlation-id") == "flow-42"


def test_no_header_name_with_an_underscore_is_forwarded(settings: Settings) -> None:
    """CGI-style servers would read these as X-Forwarded-For, X-API-Key, ..."""
    out = rewrite(
        settings,
        [
            (b"x_forwarded_for", b"6.6.6.6"),
            (b"x_request_id", b"chosen"),
            (b"x_api_key", b"rpa_secret"),
            (b"x-kept", b"yes"),
        ],
    )
    assert out["x-kept"] == ["yes"]
    assert out["x-request-id"] == ["rid"]
    assert not [name for name in out if "_" in name]
    assert "6.6.6.6" not in repr(out) and "rpa_secret" not in repr(out)
