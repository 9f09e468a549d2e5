"""The audit trail: one Redis stream entry per admin action or refusal.

Entries go to ``<namespace>:audit`` with ``XADD ... MAXLEN ~ <max>``, so the
stream stays bounded without trimming on every write (Redis trims whole
macro nodes, see the XADD documentation). The same entry is logged on
``admin.audit``. Plaintext keys never reach an entry: callers pass field
names and values of the record, and ``record`` refuses a ``key`` field.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.store import iso, translate_redis_errors

logger = logging.getLogger("admin.audit")

_FORBIDDEN_FIELDS = frozenset({"key", "plaintext", "key_hash"})


@dataclass(frozen=True, slots=True)
class Event:
    """What happened; ``changes`` maps a field to its new value (or both)."""

    action: str
    actor: str | None
    request_id: str
    client: str | None
    status: int
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
        and the log line still carries the whole entry.
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
                "Could not append to the audit stream %s.",
                self.stream,
                extra={"audit": fields},
            )

    async def page(
        self, limit: int, before: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; the cursor for the next page, or None at the end."""
        upper = f"({before}" if before else "+"
        async with translate_redis_errors():
            rows = await self.redis.xrevrange(
                self.stream, max=upper, min="-", count=limit + 1
            )
        entries = [_entry(entry_id, data) for entry_id, data in rows[:limit]]
        following = entries[-1]["id"] if len(rows) > limit else None
        return entries, following
