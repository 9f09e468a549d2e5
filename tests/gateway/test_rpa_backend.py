"""The stand-in RPA backend: identity required, idempotent start, status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.rpa_backend import PREFIX, create_backend_app


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def backend(clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    app = create_backend_app(start_delay=1.0, run_seconds=5.0, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rpa") as client:
        yield client


def as_user(user: str) -> dict[str, str]:
    return {"X-RPA-User-Id": user, "X-RPA-Key-Id": "K-" + user}


START = f"{PREFIX}/executions/startProcess"


async def test_without_the_identity_headers_every_call_is_401(
    backend: httpx.AsyncClient,
) -> None:
    for method, path in (("PUT", START), ("POST", START), ("GET", f"{PREFIX}/whoami")):
        response = await backend.request(method, path, json={"processName": "p"})
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"


async def test_put_start_is_idempotent_by_execution_id(
    backend: httpx.AsyncClient,
) -> None:
    body = {"executionId": "e-1", "processName": "Invoice intake", "inputs": {"n": 1}}
    first = await backend.put(START, json=body, headers=as_user("alice"))
    assert first.status_code == 201
    assert first.headers["location"] == f"{PREFIX}/executions/e-1/status"
    assert first.json()["status"] == "notStarted"
    repeat = await backend.put(START, json=body, headers=as_user("alice"))
    assert repeat.status_code == 204
    assert repeat.content == b""


async def test_post_start_makes_a_new_execution_each_time(
    backend: httpx.AsyncClient,
) -> None:
    body = {"processName": "Invoice intake"}
    one = await backend.post(START, json=body, headers=as_user("alice"))
    two = await backend.post(START, json=body, headers=as_user("alice"))
    assert one.status_code == two.status_code == 201
    assert one.json()["executionId"] != two.json()["executionId"]


@pytest.mark.parametrize(
    ("process", "final"),
    [
        pytest.param("Invoice intake", "success"),
        pytest.param("Fail on purpose", "error"),
    ],
)
async def test_an_execution_goes_from_not_started_to_running_to_done(
    backend: httpx.AsyncClient, clock: Clock, process: str, final: str
) -> None:
    body = {"executionId": "e-2", "processName": process}
    await backend.put(START, json=body, headers=as_user("alice"))
    status = f"{PREFIX}/executions/e-2/status"
    seen = []
    for advance in (0.0, 2.0, 10.0):
        clock.now += advance
        response = await backend.get(status, headers=as_user("alice"))
        seen.append(response.json()["status"])
    assert seen == ["notStarted", "running", final]


async def test_another_users_execution_does_not_exist_for_you(
    backend: httpx.AsyncClient,
) -> None:
    body = {"executionId": "e-3", "processName": "p"}
    await backend.put(START, json=body, headers=as_user("alice"))
    status = f"{PREFIX}/executions/e-3/status"
    assert (await backend.get(status, headers=as_user("bob"))).status_code == 404
    clash = await backend.put(START, json=body, headers=as_user("bob"))
    assert clash.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"executionId": "e"}, id="no-process-name"),
        pytest.param({"processName": "p"}, id="no-execution-id"),
        pytest.param({"processName": "p", "executionId": "has space"}, id="bad-id"),
        pytest.param([1, 2], id="not-an-object"),
    ],
)
async def test_bad_start_requests_are_400_naming_the_problem(
    backend: httpx.AsyncClient, body: object
) -> None:
    response = await backend.put(START, json=body, headers=as_user("alice"))
    assert response.status_code == 400
    assert response.json()["detail"].endswith(".")


async def test_whoami_reports_the_identity_the_gateway_sent(
    backend: httpx.AsyncClient,
) -> None:
    response = await backend.get(f"{PREFIX}/whoami", headers=as_user("alice"))
    assert response.json() == {"userId": "alice", "keyId": "K-alice"}
