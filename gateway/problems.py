"""The small exception tree and its problem+json rendering (RFC 9457).

    GatewayError
     ├── BadRequest         400, a request the gateway cannot forward
     ├── InvalidInput       422, names the field and the rule
     ├── NotFound           404
     ├── Conflict           409
     ├── Forbidden          403, names the missing privilege
     ├── AuthError          401, with WWW-Authenticate
     ├── StoreUnavailable   503, with Retry-After
     ├── UpstreamError      502
     └── UpstreamTimeout    504

Foreign errors (redis, aiohttp) are translated into these at one boundary
each: ``store.translate_redis_errors`` and ``upstream.translate_errors``.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

PROBLEM_JSON = "application/problem+json"
_TYPE_BASE = "urn:rpa-gateway:problem:"


class GatewayError(Exception):
    status = 500
    title = "Internal error"
    slug = "internal"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def headers(self, realm: str) -> dict[str, str]:
        return {}


class BadRequest(GatewayError):
    status = 400
    title = "Bad request"
    slug = "bad-request"


class InvalidInput(GatewayError):
    status = 422
    title = "Invalid input"
    slug = "invalid-input"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail, field=field)
        self.field = field


class NotFound(GatewayError):
    status = 404
    title = "Not found"
    slug = "not-found"


class Conflict(GatewayError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class Forbidden(GatewayError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class AuthError(GatewayError):
    """401. ``error`` is None when no credential was sent (RFC 6750 3.1)."""

    status = 401
    title = "Unauthorized"
    slug = "unauthorized"

    def __init__(self, detail: str, error: str | None = "invalid_token") -> None:
        super().__init__(detail)
        self.error = error

    def headers(self, realm: str) -> dict[str, str]:
        value = f'Bearer realm="{realm}"'
        if self.error:
            value += f', error="{self.error}", error_description="{self.detail}"'
        return {"WWW-Authenticate": value}


class StoreUnavailable(GatewayError):
    status = 503
    title = "Key store unavailable"
    slug = "store-unavailable"
    retry_after = 2

    def headers(self, realm: str) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class UpstreamError(GatewayError):
    status = 502
    title = "Bad gateway"
    slug = "upstream-unreachable"


class UpstreamTimeout(GatewayError):
    status = 504
    title = "Gateway timeout"
    slug = "upstream-timeout"


def problem_body(
    status: int,
    title: str,
    detail: str,
    slug: str,
    request_id: str | None = None,
    **extra: Any,
) -> bytes:
    body: dict[str, Any] = {
        "type": _TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    return orjson.dumps(body)


def problem_response(
    exc: GatewayError, request_id: str | None = None, realm: str = "rpa-gateway"
) -> Response:
    body = problem_body(
        exc.status, exc.title, exc.detail, exc.slug, request_id, **exc.extra
    )
    headers = exc.headers(realm)
    if request_id:
        headers["X-Request-ID"] = request_id
    return Response(body, exc.status, headers=headers, media_type=PROBLEM_JSON)
