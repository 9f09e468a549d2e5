"""The audit trail: every write and refusal, never the key, bounded, paged."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson
import pytest

from admin.audit import INVALID_ID, AnonymousRefusals, AuditLog, Event
from gateway.problems import InvalidInput
from gateway.settings import Settings
from gateway.store import KeyStore
from tests.admin.conftest import ALL, World, future_day, make_world


async def test_create_edit_and_delete_are_audited_without_the_key(
    world: World, audit_log: pytest.LogCaptureFixture
) -> None:
    await world.user("alice")
    created = await world.call(
        "POST",
        "/api/keys",
        "alice",
        json={"name": "flow", "expires_at": future_day()},
        headers={"X-Request-ID": "req-create"},
    )
    key, key_id = created.json()["key"], created.json()["id"]
    await world.call("PATCH", f"/api/keys/{key_id}", "alice", json={"name": "renamed"})
    await world.call("DELETE", f"/api/keys/{key_id}", "alice")

    entries = await world.audit()

    assert [e["action"] for e in entries] == ["key.create", "key.edit", "key.delete"]
    create, edit, delete = entries
    assert create["actor"] == "alice"
    signed_in_with = (await world.store.list_keys("alice"))[0].id
    assert {e["actor_key_id"] for e in entries} == {signed_in_with}
    assert create["key_id"] == key_id
    assert create["user_id"] == "alice"
    assert create["request_id"] == "req-create"
    assert create["client"] == "127.0.0.1"
    assert create["status"] == "201"
    assert create["time"].endswith("Z")
    assert orjson.loads(create["changes"])["name"] == "flow"
    assert orjson.loads(edit["changes"]) == {"name": {"from": "flow", "to": "renamed"}}
    assert delete["outcome"] == "ok"
    everything = orjson.dumps(entries).decode()
    logged = " ".join(r.getMessage() + repr(r.__dict__) for r in audit_log.records)
    assert len(audit_log.records) == 3
    assert key not in everything
    assert key not in logged
    assert world.keys["alice"] not in everything + logged


async def test_each_audit_entry_is_logged_with_its_context_in_extra(
    world: World, audit_log: pytest.LogCaptureFixture
) -> None:
    await world.user("alice")

    await world.call(
        "POST", "/api/keys", "alice", json={"name": "n", "expires_at": future_day()}
    )

    (record,) = [r for r in audit_log.records if r.name == "admin.audit"]
    assert record.getMessage() == "Admin action key.create by alice: ok."
    assert record.args == ("key.create", "alice", "ok")
    assert record.audit["action"] == "key.create"  # type: ignore[attr-defined]
    assert record.audit["user_id"] == "alice"  # type: ignore[attr-defined]


async def test_refused_attempts_of_an_identified_caller_are_audited(
    world: World, audit_log: pytest.LogCaptureFixture
) -> None:
    await world.user("mallory", ["user_management.open"])
    await world.user("bob")
    bob_key = (await world.store.list_keys("bob"))[0]

    await world.call("GET", "/api/users", "mallory")
    await world.call("DELETE", f"/api/keys/{bob_key.id}", "mallory")
    await world.call("GET", f"/api/keys/{bob_key.id}", "mallory")

    entries = await world.audit()
    summary = [(e["action"], e["actor"], e["status"]) for e in entries]
    assert summary == [
        ("user.list", "mallory", "403"),
        ("key.delete", "mallory", "403"),
        ("key.get", "mallory", "404"),
    ]
    assert all(e["outcome"] == "refused" for e in entries)
    mallory_key = (await world.store.list_keys("mallory"))[0].id
    assert all(e["actor_key_id"] == mallory_key for e in entries)
    assert entries[0]["detail"].startswith("This action requires")
    assert entries[1]["key_id"] == entries[2]["key_id"] == bob_key.id
    assert {r.levelno for r in audit_log.records} == {logging.WARNING}


async def test_refusals_without_a_valid_credential_never_reach_the_stream(
    world: World, audit_log: pytest.LogCaptureFixture
) -> None:
    """Anyone can be refused: their refusals must not push real entries out."""
    await world.user("admin")
    key_id = (await world.store.list_keys("admin"))[0].id
    await world.call("DELETE", f"/api/keys/{key_id}", "admin")
    bad_key = {"Authorization": "Bearer rpa_" + "A" * 40 + "000000"}

    for number in range(20):
        await world.call("DELETE", f"/api/keys/FAKE-{number}-" + "A" * 5000)
        await world.call("GET", "/api/keys", headers=bad_key)
        await world.call("PATCH", "/api/users/bob", json={"disabled": True})

    entries = await world.audit()
    assert [(e["action"], e["outcome"]) for e in entries] == [("key.delete", "ok")]
    counted = [r for r in audit_log.records if "without a valid" in r.getMessage()]
    assert len(counted) == 1
    assert counted[0].levelno == logging.WARNING
    assert "A" * 100 not in counted[0].getMessage()


def test_refusals_without_a_credential_are_logged_once_per_interval_with_a_count(
    audit_log: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    refusals = AnonymousRefusals(interval=60, clock=lambda: now[0])

    refusals.add("key.list", "192.0.2.1")
    for _ in range(499):
        now[0] += 0.1
        refusals.add("key.delete", "192.0.2.2")
    now[0] += 60
    refusals.add("user.edit", None)

    lines = [r.getMessage() for r in audit_log.records]
    assert lines == [
        "Refused 1 admin requests without a valid credential since the last "
        "such line; the latest: key.list from 192.0.2.1.",
        "Refused 500 admin requests without a valid credential since the last "
        "such line; the latest: user.edit from an unknown address.",
    ]
    assert refusals.total == 501


async def test_ids_a_refused_caller_sent_reach_the_entry_only_if_they_are_ids(
    world: World,
) -> None:
    """A path or query can carry any text: the trail keeps ids or a marker."""
    await world.user("mallory", ["user_management.open"])
    await world.user("bob")
    bob_key = (await world.store.list_keys("bob"))[0]

    await world.call("DELETE", "/api/keys/" + "A" * 5000, "mallory")
    await world.call("DELETE", f"/api/keys/{bob_key.id}", "mallory")
    await world.call("PATCH", "/api/users/bob%20%3Cb%3E", "mallory", json={})
    await world.call("PATCH", "/api/users/bob", "mallory", json={})

    entries = await world.audit()
    assert [(e["action"], e["status"]) for e in entries] == [
        ("key.delete", "403"),
        ("key.delete", "403"),
        ("user.edit", "403"),
        ("user.edit", "403"),
    ]
    assert [e["key_id"] for e in entries[:2]] == [INVALID_ID, bob_key.id]
    assert [e["user_id"] for e in entries[2:]] == [INVALID_ID, "bob"]


async def test_a_refused_create_for_another_user_names_that_user(
    world: World,
) -> None:
    await world.user("alice", [p for p in ALL if p != "user_management.admin"])
    await world.user("bob")

    response = await world.call(
        "POST",
        "/api/keys",
        "alice",
        json={"name": "n", "expires_at": future_day(), "user_id": "bob"},
    )

    assert response.status_code == 403
    (entry,) = await world.audit()
    assert (entry["action"], entry["actor"], entry["user_id"]) == (
        "key.create",
        "alice",
        "bob",
    )


@pytest.fixture
async def behind_proxy(namespace: str, store: KeyStore) -> AsyncIterator[World]:
    """The admin app reached through a trusted proxy at 10.1.2.3."""
    settings = Settings(
        key_pepper="x" * 40, namespace=namespace, trusted_proxies=["10.0.0.0/8"]
    )
    async for item in make_world(settings, store, client_host="10.1.2.3"):
        yield item


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        pytest.param("198.51.100.7", "198.51.100.7", id="one-hop"),
        pytest.param("198.51.100.7, 10.0.0.9", "198.51.100.7", id="past-proxy"),
        pytest.param("198.51.100.7, not-an-ip", "10.1.2.3", id="junk-last"),
        pytest.param("<script>, 10.0.0.9", "10.0.0.9", id="junk-first"),
        pytest.param("fe80::1%evil, 10.0.0.9", "10.0.0.9", id="zone-text"),
        pytest.param("10.0.0.8, 10.0.0.9", "10.0.0.8", id="all-proxies"),
    ],
)
async def test_the_audited_client_is_an_address_from_the_forwarded_chain(
    behind_proxy: World, forwarded: str, client: str
) -> None:
    await behind_proxy.user("alice")

    await behind_proxy.call(
        "POST",
        "/api/keys",
        "alice",
        json={"name": "n", "expires_at": future_day()},
        headers={"X-Forwarded-For": forwarded},
    )

    (entry,) = await behind_proxy.audit()
    assert entry["client"] == client


async def test_the_sso_probe_without_credentials_is_not_audited(world: World) -> None:
    response = await world.call("GET", "/api/me")

    assert response.status_code == 401
    assert await world.audit() == []


async def test_a_user_change_is_audited(world: World) -> None:
    await world.user("admin")
    await world.user("bob")

    await world.call("PATCH", "/api/users/bob", "admin", json={"disabled": True})

    (entry,) = await world.audit()
    assert entry["action"] == "user.edit"
    assert entry["user_id"] == "bob"
    assert orjson.loads(entry["changes"]) == {"disabled": {"from": False, "to": True}}


async def test_the_audit_api_pages_newest_first(world: World) -> None:
    await world.user("admin")
    for number in range(5):
        await world.call(
            "POST",
            "/api/keys",
            "admin",
            json={"name": f"k{number}", "expires_at": future_day()},
        )

    first = (await world.call("GET", "/api/audit?limit=3", "admin")).json()
    second = (
        await world.call("GET", f"/api/audit?limit=3&before={first['next']}", "admin")
    ).json()

    names = [e["changes"]["name"] for e in first["items"] + second["items"]]
    assert names == ["k4", "k3", "k2", "k1", "k0"]
    assert second["next"] is None
    assert first["items"][0]["time"].endswith("Z")
    signed_in_with = (await world.store.list_keys("admin"))[0].id
    assert first["items"][0]["actor_key_id"] == signed_in_with


async def test_the_stream_stays_near_its_maximum_length(world: World) -> None:
    log = AuditLog(world.store.redis, world.store.ns, max_len=100)
    logging.getLogger("admin.audit").disabled = True
    try:
        for number in range(1000):
            await log.record(
                Event("key.edit", "a", f"r{number}", None, 200, key_id="k")
            )
    finally:
        logging.getLogger("admin.audit").disabled = False

    length = await world.store.redis.xlen(log.stream)
    assert 100 <= length < 300


async def test_an_event_carrying_a_key_field_is_refused() -> None:
    event = Event("key.create", "a", "r", None, 201, changes={"key": "rpa_x"})

    try:
        event.fields()
    except ValueError as exc:
        assert "'key'" in str(exc)
    else:
        raise AssertionError("an event with a key field was accepted")


async def test_an_audit_write_that_fails_does_not_fail_the_action(
    world: World, audit_log: pytest.LogCaptureFixture
) -> None:
    await world.user("alice")
    # A key of another type makes XADD fail with WRONGTYPE.
    await world.store.redis.set(f"{world.store.ns}:audit", "not a stream")

    response = await world.call(
        "POST", "/api/keys", "alice", json={"name": "n", "expires_at": future_day()}
    )

    assert response.status_code == 201
    assert any("Could not append" in r.getMessage() for r in audit_log.records)


async def test_a_failed_audit_write_logs_the_whole_entry_in_its_message(
    world: World, audit_log: pytest.LogCaptureFixture
) -> None:
    """The shipped formatter prints the message alone, never ``extra``."""
    await world.store.redis.set(f"{world.store.ns}:audit", "not a stream")
    log = AuditLog(world.store.redis, world.store.ns, max_len=100)
    event = Event(
        "key.delete",
        "admin",
        "req-1",
        "192.0.2.1",
        204,
        key_id="01HV0000000000000000000000",
        user_id="bob",
        changes={"name": "prod"},
    )

    await log.record(event)

    (failed,) = [r for r in audit_log.records if r.levelno == logging.ERROR]
    message = failed.getMessage()
    assert message.startswith(f"Could not append to the audit stream {log.stream}")
    assert orjson.loads(message.partition("the entry: ")[2]) == event.fields()


async def test_a_cursor_redis_refuses_is_invalid_input_naming_before(
    world: World,
) -> None:
    """Past the schema's checks, Redis's own refusal is still the caller's 422."""
    log = AuditLog(world.store.redis, world.store.ns, max_len=100)
    await log.record(Event("key.edit", "a", "r", None, 200))

    with pytest.raises(InvalidInput) as caught:
        await log.page(10, "99999999999999999999-0")

    assert caught.value.field == "before"
    assert "99999999999999999999-0" in caught.value.detail
