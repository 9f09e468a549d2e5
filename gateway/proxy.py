"""The ASGI proxy: verify the key, rewrite the headers, stream both ways.

Plain ASGI on purpose: no request object, no buffering middleware. Each
body travels one chunk at a time, so memory stays flat whatever the size.
Once the response has started, an upstream failure can only abort the
client connection, which is what raising does under an ASGI server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any
from urllib.parse import unquote_plus

import aiohttp

from gateway.assertion import Asserter
from gateway.cache import Identity
from gateway.headers import (
    REQUEST_ID_NAMES,
    RequestRewriter,
    first_values,
    request_id_in,
    strip_response_headers,
)
from gateway.observability import Metrics, log_access
from gateway.problems import GatewayError, problem_body
from gateway.settings import Settings
from gateway.upstream import (
    UPSTREAM_ERRORS,
    Upstream,
    translate_errors,
    upstream_failure,
)
from gateway.verifier import Verifier

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_NO_BODY_STATUSES = frozenset({204, 304})
_EMPTY_BODY: Message = {"type": "http.response.body", "body": b""}
SMALL_BODY = 64 * 1024
_PROBLEM_TYPE = (b"content-type", b"application/problem+json")
_NO_STORE = (b"cache-control", b"no-store")


def without_param(query: bytes, param: str) -> bytes:
    """The query string without any ``param=...`` pair, the rest as it came.

    A key accepted from the query must not reach the upstream and its logs.
    """
    kept = [
        pair
        for pair in query.split(b"&")
        if unquote_plus(pair.partition(b"=")[0].decode("latin-1")) != param
    ]
    return b"&".join(kept)


async def send_problem(
    send: Send, exc: GatewayError, request_id: str, realm: str
) -> None:
    """Answer with ``exc`` as problem+json, its headers and the request id."""
    body = problem_body(
        exc.status, exc.title, exc.detail, exc.slug, request_id, **exc.extra
    )
    headers = [
        _PROBLEM_TYPE,
        _NO_STORE,
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    for name, value in exc.headers(realm).items():
        headers.append((name.lower().encode(), value.encode("latin-1")))
    await send(
        {"type": "http.response.start", "status": exc.status, "headers": headers}
    )
    await send({"type": "http.response.body", "body": body})


def client_host(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


class ClientDisconnected(Exception):
    """The client went away while its request body was being read."""


class RequestBody:
    """The client's request body as an async iterator of chunks."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.finished = False
        self.disconnected = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.finished:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise ClientDisconnected("The client disconnected during the upload.")
            self.finished = not message.get("more_body", False)
            chunk = message.get("body", b"")
            if chunk:
                yield chunk


def has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """RFC 9112 section 6.3: a request has a body only if it says so."""
    for name, value in headers:
        if name == b"content-length":
            return value.strip() != b"0"
        if name == b"transfer-encoding":
            return True
    return False


class Proxy:
    """Verifies each request and forwards it to the upstream."""

    def __init__(
        self,
        settings: Settings,
        verifier: Verifier,
        upstream: Upstream,
        metrics: Metrics,
        asserter: Asserter | None = None,
    ) -> None:
        self.verifier = verifier
        self.asserter = asserter
        self.upstream = upstream
        self.metrics = metrics
        self.realm = settings.realm
        self.rewriter = RequestRewriter(settings, verifier.credential_headers())
        # The headers read before forwarding, gathered in one pass.
        self._wanted = verifier.credential_headers() | REQUEST_ID_NAMES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One flat coroutine for the whole exchange: in-process A/B runs put
        # the cost of splitting it into helpers (extra coroutines, an object
        # for the shared state, context managers) at about a tenth of the
        # gateway's own work per request.
        started = perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        found = first_values(headers, self._wanted)
        request_id = request_id_in(found)
        client = client_host(scope)
        status, outcome = 500, "internal"
        identity: Identity | None = None
        upstream_duration: float | None = None
        response: aiohttp.ClientResponse | None = None
        responded = False
        metrics = self.metrics
        try:
            verifier = self.verifier
            try:
                identity = await verifier.verify(
                    verifier.key_in(found, scope["query_string"])
                )
            finally:
                auth_done = perf_counter()
                metrics.auth_seconds.observe(auth_done - started)
            forward = self.rewriter.upstream_headers(
                headers,
                scope["scheme"],
                client,
                request_id,
                identity.user_id,
                identity.key_id,
                None if self.asserter is None else self.asserter.assertion(identity),
            )
            body = RequestBody(receive) if has_body(headers) else None
            target = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
            query = scope["query_string"]
            if query and verifier.query_param:
                query = without_param(query, verifier.query_param)
            if query:
                target += "?" + query.decode("latin-1")
            try:
                response = await self.upstream.request(
                    scope["method"], target, forward, body
                )
            except GatewayError:
                if body is not None and body.disconnected:
                    raise ClientDisconnected from None
                raise
            upstream_duration = perf_counter() - auth_done
            metrics.upstream_seconds.observe(upstream_duration)
            status, outcome = response.status, "proxied"
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": strip_response_headers(
                        response.raw_headers, request_id.encode()
                    ),
                }
            )
            responded = True
            length = response.content_length
            if scope["method"] == "HEAD" or status in _NO_BODY_STATUSES:
                await send(_EMPTY_BODY)
            elif length is not None and length <= SMALL_BODY:
                # A small body of announced size is read whole, like one
                # proxy buffer in nginx: one send instead of a chunk loop,
                # and memory stays bounded by SMALL_BODY per request.
                try:
                    small = await response.read()
                except UPSTREAM_ERRORS as exc:
                    raise upstream_failure(exc) from exc
                await send({"type": "http.response.body", "body": small})
            else:
                await self._stream(receive, send, response, body)
            response.release()
        except GatewayError as exc:
            status, outcome = exc.status, exc.slug
            if response is not None:
                response.close()
            if responded:
                raise
            await send_problem(send, exc, request_id, self.realm)
        except ClientDisconnected:
            # nginx's convention for a client that left before the answer.
            status, outcome = 499, "client-disconnected"
            if response is not None:
                response.close()
        except BaseException:
            # Unread body: the connection cannot go back to the pool.
            if response is not None:
                response.close()
            raise
        finally:
            metrics.outcome(outcome)
            log_access(
                request_id,
                scope["method"],
                scope["path"],
                status,
                perf_counter() - started,
                upstream_duration,
                outcome,
                identity.user_id if identity else None,
                identity.key_id if identity else None,
                client,
            )

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        response: aiohttp.ClientResponse,
        body: RequestBody | None,
    ) -> None:
        """Relay a large or unsized body chunk by chunk."""
        # One chunk is held back so that the last one carries more_body=False.
        pending: bytes | None = None
        watcher: asyncio.Future[Message] | None = None
        try:
            with translate_errors():
                async for chunk in response.content.iter_any():
                    if pending is not None:
                        if watcher is None and (body is None or body.finished):
                            watcher = asyncio.ensure_future(receive())
                        if watcher is not None and _disconnected(watcher):
                            # The client left: stop pulling from the upstream.
                            raise ClientDisconnected
                        await send(
                            {
                                "type": "http.response.body",
                                "body": pending,
                                "more_body": True,
                            }
                        )
                    pending = chunk
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        await send({"type": "http.response.body", "body": pending or b""})


def _disconnected(watcher: asyncio.Future[Message]) -> bool:
    return (
        watcher.done()
        and not watcher.cancelled()
        and watcher.result()["type"] == "http.disconnect"
    )
