"""A stand-in for the part of RPA Manager's API that integrations call.

For the demo, the tests and the benchmarks. It trusts only the identity
headers the gateway sets and answers 401 without them, the way a backend
behind the gateway should. Given the gateway's JWK Set, it also requires
the signed identity assertion and checks that it names the same user and
key as the headers. Executions live in memory; an execution is
``notStarted`` at first, then ``running``, then ``success`` (or ``error``
when its process name asks for it, so failure paths can be shown too).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PREFIX = "/rpa/api/v1"
_EXECUTION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass
class Execution:
    id: str
    process_name: str
    inputs: dict[str, Any]
    user_id: str
    created_at: float

    def status(self, now: float, start_delay: float, run_seconds: float) -> str:
        elapsed = now - self.created_at
        if elapsed < start_delay:
            return "notStarted"
        if elapsed < start_delay + run_seconds:
            return "running"
        return "error" if "fail" in self.process_name.lower() else "success"


class BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class AssertionCheck:
    """How the backend verifies the gateway's signed identity assertion."""

    def __init__(self, jwks: bytes, *, header: str, issuer: str, audience: str) -> None:
        self.header = header
        self.keys = KeySet.import_key_set(orjson.loads(jwks))
        self.claims = JWTClaimsRegistry(
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            sub={"essential": True},
            exp={"essential": True},
            leeway=5,
        )

    def check(self, token: str | None, user_id: str, key_id: str) -> None:
        """Refuse with 401 unless the assertion is valid and names this caller."""
        if not token:
            raise BadRequest(401, f"The identity assertion '{self.header}' is missing.")
        try:
            claims = jwt.decode(
                token, self.keys, algorithms=["ES256", "Ed25519"]
            ).claims
            self.claims.validate(claims)
        except JoseError as exc:
            reason = exc.description or exc.error.replace("_", " ")
            raise BadRequest(
                401, f"The identity assertion is not valid ({reason})."
            ) from None
        if claims.get("sub") != user_id or claims.get("key_id") != key_id:
            raise BadRequest(401, "The identity assertion names another user or key.")


def _json(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body), status, headers=headers, media_type="application/json"
    )


def _problem(status: int, detail: str) -> Response:
    titles = {400: "Bad request", 401: "Unauthorized", 404: "Not found"}
    body = {"title": titles.get(status, "Error"), "status": status, "detail": detail}
    return Response(orjson.dumps(body), status, media_type="application/problem+json")


def create_backend_app(
    *,
    user_id_header: str = "X-RPA-User-Id",
    key_id_header: str = "X-RPA-Key-Id",
    start_delay: float = 0.5,
    run_seconds: float = 3.0,
    clock: Callable[[], float] = time.monotonic,
    assertions: AssertionCheck | None = None,
) -> Starlette:
    """The stand-in backend; durations say how an execution progresses."""
    executions: dict[str, Execution] = {}

    def caller(request: Request) -> str:
        user_id = request.headers.get(user_id_header)
        key_id = request.headers.get(key_id_header)
        if not user_id or not key_id:
            raise BadRequest(
                401,
                f"The identity headers '{user_id_header}' and '{key_id_header}' are "
                "missing; call this service through the gateway.",
            )
        if assertions is not None:
            assertions.check(request.headers.get(assertions.header), user_id, key_id)
        return user_id

    async def start_input(request: Request) -> tuple[str, dict[str, Any], Any]:
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            raise BadRequest(400, "The body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise BadRequest(400, "The body must be a JSON object.")
        name = body.get("processName")
        if not isinstance(name, str) or not 1 <= len(name) <= 200:
            raise BadRequest(400, "'processName' must be a string of 1 to 200 chars.")
        inputs = body.get("inputs", {})
        if not isinstance(inputs, dict):
            raise BadRequest(400, "'inputs' must be a JSON object.")
        return name, inputs, body.get("executionId")

    def describe(execution: Execution) -> dict[str, Any]:
        return {
            "executionId": execution.id,
            "processName": execution.process_name,
            "inputs": execution.inputs,
            "startedBy": execution.user_id,
            "status": execution.status(clock(), start_delay, run_seconds),
        }

    def created(execution: Execution) -> Response:
        location = f"{PREFIX}/executions/{execution.id}/status"
        return _json(describe(execution), 201, {"Location": location})

    async def start_idempotent(request: Request) -> Response:
        user_id = caller(request)
        name, inputs, execution_id = await start_input(request)
        if not isinstance(execution_id, str) or not _EXECUTION_ID.match(execution_id):
            raise BadRequest(
                400, "'executionId' must be 1 to 128 letters, digits or ._:-."
            )
        existing = executions.get(execution_id)
        if existing is not None:
            if existing.user_id != user_id:
                raise BadRequest(404, f"Execution '{execution_id}' does not exist.")
            return Response(status_code=204)
        execution = Execution(execution_id, name, inputs, user_id, clock())
        executions[execution_id] = execution
        return created(execution)

    async def start(request: Request) -> Response:
        user_id = caller(request)
        name, inputs, _ = await start_input(request)
        execution = Execution(str(uuid.uuid4()), name, inputs, user_id, clock())
        executions[execution.id] = execution
        return created(execution)

    async def status(request: Request) -> Response:
        user_id = caller(request)
        execution_id = request.path_params["execution_id"]
        execution = executions.get(execution_id)
        if execution is None or execution.user_id != user_id:
            raise BadRequest(404, f"Execution '{execution_id}' does not exist.")
        return _json(describe(execution))

    async def whoami(request: Request) -> Response:
        user_id = caller(request)
        return _json({"userId": user_id, "keyId": request.headers[key_id_header]})

    async def refuse(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        return _problem(exc.status, exc.detail)

    return Starlette(
        routes=[
            Route(
                f"{PREFIX}/executions/startProcess", start_idempotent, methods=["PUT"]
            ),
            Route(f"{PREFIX}/executions/startProcess", start, methods=["POST"]),
            Route(f"{PREFIX}/executions/{{execution_id}}/status", status),
            Route(f"{PREFIX}/whoami", whoami),
        ],
        exception_handlers={BadRequest: refuse},
    )
