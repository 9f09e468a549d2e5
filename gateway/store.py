"""Key and user records in Redis, the store of record.

Layout under the namespace ``ns``:

    ns:k:<hash>     hash    the key record the gateway reads
    ns:id:<id>      string  key id -> hash
    ns:uk:<user>    set     the user's key ids
    ns:keys         set     every key id
    ns:u:<user>     hash    user record
    ns:users        set     every user id
    ns:used         hash    key id -> last-used time
    ns:invalidate   channel "k:<hash>" or "u:<user>" after every change

Create writes the indexes first and the record the gateway reads last;
revoke deletes that record first. A crash between two steps therefore never
leaves a usable key that the indexes do not know, which also holds on Redis
Cluster where one transaction cannot span slots. On a single Redis the steps
also run in one MULTI/EXEC.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dtime
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import keys, redis_client
from gateway.cache import Identity
from gateway.problems import Conflict, InvalidInput, NotFound, StoreUnavailable
from gateway.settings import Settings

error_logger = logging.getLogger("gateway.error")

PRIVILEGES = (
    "user_management.open",
    "user_management.admin",
    "user_api_key.create",
    "user_api_key.edit",
    "user_api_key.delete",
)
NAME_MAX = 100
DESCRIPTION_MAX = 1000
USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")

Redis = aioredis.Redis


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    privileges: frozenset[str]
    disabled: bool = False
    created_at: float = 0.0

    def can(self, privilege: str) -> bool:
        return privilege in self.privileges


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    key_hash: str = field(repr=False)
    user_id: str
    name: str
    description: str
    created_at: float
    created_by: str
    expires_at: float
    hint: str
    last_used_at: float | None = None

    def is_expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at

    def status(self, now: float | None = None) -> str:
        return "expired" if self.is_expired(now) else "active"


@asynccontextmanager
async def translate_redis_errors() -> AsyncIterator[None]:
    """The one place where redis errors become ``StoreUnavailable``."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StoreUnavailable("The key store cannot be reached.") from exc
    except RedisError as exc:
        raise StoreUnavailable(f"The key store refused a command: {exc}.") from exc


def explain(exc: StoreUnavailable) -> str:
    """The error and the Redis client's own reason, for an operator.

    Clients get the detail alone. The reason names hosts, ports and what a
    server answered; redis-py leaves passwords out of it.
    """
    cause = exc.__cause__
    if cause is None or not str(cause):
        return exc.detail
    reason = _CLIENT_REPR.sub(r"\1:\2", str(cause))
    return f"{exc.detail} {type(cause).__name__}: {reason}"


# How redis-py names a sentinel it asked in vain: its client's whole repr.
_CLIENT_REPR = re.compile(r"<redis\.[\w.]+\(.*?\bhost=([^,>]+),port=(\d+).*?\)>(?= - )")


def iso(timestamp: float) -> str:
    """RFC 3339 in UTC with a Z, to the second."""
    moment = datetime.fromtimestamp(timestamp, UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def parse_expiration(
    value: str | datetime | date, *, max_days: int, now: float | None = None
) -> float:
    """An expiration as a timestamp, checked against now and the maximum.

    A date alone means the end of that day in UTC.
    """
    now = time.time() if now is None else now
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, dtime(23, 59, 59), UTC)
    else:
        text = value.strip()
        try:
            if _DATE_ONLY.match(text):
                day = date.fromisoformat(text)
                moment = datetime.combine(day, dtime(23, 59, 59), UTC)
            else:
                moment = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise InvalidInput(
                "expires_at",
                f"'{value}' is not a date (YYYY-MM-DD) or an RFC 3339 date-time.",
            ) from None
    if moment.tzinfo is None:
        raise InvalidInput(
            "expires_at", f"'{value}' has no time zone; add Z or an offset."
        )
    stamp = moment.timestamp()
    if stamp <= now:
        raise InvalidInput("expires_at", f"'{value}' is not in the future.")
    if stamp > now + max_days * 86400 + 86400:
        raise InvalidInput(
            "expires_at",
            f"'{value}' is more than {max_days} days away, the maximum key lifetime.",
        )
    return float(int(stamp))


