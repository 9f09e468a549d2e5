"""The audit trail: every write and refusal, never the key, bounded, paged."""

from __future__ import annotations

import logging

import orjson
import pytest

from admin.audit import AuditLog, Event
from tests.admin.conftest import World, future_day


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


async def test_refused_attempts_are_audited(
    world: World, audit_log: pytest.LogCaptureFixture
) -> None:
    await world.user("mallory", ["user_management.open"])
    await world.user("bob")
    bob_key = (await world.store.list_keys("bob"))[0]

    await world.call("GET", "/api/keys", headers={"Authorization": "Bearer nope"})
    await world.call("GET", "/api/users", "mallory")
    await world.call("DELETE", f"/api/keys/{bob_key.id}", "mallory")
    await world.call("GET", f"/api/keys/{bob_key.id}", "mallory")

    entries = await world.audit()
    summary = [(e["action"], e["actor"], e["status"]) for e in entries]
    assert summary == [
        ("key.list", "", "401"),
        ("user.list", "mallory", "403"),
        ("key.delete", "mallory", "403"),
        ("key.get", "mallory", "404"),
    ]
    assert all(e["outcome"] == "refused" for e in entries)
    assert entries[1]["detail"].startswith("This action requires")
    assert entries[3]["key_id"] == bob_key.id
    assert {r.levelno for r in audit_log.records} == {logging.WARNING}


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
