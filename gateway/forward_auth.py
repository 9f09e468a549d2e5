"""The forward-auth endpoint for nginx, Traefik and Envoy.

nginx ``auth_request`` and Traefik ``forwardAuth`` send the original
request's headers to a fixed URL; Envoy's ``ext_authz`` HTTP service appends
the original path to its prefix and keeps the method, so every method and
every path under ``/_gateway/auth`` lands here. A 2xx answer carries the
identity headers for the proxy to copy onto the upstream request; anything
else is sent back to the client as it is.
"""

from __future__ import annotations

from time import perf_counter
from urllib.parse import urlsplit

from gateway.headers import request_id_from
from gateway.observability import Metrics, log_access
from gateway.problems import AuthError, StoreUnavailable
from gateway.proxy import Receive, Scope, Send, client_host, send_problem
from gateway.settings import Settings
from gateway.verifier import Verifier

# Where the proxies put the original URI: Traefik and Envoy conventions, and
# the header the shipped nginx snippet sets.
_ORIGINAL_URI = (b"x-forwarded-uri", b"x-original-uri")
_EMPTY_BODY = {"type": "http.response.body", "body": b""}


class ForwardAuth:
    """Answers whether the credentials in the headers are good."""

    def __init__(self, settings: Settings, verifier: Verifier, metrics: Metrics):
        self.verifier = verifier
        self.metrics = metrics
        self.realm = settings.realm
        self.user_id_header = settings.user_id_header.lower().encode()
        self.key_id_header = settings.key_id_header.lower().encode()
        self.query_keys = settings.allow_query_key

    def _query(self, scope: Scope) -> bytes:
        """The original query, where a key may be when that is allowed."""
        for name, value in scope["headers"]:
            if name in _ORIGINAL_URI:
                query: str = urlsplit(value.decode("latin-1")).query
                return query.encode("latin-1")
        own: bytes = scope["query_string"]
        return own

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        headers = scope["headers"]
        request_id = request_id_from(headers)
        user_id = key_id = None
        verifier = self.verifier
        try:
            query = self._query(scope) if self.query_keys else b""
            identity = await verifier.verify(verifier.extract(headers, query))
        except (AuthError, StoreUnavailable) as exc:
            status, outcome = exc.status, "auth-" + exc.slug
            await send_problem(send, exc, request_id, self.realm)
        else:
            status, outcome = 200, "auth-allowed"
            user_id, key_id = identity.user_id, identity.key_id
            # The answer goes to the proxy that asked, never to a cache:
            # identity, request id and length are all it carries.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (self.user_id_header, user_id.encode()),
                        (self.key_id_header, key_id.encode()),
                        (b"x-request-id", request_id.encode()),
                        (b"content-length", b"0"),
                    ],
                }
            )
            await send(_EMPTY_BODY)
        finally:
            self.metrics.auth_seconds.observe(perf_counter() - started)
        self.metrics.outcome(outcome)
        log_access(
            request_id,
            scope["method"],
            scope["path"],
            status,
            perf_counter() - started,
            None,
            outcome,
            user_id,
            key_id,
            client_host(scope),
        )
