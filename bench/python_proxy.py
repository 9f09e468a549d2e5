"""The plain Python reference proxy: aiohttp.web, one pooled client session.

No authentication and no identity headers: this is the fastest plain Python
proxy we know how to write on one process (see "The upstream client" in the
design), and the floor the gateway has to match. It still does what any
honest proxy must: drop hop-by-hop headers both ways, keep the upstream
connections alive, and stream bodies whose size is unknown or large.

    python -m bench.python_proxy --port 8000 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 section 7.6.1, plus the names a proxy must not pass on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
BUFFER_LIMIT = 64 * 1024
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def _forwardable(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The headers minus hop-by-hop ones, including those named in Connection."""
    listed = {
        token.strip().lower()
        for value in headers.getall("connection", ())
        for token in value.split(",")
    }
    result: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower not in HOP_BY_HOP and lower not in listed:
            result.add(name, value)
    return result


async def forward(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    headers = _forwardable(request.headers)
    headers.popall("host", None)
    body = request.content if request.body_exists else None
    async with session.request(
        request.method,
        request.app[UPSTREAM] + request.raw_path,
        headers=headers,
        data=body,
        allow_redirects=False,
        auto_decompress=False,
    ) as upstream:
        out = _forwardable(upstream.headers)
        length = upstream.content_length
        if length is not None and length <= BUFFER_LIMIT:
            out.popall("content-length", None)
            payload = await upstream.read()
            return web.Response(status=upstream.status, headers=out, body=payload)
        response = web.StreamResponse(status=upstream.status, headers=out)
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(BUFFER_LIMIT):
            await response.write(chunk)
        await response.write_eof()
        return response


async def _session(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=75)
    app[SESSION] = aiohttp.ClientSession(
        connector=connector,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        # A proxy must not keep the cookies of the responses it passes on.
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
    )
    yield
    await app[SESSION].close()


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    web.run_app(
        make_app(args.upstream),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=4096,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
