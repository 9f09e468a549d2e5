"""The store of record, on fakeredis and on the real Redis."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.problems import Conflict, InvalidInput, NotFound, StoreUnavailable
from gateway.store import PRIVILEGES, KeyStore, parse_expiration
from tests.conftest import PEPPER


def in_days(days: float) -> str:
    moment = datetime.now(UTC) + timedelta(days=days)
    return moment.replace(microsecond=0).isoformat()


async def usable(store: KeyStore, plaintext: str) -> bool:
    """Would the gateway accept this key? (record present, user enabled)."""
    found = await store.lookup(store.hash_key(plaintext))
    if found is None:
        return False
    record, user = found
    return user is not None and not user.disabled and not record.is_expired()


@pytest.fixture
async def alice(store: KeyStore) -> str:
    await store.add_user("alice", "Alice Doe", PRIVILEGES)
    return "alice"


async def test_a_created_key_can_be_found_by_id_hash_and_user(
    store: KeyStore, alice: str
) -> None:
    record, plaintext = await store.create_key(
        alice, name="Composer flow", description="Nightly run", expires_at=in_days(30)
    )
    assert await usable(store, plaintext)
    by_id = await store.require_key(record.id)
    assert by_id.name == "Composer flow"
    assert by_id.description == "Nightly run"
    assert by_id.hint == plaintext[-4:]
    assert by_id.status() == "active"
    assert [r.id for r in await store.list_keys(alice)] == [record.id]
    assert [r.id for r in await store.list_keys()] == [record.id]


async def test_no_plaintext_key_exists_anywhere_in_redis(
    store: KeyStore, redis_client: Any, alice: str, namespace: str
) -> None:
    plaintexts = []
    for number in range(5):
        _, plaintext = await store.create_key(
            alice, name=f"key {number}", expires_at=in_days(10)
        )
        plaintexts.append(plaintext)
    dumped = []
    async for name in redis_client.scan_iter(match=f"{namespace}:*"):
        kind = await redis_client.type(name)
        if kind == "hash":
            dumped.extend((await redis_client.hgetall(name)).items())
        elif kind == "set":
            dumped.extend(await redis_client.smembers(name))
        elif kind == "string":
            dumped.append(await redis_client.get(name))
        elif kind == "stream":
            dumped.extend(str(e) for e in await redis_client.xrange(name))
        dumped.append(name)
    blob = repr(dumped)
    assert dumped
    for plaintext in plaintexts:
        assert plaintext not in blob
        assert plaintext[4:44] not in blob  # not even the random part


async def test_revoking_a_key_stops_it_and_cleans_every_index(
    store: KeyStore, redis_client: Any, alice: str, namespace: str
) -> None:
    record, plaintext = await store.create_key(alice, name="k", expires_at=in_days(3))
    await store.revoke_key(record.id)
    assert not await usable(store, plaintext)
    assert await store.get_key(record.id) is None
    assert await store.list_keys(alice) == []
    remaining = [n async for n in redis_client.scan_iter(match=f"{namespace}:*")]
    assert all(not n.startswith(f"{namespace}:k:") for n in remaining)
    with pytest.raises(NotFound, match=record.id):
        await store.revoke_key(record.id)


async def test_editing_changes_name_description_and_expiration(
    store: KeyStore, alice: str
) -> None:
    record, plaintext = await store.create_key(alice, name="old", expires_at=in_days(3))
    edited = await store.edit_key(
        record.id, name="new", description="moved", expires_at=in_days(200)
    )
    assert (edited.name, edited.description) == ("new", "moved")
    assert edited.expires_at > record.expires_at
    assert await usable(store, plaintext)


async def test_an_expired_key_stays_listed_and_can_be_extended(
    store: KeyStore, alice: str
) -> None:
    record, plaintext = await store.create_key(
        alice, name="short", expires_at=time.time() + 0.5
    )
    await asyncio.sleep(0.6)
    listed = await store.list_keys(alice)
    assert [(r.id, r.status()) for r in listed] == [(record.id, "expired")]
    assert not await usable(store, plaintext)
    await store.edit_key(record.id, expires_at=in_days(5))
    assert await usable(store, plaintext)


async def test_records_are_purged_after_the_retention_period(
    store: KeyStore, redis_client: Any, alice: str, namespace: str
) -> None:
    record, _ = await store.create_key(alice, name="k", expires_at=in_days(1))
    ttl_ms = await redis_client.pttl(f"{namespace}:k:{record.key_hash}")
    expected = (record.expires_at + 30 * 86400 - time.time()) * 1000
    assert abs(ttl_ms - expected) < 5000
    assert await redis_client.pttl(f"{namespace}:id:{record.id}") > 0


async def test_disabling_a_user_stops_all_their_keys(
    store: KeyStore, alice: str
) -> None:
    _, first = await store.create_key(alice, name="a", expires_at=in_days(3))
    _, second = await store.create_key(alice, name="b", expires_at=in_days(3))
    await store.update_user(alice, disabled=True)
    assert not await usable(store, first)
    assert not await usable(store, second)
    await store.update_user(alice, disabled=False)
    assert await usable(store, first)


async def test_removing_a_user_revokes_every_key(store: KeyStore, alice: str) -> None:
    _, plaintext = await store.create_key(alice, name="a", expires_at=in_days(3))
    assert await store.remove_user(alice) == 1
    assert not await usable(store, plaintext)
    assert await store.get_user(alice) is None
    assert await store.list_keys() == []


async def test_users_are_unique_and_validated(store: KeyStore, alice: str) -> None:
    with pytest.raises(Conflict, match="'alice' already exists"):
        await store.add_user(alice)
    with pytest.raises(InvalidInput) as caught:
        await store.add_user("bad user")
    assert caught.value.field == "user_id"
    with pytest.raises(InvalidInput, match="Unknown privilege 'root'"):
        await store.add_user("bob", privileges=["root"])
    with pytest.raises(InvalidInput, match="must not contain control characters"):
        await store.add_user("bob", "Bob\x1b[2J")
    with pytest.raises(InvalidInput, match="1 to 100 characters"):
        await store.add_user("bob", "B" * 101)
    assert [u.id for u in await store.list_users()] == ["alice"]


async def test_keys_need_an_existing_user(store: KeyStore) -> None:
    with pytest.raises(NotFound, match=r"User 'ghost' does not exist\."):
        await store.create_key("ghost", name="k", expires_at=in_days(1))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"name": "n" * 101}, "name", id="long-name"),
        pytest.param({"description": "d" * 1001}, "description", id="long-description"),
        pytest.param({"expires_at": "2001-01-01"}, "expires_at", id="past"),
        pytest.param({"expires_at": "tomorrow"}, "expires_at", id="not-a-date"),
        pytest.param({"expires_at": "2030-01-01T00:00:00"}, "expires_at", id="no-zone"),
        pytest.param({"expires_at": in_days(400)}, "expires_at", id="beyond-maximum"),
        pytest.param({"name": "a\x1bb"}, "name", id="name-escape"),
        pytest.param({"name": "a\x9bb"}, "name", id="name-c1-control"),
        pytest.param({"name": "a\nb"}, "name", id="name-newline"),
        pytest.param({"name": "\u202egnp.exe"}, "name", id="name-override"),
        pytest.param({"name": "x\u2069"}, "name", id="name-isolate"),
        pytest.param({"name": " \u200b\u200c\u200d\ufeff "}, "name", id="name-blank"),
        pytest.param({"description": "a\x00"}, "description", id="description-nul"),
        pytest.param({"description": "a\rb"}, "description", id="description-cr"),
        pytest.param(
            {"description": "\u202dabc"}, "description", id="description-override"
        ),
    ],
)
async def test_invalid_key_input_names_the_field_and_writes_nothing(
    store: KeyStore, alice: str, changes: dict[str, str], field: str
) -> None:
    arguments: dict[str, Any] = {"name": "ok", "expires_at": in_days(3)} | changes
    with pytest.raises(InvalidInput) as caught:
        await store.create_key(alice, **arguments)
    assert caught.value.field == field
    assert await store.list_keys() == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"name": "a\u0007"}, "name", id="name-bell"),
        pytest.param({"name": "\u2067x"}, "name", id="name-isolate"),
        pytest.param({"name": "\ufeff"}, "name", id="name-blank"),
        pytest.param({"description": "\u202b"}, "description", id="description"),
    ],
)
async def test_an_edit_is_held_to_the_same_characters(
    store: KeyStore, alice: str, changes: dict[str, str], field: str
) -> None:
    record, _ = await store.create_key(alice, name="ok", expires_at=in_days(3))
    with pytest.raises(InvalidInput) as caught:
        await store.edit_key(record.id, **changes)
    assert caught.value.field == field
    assert (await store.require_key(record.id)).name == "ok"


async def test_names_keep_visible_text_and_descriptions_keep_line_breaks(
    store: KeyStore, alice: str
) -> None:
    record, _ = await store.create_key(
        alice,
        name=" \u200bflow\u200d ",
        description="Nightly.\n\tThen weekly.",
        expires_at=in_days(3),
    )
    assert record.name == "\u200bflow\u200d"
    assert record.description == "Nightly.\n\tThen weekly."


def test_a_date_alone_means_the_end_of_that_day_in_utc() -> None:
    now = datetime(2030, 5, 1, 12, tzinfo=UTC).timestamp()
    stamp = parse_expiration("2030-05-02", max_days=366, now=now)
    assert datetime.fromtimestamp(stamp, UTC) == datetime(
        2030, 5, 2, 23, 59, 59, tzinfo=UTC
    )


async def test_every_mutation_publishes_an_invalidation(
    store: KeyStore, redis_client: Any
) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(store.channel)
    await store.add_user("carol", privileges=PRIVILEGES)
    record, _ = await store.create_key("carol", name="k", expires_at=in_days(3))
    await store.edit_key(record.id, name="renamed")
    await store.revoke_key(record.id)
    await store.update_user("carol", disabled=True)
    seen = []
    deadline = time.monotonic() + 5
    while len(seen) < 5 and time.monotonic() < deadline:
        message = await pubsub.get_message(timeout=0.5)
        if message:
            seen.append(message["data"])
    await pubsub.aclose()
    k = f"k:{record.key_hash}"
    assert seen == ["u:carol", k, k, k, "u:carol"]


@pytest.mark.parametrize("mode", ["transaction", "step-by-step"])
async def test_an_edit_racing_a_revoke_leaves_no_stray_record(
    redis_client: Any,
    namespace: str,
    mode: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await edit_racing_a_revoke(redis_client, namespace, mode, monkeypatch)


@pytest.mark.redis
async def test_an_edit_racing_a_revoke_leaves_no_stray_record_waiting_for_replicas(
    real_redis: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fakeredis has no WAIT: the real server only."""
    await edit_racing_a_revoke(real_redis, namespace, "replicated", monkeypatch)