# Bidirectional embeddings, overrides and isolates (Unicode UAX #9): they
# can make a name read as something else, "\u202egnp.exe" as "exe.png".
_BIDI_CONTROLS = frozenset(
    chr(code) for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
)
# Zero-width space, non-joiner, joiner and BOM: a name of these alone shows
# as nothing. str.strip() keeps them (they are not whitespace).
_ZERO_WIDTH = "\u200b\u200c\u200d\ufeff"
_INVISIBLE = str.maketrans("", "", _ZERO_WIDTH)


def _check_characters(field: str, text: str, allowed: str = "") -> None:
    for char in text:
        if char in allowed:
            continue
        if unicodedata.category(char) == "Cc":
            raise InvalidInput(
                field,
                f"The {field} must not contain control characters "
                f"(found U+{ord(char):04X}).",
            )
        if char in _BIDI_CONTROLS:
            raise InvalidInput(
                field,
                f"The {field} must not contain bidirectional override or isolate "
                f"characters (found U+{ord(char):04X}).",
            )


def check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise InvalidInput("name", f"The name must have 1 to {NAME_MAX} characters.")
    _check_characters("name", name)
    if not name.translate(_INVISIBLE).strip():
        raise InvalidInput("name", "The name must have a visible character.")
    return name


def check_description(description: str) -> str:
    if len(description) > DESCRIPTION_MAX:
        raise InvalidInput(
            "description",
            f"The description must have at most {DESCRIPTION_MAX} characters.",
        )
    _check_characters("description", description, allowed="\n\t")
    return description


def check_user_id(user_id: str) -> str:
    if not USER_ID_PATTERN.match(user_id):
        raise InvalidInput(
            "user_id",
            f"'{user_id[:64]}' is not a valid user id: use 1 to 128 letters, "
            "digits and _ . @ -, starting with a letter or digit.",
        )
    return user_id


