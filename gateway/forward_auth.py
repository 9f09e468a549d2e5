"""The forward-auth endpoint for nginx, Traefik and Envoy.

nginx ``auth_request`` and Traefik ``forwardAuth`` send the original
request's headers to a fixed URL; Envoy's ``ext_authz`` HTTP service appends
the original path to its prefix and keeps the method, so every method and
every path under ``/_gateway/auth`` lands here. A 2xx answer carries the
identity headers for the proxy to copy onto the upstream request; anything
else is sent back to the client as it is.
"""

from __future__ import annotations

import re
from time import perf_counter
from urllib.parse import urlsplit

from gateway.assertion import Asserter
from gateway.cache import Identity
from gateway.headers import (
    REQUEST_ID_NAMES,
    RawHeaders,
    first_values,
    request_id_in,
)
from gateway.observability import Metrics, log_access
from gateway.problems import AuthError, StoreUnavailable
from gateway.proxy import Receive, Scope, Send, client_host, send_problem
from gateway.settings import Settings
from gateway.verifier import Verifier

# Where the proxies put the original URI: Traefik and Envoy conventions, and
# the header the shipped nginx snippet sets.
_ORIGINAL_URI = frozenset({b"x-forwarded-uri", b"x-original-uri"})
_EMPTY_BODY = {"type": "http.response.body", "body": b""}
_OK = b"HTTP/1.1 200 OK\r\n"
# What HTTP/1.1 forbids in a field value (RFC 9110 section 5.5), as uvicorn
# checks it for the answers that go through ASGI.
_UNFIT_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class ForwardAuth:
    """Answers whether the credentials in the headers are good."""

    def __init__(
        self,
        settings: Settings,
        verifier: Verifier,
        metrics: Metrics,
        asserter: Asserter | None = None,
    ):
        self.verifier = verifier
        self.metrics = metrics
        self.asserter = asserter
        self.assertion_header = settings.assertion_header.lower().encode()
        self.realm = settings.realm
        self.user_id_header = settings.user_id_header.lower().encode()
        self.key_id_header = settings.key_id_header.lower().encode()
        self.query_keys = settings.allow_query_key
        # The headers read, gathered in one pass over the request's.
        wanted = verifier.credential_headers() | REQUEST_ID_NAMES
        self._wanted = wanted | _ORIGINAL_URI if self.query_keys else wanted

    def _key(self, found: dict[bytes, bytes], own_query: bytes) -> str | None:
        """The key from the headers or, when that is allowed, the original query."""
        query = b""
        if self.query_keys:
            query = own_query
            for name, value in found.items():
                if name in _ORIGINAL_URI:
                    try:
                        text: str = urlsplit(value.decode("latin-1")).query
                    except ValueError:  # "//[::1/" and the like: no query
                        text = ""
                    query = text.encode("latin-1")
                    break
        return self.verifier.key_in(found, query)

    def answer_now(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: RawHeaders,
        client: str | None,
    ) -> bytes | None:
        """The whole HTTP/1.1 answer when the cache alone grants the key.

        Most checks are for a key verified moments ago. Answering those
        from the HTTP protocol's callback, with no ASGI task, request cycle
        or per-message dictionaries, is what brings forward-auth near the
        cost of an endpoint that allows everything. Anything else (a miss,
        a refusal, a stale entry) returns ``None`` and takes the ASGI path,
        which gives the same answer a few microseconds later.
        """
        started = perf_counter()
        found = first_values(headers, self._wanted)
        identity = self.verifier.cached(self._key(found, query))
        if identity is None:
            return None
        user_id, key_id = identity.user_id, identity.key_id
        user_value, key_value = user_id.encode(), key_id.encode()
        if _UNFIT_VALUE.search(user_value) or _UNFIT_VALUE.search(key_value):
            return None  # the ASGI path refuses it with a logged error
        request_id = request_id_in(found)
        answer = b"".join(
            (
                _OK,
                self.user_id_header,
                b": ",
                user_value,
                b"\r\n",
                self.key_id_header,
                b": ",
                key_value,
                b"\r\n",
                self._assertion_line(identity),
                b"x-request-id: ",
                request_id.encode(),
                b"\r\ncontent-length: 0\r\n\r\n",
            )
        )
        self._record(
            started,
            request_id,
            method,
            path,
            200,
            "auth-allowed",
            user_id,
            key_id,
            client,
        )
        return answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        found = first_values(scope["headers"], self._wanted)
        request_id = request_id_in(found)
        user_id = key_id = None
        try:
            key = self._key(found, scope["query_string"])
            identity = await self.verifier.verify(key)
        except (AuthError, StoreUnavailable) as exc:
            status, outcome = exc.status, "auth-" + exc.slug
            await send_problem(send, exc, request_id, self.realm)
        else:
            status, outcome = 200, "auth-allowed"
            user_id, key_id = identity.user_id, identity.key_id
            # The answer goes to the proxy that asked, never to a cache:
            # identity (signed too, when assertions are on), request id and
            # length are all it carries.
            headers = [
                (self.user_id_header, user_id.encode()),
                (self.key_id_header, key_id.encode()),
                (b"x-request-id", request_id.encode()),
                (b"content-length", b"0"),
            ]
            if self.asserter is not None:
                # Where the early answer has it: the bytes must not differ.
                assertion = self.asserter.assertion(identity).encode()
                headers.insert(2, (self.assertion_header, assertion))
            await send(
                {"type": "http.response.start", "status": 200, "headers": headers}
            )
            await send(_EMPTY_BODY)
        self._record(
            started,
            request_id,
            scope["method"],
            scope["path"],
            status,
            outcome,
            user_id,
            key_id,
            client_host(scope),
        )

    def _assertion_line(self, identity: Identity) -> bytes:
        """The assertion header's line of an early answer, if assertions are on."""
        if self.asserter is None:
            return b""
        assertion = self.asserter.assertion(identity).encode()
        return b"%s: %s\r\n" % (self.assertion_header, assertion)

    def _record(
        self,
        started: float,
        request_id: str,
        method: str,
        path: str,
        status: int,
        outcome: str,
        user_id: str | None,
        key_id: str | None,
        client: str | None,
    ) -> None:
        """Metrics and the access line of one answer."""
        duration = perf_counter() - started
        self.metrics.auth_seconds.observe(duration)
        self.metrics.outcome(outcome)
        log_access(
            request_id,
            method,
            path,
            status,
            duration,
            None,
            outcome,
            user_id,
            key_id,
            client,
        )