def store_on_path(redis_client: Any, namespace: str, mode: str) -> KeyStore:
    """A store writing in one transaction, waiting for replicas, or step by step.

    The shared test Redis has no replica: a replicated write waits 1 ms.
    """
    return KeyStore(
        redis_client,
        namespace,
        PEPPER.encode(),
        atomic=mode != "step-by-step",
        wait_replicas=1 if mode == "replicated" else 0,
        wait_timeout_ms=1,
    )


async def edit_racing_a_revoke(
    redis_client: Any, namespace: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revoke lands between the edit's read and its write, on each path."""
    store = store_on_path(redis_client, namespace, mode)
    await store.add_user("frank", privileges=PRIVILEGES)
    record, plaintext = await store.create_key("frank", name="k", expires_at=in_days(3))
    write = store._write

    async def revoked_first(steps: list[Any]) -> list[Any]:
        monkeypatch.setattr(store, "_write", write)
        await store.revoke_key(record.id)
        return await write(steps)

    monkeypatch.setattr(store, "_write", revoked_first)

    with pytest.raises(NotFound, match=record.id):
        await store.edit_key(record.id, name="renamed", expires_at=in_days(9))

    assert await redis_client.exists(f"{namespace}:k:{record.key_hash}") == 0
    assert not await usable(store, plaintext)
    assert await store.list_keys() == []


@pytest.mark.parametrize("mode", ["transaction", "step-by-step"])
async def test_an_edit_writes_on_each_path(
    redis_client: Any, namespace: str, mode: str
) -> None:
    await edit_on_a_path(redis_client, namespace, mode)


@pytest.mark.redis
async def test_an_edit_writes_when_waiting_for_replicas(
    real_redis: Any, namespace: str
) -> None:
    """fakeredis has no WAIT: the real server only."""
    await edit_on_a_path(real_redis, namespace, "replicated")


async def edit_on_a_path(redis_client: Any, namespace: str, mode: str) -> None:
    store = store_on_path(redis_client, namespace, mode)
    await store.add_user("grace", privileges=PRIVILEGES)
    record, plaintext = await store.create_key("grace", name="k", expires_at=in_days(3))

    edited = await store.edit_key(
        record.id, name="renamed", description="d", expires_at=in_days(9)
    )

    assert (edited.name, edited.description) == ("renamed", "d")
    assert edited.expires_at > record.expires_at
    assert await usable(store, plaintext)
    ttl_ms = await redis_client.pttl(f"{namespace}:k:{record.key_hash}")
    expected = (edited.expires_at + 30 * 86400 - time.time()) * 1000
    assert abs(ttl_ms - expected) < 5000
    assert await redis_client.pttl(f"{namespace}:id:{record.id}") == pytest.approx(
        ttl_ms, abs=5000
    )


class FailAfter:
    """A Redis client proxy whose Nth write command raises, like a crash."""

    WRITES = {"sadd", "set", "hset", "pexpireat", "publish", "delete", "srem", "hdel"}

    def __init__(self, client: Any, fail_at: int) -> None:
        self._client = client
        self.fail_at = fail_at
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name not in self.WRITES:
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.writes += 1
            if self.writes == self.fail_at:
                raise RedisConnectionError("injected failure")
            return attribute(*args, **kwargs)

        return counted


@pytest.mark.parametrize("fail_at", range(1, 7))
async def test_a_create_interrupted_at_any_step_leaves_no_usable_key(
    redis_client: Any, namespace: str, fail_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    healthy = KeyStore(redis_client, namespace, PEPPER.encode())
    await healthy.add_user("dave", privileges=PRIVILEGES)
    failing = FailAfter(redis_client, fail_at)
    store = KeyStore(failing, namespace, PEPPER.encode(), atomic=False)  # type: ignore[arg-type]
    made: list[str] = []
    original = __import__("gateway.keys", fromlist=["generate_key"]).generate_key

    def remember() -> str:
        made.append(original())
        return made[-1]

    monkeypatch.setattr("gateway.keys.generate_key", remember)
    try:
        record, plaintext = await store.create_key(
            "dave", name="k", expires_at=in_days(2)
        )
    except StoreUnavailable:
        # The crash happened before the record the gateway reads was complete,
        # or after: either way the key must not be usable without its index.
        plaintext = made[-1]
        found = await healthy.lookup(healthy.hash_key(plaintext))
        if found is not None:
            assert await healthy.get_key(found[0].id) is not None
        return
    assert fail_at > failing.writes  # every step ran
    assert await usable(healthy, plaintext)
    assert (await healthy.require_key(record.id)).id == record.id


@pytest.mark.parametrize("fail_at", range(1, 7))
async def test_a_revoke_interrupted_at_any_step_leaves_the_key_unusable(
    redis_client: Any, namespace: str, fail_at: int
) -> None:
    healthy = KeyStore(redis_client, namespace, PEPPER.encode())
    await healthy.add_user("erin", privileges=PRIVILEGES)
    record, plaintext = await healthy.create_key(
        "erin", name="k", expires_at=in_days(2)
    )
    failing = FailAfter(redis_client, fail_at)
    store = KeyStore(failing, namespace, PEPPER.encode(), atomic=False)  # type: ignore[arg-type]
    try:
        await store.revoke_key(record.id)
    except StoreUnavailable:
        if fail_at == 1:
            # Nothing was written: the revoke failed as a whole, visibly, and
            # the key is still whole (usable and indexed) for a retry.
            assert await usable(healthy, plaintext)
            await healthy.revoke_key(record.id)
    assert not await usable(healthy, plaintext)
    assert await healthy.list_keys("erin") == []


async def test_a_failed_transaction_on_a_single_redis_writes_nothing(
    store: KeyStore,
    alice: str,
    redis_client: Any,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_pipeline = redis_client.pipeline

    class Exploding:
        def __init__(self, pipe: Any) -> None:
            self._pipe = pipe

        def __getattr__(self, name: str) -> Any:
            return getattr(self._pipe, name)

        async def __aenter__(self) -> Exploding:
            await self._pipe.__aenter__()
            return self

        async def __aexit__(self, *exc: object) -> None:
            await self._pipe.__aexit__(*exc)

        async def execute(self) -> None:
            await self._pipe.reset()
            raise RedisConnectionError("connection lost before EXEC")

    monkeypatch.setattr(
        redis_client,
        "pipeline",
        lambda transaction=True: Exploding(real_pipeline(transaction)),
    )
    before = sorted([n async for n in redis_client.scan_iter(match=f"{namespace}:*")])
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        await store.create_key(alice, name="k", expires_at=in_days(2))
    after = sorted([n async for n in redis_client.scan_iter(match=f"{namespace}:*")])
    assert before == after


async def test_last_used_times_are_recorded_and_listed(
    store: KeyStore, alice: str
) -> None:
    record, _ = await store.create_key(alice, name="k", expires_at=in_days(2))
    await store.mark_used({record.id: 1_900_000_000.0})
    assert (await store.require_key(record.id)).last_used_at == 1_900_000_000.0
    assert (await store.list_keys(alice))[0].last_used_at == 1_900_000_000.0


async def test_a_damaged_record_is_left_out_of_lists_and_refused_alone(
    store: KeyStore, alice: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Records something else garbled or replaced with another type."""
    kept, _ = await store.create_key(alice, name="kept", expires_at=in_days(2))
    garbled, garbled_key = await store.create_key(
        alice, name="garbled", expires_at=in_days(2)
    )
    replaced, _ = await store.create_key(alice, name="replaced", expires_at=in_days(2))
    await store.redis.hset(f"{store.ns}:k:{garbled.key_hash}", "created_at", "nope")
    await store.redis.delete(f"{store.ns}:k:{replaced.key_hash}")
    await store.redis.set(f"{store.ns}:k:{replaced.key_hash}", "a string")

    assert [r.id for r in await store.list_keys(alice)] == [kept.id]
    assert [r.id for r in await store.list_keys()] == [kept.id]
    with pytest.raises(StoreUnavailable, match="unreadable record"):
        await store.get_key(garbled.id)
    with pytest.raises(StoreUnavailable, match="unreadable record"):
        await store.lookup(store.hash_key(garbled_key))
    logged = [r.getMessage() for r in caplog.records if r.name == "gateway.error"]
    assert any(f"k:{garbled.key_hash[:12]}..." in line for line in logged)
    assert any("WRONGTYPE" in line for line in logged)
    # Nothing was taken for a vanished record and dropped from the indexes.
    assert await store.redis.sismember(f"{store.ns}:keys", garbled.id)
    assert await store.redis.sismember(f"{store.ns}:keys", replaced.id)


async def test_an_unreachable_redis_is_reported_as_unavailable() -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url("redis://127.0.0.1:1", decode_responses=True)
    store = KeyStore(client, "x", PEPPER.encode())
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        await store.get_user("alice")
    await client.aclose()


async def test_the_store_repr_hides_the_pepper(store: KeyStore) -> None:
    assert PEPPER not in repr(store)


async def test_keys_are_paged_newest_first_and_a_page_reads_past_gone_records(
    store: KeyStore, alice: str
) -> None:
    await store.add_user("bob")
    made = [
        (await store.create_key(alice, name=f"k{n}", expires_at=in_days(2)))[0]
        for n in range(5)
    ]
    await store.create_key("bob", name="bob's", expires_at=in_days(2))
    newest_first = [r.id for r in reversed(made)]

    first, cursor = await store.page_keys(alice, limit=2)
    assert [r.id for r in first] == newest_first[:2]
    assert cursor == newest_first[1]
    second, cursor = await store.page_keys(alice, limit=2, before=cursor)
    assert [r.id for r in second] == newest_first[2:4]
    last, cursor = await store.page_keys(alice, limit=2, before=cursor)
    assert [r.id for r in last] == newest_first[4:]
    assert cursor is None
    everything, cursor = await store.page_keys(None, limit=None)
    assert len(everything) == 6 and cursor is None

    # A record that expired out of Redis leaves its id in the index: the
    # page reads on to stay full, and the stale id is dropped.
    await store.redis.delete(f"{store.ns}:k:{made[3].key_hash}")
    page, cursor = await store.page_keys(alice, limit=2)
    assert [r.id for r in page] == [made[4].id, made[2].id]
    assert cursor == made[2].id
    assert made[3].id not in await store.redis.smembers(f"{store.ns}:keys")


async def test_users_are_paged_by_id(store: KeyStore, alice: str) -> None:
    for user_id in ("carol", "bob", "dave"):
        await store.add_user(user_id)

    first, cursor = await store.page_users(limit=3)
    assert [u.id for u in first] == ["alice", "bob", "carol"]
    assert cursor == "carol"
    rest, cursor = await store.page_users(limit=3, after=cursor)
    assert [u.id for u in rest] == ["dave"]
    assert cursor is None
    assert [u.id for u in await store.list_users()] == ["alice", "bob", "carol", "dave"]
