"""The key format: generate, parse, checksum, keyed hash, hint.

A key is ``rpa_`` + 40 random base62 characters + 6 base62 characters of the
CRC32 of the random part. The checksum lets the gateway refuse a mistyped key
without a Redis call, and lets secret scanners match leaked keys with few
false positives. At rest only HMAC-SHA256(pepper, key) is kept: the key is
random with about 238 bits of entropy, so a fast keyed hash is enough and a
password hash would only add latency to every request.
"""

from __future__ import annotations

import hmac
import secrets
import string
import zlib

from ulid import ULID

PREFIX = "rpa_"
RANDOM_LENGTH = 40
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(PREFIX) + RANDOM_LENGTH + CHECKSUM_LENGTH
HINT_LENGTH = 4

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
_ALPHABET_SET = frozenset(ALPHABET)
_DIGIT = {char: index for index, char in enumerate(ALPHABET)}


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def checksum(random_part: str) -> str:
    """The 6-character base62 CRC32 of the random part."""
    return _base62(zlib.crc32(random_part.encode("ascii")), CHECKSUM_LENGTH)


def generate_key() -> str:
    """A new key; the only place a plaintext key is ever made."""
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return PREFIX + random_part + checksum(random_part)


def is_well_formed(key: str) -> bool:
    """True when the prefix, length, alphabet and checksum are all right."""
    if len(key) != KEY_LENGTH or not key.startswith(PREFIX):
        return False
    body = key[len(PREFIX) :]
    if not _ALPHABET_SET.issuperset(body):
        return False
    random_part = body[:RANDOM_LENGTH]
    # Constant time is not needed for a public checksum, but it costs nothing.
    return hmac.compare_digest(checksum(random_part), body[RANDOM_LENGTH:])


def key_hash(pepper: bytes, key: str) -> str:
    """HMAC-SHA256 of the key under the pepper, hex: the stored form."""
    return hmac.digest(pepper, key.encode("ascii"), "sha256").hex()


def hint(key: str) -> str:
    """The last characters of the key, for people to tell keys apart."""
    return key[-HINT_LENGTH:]


def new_key_id() -> str:
    """A public, sortable key id (a ULID)."""
    return str(ULID())