def check_privileges(privileges: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(privileges)
    unknown = sorted(chosen.difference(PRIVILEGES))
    if unknown:
        raise InvalidInput(
            "privileges",
            f"Unknown privilege '{unknown[0]}'; known: {', '.join(PRIVILEGES)}.",
        )
    return chosen


# What the verifier needs, and only that, for every key record in KEYS, in
# one call: key id, user id, expiry, whether the user exists, and its
# disabled flag. Empty strings stand for missing fields (a nil would cut a
# Lua array short); false for a key that does not exist; {'!', error} for a
# record that cannot be read (another type in its place).
_GRANT = """
local users, out = ARGV[1], {}
for i, name in ipairs(KEYS) do
  local key = redis.pcall('HMGET', name, 'id', 'user_id', 'expires_at')
  if key.err then
    out[i] = {'!', key.err}
  elseif not key[1] or not key[2] then
    out[i] = false
  else
    local user = redis.pcall('HMGET', users .. key[2], 'id', 'disabled')
    if user.err then
      out[i] = {'!', user.err}
    else
      out[i] = {key[1], key[2], key[3] or '0', user[1] or '', user[2] or ''}
    end
  end
end
return out
"""


# Edit a key record only if it still exists, in one step: a revoke that
# wins the race leaves nothing to edit, where a plain HSET would make a
# stray record of the edited fields alone, with no expiry. KEYS[1] is the
# record, ARGV[1] its new purge time in milliseconds (or ''), the rest
# field and value pairs. One key, so it runs on Cluster as well; 0 when
# the record is gone. Sent as EVAL, not EVALSHA: a NOSCRIPT inside MULTI
# would fail this step alone and let the others run.
_EDIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if ARGV[1] ~= '' then
  redis.call('PEXPIREAT', KEYS[1], ARGV[1])
end
return 1
"""


# What ``identities`` answers for one key: an unreadable record is an
# error of that key alone.
Grant = Identity | None | StoreUnavailable


def _grant(reply: list[str] | None, key_hash: str) -> Grant:
    """What one key's part of a ``_GRANT`` answer grants, if key and user are good."""
    if not reply:
        return None
    if reply[0] == "!":
        # A record of the wrong type (WRONGTYPE), written by something else.
        return _unreadable(key_hash, reply[1])
    key_id, user_id, expires_at, user_found, disabled = reply
    if not user_found or disabled == "1":
        return None
    try:
        expires = float(expires_at)
    except ValueError:
        return _unreadable(key_hash, f"key {key_id} has expires_at {expires_at!r}")
    return Identity(key_id, user_id, expires)


def _unreadable(key_hash: str, cause: str) -> StoreUnavailable:
    """The error of one damaged record: the cause is logged, not answered."""
    error_logger.error(
        "The key record k:%s... cannot be read (%s): its key gets 503 and "
        "lists leave it out until the record is repaired or deleted.",
        key_hash[:12],
        cause,
    )
    return StoreUnavailable("The key store holds an unreadable record for this key.")


def _user_from(data: dict[str, str]) -> User:
    privileges = data.get("privileges", "")
    return User(
        id=data["id"],
        name=data.get("name", data["id"]),
        privileges=frozenset(p for p in privileges.split(",") if p),
        disabled=data.get("disabled") == "1",
        created_at=float(data.get("created_at", 0)),
    )


def _key_from(key_hash: str, data: dict[str, str], used: str | None) -> KeyRecord:
    """The record in ``data``; ``StoreUnavailable`` (logged) if it is damaged."""
    try:
        return KeyRecord(
            id=data["id"],
            key_hash=key_hash,
            user_id=data["user_id"],
            name=data["name"],
            description=data.get("description", ""),
            created_at=float(data["created_at"]),
            created_by=data.get("created_by", ""),
            expires_at=float(data["expires_at"]),
            hint=data.get("hint", ""),
            last_used_at=float(used) if used else None,
        )
    except KeyError as exc:
        raise _unreadable(key_hash, f"no field {exc}") from None
    except ValueError as exc:
        raise _unreadable(key_hash, str(exc)) from None


# What ``lookup`` finds: the key record and its user, if the key exists.
Found = tuple[KeyRecord, User | None] | None


Step = Callable[[Any], Awaitable[Any] | Any]


class _Listed(Protocol):
    @property
    def id(self) -> str: ...


L = TypeVar("L", bound=_Listed)


async def _page(
    ids: list[str], limit: int | None, fetch: Callable[[list[str]], Awaitable[list[L]]]
) -> tuple[list[L], str | None]:
    """Up to ``limit`` of the items behind ``ids``, in order, and the next cursor.

    Items deleted since they were indexed leave gaps, so the ids are read on
    until the page is full. The cursor is the last id returned, or None when
    no id is left.
    """
    wanted = len(ids) if limit is None else limit
    page: list[L] = []
    start = 0
    while start < len(ids) and len(page) < wanted:
        chunk = ids[start : start + wanted - len(page)]
        page.extend(await fetch(chunk))
        start += len(chunk)
    return page, page[-1].id if page and start < len(ids) else None


class KeyStore:
    """Users and keys in Redis; every mutation publishes an invalidation."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        pepper: bytes,
        *,
        max_lifetime_days: int = 366,
        retention_days: int = 30,
        atomic: bool = True,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        # Typed loosely: redis-py's annotations cannot express that a client
        # made with decode_responses=True returns str, never bytes.
        self.redis: Any = redis
        self.ns = namespace
        self.hash_key = keys.KeyHasher(pepper)
        self._grant_sha = hashlib.sha1(_GRANT.encode()).hexdigest()  # noqa: S324
        self.max_lifetime_days = max_lifetime_days
        self.retention_seconds = retention_days * 86400
        # False on Redis Cluster: the steps then run one by one, in order.
        self.atomic = atomic
        # Replicas that must confirm each change before it counts as done.
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms

    def __repr__(self) -> str:
        return f"KeyStore(namespace={self.ns!r}, atomic={self.atomic})"

    @property
    def channel(self) -> str:
        return f"{self.ns}:invalidate"

    # Redis key names -----------------------------------------------------

    def _k(self, key_hash: str) -> str:
        return f"{self.ns}:k:{key_hash}"

    def _id(self, key_id: str) -> str:
        return f"{self.ns}:id:{key_id}"

    def _uk(self, user_id: str) -> str:
        return f"{self.ns}:uk:{user_id}"

    def _u(self, user_id: str) -> str:
        return f"{self.ns}:u:{user_id}"

    # Writing in order ----------------------------------------------------

    async def _write(self, steps: list[Step]) -> list[Any]:
        """Run the steps in order: in one MULTI/EXEC, or one by one.

        The answer holds each step's reply, in the order of the steps.
        """
        async with translate_redis_errors():
            if self.atomic and self.wait_replicas:
                return await self._write_replicated(steps)
            if self.atomic:
                async with self.redis.pipeline(transaction=True) as pipe:
                    for step in steps:
                        step(pipe)
                    replies: list[Any] = await pipe.execute()
                return replies
            return [await step(self.redis) for step in steps]

    async def _write_replicated(self, steps: list[Step]) -> list[Any]:
        """MULTI, the steps, EXEC and WAIT, all on one connection.

        WAIT counts the replicas that have every write of its own
        connection, so it must follow EXEC on the same one: a plain
        pipeline carrying MULTI and EXEC as commands does that, where
        redis-py's transaction pipeline would hand the connection back
        after EXEC. A change too few replicas confirm in time is kept (the
        master has it) and logged: a failover now could lose it.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.execute_command("MULTI")
            for step in steps:
                step(pipe)
            pipe.execute_command("EXEC")
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            replies = await pipe.execute()
        results, confirmed = replies[-2], int(replies[-1])
        for result in results:
            if isinstance(result, Exception):
                raise result
        if confirmed < self.wait_replicas:
            error_logger.warning(
                "A change to the key store was confirmed by %d of %d Redis "
                "replicas within %d ms; the master has it, but a failover "
                "before the replicas catch up would lose it.",
                confirmed,
                self.wait_replicas,
                self.wait_timeout_ms,
            )
        return list(results)

    # Users ---------------------------------------------------------------

    async def add_user(
        self, user_id: str, name: str | None = None, privileges: Iterable[str] = ()
    ) -> User:
        check_user_id(user_id)
        user = User(
            id=user_id,
            name=check_name(name) if name and name.strip() else user_id,
            privileges=check_privileges(privileges),
            created_at=time.time(),
        )
        async with translate_redis_errors():
            created = await self.redis.hsetnx(self._u(user_id), "id", user_id)
        if not created:
            raise Conflict(f"User '{user_id}' already exists.")
        await self._write(
            [
                lambda r: r.sadd(f"{self.ns}:users", user_id),
                lambda r: r.hset(self._u(user_id), mapping=self._user_fields(user)),
                lambda r: r.publish(self.channel, f"u:{user_id}"),
            ]
        )
        return user

    @staticmethod
    def _user_fields(user: User) -> dict[str, str]:
        return {
            "id": user.id,
            "name": user.name,
            "privileges": ",".join(sorted(user.privileges)),
            "disabled": "1" if user.disabled else "0",
            "created_at": repr(user.created_at),
        }

    async def get_user(self, user_id: str) -> User | None:
        async with translate_redis_errors():
            data = await self.redis.hgetall(self._u(user_id))
        return _user_from(data) if data.get("id") else None

    async def require_user(self, user_id: str) -> User:
        user = await self.get_user(user_id)
        if user is None:
            raise NotFound(f"User '{user_id}' does not exist.")
        return user

    async def list_users(self) -> list[User]:
        """Every user, by id."""
        return (await self.page_users(limit=None))[0]

    async def page_users(
        self, *, limit: int | None, after: str | None = None
    ) -> tuple[list[User], str | None]:
        """Up to ``limit`` users (all with None) by id, with ids above ``after``.

        The second value is the cursor of the next page: the last id
        returned, or None when no user is left.
        """
        async with translate_redis_errors():
            ids = sorted(await self.redis.smembers(f"{self.ns}:users"))
        if after is not None:
            del ids[: bisect.bisect_right(ids, after)]
        return await _page(ids, limit, self._users)

    async def _users(self, ids: list[str]) -> list[User]:
        pipeline = self.redis.pipeline(transaction=False)
        async with translate_redis_errors(), pipeline as pipe:
            for user_id in ids:
                pipe.hgetall(self._u(user_id))
            rows = await pipe.execute()
        return [_user_from(row) for row in rows if row.get("id")]

    async def update_user(
        self,
        user_id: str,
        *,
        name: str | None = None,
        privileges: Iterable[str] | None = None,
        disabled: bool | None = None,
    ) -> User:
        user = await self.require_user(user_id)
        fields: dict[str, str] = {}
        if name is not None:
            fields["name"] = check_name(name)
        if privileges is not None:
            fields["privileges"] = ",".join(sorted(check_privileges(privileges)))
        if disabled is not None:
            fields["disabled"] = "1" if disabled else "0"
        if fields:
            await self._write(
                [
                    lambda r: r.hset(self._u(user_id), mapping=fields),
                    lambda r: r.publish(self.channel, f"u:{user_id}"),
                ]
            )
        return await self.require_user(user.id)

    async def remove_user(self, user_id: str) -> int:
        """Revoke every key of the user, then delete the user; the count."""
        await self.require_user(user_id)
        # Mark disabled first so that no key of the user works from here on.
        await self.update_user(user_id, disabled=True)
        revoked = 0
        for record in await self.list_keys(user_id):
            try:
                await self.revoke_key(record.id)
                revoked += 1
            except NotFound:
                pass
        await self._write(
            [
                lambda r: r.delete(self._u(user_id)),
                lambda r: r.delete(self._uk(user_id)),
                lambda r: r.srem(f"{self.ns}:users", user_id),
                lambda r: r.publish(self.channel, f"u:{user_id}"),
            ]
        )
        return revoked

    # Keys ----------------------------------------------------------------

    async def create_key(
        self,
        user_id: str,
        *,
        name: str,
        expires_at: str | datetime | date | float,
        description: str = "",
        created_by: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """Make a key for the user; returns the record and the plaintext once."""
        name = check_name(name)
        description = check_description(description)
        expires = (
            float(expires_at)
            if isinstance(expires_at, int | float)
            else parse_expiration(expires_at, max_days=self.max_lifetime_days)
        )
        user = await self.require_user(user_id)
        plaintext = keys.generate_key()
        record = KeyRecord(
            id=keys.new_key_id(),
            key_hash=self.hash_key(plaintext),
            user_id=user.id,
            name=name,
            description=description,
            created_at=float(int(time.time())),
            created_by=created_by or user.id,
            expires_at=expires,
            hint=keys.hint(plaintext),
        )
        purge_at = int((expires + self.retention_seconds) * 1000)
        fields = {
            "id": record.id,
            "user_id": record.user_id,
            "name": record.name,
            "description": record.description,
            "created_at": repr(record.created_at),
            "created_by": record.created_by,
            "expires_at": repr(record.expires_at),
            "hint": record.hint,
        }
        k, kid = self._k(record.key_hash), self._id(record.id)
        await self._write(
            [
                lambda r: r.sadd(f"{self.ns}:keys", record.id),
                lambda r: r.sadd(self._uk(user.id), record.id),
                lambda r: r.set(kid, record.key_hash, pxat=purge_at),
                lambda r: r.hset(k, mapping=fields),
                lambda r: r.pexpireat(k, purge_at),
                lambda r: r.publish(self.channel, f"k:{record.key_hash}"),
            ]
        )
        return record, plaintext

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        async with translate_redis_errors():
            data = await self.redis.hgetall(self._k(key_hash))
        if not data.get("id"):
            return None
        return _key_from(key_hash, data, None)

    async def lookup(self, key_hash: str) -> Found:
        """The key record and its user, in two reads (safe on Cluster).

        The verifier uses ``identities`` instead on a single Redis.
        """
        record = await self.get_key_by_hash(key_hash)
        if record is None:
            return None
        return record, await self.get_user(record.user_id)

    async def identities(self, hashes: Sequence[str]) -> list[Grant]:
        """What each key grants, for the verifier, in one script call.

        On a single Redis only (the script reads user records, which on
        Cluster live in other slots). Losing Redis fails them all
        (``StoreUnavailable`` is raised); a record that cannot be read
        fails its own key only (its place in the list holds the error).
        The answer carries three fields of the key and two of the user
        rather than both records: a miss under load spent a fifth of its
        time turning whole records into objects the verifier never used.
        One call for the whole batch rather than a pipeline of one call
        per key leaves redis-py one command to pack and one reply to read.
        """
        names = [self._k(key_hash) for key_hash in hashes]
        async with translate_redis_errors():
            try:
                replies = await self._grants(names)
            except NoScriptError:
                # A restarted or flushed Redis forgot the script. (redis-py's
                # own Script objects cost a SCRIPT EXISTS on every pipeline.)
                await self.redis.script_load(_GRANT)
                replies = await self._grants(names)
        return [_grant(reply, h) for reply, h in zip(replies, hashes, strict=True)]

    async def _grants(self, names: list[str]) -> list[Any]:
        replies: list[Any] = await self.redis.evalsha(
            self._grant_sha, len(names), *names, f"{self.ns}:u:"
        )
        return replies

    async def get_key(self, key_id: str) -> KeyRecord | None:
        async with translate_redis_errors():
            key_hash = await self.redis.get(self._id(key_id))
            if not key_hash:
                return None
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._k(key_hash))
                pipe.hget(f"{self.ns}:used", key_id)
                data, used = await pipe.execute()
        if not data.get("id"):
            return None
        return _key_from(key_hash, data, used)

    async def require_key(self, key_id: str) -> KeyRecord:
        record = await self.get_key(key_id)
        if record is None:
            raise NotFound(f"Key '{key_id}' does not exist.")
        return record

    async def list_keys(self, user_id: str | None = None) -> list[KeyRecord]:
        """Keys, oldest first; index entries whose record is gone are dropped."""
        return await self._records(await self._key_ids(user_id), user_id)

    async def page_keys(
        self, user_id: str | None, *, limit: int | None, before: str | None = None
    ) -> tuple[list[KeyRecord], str | None]:
        """Up to ``limit`` keys (all with None), newest first, ids below ``before``.

        Key ids are ULIDs, which sort by creation time. The second value is
        the cursor of the next page: the last id returned, or None when no
        key is left.
        """
        ids = await self._key_ids(user_id)
        if before is not None:
            del ids[bisect.bisect_left(ids, before) :]
        ids.reverse()
        return await _page(ids, limit, lambda chunk: self._records(chunk, user_id))

    async def _key_ids(self, user_id: str | None) -> list[str]:
        index = self._uk(user_id) if user_id else f"{self.ns}:keys"
        async with translate_redis_errors():
            return sorted(await self.redis.smembers(index))

    async def _records(self, ids: list[str], user_id: str | None) -> list[KeyRecord]:
        """The records of these key ids, in their order; gone ones unindexed."""
        if not ids:
            return []
        async with translate_redis_errors():
            # GETs in a pipeline, not MGET: on Cluster the ids span slots.
            async with self.redis.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.get(self._id(key_id))
                hashes = await pipe.execute()
            async with self.redis.pipeline(transaction=False) as pipe:
                for key_hash in hashes:
                    pipe.hgetall(self._k(key_hash or "-"))
                # A record of the wrong type fails alone (WRONGTYPE in place).
                rows = await pipe.execute(raise_on_error=False)
            used = await self.redis.hmget(f"{self.ns}:used", ids)
        records, gone = [], []
        for key_id, key_hash, data, last in zip(ids, hashes, rows, used, strict=True):
            if isinstance(data, ResponseError):
                _unreadable(key_hash or "-", str(data))
            elif key_hash and data.get("id"):
                # A damaged record is logged and left out; the rest stands.
                with contextlib.suppress(StoreUnavailable):
                    records.append(_key_from(key_hash, data, last))
            else:
                gone.append(key_id)
        if gone:
            await self._forget(gone, user_id)
        return records

    async def _forget(self, key_ids: list[str], user_id: str | None) -> None:
        """Drop index entries of records that expired out or half-written."""
        pipeline = self.redis.pipeline(transaction=False)
        async with translate_redis_errors(), pipeline as pipe:
            pipe.srem(f"{self.ns}:keys", *key_ids)
            pipe.hdel(f"{self.ns}:used", *key_ids)
            if user_id:
                pipe.srem(self._uk(user_id), *key_ids)
            await pipe.execute()

    async def edit_key(
        self,
        key_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        expires_at: str | datetime | date | float | None = None,
    ) -> KeyRecord:
        record = await self.require_key(key_id)
        fields: dict[str, str] = {}
        if name is not None:
            fields["name"] = check_name(name)
        if description is not None:
            fields["description"] = check_description(description)
        purge_at = None
        if expires_at is not None:
            expires = (
                float(expires_at)
                if isinstance(expires_at, int | float)
                else parse_expiration(expires_at, max_days=self.max_lifetime_days)
            )
            fields["expires_at"] = repr(expires)
            purge_at = int((expires + self.retention_seconds) * 1000)
        if not fields:
            return record
        k = self._k(record.key_hash)
        purge = "" if purge_at is None else str(purge_at)
        pairs = [item for pair in fields.items() for item in pair]
        steps: list[Step] = []
        if purge_at is not None:
            steps.append(lambda r: r.pexpireat(self._id(key_id), purge_at))
        edited = len(steps)
        steps.append(lambda r: r.eval(_EDIT, 1, k, purge, *pairs))
        # Published even when a revoke won the race: it published as well,
        # and a second invalidation only costs a cache miss.
        steps.append(lambda r: r.publish(self.channel, f"k:{record.key_hash}"))
        replies = await self._write(steps)
        if not replies[edited]:
            raise NotFound(f"Key '{key_id}' does not exist.")
        return await self.require_key(key_id)

    async def revoke_key(self, key_id: str) -> KeyRecord:
        """Delete the record the gateway reads first, then the indexes."""
        record = await self.require_key(key_id)
        await self._write(
            [
                lambda r: r.delete(self._k(record.key_hash)),
                lambda r: r.publish(self.channel, f"k:{record.key_hash}"),
                lambda r: r.delete(self._id(key_id)),
                lambda r: r.srem(self._uk(record.user_id), key_id),
                lambda r: r.srem(f"{self.ns}:keys", key_id),
                lambda r: r.hdel(f"{self.ns}:used", key_id),
            ]
        )
        return record

    async def mark_used(self, used: dict[str, float]) -> None:
        """Record last-used times, in one round trip, for many keys at once."""
        if used:
            async with translate_redis_errors():
                await self.redis.hset(
                    f"{self.ns}:used", mapping={k: repr(v) for k, v in used.items()}
                )

    # Health --------------------------------------------------------------

    async def ping(self) -> None:
        async with translate_redis_errors():
            await self.redis.ping()

    async def persistence(self) -> tuple[bool | None, str]:
        """Whether the Redis keeps data across a restart, and how."""
        async with translate_redis_errors():
            try:
                info = await self.redis.info("persistence")
            except ResponseError:
                return None, "unknown: the server does not answer INFO"
            try:
                saves = await self.redis.config_get("save")
                appendfsync = await self.redis.config_get("appendfsync")
            except ResponseError:
                saves, appendfsync = {}, {}
        aof = str(info.get("aof_enabled", "0")) == "1"
        rdb = bool(saves.get("save", "").strip())
        if aof:
            return True, f"AOF (appendfsync {appendfsync.get('appendfsync', '?')})"
        if rdb:
            return True, f"RDB snapshots only (save {saves['save']})"
        if not saves and "aof_enabled" not in info:
            return None, "unknown: INFO and CONFIG do not say"
        return False, "none: AOF and RDB are both off"


def store_from_settings(settings: Settings, redis: Redis | None = None) -> KeyStore:
    """The store on the settings' topology: one Redis, Sentinel or Cluster."""
    if redis is None:
        redis, atomic = redis_client.open_redis(settings)
    else:
        atomic = not settings.redis_cluster
    return KeyStore(
        redis,
        settings.namespace,
        settings.pepper,
        max_lifetime_days=settings.max_key_lifetime_days,
        retention_days=settings.expired_retention_days,
        atomic=atomic,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
