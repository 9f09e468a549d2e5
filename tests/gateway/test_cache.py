"""The in-process key cache: freshness, staleness, generations, bounds."""

from __future__ import annotations

import time

import pytest

from gateway.cache import Identity, KeyCache

ALICE = Identity("K1", "alice", expires_at=4102444800.0)
BOB = Identity("K2", "bob", expires_at=4102444800.0)


def cache(**overrides: float) -> KeyCache:
    options = {"ttl": 10.0, "negative_ttl": 5.0, "stale_bound": 300.0}
    options.update(overrides)
    return KeyCache(max_entries=1000, **options)


def test_a_positive_entry_is_fresh_for_the_ttl_and_stale_until_the_bound() -> None:
    keys = cache(ttl=10.0, stale_bound=300.0)
    before = time.monotonic()
    assert keys.put("h1", ALICE, keys.generation)
    entry = keys.get("h1")
    assert entry is not None and entry.identity == ALICE
    assert before + 10.0 <= entry.fresh_until <= time.monotonic() + 10.0
    assert before + 300.0 <= entry.stale_until <= time.monotonic() + 300.0


def test_a_negative_entry_lives_for_the_negative_ttl_and_is_never_stale() -> None:
    keys = cache(negative_ttl=5.0)
    assert keys.put("h1", None, keys.generation)
    entry = keys.get("h1")
    assert entry is not None and entry.identity is None
    assert entry.stale_until == entry.fresh_until


def test_negative_caching_can_be_switched_off() -> None:
    keys = cache(negative_ttl=0.0)
    assert not keys.put("h1", None, keys.generation)
    assert keys.get("h1") is None


@pytest.mark.parametrize(
    "evict",
    [
        pytest.param(lambda c: c.evict_key("other"), id="evict-key"),
        pytest.param(lambda c: c.evict_user("nobody"), id="evict-user"),
        pytest.param(lambda c: c.clear(), id="clear"),
        pytest.param(lambda c: c.expire_all(), id="expire-all"),
    ],
)
def test_an_answer_read_before_any_eviction_is_not_inserted(evict: object) -> None:
    keys = cache()
    generation = keys.generation
    evict(keys)  # type: ignore[operator]
    assert not keys.put("h1", ALICE, generation)
    assert keys.get("h1") is None


def test_evicting_a_user_drops_every_key_of_that_user_only() -> None:
    keys = cache()
    keys.put("a1", ALICE, keys.generation)
    keys.put("a2", Identity("K3", "alice", 4102444800.0), keys.generation)
    keys.put("b1", BOB, keys.generation)
    keys.evict_user("alice")
    assert keys.get("a1") is None and keys.get("a2") is None
    assert keys.get("b1") is not None


def test_expire_all_keeps_identities_for_stale_use_and_drops_negatives() -> None:
    keys = cache()
    keys.put("a1", ALICE, keys.generation)
    keys.put("n1", None, keys.generation)
    keys.expire_all()
    entry = keys.get("a1")
    assert entry is not None and entry.identity == ALICE
    assert entry.fresh_until < time.monotonic() < entry.stale_until
    assert keys.get("n1") is None


def test_the_cache_never_grows_past_its_bound() -> None:
    keys = KeyCache(ttl=10, negative_ttl=5, stale_bound=300, max_entries=3)
    for index in range(10):
        keys.put(f"h{index}", Identity(f"K{index}", "u", 4102444800.0), keys.generation)
    assert len(keys) == 3
    assert keys.get("h9") is not None and keys.get("h0") is None


def test_a_cache_of_size_zero_stores_nothing() -> None:
    keys = KeyCache(ttl=10, negative_ttl=5, stale_bound=300, max_entries=0)
    assert not keys.put("h1", ALICE, keys.generation)
    assert len(keys) == 0
