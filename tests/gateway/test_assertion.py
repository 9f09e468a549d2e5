"""Signed identity assertions: signing, reuse, key files, and the edge."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway import assertion
from gateway.assertion import Asserter, load_signing_key
from gateway.cache import Identity
from gateway.rpa_backend import PREFIX, AssertionCheck, create_backend_app
from gateway.server import Context, build_gateway_app
from gateway.settings import Settings, SettingsError, load_settings
from tests.conftest import PEPPER
from tests.gateway.conftest import KeyMaker, Upstream, bearer
from tests.gateway.signing import ALGORITHMS, decode, new_key, pem_file
from tests.gateway.test_edge_protocol import edge_connection, request

HEADER = "x-rpa-identity-assertion"


def asserter_for(path: Path, **options: Any) -> Asserter:
    settings = {"issuer": "rpa-gateway", "audience": "rpa-manager", "ttl": 60.0}
    return Asserter(load_signing_key(str(path)), **{**settings, **options})


def make_asserter(
    tmp_path: Path, algorithm: str = "Ed25519", name: str = "signing", **options: Any
) -> Asserter:
    """An asserter with a fresh key, written to ``<name>.pem``."""
    path = pem_file(tmp_path, f"{name}.pem", new_key(algorithm))
    return asserter_for(path, **options)


def identity(expires_in: float = 86400.0, user: str = "alice") -> Identity:
    return Identity("01KEYID", user, time.time() + expires_in)


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1_900_000_000.0
        monkeypatch.setattr(assertion.time, "time", lambda: self.now)


# Signing ------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_an_assertion_verifies_against_the_published_key_set(
    tmp_path: Path, algorithm: str
) -> None:
    asserter = make_asserter(tmp_path, algorithm)
    before = int(time.time())
    token = decode(asserter, asserter.assertion(identity()))
    assert token.header == {"alg": algorithm, "typ": "JWT", "kid": asserter.kid}
    claims = token.claims
    assert claims["iss"] == "rpa-gateway" and claims["aud"] == "rpa-manager"
    assert claims["sub"] == "alice" and claims["key_id"] == "01KEYID"
    assert before <= claims["iat"] <= time.time()
    assert claims["exp"] == claims["iat"] + 60
    assert len(claims["jti"]) >= 16


def test_the_key_set_publishes_public_halves_only(tmp_path: Path) -> None:
    old = load_signing_key(str(pem_file(tmp_path, "old.pem", new_key("ES256"))))
    asserter = make_asserter(tmp_path, published=[old, old])
    keys = orjson.loads(asserter.jwks)["keys"]
    assert [key["kid"] for key in keys] == [asserter.kid, old.thumbprint()]
    assert all("d" not in key and key["use"] == "sig" for key in keys)
    assert [key["alg"] for key in keys] == ["Ed25519", "ES256"]


def test_an_assertion_is_reused_until_half_its_lifetime_then_renewed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    asserter = make_asserter(tmp_path)
    caller = Identity("01KEYID", "alice", clock.now + 86400)
    first = asserter.assertion(caller)
    clock.now += 29
    assert asserter.assertion(caller) == first
    clock.now += 1
    renewed = asserter.assertion(caller)
    assert renewed != first and asserter.signed == 2
    assert decode(asserter, renewed).claims["iat"] == int(clock.now)


def test_an_assertion_never_outlives_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    asserter = make_asserter(tmp_path)
    caller = Identity("01KEYID", "alice", clock.now + 20)
    assert (
        decode(asserter, asserter.assertion(caller)).claims["exp"] <= caller.expires_at
    )
    # The key's expiry moved earlier (an edit): the assertion is made anew.
    long_lived = Identity("01KEYID", "alice", clock.now + 86400)
    token = asserter.assertion(long_lived)
    shortened = Identity("01KEYID", "alice", clock.now + 10)
    reissued = asserter.assertion(shortened)
    assert reissued != token
    assert decode(asserter, reissued).claims["exp"] <= shortened.expires_at


def test_the_assertions_kept_for_reuse_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assertion, "MAX_REUSED", 3)
    asserter = make_asserter(tmp_path)
    first = Identity("k0", "alice", time.time() + 86400)
    token = asserter.assertion(first)
    for number in range(1, 4):
        asserter.assertion(Identity(f"k{number}", "alice", time.time() + 86400))
    assert asserter.assertion(first) != token  # the oldest went first
    assert asserter.signed == 5


def test_the_signing_key_stays_out_of_the_repr(tmp_path: Path) -> None:
    asserter = make_asserter(tmp_path)
    assert repr(asserter) == f"Asserter(kid='{asserter.kid}', algorithm='Ed25519')"


# Key files -----------------------------------------------------------------


def _encrypted(directory: Path) -> Path:
    data = new_key("ES256").private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret-passphrase"),
    )
    path = directory / "encrypted.pem"
    path.write_bytes(data)
    return path


def _not_pem(directory: Path) -> Path:
    path = directory / "garbage.pem"
    path.write_text("-----BEGIN NOTHING-----\nhidden-content\n")
    return path


BAD_KEY_FILES = [
    pytest.param(lambda d: d / "absent.pem", "cannot be read", id="missing"),
    pytest.param(_not_pem, "is not a PEM private key", id="not-pem"),
    pytest.param(
        lambda d: pem_file(d, "public.pem", new_key("Ed25519"), public=True),
        "is a public key; signing needs the private key",
        id="public-key",
    ),
    pytest.param(
        lambda d: pem_file(d, "p384.pem", ec.generate_private_key(ec.SECP384R1())),
        "curve secp384r1; ES256 needs P-256",
        id="wrong-curve",
    ),
    pytest.param(
        lambda d: pem_file(
            d, "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ),
        "neither a P-256 nor an Ed25519 key",
        id="rsa",
    ),
    pytest.param(_encrypted, "is encrypted", id="encrypted"),
]


@pytest.mark.parametrize(("make", "reason"), BAD_KEY_FILES)
def test_a_bad_signing_key_file_stops_start_up_naming_the_variable(
    tmp_path: Path, make: Any, reason: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(SettingsError) as caught:
        load_settings(key_pepper=PEPPER, assertion_key_file=str(path))
    message = str(caught.value)
    assert message.startswith("Invalid setting RPA_GATEWAY_ASSERTION_KEY_FILE: ")
    assert f"'{path}'" in message and reason in message
    assert "hidden-content" not in message and "BEGIN" not in message


def test_published_keys_need_a_signing_key(tmp_path: Path) -> None:
    public = pem_file(tmp_path, "next.pem", new_key("ES256"), public=True)
    with pytest.raises(SettingsError) as caught:
        load_settings(key_pepper=PEPPER, assertion_published_key_files=str(public))
    assert "RPA_GATEWAY_ASSERTION_PUBLISHED_KEY_FILES" in str(caught.value)


def test_keys_are_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signing = pem_file(tmp_path, "now.pem", new_key("Ed25519"))
    public = pem_file(tmp_path, "next.pem", new_key("ES256"), public=True)
    monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", PEPPER)
    monkeypatch.setenv("RPA_GATEWAY_ASSERTION_KEY_FILE", str(signing))
    monkeypatch.setenv("RPA_GATEWAY_ASSERTION_PUBLISHED_KEY_FILES", f" {public} ,")
    settings = load_settings()
    asserter = Asserter.from_settings(settings)
    assert asserter is not None
    assert len(orjson.loads(asserter.jwks)["keys"]) == 2


def test_assertions_are_off_by_default() -> None:
    assert Asserter.from_settings(load_settings(key_pepper=PEPPER)) is None


# At the edge ----------------------------------------------------------------


@pytest.fixture
def gateway_settings(
    settings: Settings, upstream: Upstream, tmp_path: Path
) -> Settings:
    key_file = pem_file(tmp_path, "signing.pem", new_key("Ed25519"))
    return settings.model_copy(
        update={"upstream_url": upstream.url, "assertion_key_file": str(key_file)}
    )


async def test_a_forwarded_request_carries_the_callers_assertion_and_no_spoof(
    client: httpx.AsyncClient,
    context: Context,
    upstream: Upstream,
    make_key: KeyMaker,
) -> None:
    record, key = await make_key("alice")
    spoofs = {HEADER: "forged", "x_rpa_identity_assertion": "forged"}
    response = await client.get("/x", headers={**bearer(key), **spoofs})
    assert response.status_code == 200
    sent = [value for name, value in upstream.last.headers if b"assertion" in name]
    assert len(sent) == 1
    assert context.asserter is not None
    claims = decode(context.asserter, sent[0].decode()).claims
    assert claims["sub"] == "alice" and claims["key_id"] == record.id


async def test_forward_auth_answers_carry_the_same_assertion_early_or_not(
    context: Context, make_key: KeyMaker
) -> None:
    record, key = await make_key("bob")
    async with edge_connection(context) as (reader, writer, spy):
        heads = []
        for _ in range(2):
            writer.write(request("/_gateway/auth", key, extra="X-Request-ID: r-1\r\n"))
            heads.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
    assert spy.answered == 1  # the second check was answered early
    assert heads[0] == heads[1] and heads[0].startswith(b"HTTP/1.1 200 OK\r\n")
    token = next(
        line.split(b": ", 1)[1].decode()
        for line in heads[0].split(b"\r\n")
        if line.lower().startswith(HEADER.encode())
    )
    assert context.asserter is not None
    claims = decode(context.asserter, token).claims
    assert claims["sub"] == "bob" and claims["key_id"] == record.id


async def test_the_key_set_is_served_for_backends_to_cache(
    client: httpx.AsyncClient, context: Context
) -> None:
    response = await client.get("/_gateway/jwks")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=300"
    assert context.asserter is not None
    assert response.content == context.asserter.jwks


async def test_without_a_signing_key_there_is_no_key_set_and_no_assertion(
    settings: Settings, store: Any, upstream: Upstream, make_key: KeyMaker
) -> None:
    plain = settings.model_copy(update={"upstream_url": upstream.url})
    context = Context.create(plain, store)
    await context.start()
    try:
        await asyncio.wait_for(context.subscriber.subscribed.wait(), 5)
        transport = httpx.ASGITransport(app=build_gateway_app(context))
        async with httpx.AsyncClient(transport=transport, base_url="http://g") as http:
            jwks = await http.get("/_gateway/jwks")
            _, key = await make_key()
            auth = await http.get("/_gateway/auth", headers=bearer(key))
            forwarded = await http.get("/x", headers={**bearer(key), HEADER: "forged"})
    finally:
        await context.aclose()
    assert jwks.status_code == 404
    assert "RPA_GATEWAY_ASSERTION_KEY_FILE" in jwks.json()["detail"]
    assert auth.status_code == 200 and HEADER not in auth.headers
    assert forwarded.status_code == 200
    assert all(b"assertion" not in name for name, _ in upstream.last.headers)


# The stand-in backend's check -------------------------------------------------


def backend_client(asserter: Asserter) -> httpx.AsyncClient:
    check = AssertionCheck(
        asserter.jwks, header=HEADER, issuer="rpa-gateway", audience="rpa-manager"
    )
    app = create_backend_app(assertions=check)
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://backend")


def _headers(token: str | None, user: str = "alice") -> dict[str, str]:
    headers = {"x-rpa-user-id": user, "x-rpa-key-id": "01KEYID"}
    if token is not None:
        headers[HEADER] = token
    return headers


async def test_the_backend_accepts_a_valid_assertion_for_the_same_caller(
    tmp_path: Path,
) -> None:
    asserter = make_asserter(tmp_path)
    async with backend_client(asserter) as http:
        token = asserter.assertion(identity())
        response = await http.get(f"{PREFIX}/whoami", headers=_headers(token))
    assert response.status_code == 200
    assert response.json() == {"userId": "alice", "keyId": "01KEYID"}


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        pytest.param("missing", "is missing", id="missing"),
        pytest.param("other-key", "not valid", id="signed-by-another-key"),
        pytest.param("other-user", "another user or key", id="other-user"),
        pytest.param("audience", "Invalid claim: 'aud'", id="wrong-audience"),
        pytest.param("garbage", "not valid", id="not-a-jwt"),
    ],
)
async def test_the_backend_refuses_a_bad_assertion(
    tmp_path: Path, case: str, reason: str
) -> None:
    asserter = make_asserter(tmp_path)
    token: str | None = asserter.assertion(identity())
    user = "alice"
    if case == "missing":
        token = None
    elif case == "other-key":
        other = make_asserter(tmp_path, "ES256", name="other")
        token = other.assertion(identity())
    elif case == "other-user":
        user = "mallory"
    elif case == "audience":
        # The gateway's own key, for another service's audience.
        elsewhere = asserter_for(tmp_path / "signing.pem", audience="elsewhere")
        token = elsewhere.assertion(identity())
    elif case == "garbage":
        token = "not.a.jwt"
    async with backend_client(asserter) as http:
        response = await http.get(f"{PREFIX}/whoami", headers=_headers(token, user))
    assert response.status_code == 401
    assert reason in response.json()["detail"]
