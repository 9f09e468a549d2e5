"""The key format: generation, parsing, checksum, keyed hash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import keys

PEPPER = b"k" * 32


def test_generated_keys_have_the_documented_shape() -> None:
    key = keys.generate_key()
    assert key.startswith("rpa_")
    assert len(key) == 4 + 40 + 6 == keys.KEY_LENGTH
    assert set(key[4:]) <= set(keys.ALPHABET)


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=10_000))
def test_every_generated_key_parses(_: int) -> None:
    assert keys.is_well_formed(keys.generate_key())


@settings(max_examples=300)
@given(
    position=st.integers(min_value=0, max_value=keys.KEY_LENGTH - 1),
    replacement=st.characters(codec="utf-8"),
)
def test_every_single_character_change_is_rejected(
    position: int, replacement: str
) -> None:
    key = keys.generate_key()
    if key[position] == replacement:
        return
    changed = key[:position] + replacement + key[position + 1 :]
    assert not keys.is_well_formed(changed)


def test_every_substitution_at_every_position_is_rejected() -> None:
    """Exhaustive over the alphabet: CRC32 catches every single-symbol error."""
    key = keys.generate_key()
    for position in range(len("rpa_"), keys.KEY_LENGTH):
        for char in keys.ALPHABET:
            if char != key[position]:
                changed = key[:position] + char + key[position + 1 :]
                assert not keys.is_well_formed(changed), (position, char)


@pytest.mark.parametrize(
    "candidate",
    [
        pytest.param("", id="empty"),
        pytest.param("rpa_", id="prefix-only"),
        pytest.param("xyz_" + "a" * 46, id="wrong-prefix"),
        pytest.param("rpa_" + "a" * 45, id="too-short"),
        pytest.param("rpa_" + "a" * 47, id="too-long"),
        pytest.param("rpa_" + "a" * 39 + "-" + "a" * 6, id="bad-alphabet"),
        pytest.param("rpa_" + "é" * 46, id="non-ascii"),
    ],
)
def test_malformed_keys_are_rejected(candidate: str) -> None:
    assert not keys.is_well_formed(candidate)


def test_the_hash_is_keyed_by_the_pepper_and_hides_the_key() -> None:
    key = keys.generate_key()
    digest = keys.key_hash(PEPPER, key)
    assert len(digest) == 64
    assert key not in digest
    assert digest == keys.key_hash(PEPPER, key)
    assert digest != keys.key_hash(b"o" * 32, key)


def test_the_hint_is_the_last_four_characters() -> None:
    key = keys.generate_key()
    assert keys.hint(key) == key[-4:]


def test_key_ids_sort_by_creation() -> None:
    first = keys.new_key_id()
    second = keys.new_key_id()
    assert len(first) == 26
    assert first != second


@pytest.mark.parametrize("length", [1, 32, 63, 64, 65, 200])
def test_the_precomputed_hasher_is_exactly_hmac_sha256(length: int) -> None:
    pepper = bytes(range(256))[:length] if length <= 256 else b""
    key = keys.generate_key()
    hasher = keys.KeyHasher(pepper)
    assert hasher(key) == keys.key_hash(pepper, key)
    assert repr(pepper) not in repr(hasher)
