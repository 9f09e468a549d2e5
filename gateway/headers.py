"""Header rewriting at the edge: hop-by-hop, spoofing, forwarding, request id.

Header names arrive from the ASGI server lower-cased; they are lower-cased
again here anyway, because a missed spoofed identity header is a security
hole and ``bytes.lower`` costs tens of nanoseconds. Every set is built once,
as bytes, when the rewriter is made.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import secrets
from collections.abc import Iterable, Sequence

from gateway.settings import Settings

RawHeaders = Sequence[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1 names these; Proxy-Connection is its common
# pre-standard alias, and the proxy authentication pair only ever concerns
# the next hop (RFC 9110 sections 11.7.1 and 11.7.2).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
FORWARDED = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)
REQUEST_ID = b"x-request-id"
CORRELATION_ID = b"x-correlation-id"
_REQUEST_ID_PATTERN = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")

# The request's own headers that the proxy replaces: Host comes from the
# upstream URL (the original goes in X-Forwarded-Host); Expect was already
# answered by the ASGI server when the body was read.
_REPLACED = frozenset({b"host", b"expect", REQUEST_ID})


class _RequestIds:
    """Ids unique across processes and restarts, without a syscall each.

    A random 64-bit prefix per process plus a counter: ``secrets.token_hex``
    per request meant one getrandom() call each, which showed in profiles.
    The prefix is renewed in a forked child so that workers never share it.
    """

    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


new_request_id = _RequestIds()


def valid_request_id(value: bytes) -> bool:
    return _REQUEST_ID_PATTERN.match(value) is not None


REQUEST_ID_NAMES = frozenset({REQUEST_ID, CORRELATION_ID})


def first_values(
    headers: Iterable[tuple[bytes, bytes]], names: frozenset[bytes]
) -> dict[bytes, bytes]:
    """The first value of each header in ``names``, in one pass.

    ASGI servers give header names in lower case (the ASGI spec requires
    it), and a missed match here only means a header treated as absent.
    One pass serves the request id and the credential together: each scan
    of the headers cost about half a microsecond per request.
    """
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in names and name not in found:
            found[name] = value
    return found


def request_id_in(found: dict[bytes, bytes]) -> str:
    """A well-formed X-Request-ID, else X-Correlation-ID, else a new id.

    ``found`` comes from ``first_values``: only the first of each counts.
    """
    for name in (REQUEST_ID, CORRELATION_ID):
        value = found.get(name)
        if value is not None and valid_request_id(value):
            return value.decode("ascii")
    return new_request_id()


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request id for these headers (see ``request_id_in``)."""
    return request_id_in(first_values(headers, REQUEST_ID_NAMES))


def connection_tokens(value: bytes) -> set[bytes]:
    """The header names listed in a Connection header (RFC 9110 7.6.1)."""
    return {token.strip().lower() for token in value.split(b",") if token.strip()}


def strip_response_headers(
    raw: Iterable[tuple[bytes, bytes]], request_id: bytes
) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus hop-by-hop, plus our request id."""
    kept = []
    listed: set[bytes] = set()
    for name, value in raw:
        name = name.lower()
        if name in HOP_BY_HOP:
            if name == b"connection":  # every Connection header counts
                listed |= connection_tokens(value)
        elif name != REQUEST_ID:
            kept.append((name, value))
    if listed:
        kept = [pair for pair in kept if pair[0] not in listed]
    kept.append((REQUEST_ID, request_id))
    return kept


class TrustedProxies:
    """Whether a peer address may speak for the client (X-Forwarded-*)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self._known: dict[str, bool] = {}

    def __contains__(self, host: str) -> bool:
        if not self.networks:
            return False
        trusted = self._known.get(host)
        if trusted is None:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                trusted = False
            else:
                trusted = any(address in network for network in self.networks)
            # Bounded: a client population larger than this only costs a
            # recomputation, never memory.
            if len(self._known) < 10_000:
                self._known[host] = trusted
        return trusted


def spoofable_names(settings: Settings) -> frozenset[bytes]:
    """Identity header names a client must never get past the gateway."""
    return frozenset(
        name.lower().replace("_", "-").encode("latin-1")
        for name in (
            settings.user_id_header,
            settings.key_id_header,
            settings.assertion_header,
        )
    )


class RequestRewriter:
    """Turns a client's headers into the headers sent upstream."""

    def __init__(self, settings: Settings, credential_headers: Iterable[bytes]):
        self.spoofable = spoofable_names(settings)
        self.drop = HOP_BY_HOP | _REPLACED | frozenset(credential_headers)
        self.trusted = TrustedProxies(settings.trusted_proxies)
        self.user_id_header = settings.user_id_header
        self.key_id_header = settings.key_id_header
        self.assertion_header = settings.assertion_header

    def upstream_headers(
        self,
        raw: RawHeaders,
        scope_scheme: str,
        client_host: str | None,
        request_id: str,
        user_id: str,
        key_id: str,
        assertion: str | None = None,
    ) -> list[tuple[str, str]]:
        """Headers for the upstream request, as ``str`` pairs for aiohttp."""
        drop = self.drop
        spoofable = self.spoofable
        from_proxy = client_host is not None and client_host in self.trusted
        forwarded_for = forwarded_proto = forwarded_host = None
        host = b""
        out: list[tuple[str, str]] = []
        for name, value in raw:
            name = name.lower()
            if name in drop:
                if name == b"host":
                    host = value
                elif name == b"connection":
                    drop = drop | connection_tokens(value)
                continue
            # No name with an underscore at all: servers that read headers
            # as CGI variables take X_API_Key for X-API-Key, X_Forwarded_For
            # for X-Forwarded-For, and so on (nginx drops them by default).
            if name in spoofable or b"_" in name:
                continue
            if name in FORWARDED:
                if not from_proxy:
                    continue
                if name == b"x-forwarded-for":
                    forwarded_for = value
                    continue
                if name == b"x-forwarded-proto":
                    forwarded_proto = value
                elif name == b"x-forwarded-host":
                    forwarded_host = value
            out.append((name.decode("latin-1"), value.decode("latin-1")))
        # Names listed in Connection may come before the Connection header
        # itself; a second pass only happens when Connection lists any.
        if drop is not self.drop:
            out = [pair for pair in out if pair[0].encode("latin-1") not in drop]
        client = client_host or ""
        if forwarded_for:
            client = f"{forwarded_for.decode('latin-1')}, {client}"
        out.append(("x-forwarded-for", client))
        if forwarded_proto is None:
            out.append(("x-forwarded-proto", scope_scheme))
        if forwarded_host is None and host:
            out.append(("x-forwarded-host", host.decode("latin-1")))
        out.append(("x-request-id", request_id))
        out.append((self.user_id_header, user_id))
        out.append((self.key_id_header, key_id))
        if assertion is not None:
            out.append((self.assertion_header, assertion))
        return out
