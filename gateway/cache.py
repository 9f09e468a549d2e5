"""The in-process cache of verified keys.

Entries are keyed by the key's hash. A positive entry is *fresh* for the
cache TTL and may be served *stale* up to the stale bound while Redis is
unreachable; a negative entry (unknown key) is fresh for the negative TTL.

Every eviction bumps ``generation``. A lookup notes the generation before it
asks Redis and may only insert its answer if no eviction happened meanwhile,
so a lookup that raced a revocation can never put the revoked key back.
"""

from __future__ import annotations

import time
from typing import NamedTuple


# Named tuples rather than frozen dataclasses: both are made on every cache
# miss, and a tuple is built in C where a frozen dataclass's __init__ sets
# each field through object.__setattr__.
class Identity(NamedTuple):
    """Who a verified key belongs to."""

    key_id: str
    user_id: str
    expires_at: float  # wall-clock seconds


class Entry(NamedTuple):
    identity: Identity | None  # None: the key is unknown
    fresh_until: float  # monotonic seconds
    stale_until: float


class KeyCache:
    def __init__(
        self,
        ttl: float,
        negative_ttl: float,
        stale_bound: float,
        max_entries: int,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_bound = stale_bound
        self.max_entries = max_entries
        self.generation = 0
        self._entries: dict[str, Entry] = {}
        self._by_user: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key_hash: str) -> Entry | None:
        return self._entries.get(key_hash)

    def put(self, key_hash: str, identity: Identity | None, generation: int) -> bool:
        """Insert unless an eviction happened since ``generation`` was read."""
        if generation != self.generation or self.max_entries == 0:
            return False
        now = time.monotonic()
        if identity is None:
            if self.negative_ttl <= 0:
                return False
            entry = Entry(None, now + self.negative_ttl, now + self.negative_ttl)
        else:
            fresh = now + self.ttl
            entry = Entry(identity, fresh, max(fresh, now + self.stale_bound))
        if key_hash not in self._entries and len(self._entries) >= self.max_entries:
            self._drop_oldest()
        self._remove(key_hash)
        self._entries[key_hash] = entry
        if identity is not None:
            self._by_user.setdefault(identity.user_id, set()).add(key_hash)
        return True

    def evict_key(self, key_hash: str) -> None:
        self.generation += 1
        self._remove(key_hash)

    def evict_user(self, user_id: str) -> None:
        self.generation += 1
        for key_hash in self._by_user.pop(user_id, ()):
            self._entries.pop(key_hash, None)

    def expire_all(self) -> None:
        """Make every entry due for a new lookup, keeping it for stale use.

        For a lost subscription: a revocation may be missed from now on, so
        nothing is fresh any more; but if Redis itself is down, the entries
        still serve stale-if-error up to their stale bound.
        """
        self.generation += 1
        for key_hash, entry in list(self._entries.items()):
            if entry.identity is None:
                self._remove(key_hash)
            else:
                self._entries[key_hash] = Entry(entry.identity, 0.0, entry.stale_until)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_user.clear()

    def _remove(self, key_hash: str) -> None:
        entry = self._entries.pop(key_hash, None)
        if entry is not None and entry.identity is not None:
            hashes = self._by_user.get(entry.identity.user_id)
            if hashes is not None:
                hashes.discard(key_hash)
                if not hashes:
                    del self._by_user[entry.identity.user_id]

    def _drop_oldest(self) -> None:
        # dicts keep insertion order: the first entry is the oldest insert.
        oldest = next(iter(self._entries))
        self._remove(oldest)
