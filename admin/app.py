"""The admin sub-app: the JSON API, its authentication, and the web page.

Every API request is authenticated first (the caller's own key as a bearer
token, or a single-sign-on header from a trusted proxy), then checked for
privileges before anything is read, then validated. Writes and the
refusals of identified callers go to the audit trail; refusals of callers
without a valid credential are only counted and logged. Errors are
problem+json with the request id.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from admin import schemas
from admin.audit import (
    AnonymousRefusals,
    AuditLog,
    Event,
    checked_key_id,
    checked_user_id,
)
from admin.openapi import build_document
from admin.privileges import Privilege, ensure_visible, require, require_for_user
from gateway.problems import (
    AuthError,
    Conflict,
    Forbidden,
    GatewayError,
    InvalidInput,
    NotFound,
    problem_body,
    problem_response,
)
from gateway.settings import Settings
from gateway.store import USER_ID_PATTERN, KeyRecord, KeyStore, User, iso
from gateway.verifier import Verifier

STATIC = Path(__file__).parent / "static"
BODY_LIMIT = 64 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_KEY_ID_MAX = 64

# 'self' only: no inline script or style, no framing, no third party.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]

Model = TypeVar("Model", bound=BaseModel)


class MalformedBody(GatewayError):
    status = 400
    title = "Malformed request body"
    slug = "malformed-body"


class BodyTooLarge(GatewayError):
    status = 413
    title = "Request body too large"
    slug = "body-too-large"


class UnsupportedMediaType(GatewayError):
    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class Hidden(NotFound):
    """A key exists but the caller may not see it: a 404 that is audited."""


class RequestContext:
    """Request id, security headers and no-store for the API, as plain ASGI.

    A valid incoming ``X-Request-ID`` (or ``X-Correlation-ID``) is reused so
    one id follows the request through proxies; otherwise one is made.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope["headers"]) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        extra = [*_SECURITY_HEADERS, (b"x-request-id", request_id.encode())]
        if scope["path"].startswith("/api/"):
            extra.append((b"cache-control", b"no-store"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                headers = list(message.get("headers", []))
                headers.extend(item for item in extra if item[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _incoming_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name in (b"x-request-id", b"x-correlation-id"):
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
    return None


@dataclass(frozen=True, slots=True)
class Caller:
    user: User
    method: Literal["api_key", "sso"]
    key_id: str | None


@dataclass(slots=True)
class Call:
    """One API request on its way through a handler."""

    request: Request
    request_id: str
    client: str | None
    caller: Caller | None = None
    # The user a body names as the target, for the audit of a refusal.
    target: str | None = None

    @property
    def user(self) -> User:
        assert self.caller is not None
        return self.caller.user


Handler = Callable[[Call], Awaitable[Response]]


def _networks(
    items: Iterable[str],
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(item, strict=False) for item in items]


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address in ``text``, or None.

    A zone (``fe80::1%eth0``) counts as none: its name is free text.
    """
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None
    return address


def _in(host: str | None, networks: list[Any]) -> bool:
    address = _address(host) if networks else None
    return address is not None and any(address in network for network in networks)


def json_response(model: BaseModel, status: int = 200) -> Response:
    body = orjson.dumps(model.model_dump(mode="json"))
    return Response(body, status, media_type="application/json")


def _field_error(error: Any) -> dict[str, str]:
    field = ".".join(str(part) for part in error["loc"]) or "body"
    rule = str(error["type"])
    message = str(error["msg"]).removeprefix("Value error, ").rstrip(".")
    if rule == "missing":
        detail = f"The field '{field}' is required."
    elif rule == "extra_forbidden":
        detail = f"The field '{field}' is not allowed here."
    elif field == "body":
        detail = f"{message}."
    else:
        value = error.get("input")
        shown = ""
        if isinstance(value, str | int | float | bool) and len(str(value)) <= 40:
            shown = f" (got {orjson.dumps(value).decode()})"
        rule_text = message[:1].lower() + message[1:]
        detail = f"The field '{field}' breaks a rule{shown}: {rule_text}."
    return {"field": field, "rule": rule, "detail": detail}


def invalid(exc: ValidationError) -> InvalidInput:
    errors = [_field_error(e) for e in exc.errors(include_url=False)]
    problem = InvalidInput(errors[0]["field"], errors[0]["detail"])
    problem.extra.update(rule=errors[0]["rule"], errors=errors)
    return problem


class AdminApi:
    def __init__(self, settings: Settings, store: KeyStore, verifier: Verifier) -> None:
        self.settings = settings
        self.store = store
        self.verifier = verifier
        self.audit = AuditLog(store.redis, store.ns, settings.audit_max_len)
        self.anonymous_refusals = AnonymousRefusals()
        self.sso_header = settings.admin_sso_header
        self.sso_proxies = _networks(settings.admin_sso_proxies)
        self.trusted_proxies = _networks(settings.trusted_proxies)
        self.openapi = orjson.dumps(build_document(self.sso_header))
        self.index = (STATIC / "index.html").read_bytes()

    # Plumbing ------------------------------------------------------------

    def endpoint(self, action: str, handler: Handler) -> Callable[[Request], Any]:
        """Authenticate, run the handler, turn errors into problems."""

        async def run(request: Request) -> Response:
            call = Call(request, request.state.request_id, self._client(request))
            try:
                call.caller = await self._authenticate(request)
                return await handler(call)
            except GatewayError as exc:
                await self._refused(call, action, exc)
                return self.problem(exc, call.request_id)

        return run

    def problem(self, exc: GatewayError, request_id: str) -> Response:
        return problem_response(exc, request_id, self.settings.realm)

    async def _refused(self, call: Call, action: str, exc: GatewayError) -> None:
        """Audit a refusal of an identified caller; count one of a stranger."""
        if isinstance(exc, AuthError):
            # The page asks /api/me without a credential to detect SSO;
            # that probe is no attempt at anything.
            if not (action == "me.get" and exc.error is None):
                self.anonymous_refusals.add(action, call.client)
        elif call.caller is not None and isinstance(exc, Forbidden | Hidden):
            await self._record_refusal(call, action, exc)

    async def _record_refusal(self, call: Call, action: str, exc: GatewayError) -> None:
        params = call.request.path_params
        user_id = (
            call.target
            or params.get("user_id")
            or call.request.query_params.get("user_id")
        )
        await self._record(
            call,
            action,
            exc.status,
            key_id=checked_key_id(params.get("key_id")),
            user_id=checked_user_id(user_id),
            detail=exc.detail,
        )

    async def _record(
        self,
        call: Call,
        action: str,
        status: int,
        *,
        key_id: str | None = None,
        user_id: str | None = None,
        changes: dict[str, Any] | None = None,
        detail: str | None = None,
    ) -> None:
        caller = call.caller
        assert caller is not None
        await self.audit.record(
            Event(
                action=action,
                actor=caller.user.id,
                actor_key_id=caller.key_id,
                request_id=call.request_id,
                client=call.client,
                status=status,
                key_id=key_id,
                user_id=user_id,
                changes=changes or {},
                detail=detail,
            )
        )

    def _client(self, request: Request) -> str | None:
        peer = request.client.host if request.client else None
        if not _in(peer, self.trusted_proxies):
            return peer
        # Walk X-Forwarded-For from the right, past our own proxies. A hop
        # that is no address ends the walk: the last address before it is
        # as far as the chain can be believed.
        forwarded = request.headers.get("x-forwarded-for", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        client = peer
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break
            client = str(address)
            if not any(address in network for network in self.trusted_proxies):
                break
        return client

    async def _authenticate(self, request: Request) -> Caller:
        header = request.headers.get("authorization")
        if header is None and self.sso_header:
            sso_users = request.headers.getlist(self.sso_header)
            peer = request.client.host if request.client else None
            if sso_users and _in(peer, self.sso_proxies):
                return await self._sso_caller(self._one_sso_user(sso_users))
        if header is None:
            raise AuthError("An API key is required.", error=None)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(
                "The Authorization header must be 'Bearer' followed by an API key.",
                error="invalid_request",
            )
        identity = await self.verifier.verify(token.strip())
        # Read the user on every call: a disabled user is refused at once,
        # whatever the verifier's cache still holds.
        user = await self.store.get_user(identity.user_id)
        if user is None or user.disabled:
            raise AuthError("The API key is invalid or has been revoked.")
        return Caller(user, "api_key", identity.key_id)

    def _one_sso_user(self, values: list[str]) -> str:
        # A proxy that appends to the header, rather than overwriting it,
        # passes the client's own value along with its own; either could
        # come first, so a list is refused whatever its order.
        if len(values) > 1 or "," in values[0]:
            raise AuthError(
                f"The single-sign-on header '{self.sso_header}' must carry one "
                "user id, once; the proxy must overwrite it, not append to it.",
                error="invalid_request",
            )
        return values[0]

    async def _sso_caller(self, user_id: str) -> Caller:
        user = None
        if USER_ID_PATTERN.match(user_id):
            user = await self.store.get_user(user_id)
        if user is None or user.disabled:
            shown = user_id[:64]
            raise AuthError(
                f"The single-sign-on user '{shown}' is unknown or disabled."
            )
        return Caller(user, "sso", None)

    async def _body(self, request: Request, model: type[Model]) -> Model:
        media = request.headers.get("content-type", "").partition(";")[0]
        if media.strip().lower() != "application/json":
            raise UnsupportedMediaType(
                f"The body must be application/json, not '{media.strip()[:64]}'."
            )
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > BODY_LIMIT:
                raise BodyTooLarge(
                    f"The body is larger than the limit of {BODY_LIMIT} bytes."
                )
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedBody(f"The body is not valid JSON: {exc}.") from None
        if not isinstance(data, dict):
            raise InvalidInput("body", "The body must be a JSON object.")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise invalid(exc) from None

    @staticmethod
    def _query(request: Request, model: type[Model]) -> Model:
        try:
            return model.model_validate(dict(request.query_params))
        except ValidationError as exc:
            raise invalid(exc) from None

    async def _visible_key(self, call: Call) -> KeyRecord:
        key_id = call.request.path_params["key_id"]
        record = None
        if len(key_id) <= _KEY_ID_MAX:
            record = await self.store.get_key(key_id)
        if record is None:
            raise NotFound(f"Key '{key_id[:_KEY_ID_MAX]}' does not exist.")
        try:
            return ensure_visible(call.user, record)
        except NotFound as exc:
            raise Hidden(exc.detail) from None

    # Handlers ------------------------------------------------------------

    async def me(self, call: Call) -> Response:
        assert call.caller is not None
        user = schemas.UserOut.of(call.user)
        return json_response(
            schemas.Me(
                **user.model_dump(),
                authenticated_by=call.caller.method,
                key_id=call.caller.key_id,
                max_key_lifetime_days=self.store.max_lifetime_days,
            )
        )

    async def list_keys(self, call: Call) -> Response:
        require(call.user, Privilege.OPEN)
        query = self._query(call.request, schemas.KeysQuery)
        target = query.user_id
        if target is None:
            scope = None if call.user.can(Privilege.ADMIN) else call.user.id
        else:
            require_for_user(call.user, target)
            await self.store.require_user(target)
            scope = target
        records, following = await self.store.page_keys(
            scope, limit=query.limit, before=query.before
        )
        return json_response(
            schemas.KeyList(items=[schemas.Key.of(r) for r in records], next=following)
        )

    async def create_key(self, call: Call) -> Response:
        require(call.user, Privilege.OPEN, Privilege.CREATE)
        body = await self._body(call.request, schemas.KeyCreate)
        target = call.target = body.user_id or call.user.id
        require_for_user(call.user, target, Privilege.CREATE)
        owner = await self.store.get_user(target)
        if owner is None:
            raise InvalidInput("user_id", f"User '{target}' does not exist.")
        if owner.disabled:
            raise Conflict(
                f"User '{target}' is disabled; enable the user before creating keys."
            )
        record, plaintext = await self.store.create_key(
            target,
            name=body.name,
            description=body.description,
            expires_at=body.expires_at,
            created_by=call.user.id,
        )
        changes = {
            "name": record.name,
            "description": record.description,
            "expires_at": iso(record.expires_at),
        }
        await self._record(
            call, "key.create", 201, key_id=record.id, user_id=target, changes=changes
        )
        created = schemas.CreatedKey(
            **schemas.Key.of(record).model_dump(), key=plaintext
        )
        response = json_response(created, 201)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        return response

    async def get_key(self, call: Call) -> Response:
        require(call.user, Privilege.OPEN)
        record = await self._visible_key(call)
        return json_response(schemas.Key.of(record))

    async def edit_key(self, call: Call) -> Response:
        require(call.user, Privilege.OPEN, Privilege.EDIT)
        body = await self._body(call.request, schemas.KeyEdit)
        before = await self._visible_key(call)
        after = await self.store.edit_key(
            before.id,
            name=body.name,
            description=body.description,
            expires_at=body.expires_at,
        )
        changes: dict[str, Any] = {}
        for name in ("name", "description", "expires_at"):
            old, new = getattr(before, name), getattr(after, name)
            if old != new:
                if name == "expires_at":
                    old, new = iso(old), iso(new)
                changes[name] = {"from": old, "to": new}
        await self._record(
            call, "key.edit", 200, key_id=after.id, user_id=after.user_id,
            changes=changes,
        )  # fmt: skip
        return json_response(schemas.Key.of(after))

    async def delete_key(self, call: Call) -> Response:
        require(call.user, Privilege.OPEN, Privilege.DELETE)
        record = await self._visible_key(call)
        # The store deletes the record and publishes the invalidation in one
        # write before it returns; evicting here as well covers this
        # process even when its subscriber is reconnecting.
        await self.store.revoke_key(record.id)
        self.verifier.cache.evict_key(record.key_hash)
        await self._record(
            call, "key.delete", 204, key_id=record.id, user_id=record.user_id,
            changes={"name": record.name},
        )  # fmt: skip
        return Response(status_code=204)

    async def list_users(self, call: Call) -> Response:
        require(call.user, Privilege.OPEN, Privilege.ADMIN)
        query = self._query(call.request, schemas.UsersQuery)
        users, following = await self.store.page_users(
            limit=query.limit, after=query.after
        )
        return json_response(
            schemas.UserList(
                items=[schemas.UserOut.of(u) for u in users], next=following
            )
        )

    async def edit_user(self, call: Call) -> Response:
        require(call.user, Privilege.OPEN, Privilege.ADMIN)
        body = await self._body(call.request, schemas.UserEdit)
        user_id = call.request.path_params["user_id"]
        before = await self.store.get_user(user_id)
        if before is None:
            raise NotFound(f"User '{user_id[:128]}' does not exist.")
        if body.disabled and before.id == call.user.id:
            raise Conflict(
                f"User '{before.id}' cannot disable themselves; "
                "ask another administrator."
            )
        after = await self.store.update_user(
            before.id, name=body.name, disabled=body.disabled
        )
        self.verifier.cache.evict_user(after.id)
        changes = {
            name: {"from": getattr(before, name), "to": getattr(after, name)}
            for name in ("name", "disabled")
            if getattr(before, name) != getattr(after, name)
        }
        await self._record(call, "user.edit", 200, user_id=after.id, changes=changes)
        return json_response(schemas.UserOut.of(after))

    async def list_audit(self, call: Call) -> Response:
        require(call.user, Privilege.OPEN, Privilege.ADMIN)
        query = self._query(call.request, schemas.AuditQuery)
        entries, following = await self.audit.page(query.limit, query.before)
        page = schemas.AuditPage.model_validate({"items": entries, "next": following})
        return json_response(page)

    # Unauthenticated -----------------------------------------------------

    async def openapi_json(self, request: Request) -> Response:
        return Response(self.openapi, media_type="application/json")

    async def page(self, request: Request) -> Response:
        headers = {"Cache-Control": "no-cache"}
        return Response(self.index, headers=headers, media_type="text/html")

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        request_id = request.state.request_id
        title = "Not found" if exc.status_code == 404 else "Method not allowed"
        if exc.status_code == 404:
            detail = f"There is nothing at '{request.url.path[:200]}'."
        elif exc.status_code == 405:
            detail = f"'{request.method}' is not allowed on '{request.url.path[:200]}'."
        else:
            detail = f"{exc.detail}."
            title = "Error"
        slug = {404: "not-found", 405: "method-not-allowed"}.get(
            exc.status_code, "error"
        )
        body = problem_body(exc.status_code, title, detail, slug, request_id)
        headers = dict(exc.headers or {})
        headers["X-Request-ID"] = request_id
        return Response(
            body,
            exc.status_code,
            headers=headers,
            media_type="application/problem+json",
        )


def create_app(settings: Settings, store: KeyStore, verifier: Verifier) -> Starlette:
    """The admin app, to mount at '/' on the admin listener (or elsewhere)."""
    api = AdminApi(settings, store, verifier)
    route = api.endpoint
    routes = [
        Route("/api/me", route("me.get", api.me), methods=["GET"]),
        Route("/api/keys", route("key.list", api.list_keys), methods=["GET"]),
        Route("/api/keys", route("key.create", api.create_key), methods=["POST"]),
        Route("/api/keys/{key_id}", route("key.get", api.get_key), methods=["GET"]),
        Route("/api/keys/{key_id}", route("key.edit", api.edit_key), methods=["PATCH"]),
        Route(
            "/api/keys/{key_id}",
            route("key.delete", api.delete_key),
            methods=["DELETE"],
        ),
        Route("/api/users", route("user.list", api.list_users), methods=["GET"]),
        Route(
            "/api/users/{user_id}",
            route("user.edit", api.edit_user),
            methods=["PATCH"],
        ),
        Route("/api/audit", route("audit.list", api.list_audit), methods=["GET"]),
        Route("/openapi.json", api.openapi_json, methods=["GET"]),
        Route("/", api.page, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestContext)],
        exception_handlers={HTTPException: api.http_error},
    )
