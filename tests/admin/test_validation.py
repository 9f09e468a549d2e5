"""Input validation: 422 naming the field and the rule, 400 and 415 for
bodies that are not JSON objects, and the expiration rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tests.admin.conftest import World, future_day


@pytest.fixture
async def alice(fake_world: World) -> World:
    await fake_world.user("alice")
    return fake_world


async def _create(world: World, body: Any) -> Any:
    return await world.call("POST", "/api/keys", "alice", json=body)


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        pytest.param({"expires_at": future_day()}, "name", "missing", id="no-name"),
        pytest.param({"name": "n"}, "expires_at", "missing", id="no-expiry"),
        pytest.param(
            {"name": "", "expires_at": future_day()},
            "name",
            "string_too_short",
            id="empty-name",
        ),
        pytest.param(
            {"name": "x" * 101, "expires_at": future_day()},
            "name",
            "string_too_long",
            id="long-name",
        ),
        pytest.param(
            {"name": "n", "description": "d" * 1001, "expires_at": future_day()},
            "description",
            "string_too_long",
            id="long-description",
        ),
        pytest.param(
            {"name": 5, "expires_at": future_day()},
            "name",
            "string_type",
            id="number-as-name",
        ),
        pytest.param(
            {"name": "n", "expires_at": future_day(), "user_id": "no spaces"},
            "user_id",
            "string_pattern_mismatch",
            id="bad-user-id",
        ),
        pytest.param(
            {"name": "n", "expires_at": future_day(), "key": "rpa_mine"},
            "key",
            "extra_forbidden",
            id="unknown-field",
        ),
    ],
)
async def test_a_bad_create_body_is_422_naming_the_field_and_the_rule(
    alice: World, body: Any, field: str, rule: str
) -> None:
    response = await _create(alice, body)

    assert response.status_code == 422
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert (problem["field"], problem["rule"]) == (field, rule)
    assert f"'{field}'" in problem["detail"]
    assert problem["detail"].endswith(".")
    assert problem["errors"][0]["field"] == field


async def test_an_unknown_field_on_edit_is_refused(alice: World) -> None:
    record = (await alice.store.list_keys("alice"))[0]

    response = await alice.call(
        "PATCH", f"/api/keys/{record.id}", "alice", json={"user_id": "bob"}
    )

    assert response.status_code == 422
    assert response.json()["detail"] == "The field 'user_id' is not allowed here."


async def test_an_edit_that_changes_nothing_is_refused(alice: World) -> None:
    record = (await alice.store.list_keys("alice"))[0]

    response = await alice.call(
        "PATCH", f"/api/keys/{record.id}", "alice", json={"name": None}
    )

    assert response.status_code == 422
    assert "Nothing to change" in response.json()["detail"]


@pytest.mark.parametrize(
    ("expires_at", "words"),
    [
        pytest.param("2001-01-01", "is not in the future", id="past-date"),
        pytest.param(
            (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
            "is not in the future",
            id="past-moment",
        ),
        pytest.param(future_day(400), "maximum key lifetime", id="too-far"),
        pytest.param("tomorrow", "is not a date", id="words"),
        pytest.param("2030-02-30", "is not a date", id="no-such-day"),
        pytest.param("2030-01-01T10:00:00", "has no time zone", id="naive"),
    ],
)
async def test_a_bad_expiration_is_422_on_expires_at(
    alice: World, expires_at: str, words: str
) -> None:
    response = await _create(alice, {"name": "n", "expires_at": expires_at})

    assert response.status_code == 422
    assert response.json()["field"] == "expires_at"
    assert words in response.json()["detail"]


async def test_a_date_alone_means_the_end_of_that_day_in_utc(alice: World) -> None:
    day = future_day(10)

    response = await _create(alice, {"name": "n", "expires_at": day})

    assert response.json()["expires_at"] == f"{day}T23:59:59Z"


async def test_a_date_time_with_an_offset_is_kept_to_the_second(
    alice: World,
) -> None:
    moment = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    local = moment.astimezone(timezone(timedelta(hours=2))).isoformat()

    response = await _create(alice, {"name": "n", "expires_at": local})

    assert response.json()["expires_at"] == moment.isoformat().replace("+00:00", "Z")


async def test_the_maximum_lifetime_is_accepted_to_the_day(alice: World) -> None:
    response = await _create(alice, {"name": "n", "expires_at": future_day(366)})

    assert response.status_code == 201


@pytest.mark.parametrize(
    ("content", "status", "words"),
    [
        pytest.param(b"{not json", 400, "not valid JSON", id="broken"),
        pytest.param(b"", 400, "not valid JSON", id="empty"),
        pytest.param(b"[1, 2]", 422, "must be a JSON object", id="array"),
        pytest.param(b'"text"', 422, "must be a JSON object", id="string"),
        pytest.param(b'{"name": NaN}', 400, "not valid JSON", id="nan"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_a_clear_client_error(
    alice: World, content: bytes, status: int, words: str
) -> None:
    response = await alice.call(
        "POST",
        "/api/keys",
        "alice",
        content=content,
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert words in response.json()["detail"]


async def test_a_form_body_is_415(alice: World) -> None:
    response = await alice.call(
        "POST", "/api/keys", "alice", data={"name": "n", "expires_at": future_day()}
    )

    assert response.status_code == 415
    assert "application/x-www-form-urlencoded" in response.json()["detail"]


async def test_a_huge_body_is_413(alice: World) -> None:
    body = {"name": "n", "expires_at": future_day(), "description": "d" * 70_000}

    response = await _create(alice, body)

    assert response.status_code == 413


@pytest.mark.parametrize(
    ("query", "field"),
    [
        pytest.param("audit?limit=0", "limit", id="zero"),
        pytest.param("audit?limit=501", "limit", id="too-many"),
        pytest.param("audit?limit=ten", "limit", id="words"),
        pytest.param("audit?before=yesterday", "before", id="bad-cursor"),
        pytest.param(
            "audit?before=99999999999999999999-0", "before", id="time-past-64-bits"
        ),
        pytest.param(
            "audit?before=1-18446744073709551616", "before", id="sequence-past-64-bits"
        ),
        pytest.param("audit?before=0-0", "before", id="nothing-before"),
        pytest.param(
            "audit?before=%EF%BC%91-%EF%BC%91", "before", id="full-width-digits"
        ),
        pytest.param("keys?limit=0", "limit", id="keys-limit-zero"),
        pytest.param("keys?limit=1001", "limit", id="keys-limit-over"),
        pytest.param("keys?limit=ten", "limit", id="keys-limit-word"),
        pytest.param("keys?before=alice", "before", id="keys-before-not-an-id"),
        pytest.param("users?limit=-1", "limit", id="users-limit"),
        pytest.param("users?after=a%20b", "after", id="users-after"),
    ],
)
async def test_bad_paging_is_422_naming_the_parameter(
    alice: World, query: str, field: str
) -> None:
    response = await alice.call("GET", f"/api/{query}", "alice")

    assert response.status_code == 422
    assert response.json()["field"] == field
    assert f"'{field}'" in response.json()["detail"]


async def test_the_largest_audit_cursor_is_accepted(alice: World) -> None:
    largest = f"{2**64 - 1}-{2**64 - 1}"

    response = await alice.call("GET", f"/api/audit?before={largest}", "alice")

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        pytest.param({"name": "a\x00b"}, "name", "control", id="name-nul"),
        pytest.param({"name": "a\x7fb"}, "name", "control", id="name-del"),
        pytest.param({"name": "a\x85b"}, "name", "control", id="name-c1"),
        pytest.param({"name": "a\tb"}, "name", "control", id="name-tab"),
        pytest.param({"name": "\u202egnp.exe"}, "name", "bidirectional", id="rlo"),
        pytest.param({"name": "a\u2066b"}, "name", "bidirectional", id="isolate"),
        pytest.param({"name": "\u200b\ufeff "}, "name", "visible", id="zero-width"),
        pytest.param(
            {"description": "a\r\nb"}, "description", "control", id="description-cr"
        ),
        pytest.param(
            {"description": "\u202aabc"},
            "description",
            "bidirectional",
            id="description-embedding",
        ),
    ],
)
async def test_hidden_and_reordering_characters_are_422_naming_the_field(
    alice: World, changes: dict[str, str], field: str, words: str
) -> None:
    created = await _create(alice, {"name": "n", "expires_at": future_day()} | changes)
    record = (await alice.store.list_keys("alice"))[0]
    edited = await alice.call("PATCH", f"/api/keys/{record.id}", "alice", json=changes)

    for response in (created, edited):
        assert response.status_code == 422
        assert response.json()["field"] == field
        assert words in response.json()["detail"]


async def test_a_description_keeps_its_line_breaks_and_tabs(alice: World) -> None:
    description = "Runs nightly.\n\tStep one.\n\tStep two."

    response = await _create(
        alice, {"name": "n", "expires_at": future_day(), "description": description}
    )

    assert response.status_code == 201
    assert response.json()["description"] == description
