"""The OpenAPI document: valid 3.1, true to the routes, and fuzzed.

The fuzzing runs schemathesis against the app on a real socket, signed in
as an administrator, and fails on any 5xx or any response that breaks the
document (status, content type, headers, body schema).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import fakeredis
import hypothesis
import pytest
import schemathesis
from openapi_spec_validator import validate
from schemathesis import checks
from starlette.routing import Mount, Route

from admin.app import create_app
from admin.openapi import OPERATIONS, build_document
from gateway.settings import Settings
from gateway.store import KeyStore
from gateway.verifier import Verifier
from tests.admin.conftest import ALL, World, future_day
from tests.admin.live import LiveApps, single
from tests.conftest import PEPPER


async def test_the_served_document_is_valid_openapi_3_1(world: World) -> None:
    response = await world.call("GET", "/openapi.json")

    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_the_document_with_sso_names_the_header_as_a_scheme() -> None:
    document = build_document("X-Remote-User")

    validate(document)
    assert document["components"]["securitySchemes"]["sso"]["name"] == "X-Remote-User"


def test_the_document_and_the_routes_name_the_same_operations(
    settings: Settings,
) -> None:
    store = KeyStore(fakeredis.FakeAsyncRedis(), "x", PEPPER.encode())
    app = create_app(settings, store, Verifier.from_settings(settings, store))
    routed = {
        (method.lower(), route.path)
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith("/api/")
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {(op.method, op.path) for op in OPERATIONS}

    assert routed == documented
    assert not [r for r in app.routes if isinstance(r, Mount) and r.path != "/static"]


def test_the_schemas_come_from_the_models() -> None:
    schemas = build_document()["components"]["schemas"]

    assert schemas["KeyCreate"]["additionalProperties"] is False
    assert schemas["KeyCreate"]["required"] == ["name", "expires_at"]
    assert "key" in schemas["CreatedKey"]["properties"]
    assert "key" not in schemas["Key"]["properties"]
    assert schemas["Privilege"]["enum"] == list(ALL)


# Fuzzing ---------------------------------------------------------------------


class Target:
    def __init__(self) -> None:
        self.key = ""
        self.bob_key_id = ""
        self.live: LiveApps | None = None

    async def build(self) -> Any:
        namespace = "fz" + secrets.token_hex(4)
        settings = Settings(key_pepper=PEPPER, namespace=namespace)
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        store = KeyStore(redis, namespace, PEPPER.encode())
        await store.add_user("admin", "Admin", ALL)
        await store.add_user("bob", "Bob", ())
        _, self.key = await store.create_key(
            "admin", name="fuzz", expires_at=future_day()
        )
        record, _ = await store.create_key("bob", name="bob's", expires_at=future_day())
        self.bob_key_id = record.id
        return create_app(settings, store, Verifier.from_settings(settings, store))


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[Target]:
    target = Target()
    with single(target.build) as live:
        target.live = live
        yield target


schema = schemathesis.openapi.from_dict(build_document())

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@schema.parametrize()
@hypothesis.settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_the_fuzzer_finds_no_server_error_and_no_response_off_the_document(
    case: Any, fuzz_target: Target
) -> None:
    assert fuzz_target.live is not None
    case.call_and_validate(
        base_url=fuzz_target.live.url,
        headers={"Authorization": f"Bearer {fuzz_target.key}"},
        checks=CHECKS,
    )


def test_each_success_response_matches_the_document(fuzz_target: Target) -> None:
    """Random inputs rarely reach a 2xx; walk the happy path on purpose."""
    assert fuzz_target.live is not None
    auth = {"Authorization": f"Bearer {fuzz_target.key}"}

    def call(path: str, method: str, status: int, **parts: Any) -> Any:
        case = schema[path][method].Case(**parts)
        response = case.call_and_validate(
            base_url=fuzz_target.live.url, headers=auth, checks=CHECKS
        )
        assert response.status_code == status, response.text
        return response

    created = call(
        "/api/keys",
        "POST",
        201,
        body={"name": "doc", "expires_at": future_day(), "user_id": "bob"},
        media_type="application/json",
    ).json()
    key_path = {"key_id": created["id"]}
    call("/api/me", "GET", 200)
    call("/api/keys", "GET", 200, query={"user_id": "bob"})
    call("/api/keys/{key_id}", "GET", 200, path_parameters=key_path)
    call(
        "/api/keys/{key_id}",
        "PATCH",
        200,
        path_parameters=key_path,
        body={"expires_at": future_day(90)},
        media_type="application/json",
    )
    call("/api/keys/{key_id}", "DELETE", 204, path_parameters=key_path)
    call("/api/users", "GET", 200)
    call(
        "/api/users/{user_id}",
        "PATCH",
        200,
        path_parameters={"user_id": "bob"},
        body={"name": "Robert"},
        media_type="application/json",
    )
    call("/api/audit", "GET", 200, query={"limit": 2})
