"""The admin JSON API: authentication, the key lifecycle, errors, headers."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import pytest

from gateway.problems import AuthError
from gateway.settings import Settings
from gateway.store import KeyStore
from tests.admin.conftest import ALL, World, future_day, make_world

# Authentication ---------------------------------------------------------------


async def test_a_request_without_credentials_is_refused_with_a_bearer_challenge(
    world: World,
) -> None:
    response = await world.call("GET", "/api/keys")

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="rpa-gateway"'
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "An API key is required."


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        pytest.param("Basic YWxpY2U6cHc=", "must be 'Bearer'", id="basic"),
        pytest.param("Bearer ", "must be 'Bearer'", id="empty-bearer"),
        pytest.param("Bearer rpa_short", "malformed", id="malformed"),
        pytest.param(
            "Bearer rpa_" + "A" * 40 + "000000", "malformed", id="bad-checksum"
        ),
    ],
)
async def test_a_malformed_authorization_header_is_refused(
    world: World, header: str, detail: str
) -> None:
    response = await world.call("GET", "/api/me", headers={"Authorization": header})

    assert response.status_code == 401
    assert detail in response.json()["detail"]


async def test_the_caller_is_described_by_me(world: World) -> None:
    await world.user("alice", ["user_management.open"])

    response = await world.call("GET", "/api/me", "alice")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "alice"
    assert body["privileges"] == ["user_management.open"]
    assert body["authenticated_by"] == "api_key"
    assert body["key_id"]
    assert body["max_key_lifetime_days"] == 366


async def test_a_revoked_key_is_refused(world: World) -> None:
    await world.user("alice")
    record = (await world.store.list_keys("alice"))[0]
    await world.store.revoke_key(record.id)

    response = await world.call("GET", "/api/me", "alice")

    assert response.status_code == 401
    assert "invalid_token" in response.headers["www-authenticate"]


async def test_an_expired_key_is_refused_and_says_it_expired(world: World) -> None:
    await world.store.add_user("alice", "Alice", ALL)
    _, key = await world.store.create_key(
        "alice", name="old", expires_at=time.time() - 1
    )

    response = await world.call(
        "GET", "/api/me", headers={"Authorization": f"Bearer {key}"}
    )

    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


async def test_a_disabled_users_key_is_refused_at_once_even_when_cached(
    world: World,
) -> None:
    await world.user("alice")
    assert (await world.call("GET", "/api/me", "alice")).status_code == 200

    await world.store.update_user("alice", disabled=True)
    response = await world.call("GET", "/api/me", "alice")

    assert response.status_code == 401


@pytest.fixture
async def sso_world(
    namespace: str, store: KeyStore, request: pytest.FixtureRequest
) -> AsyncIterator[World]:
    settings = Settings(
        key_pepper="x" * 40,
        namespace=namespace,
        admin_sso_header="X-Remote-User",
        admin_sso_proxies=["10.0.0.0/8"],
    )
    async for item in make_world(settings, store, client_host=request.param):
        yield item


@pytest.mark.parametrize("sso_world", ["10.1.2.3"], indirect=True)
async def test_the_sso_header_from_a_trusted_proxy_signs_the_user_in(
    sso_world: World,
) -> None:
    await sso_world.store.add_user("alice", "Alice", ["user_management.open"])

    response = await sso_world.call(
        "GET", "/api/me", headers={"X-Remote-User": "alice"}
    )

    assert response.status_code == 200
    assert response.json()["authenticated_by"] == "sso"
    assert response.json()["key_id"] is None


@pytest.mark.parametrize("sso_world", ["192.0.2.7"], indirect=True)
async def test_the_sso_header_from_an_untrusted_peer_is_ignored(
    sso_world: World,
) -> None:
    await sso_world.store.add_user("alice", "Alice", ALL)

    response = await sso_world.call(
        "GET", "/api/keys", headers={"X-Remote-User": "alice"}
    )

    assert response.status_code == 401
    assert response.json()["detail"] == "An API key is required."


@pytest.mark.parametrize("sso_world", ["10.1.2.3"], indirect=True)
@pytest.mark.parametrize("user", ["nobody", "bob", "bad user id"])
async def test_the_sso_header_naming_an_unknown_or_disabled_user_is_refused(
    sso_world: World, user: str
) -> None:
    await sso_world.store.add_user("bob", "Bob", ALL)
    await sso_world.store.update_user("bob", disabled=True)

    response = await sso_world.call("GET", "/api/me", headers={"X-Remote-User": user})

    assert response.status_code == 401
    assert "unknown or disabled" in response.json()["detail"]


@pytest.mark.parametrize("sso_world", ["10.1.2.3"], indirect=True)
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            [("X-Remote-User", "admin"), ("X-Remote-User", "alice")], id="twice"
        ),
        pytest.param(
            [("X-Remote-User", "alice"), ("x-remote-user", "admin")],
            id="twice-other-case",
        ),
        pytest.param([("X-Remote-User", "admin, alice")], id="comma"),
    ],
)
async def test_an_sso_header_appended_to_rather_than_overwritten_is_refused(
    sso_world: World, headers: list[tuple[str, str]]
) -> None:
    """A client's own value ahead of the proxy's must not choose the user."""
    await sso_world.store.add_user("admin", "Admin", ALL)
    await sso_world.store.add_user("alice", "Alice", ["user_management.open"])

    response = await sso_world.client.get("/api/me", headers=headers)

    assert response.status_code == 401
    assert "'X-Remote-User' must carry one user id, once" in response.json()["detail"]
    assert 'error="invalid_request"' in response.headers["www-authenticate"]


# The key lifecycle -------------------------------------------------------------


async def test_create_returns_the_key_once_with_no_store(world: World) -> None:
    await world.user("alice")

    response = await world.call(
        "POST",
        "/api/keys",
        "alice",
        json={"name": "Composer", "description": "flow", "expires_at": future_day()},
    )

    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) >= {
        "id",
        "key",
        "user_id",
        "name",
        "description",
        "hint",
        "created_at",
        "expires_at",
        "status",
    }
    assert body["user_id"] == "alice"
    assert body["status"] == "active"
    assert body["key"].endswith(body["hint"])
    identity = await world.verifier.verify(body["key"])
    assert identity.key_id == body["id"]
    listed = await world.call("GET", f"/api/keys/{body['id']}", "alice")
    assert "key" not in listed.json()
    assert body["key"] not in (await world.call("GET", "/api/keys", "alice")).text


async def test_an_administrator_creates_a_key_for_another_user(world: World) -> None:
    await world.user("admin")
    await world.store.add_user("bob", "Bob", ())

    response = await world.call(
        "POST",
        "/api/keys",
        "admin",
        json={"name": "for bob", "expires_at": future_day(), "user_id": "bob"},
    )

    assert response.status_code == 201
    assert response.json()["user_id"] == "bob"
    assert response.json()["created_by"] == "admin"


async def test_creating_a_key_for_a_disabled_user_is_a_conflict(world: World) -> None:
    await world.user("admin")
    await world.store.add_user("bob", "Bob", ())
    await world.store.update_user("bob", disabled=True)

    response = await world.call(
        "POST",
        "/api/keys",
        "admin",
        json={"name": "x", "expires_at": future_day(), "user_id": "bob"},
    )

    assert response.status_code == 409
    assert "'bob' is disabled" in response.json()["detail"]


async def test_creating_a_key_for_an_unknown_user_names_the_user_id_field(
    world: World,
) -> None:
    await world.user("admin")

    response = await world.call(
        "POST",
        "/api/keys",
        "admin",
        json={"name": "x", "expires_at": future_day(), "user_id": "ghost"},
    )

    assert response.status_code == 422
    assert response.json()["field"] == "user_id"
    assert response.json()["detail"] == "User 'ghost' does not exist."


async def test_edit_changes_name_description_and_expiration(world: World) -> None:
    await world.user("alice")
    record = (await world.store.list_keys("alice"))[0]
    day = future_day(200)

    response = await world.call(
        "PATCH",
        f"/api/keys/{record.id}",
        "alice",
        json={"name": "renamed", "description": "new", "expires_at": day},
    )

    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["description"]) == ("renamed", "new")
    assert body["expires_at"] == f"{day}T23:59:59Z"
    assert (await world.store.require_key(record.id)).name == "renamed"


async def test_an_expired_key_can_be_extended_and_works_again(world: World) -> None:
    await world.user("alice")
    record, key = await world.store.create_key(
        "alice", name="old", expires_at=time.time() + 0.5
    )
    await world.store.redis.hset(
        f"{world.store.ns}:k:{record.key_hash}", "expires_at", repr(time.time() - 5)
    )
    listed = await world.call("GET", f"/api/keys/{record.id}", "alice")
    assert listed.json()["status"] == "expired"

    response = await world.call(
        "PATCH", f"/api/keys/{record.id}", "alice", json={"expires_at": future_day()}
    )

    assert response.json()["status"] == "active"
    world.verifier.cache.clear()
    assert (await world.verifier.verify(key)).key_id == record.id


async def test_delete_answers_204_after_the_key_stops_working(world: World) -> None:
    await world.user("alice")
    created = await world.call(
        "POST", "/api/keys", "alice", json={"name": "n", "expires_at": future_day()}
    )
    key, key_id = created.json()["key"], created.json()["id"]
    await world.verifier.verify(key)  # now cached as good

    pubsub = world.store.redis.pubsub()
    await pubsub.subscribe(world.store.channel)
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    response = await world.call("DELETE", f"/api/keys/{key_id}", "alice")

    assert response.status_code == 204
    assert response.content == b""
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
    await pubsub.aclose()
    assert message is not None and message["data"].startswith("k:")
    assert await world.store.get_key(key_id) is None
    with pytest.raises(AuthError):
        await world.verifier.verify(key)
    again = await world.call("DELETE", f"/api/keys/{key_id}", "alice")
    assert again.status_code == 404


async def test_listing_by_an_unknown_user_is_404(world: World) -> None:
    await world.user("admin")

    response = await world.call("GET", "/api/keys?user_id=ghost", "admin")

    assert response.status_code == 404
    assert response.json()["detail"] == "User 'ghost' does not exist."


async def test_keys_are_listed_newest_first(world: World) -> None:
    await world.user("alice")
    for name in ("first", "second"):
        await world.call(
            "POST",
            "/api/keys",
            "alice",
            json={"name": name, "expires_at": future_day()},
        )

    items = (await world.call("GET", "/api/keys", "alice")).json()["items"]

    assert [i["name"] for i in items][:2] == ["second", "first"]


async def test_keys_and_users_come_in_pages_when_a_limit_is_given(
    world: World,
) -> None:
    await world.user("alice")
    for name in ("one", "two", "three"):
        await world.call(
            "POST",
            "/api/keys",
            "alice",
            json={"name": name, "expires_at": future_day()},
        )
    await world.user("bob")

    whole = (await world.call("GET", "/api/keys?user_id=alice", "alice")).json()
    assert whole["next"] is None and len(whole["items"]) == 4
    seen, cursor = [], ""
    while cursor is not None:
        query = f"/api/keys?user_id=alice&limit=3{cursor and f'&before={cursor}'}"
        page = (await world.call("GET", query, "alice")).json()
        assert len(page["items"]) <= 3
        seen += page["items"]
        cursor = page["next"]
    assert seen == whole["items"]

    users = (await world.call("GET", "/api/users?limit=1", "alice")).json()
    assert [u["id"] for u in users["items"]] == ["alice"]
    following = f"/api/users?limit=1&after={users['next']}"
    users = (await world.call("GET", following, "alice")).json()
    assert [u["id"] for u in users["items"]] == ["bob"] and users["next"] is None


async def test_an_administrator_disables_a_user_and_their_keys_stop(
    world: World,
) -> None:
    await world.user("admin")
    await world.user("bob")
    assert (await world.call("GET", "/api/me", "bob")).status_code == 200

    response = await world.call(
        "PATCH", "/api/users/bob", "admin", json={"disabled": True}
    )

    assert response.status_code == 200
    assert response.json()["disabled"] is True
    assert (await world.call("GET", "/api/me", "bob")).status_code == 401
    with pytest.raises(AuthError):
        await world.verifier.verify(world.keys["bob"])


async def test_an_administrator_cannot_disable_themselves(world: World) -> None:
    await world.user("admin")

    response = await world.call(
        "PATCH", "/api/users/admin", "admin", json={"disabled": True}
    )

    assert response.status_code == 409


async def test_users_are_listed_for_administrators(world: World) -> None:
    await world.user("admin")
    await world.store.add_user("bob", "Bob", ["user_management.open"])

    response = await world.call("GET", "/api/users", "admin")

    assert response.json()["items"][1] == {
        "id": "bob",
        "name": "Bob",
        "privileges": ["user_management.open"],
        "disabled": False,
    }


# Errors and headers ----------------------------------------------------------


async def test_every_response_carries_the_request_id_and_reuses_a_valid_one(
    world: World,
) -> None:
    fresh = await world.call("GET", "/api/me")
    reused = await world.call("GET", "/api/me", headers={"X-Request-ID": "abc-123"})
    bogus = await world.call("GET", "/api/me", headers={"X-Request-ID": "a b\tc"})

    assert len(fresh.headers["x-request-id"]) == 32
    assert reused.headers["x-request-id"] == "abc-123"
    assert reused.json()["request_id"] == "abc-123"
    assert bogus.headers["x-request-id"] != "a b\tc"


async def test_unknown_paths_and_methods_are_problems(world: World) -> None:
    missing = await world.call("GET", "/api/nothing")
    wrong = await world.call("PUT", "/api/keys")

    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert wrong.status_code == 405
    assert "'PUT' is not allowed" in wrong.json()["detail"]


async def test_the_page_is_served_with_a_strict_content_security_policy(
    world: World,
) -> None:
    page = await world.call("GET", "/")
    script = await world.call("GET", "/static/app.js")
    style = await world.call("GET", "/static/app.css")

    assert page.status_code == script.status_code == style.status_code == 200
    assert "User API Keys" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_the_page_has_no_inline_handlers_or_styles(world: World) -> None:
    page = (await world.call("GET", "/")).text

    assert not re.search(r"\son[a-z]+=", page)
    assert not re.search(r"\sstyle=", page)
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)
    assert not re.search(r"<style", page)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
