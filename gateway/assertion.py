"""Signed identity assertions: a short-lived JWT the backend can verify.

Identity headers are only as trustworthy as the network between the
gateway and the backend. With a signing key configured, the gateway also
sends a JWT (RFC 7519) that says who the caller is, signed with ES256
(P-256) or Ed25519 (the algorithm name RFC 9864 gives EdDSA on that curve;
it deprecates the older "EdDSA"), and publishes the public keys as a JWK
Set at ``/_gateway/jwks``. A backend that checks the signature, the
issuer and the audience knows the identity came from the gateway.

Claims: ``iss``, ``aud``, ``sub`` (the user id), ``key_id``, ``iat``,
``exp`` and ``jti``. The header names the signing key by its RFC 7638
thumbprint (``kid``).

Signing one assertion costs 60 to 70 us of CPU (Ed25519 and ES256 alike,
joserfc 1.8, on the benchmark machine), a third of a whole proxied
request; handing out a reused one about 0.3 us. So an
assertion is reused for requests with the same key until half its
lifetime has passed; ``jti`` names the assertion, not the request. It
never outlives the key's own expiry.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey

from gateway.cache import Identity

if TYPE_CHECKING:  # settings validate key files with this module's loaders
    from gateway.settings import Settings

SigningKey = ECKey | OKPKey

# Assertions kept for reuse; past this many, the oldest go first.
MAX_REUSED = 100_000


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"'{path}' cannot be read ({exc.strerror})") from None


def _joserfc_key(native: object, pem: bytes, path: str) -> SigningKey:
    if isinstance(native, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if not isinstance(native.curve, ec.SECP256R1):
            raise ValueError(
                f"'{path}' is an EC key on curve {native.curve.name}; "
                "ES256 needs P-256 (prime256v1)"
            )
        return ECKey.import_key(pem)
    if isinstance(native, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return OKPKey.import_key(pem)
    raise ValueError(f"'{path}' holds neither a P-256 nor an Ed25519 key")


def load_signing_key(path: str) -> SigningKey:
    """The private key in a PEM file: P-256 (ES256) or Ed25519.

    Errors name the file and what is wrong with it, never its content.
    """
    pem = _read(path)
    try:
        native = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ValueError(
            f"'{path}' is encrypted; the gateway needs an unencrypted key "
            "file that only its own user can read"
        ) from None
    except ValueError:
        try:
            serialization.load_pem_public_key(pem)
        except ValueError:
            raise ValueError(f"'{path}' is not a PEM private key") from None
        raise ValueError(
            f"'{path}' is a public key; signing needs the private key"
        ) from None
    return _joserfc_key(native, pem, path)


def load_public_key(path: str) -> SigningKey:
    """A key to publish beside the signing key: public or private PEM."""
    pem = _read(path)
    try:
        native: object = serialization.load_pem_public_key(pem)
    except ValueError:
        try:
            native = serialization.load_pem_private_key(pem, password=None)
        except (TypeError, ValueError):
            raise ValueError(f"'{path}' is not a PEM public key") from None
    return _joserfc_key(native, pem, path)


def algorithm(key: SigningKey) -> str:
    return "ES256" if isinstance(key, ECKey) else "Ed25519"


def public_jwk(key: SigningKey) -> dict[str, str]:
    """The key's public half as a JWK, with its kid, alg and use."""
    public: dict[str, str] = {
        name: str(value) for name, value in key.as_dict(private=False).items()
    }
    public.update(kid=key.thumbprint(), alg=algorithm(key), use="sig")
    return public


class Asserter:
    """Signs identity assertions and serves the JWK Set that verifies them."""

    def __init__(
        self,
        key: SigningKey,
        *,
        issuer: str,
        audience: str,
        ttl: float,
        published: Iterable[SigningKey] = (),
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self.algorithm = algorithm(key)
        self.kid = key.thumbprint()
        self._key = key
        self._header = {"alg": self.algorithm, "typ": "JWT", "kid": self.kid}
        keys = [public_jwk(key)]
        for extra in published:
            jwk = public_jwk(extra)
            if all(jwk["kid"] != known["kid"] for known in keys):
                keys.append(jwk)
        self.jwks = orjson.dumps({"keys": keys})
        # key id -> (assertion, user id, reuse until, its exp)
        self._issued: dict[str, tuple[str, str, float, float]] = {}
        self.signed = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Asserter | None:
        """The asserter the settings ask for; ``None`` when assertions are off."""
        if settings.assertion_key_file is None:
            return None
        return cls(
            load_signing_key(settings.assertion_key_file),
            issuer=settings.assertion_issuer,
            audience=settings.assertion_audience,
            ttl=settings.assertion_ttl_seconds,
            published=[
                load_public_key(path) for path in settings.assertion_published_key_files
            ],
        )

    def __repr__(self) -> str:
        return f"Asserter(kid={self.kid!r}, algorithm={self.algorithm!r})"

    def assertion(self, identity: Identity) -> str:
        """A signed assertion of ``identity``, reused while it is young."""
        now = time.time()
        issued = self._issued.get(identity.key_id)
        if issued is not None:
            token, user_id, reuse_until, expires = issued
            if (
                now < reuse_until
                and user_id == identity.user_id
                and expires <= identity.expires_at
            ):
                return token
        return self._sign(identity, now)

    def _sign(self, identity: Identity, now: float) -> str:
        issued_at = int(now)
        expires = min(issued_at + self.ttl, identity.expires_at)
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": identity.user_id,
            "key_id": identity.key_id,
            "iat": issued_at,
            "exp": int(expires),
            "jti": secrets.token_urlsafe(16),
        }
        token = jwt.encode(self._header, claims, self._key, algorithms=[self.algorithm])
        self.signed += 1
        issued = self._issued
        issued.pop(identity.key_id, None)
        if len(issued) >= MAX_REUSED:
            del issued[next(iter(issued))]
        reuse_until = issued_at + (int(expires) - issued_at) / 2
        issued[identity.key_id] = (token, identity.user_id, reuse_until, expires)
        return token
