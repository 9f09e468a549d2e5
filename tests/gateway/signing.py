"""Key files and assertion decoding shared by the assertion tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from joserfc import jwt
from joserfc.jwk import KeySet

from gateway.assertion import Asserter

ALGORITHMS = ["ES256", "Ed25519"]


def new_key(algorithm: str) -> Any:
    """A fresh private key for ``ES256`` or ``Ed25519``."""
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def pem_file(directory: Path, name: str, key: Any, *, public: bool = False) -> Path:
    """Write ``key`` (or its public half) as PEM to ``directory/name``."""
    if public:
        data = key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    else:
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    path = directory / name
    path.write_bytes(data)
    return path


def decode(asserter: Asserter, token: str) -> jwt.Token:
    """Verify ``token`` against the asserter's published key set, as a backend would."""
    keys = KeySet.import_key_set(orjson.loads(asserter.jwks))
    return jwt.decode(token, keys, algorithms=ALGORITHMS)
