"""The audit trail: one Redis stream entry per admin action or refusal.

Entries go to ``<namespace>:audit`` with ``XADD ... MAXLEN ~ <max>``, so the
stream stays bounded without trimming on every write (Redis trims whole
macro nodes, see the XADD documentation). Each entry is also logged on
``admin.audit``. Plaintext keys never reach an entry: callers pass field
names and values of the record, and ``record`` refuses a ``key`` field.

Only refusals of an identified caller are entries. Anyone can be refused a
credential, and a stranger's refusals in the capped stream would push the
real entries out: ``AnonymousRefusals`` counts and logs those instead.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import ResponseError

from gateway.keys import KEY_ID_PATTERN
from gateway.problems import InvalidInput
from gateway.store import USER_ID_PATTERN, iso, translate_redis_errors

logger = logging.getLogger("admin.audit")

_FORBIDDEN_FIELDS = frozenset({"key", "plaintext", "key_hash"})
INVALID_ID = "(invalid)"
# Redis's answers to a bad bound: "Invalid stream ID specified as stream
# command argument", "invalid end ID for the interval".
_BAD_ID = re.compile(r"\bID\b")


def checked_id(value: str | None, pattern: re.Pattern[str]) -> str | None:
    """``value`` if it has the shape of an id, else a fixed marker.

    For ids a client sent (a path, a query, a body): they reach an entry
    only once they could be ids of the store, so no one can write
    arbitrary text into the trail.
    """
    if not value:
        return None
    return value if pattern.match(value) else INVALID_ID


def checked_key_id(value: str | None) -> str | None:
    return checked_id(value, KEY_ID_PATTERN)


def checked_user_id(value: str | None) -> str | None:
    return checked_id(value, USER_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class Event:
    """What happened; ``changes`` maps a field to its new value (or both)."""

    action: str
    actor: str | None
    request_id: str
    client: str | None
    status: int
    # The API key the actor signed in with (None for SSO and the CLI): after
    # a key leaks, what it was used for can be found.
    actor_key_id: str | None = None
    key_id: str | None = None
    user_id: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    detail: str | None = None
    time: float = field(default_factory=time.time)

    @property
    def outcome(self) -> str:
        return "ok" if self.status < 400 else "refused"

    def fields(self) -> dict[str, str]:
        leaked = _FORBIDDEN_FIELDS.intersection(self.changes)
        if leaked:
            raise ValueError(f"Audit entries must not carry '{sorted(leaked)[0]}'.")
        return {
            "time": iso(self.time),
            "actor": self.actor or "",
            "actor_key_id": self.actor_key_id or "",
            "action": self.action,
            "outcome": self.outcome,
            "status": str(self.status),
            "key_id": self.key_id or "",
            "user_id": self.user_id or "",
            "changes": orjson.dumps(self.changes).decode(),
            "detail": self.detail or "",
            "request_id": self.request_id,
            "client": self.client or "",
        }


def _entry(entry_id: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "id": entry_id,
        "time": data.get("time", ""),
        "actor": data.get("actor") or None,
        "actor_key_id": data.get("actor_key_id") or None,
        "action": data.get("action", ""),
        "outcome": data.get("outcome", "ok"),
        "status": int(data.get("status", "0")),
        "key_id": data.get("key_id") or None,
        "user_id": data.get("user_id") or None,
        "changes": orjson.loads(data.get("changes") or "{}"),
        "detail": data.get("detail") or None,
        "request_id": data.get("request_id", ""),
        "client": data.get("client") or None,
    }


class AuditLog:
    def __init__(self, redis: Any, namespace: str, max_len: int) -> None:
        self.redis = redis
        self.stream = f"{namespace}:audit"
        self.max_len = max_len

    async def record(self, event: Event) -> None:
        """Append and log the event.

        The action it describes has already happened, so a Redis failure
        here must not turn a success into an error: it is logged instead,
        with the whole entry as JSON in the message (the shipped formatter
        prints the message, not ``extra``). Entries never hold a key.
        """
        fields = event.fields()
        level = logging.INFO if event.outcome == "ok" else logging.WARNING
        logger.log(
            level,
            "Admin action %s by %s: %s.",
            event.action,
            event.actor or "an unauthenticated caller",
            event.outcome,
            extra={"audit": fields},
        )
        try:
            async with translate_redis_errors():
                await self.redis.xadd(
                    self.stream, fields, maxlen=self.max_len, approximate=True
                )
        except Exception:
            logger.exception(
                "Could not append to the audit stream %s; the entry: %s",
                self.stream,
                orjson.dumps(fields).decode(),
                extra={"audit": fields},
            )

    async def page(
        self, limit: int, before: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; the cursor for the next page, or None at the end."""
        upper = f"({before}" if before else "+"
        async with translate_redis_errors():
            try:
                rows = await self.redis.xrevrange(
                    self.stream, max=upper, min="-", count=limit + 1
                )
            except ResponseError as exc:
                if before is None or not _BAD_ID.search(str(exc)):
                    raise
                raise InvalidInput(
                    "before",
                    f"The cursor '{before[:48]}' is not a stream entry id the "
                    "audit trail can page from; pass the 'next' of a page.",
                ) from None
        entries = [_entry(entry_id, data) for entry_id, data in rows[:limit]]
        following = entries[-1]["id"] if len(rows) > limit else None
        return entries, following


class AnonymousRefusals:
    """Refusals of callers who could not be identified: counted and logged.

    Not written to the stream (see the module docstring). One line at most
    per ``interval`` seconds, carrying how many came since the last one,
    so a flood costs a log line a minute rather than one per request.
    """

    def __init__(
        self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.total = 0
        self._unreported = 0
        self._quiet_until = float("-inf")

    def add(self, action: str, client: str | None) -> None:
        self.total += 1
        self._unreported += 1
        now = self.clock()
        if now < self._quiet_until:
            return
        logger.warning(
            "Refused %d admin requests without a valid credential since the "
            "last such line; the latest: %s from %s.",
            self._unreported,
            action,
            client or "an unknown address",
        )
        self._unreported = 0
        self._quiet_until = now + self.interval
