"""The full privilege matrix: every endpoint, every combination of the five
privileges, against the caller's own key (or own user) and another user's.

The expected status comes from the design's table, written out below as a
small oracle, independent of ``admin.privileges``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import httpx
import pytest

from tests.admin.conftest import ALL, World, future_day

OPEN, ADMIN, CREATE, EDIT, DELETE = ALL
COMBINATIONS = [
    frozenset(combo)
    for size in range(len(ALL) + 1)
    for combo in itertools.combinations(ALL, size)
]
assert len(COMBINATIONS) == 32

ENDPOINTS = (
    "me",
    "list_keys",
    "create_key",
    "get_key",
    "edit_key",
    "delete_key",
    "list_users",
    "edit_user",
    "list_audit",
)


@dataclass(frozen=True)
class Expected:
    status: int
    missing: str | None = None  # the privilege a 403 must name


def oracle(endpoint: str, granted: frozenset[str], target: str) -> Expected:
    """What the design's privilege table says the answer must be."""
    other = target == "other"

    def need(*privileges: str) -> Expected | None:
        for privilege in privileges:
            if privilege not in granted:
                return Expected(403, privilege)
        return None

    if endpoint == "me":
        return Expected(200)
    if endpoint == "list_keys":
        return need(OPEN, *([ADMIN] if other else [])) or Expected(200)
    if endpoint == "create_key":
        return need(OPEN, CREATE, *([ADMIN] if other else [])) or Expected(201)
    if endpoint in ("get_key", "edit_key", "delete_key"):
        action = {"get_key": (), "edit_key": (EDIT,), "delete_key": (DELETE,)}
        denied = need(OPEN, *action[endpoint])
        if denied:
            return denied
        if other and ADMIN not in granted:
            return Expected(404)
        return Expected({"get_key": 200, "edit_key": 200, "delete_key": 204}[endpoint])
    # list_users, edit_user, list_audit
    return need(OPEN, ADMIN) or Expected(200)


async def _request(world: World, endpoint: str, target: str) -> httpx.Response:
    owner = "caller" if target == "own" else "other"
    key_id = world.keys[f"{owner}-key-id"]
    path, method, body = {
        "me": ("/api/me", "GET", None),
        "list_keys": (f"/api/keys?user_id={owner}", "GET", None),
        "create_key": (
            "/api/keys",
            "POST",
            {"name": "new", "expires_at": future_day(), "user_id": owner},
        ),
        "get_key": (f"/api/keys/{key_id}", "GET", None),
        "edit_key": (f"/api/keys/{key_id}", "PATCH", {"name": "renamed"}),
        "delete_key": (f"/api/keys/{key_id}", "DELETE", None),
        "list_users": ("/api/users", "GET", None),
        "edit_user": (f"/api/users/{owner}", "PATCH", {"name": "Renamed"}),
        "list_audit": ("/api/audit", "GET", None),
    }[endpoint]
    return await world.call(method, path, as_user="caller", json=body)


@pytest.mark.parametrize("target", ["own", "other"])
@pytest.mark.parametrize(
    "granted",
    COMBINATIONS,
    ids=lambda c: "+".join(sorted(p.split(".")[1] for p in c)) or "none",
)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_every_endpoint_answers_as_the_privilege_table_says(
    fake_world: World, endpoint: str, granted: frozenset[str], target: str
) -> None:
    world = fake_world
    await world.user("caller", granted)
    await world.user("other", ())
    for owner in ("caller", "other"):
        record, _ = await world.store.create_key(
            owner, name=f"{owner}'s key", expires_at=future_day()
        )
        world.keys[f"{owner}-key-id"] = record.id

    expected = oracle(endpoint, granted, target)
    response = await _request(world, endpoint, target)

    assert response.status_code == expected.status, response.text
    if expected.status >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["request_id"] == response.headers["x-request-id"]
    if expected.status == 403:
        assert problem["privilege"] == expected.missing
        assert expected.missing in problem["detail"]
    if expected.status == 404:
        missing = await world.call(
            "GET", "/api/keys/01ARZ3NDEKTSV4RRFFQ69G5FAV", "caller"
        )
        assert problem["title"] == missing.json()["title"]
        assert problem["type"] == missing.json()["type"]


@pytest.mark.parametrize(
    "granted",
    [
        pytest.param({OPEN}, id="open"),
        pytest.param({OPEN, EDIT, DELETE, CREATE}, id="all-but-admin"),
    ],
)
async def test_listing_without_administration_shows_only_the_callers_keys(
    fake_world: World, granted: set[str]
) -> None:
    await fake_world.user("caller", granted)
    await fake_world.user("other", ALL)

    response = await fake_world.call("GET", "/api/keys", "caller")

    assert response.status_code == 200
    assert {item["user_id"] for item in response.json()["items"]} == {"caller"}


async def test_listing_with_administration_shows_every_users_keys(
    fake_world: World,
) -> None:
    await fake_world.user("caller", {OPEN, ADMIN})
    await fake_world.user("other", ())

    response = await fake_world.call("GET", "/api/keys", "caller")

    assert {item["user_id"] for item in response.json()["items"]} == {
        "caller",
        "other",
    }


async def test_a_hidden_key_and_a_missing_key_get_the_same_detail_shape(
    fake_world: World,
) -> None:
    await fake_world.user("caller", {OPEN})
    await fake_world.user("other", ())
    record, _ = await fake_world.store.create_key(
        "other", name="secret", expires_at=future_day()
    )

    hidden = await fake_world.call("GET", f"/api/keys/{record.id}", "caller")
    absent = await fake_world.call(
        "GET", "/api/keys/01ARZ3NDEKTSV4RRFFQ69G5FAV", "caller"
    )

    assert hidden.status_code == absent.status_code == 404
    assert hidden.json()["detail"] == f"Key '{record.id}' does not exist."
    assert set(hidden.json()) == set(absent.json())
