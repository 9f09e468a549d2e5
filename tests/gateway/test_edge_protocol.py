"""The gateway listener's HTTP protocol over real sockets.

Forward-auth checks of cached keys are answered from the parser's callback
(early answers); everything else goes through ASGI. Both must give the same
bytes, keep a connection's answers in order, and leave the connection
usable. The idle timeout is armed once per idle stretch rather than once
per response, and must still close idle connections and only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.server import Context, Edge, build_gateway_app
from gateway.transport import EdgeProtocol
from tests.gateway.conftest import KeyMaker, serving

Answer = tuple[int, dict[str, str], bytes]


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in filter(None, lines):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
    return int(status_line.split()[1]), headers, body


def request(
    path: str, key: str | None = None, *, extra: str = "", version: str = "1.1"
) -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: gateway.test"]
    if key is not None:
        lines.append(f"X-API-Key: {key}")
    text = "\r\n".join(lines) + "\r\n" + extra + "\r\n"
    return text.encode()


class Spy:
    """Counts the early answers an ``Edge`` gives."""

    def __init__(self, edge: Edge) -> None:
        self.answered = 0
        self.offered = 0
        original = edge.answer_now

        def answer_now(*args: Any) -> bytes | None:
            self.offered += 1
            answer = original(*args)
            self.answered += answer is not None
            return answer

        edge.answer_now = answer_now  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def edge_connection(
    context: Context, **config: Any
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter, Spy]]:
    """The gateway app on ``EdgeProtocol`` on a free port, and one connection."""
    edge = build_gateway_app(context)
    spy = Spy(edge)
    options = {
        "http": EdgeProtocol,
        "proxy_headers": False,
        "server_header": False,
        "date_header": False,
        **config,
    }
    async with serving(edge, **options) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            yield reader, writer, spy
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def test_a_cached_key_is_answered_early_with_the_bytes_of_the_asgi_path(
    context: Context, make_key: KeyMaker
) -> None:
    record, key = await make_key("alice")
    async with edge_connection(context) as (reader, writer, spy):
        raw = []
        for _ in range(2):
            writer.write(request("/_gateway/auth", key, extra="X-Request-ID: r-1\r\n"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            raw.append(head)
    # The first check missed the cache and went through ASGI; the second
    # was answered early, with the very same bytes.
    assert spy.offered == 2 and spy.answered == 1
    assert raw[0] == raw[1]
    assert raw[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"x-rpa-user-id: alice\r\n" in raw[0]
    assert f"x-rpa-key-id: {record.id}\r\n".encode() in raw[0]
    assert b"x-request-id: r-1\r\n" in raw[0]
    assert context.verifier.hits == 1 and context.verifier.misses == 1


async def test_an_early_answer_is_logged_and_counted_like_any_other(
    context: Context, make_key: KeyMaker, caplog: pytest.LogCaptureFixture
) -> None:
    record, key = await make_key("alice")
    await context.verifier.verify(key)
    caplog.set_level(logging.INFO, logger="gateway.access")
    async with edge_connection(context) as (reader, writer, spy):
        writer.write(request("/_gateway/auth/rpa/x?y=1", key))
        status, headers, _ = await read_answer(reader)
    assert spy.answered == 1 and status == 200
    (line,) = [
        orjson.loads(r.getMessage())
        for r in caplog.records
        if r.name == "gateway.access"
    ]
    assert line["path"] == "/_gateway/auth/rpa/x"
    assert line["outcome"] == "auth-allowed" and line["status"] == 200
    assert line["user_id"] == "alice" and line["key_id"] == record.id
    assert line["request_id"] == headers["x-request-id"]
    assert line["client"] == "127.0.0.1"
    assert key not in caplog.text
    assert context.verifier.take_used().keys() == {record.id}


async def test_refusals_and_unknown_keys_take_the_asgi_path(
    context: Context, make_key: KeyMaker
) -> None:
    record, key = await make_key("alice")
    await context.verifier.verify(key)
    await context.store.revoke_key(record.id)
    await asyncio.sleep(0.05)  # the invalidation arrives
    async with edge_connection(context) as (reader, writer, spy):
        for sent in (key, None, "rpa_short"):
            writer.write(request("/_gateway/auth", sent))
            status, headers, body = await read_answer(reader)
            assert status == 401
            assert headers["www-authenticate"].startswith("Bearer")
            assert orjson.loads(body)["status"] == 401
    assert spy.offered == 3 and spy.answered == 0


async def test_pipelined_requests_are_answered_in_order(
    context: Context, make_key: KeyMaker
) -> None:
    _, key = await make_key("alice")
    await context.verifier.verify(key)
    async with edge_connection(context) as (reader, writer, spy):
        # A proxied request first: the checks behind it must wait for it.
        writer.write(
            request("/rpa/first", key)
            + request("/_gateway/auth", key, extra="X-Request-ID: a-2\r\n")
            + request("/rpa/third", key)
            + request("/_gateway/auth", key, extra="X-Request-ID: a-4\r\n")
        )
        answers = [await read_answer(reader) for _ in range(4)]
        # With nothing in flight, a check is answered early again.
        writer.write(request("/_gateway/auth", key))
        last = await read_answer(reader)
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    assert orjson.loads(answers[0][2])["path"] == "/rpa/first"
    assert answers[1][1]["x-request-id"] == "a-2"
    assert orjson.loads(answers[2][2])["path"] == "/rpa/third"
    assert answers[3][1]["x-request-id"] == "a-4"
    assert last[0] == 200 and spy.answered >= 1


async def test_a_check_with_a_body_takes_the_asgi_path(
    context: Context, make_key: KeyMaker
) -> None:
    """Content-Length: 0 is no body; any other announces one."""
    _, key = await make_key("alice")
    await context.verifier.verify(key)
    async with edge_connection(context) as (reader, writer, spy):
        writer.write(
            request("/_gateway/auth", key, extra="Content-Length: 5\r\n") + b"hello"
        )
        first = await read_answer(reader)
        assert spy.answered == 0
        writer.write(request("/_gateway/auth", key, extra="Content-Length: 0\r\n"))
        second = await read_answer(reader)
        assert spy.answered == 1
        writer.write(request("/rpa/after", key))
        third = await read_answer(reader)
    assert first[0] == second[0] == 200
    assert third[0] == 200 and orjson.loads(third[2])["path"] == "/rpa/after"


@pytest.mark.parametrize(
    ("extra", "body"),
    [
        ("Transfer-Encoding: gzip\r\n", b""),
        ("Transfer-Encoding: chunked\r\n", b"zz\r\n"),
    ],
    ids=["unknown-coding", "bad-chunk"],
)
async def test_a_badly_framed_check_gets_one_answer_the_parsers_400(
    context: Context, make_key: KeyMaker, extra: str, body: bytes
) -> None:
    """The parser finds these faults after the head: no 200 may precede its 400."""
    _, key = await make_key("alice")
    await context.verifier.verify(key)
    async with edge_connection(context) as (reader, writer, spy):
        writer.write(request("/_gateway/auth", key, extra=extra) + body)
        everything = await asyncio.wait_for(reader.read(), 5)
    assert spy.answered == 0
    assert everything.startswith(b"HTTP/1.1 400 ")
    assert everything.count(b"HTTP/1.1 ") == 1


async def test_a_request_pipelined_after_an_early_answer_is_not_timed_out(
    context: Context, make_key: KeyMaker, upstream: Any
) -> None:
    """The idle timer armed by the early answer must not close a busy connection."""
    _, key = await make_key("alice")
    await context.verifier.verify(key)
    async with edge_connection(context, timeout_keep_alive=0.3) as (
        reader,
        writer,
        spy,
    ):
        writer.write(request("/_gateway/auth", key) + request("/stall", key))
        first = await read_answer(reader)
        await asyncio.sleep(0.6)  # the stalled request outlives the timeout
        upstream.release.set()
        second = await read_answer(reader)
    assert spy.answered == 1
    assert first[0] == 200
    assert second[0] == 200 and orjson.loads(second[2])["path"] == "/stall"


@pytest.mark.parametrize(
    ("version", "extra"),
    [
        ("1.0", ""),
        ("1.1", "Connection: close\r\n"),
        ("1.1", "Expect: 100-continue\r\n"),
    ],
    ids=["http-1.0", "connection-close", "expect"],
)
async def test_requests_that_change_the_connection_take_the_asgi_path(
    context: Context, make_key: KeyMaker, version: str, extra: str
) -> None:
    _, key = await make_key("alice")
    await context.verifier.verify(key)
    async with edge_connection(context) as (reader, writer, spy):
        writer.write(request("/_gateway/auth", key, extra=extra, version=version))
        status, headers, _ = await read_answer(reader)
        if version == "1.0" or "close" in extra:
            assert headers["connection"] == "close"
            assert await asyncio.wait_for(reader.read(), 5) == b""
    assert status == 200 and headers["x-rpa-user-id"] == "alice"
    assert spy.offered == 0


async def test_escaped_paths_and_a_failing_early_answer_fall_back_to_asgi(
    context: Context, make_key: KeyMaker, caplog: pytest.LogCaptureFixture
) -> None:
    _, key = await make_key("alice")
    await context.verifier.verify(key)
    async with edge_connection(context) as (reader, writer, spy):
        writer.write(request("/_gateway/auth/%61", key))
        escaped = await read_answer(reader)

        def broken(identity: Any) -> str:
            raise RuntimeError("boom")

        context.verifier.cached = broken  # type: ignore[method-assign]
        writer.write(request("/_gateway/auth", key))
        after_failure = await read_answer(reader)
    assert escaped[0] == 200 and after_failure[0] == 200
    assert spy.answered == 0
    assert "Answering a request early failed." in caplog.text


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    context: Context, make_key: KeyMaker
) -> None:
    _, key = await make_key("alice")
    await context.verifier.verify(key)
    async with edge_connection(context, timeout_keep_alive=0.3) as (
        reader,
        writer,
        _spy,
    ):
        # Requests every 0.15 s for 0.9 s: never idle for 0.3 s.
        for _ in range(6):
            writer.write(request("/_gateway/auth", key))
            assert (await read_answer(reader))[0] == 200
            await asyncio.sleep(0.15)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        idle = time.monotonic() - started
    # It had been idle 0.15 s when the wait started.
    assert 0.05 <= idle <= 1.0


async def test_a_request_slower_than_the_keep_alive_timeout_is_not_cut(
    context: Context, make_key: KeyMaker, upstream: Any
) -> None:
    _, key = await make_key("alice")
    async with edge_connection(context, timeout_keep_alive=0.2) as (
        reader,
        writer,
        _spy,
    ):
        writer.write(request("/_gateway/auth", key))
        assert (await read_answer(reader))[0] == 200
        writer.write(request("/stall", key))
        await asyncio.sleep(0.6)  # three timeouts while the upstream stalls
        upstream.release.set()
        status, _, body = await read_answer(reader)
        assert status == 200 and orjson.loads(body)["path"] == "/stall"
        writer.write(request("/_gateway/auth", key))
        assert (await read_answer(reader))[0] == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""


@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS"])
async def test_a_target_that_is_no_path_is_refused_and_reaches_no_other_host(
    context: Context, make_key: KeyMaker, method: str
) -> None:
    """``*@host/...`` would read as the upstream URL's user info: 400, no request."""
    _, key = await make_key("alice")
    reached: list[bytes] = []

    async def other_host(reader: asyncio.StreamReader, writer: Any) -> None:
        reached.append(await reader.read(1000))
        writer.close()

    elsewhere = await asyncio.start_server(other_host, "127.0.0.1", 0)
    port = elsewhere.sockets[0].getsockname()[1]
    try:
        async with edge_connection(context) as (reader, writer, _):
            for target in (f"*@127.0.0.1:{port}/secret?q=1", "*"):
                raw = request(target, key).replace(b"GET ", f"{method} ".encode(), 1)
                writer.write(raw)
                status, headers, body = await read_answer(reader)
                assert status == 400
                assert headers["content-type"] == "application/problem+json"
                assert orjson.loads(body)["detail"] == (
                    "The request target must be a path starting with '/'."
                )
            # The connection is still good for a proper request.
            writer.write(request("/_gateway/health"))
            assert (await read_answer(reader))[0] == 200
    finally:
        elsewhere.close()
        await elsewhere.wait_closed()
    assert reached == []


async def test_a_target_with_a_fragment_is_not_answered_early(
    context: Context, make_key: KeyMaker
) -> None:
    """The ASGI path drops the fragment, and the query after it with it."""
    allowing = context.settings.model_copy(update={"allow_query_key": True})
    ctx = Context.create(allowing, context.store)
    _, key = await make_key("alice")
    await ctx.verifier.verify(key)
    try:
        async with edge_connection(ctx) as (reader, writer, spy):
            writer.write(request(f"/_gateway/auth/x#f?api_key={key}"))
            status, _, body = await read_answer(reader)
            writer.write(request(f"/_gateway/auth/x?api_key={key}"))
            allowed = await read_answer(reader)
    finally:
        await ctx.aclose()
    assert spy.answered == 1  # the second one only
    assert status == 401
    assert orjson.loads(body)["detail"] == "An API key is required."
    assert allowed[0] == 200


@pytest.mark.parametrize(
    "extra",
    [
        "X-Big: " + "a" * 70_000 + "\r\n",
        "".join(f"X-{i}: v\r\n" for i in range(7_000)),
    ],
    ids=["one-long-header", "many-headers"],
)
async def test_a_head_beyond_64_kib_gets_431_and_the_connection_closes(
    context: Context, make_key: KeyMaker, extra: str
) -> None:
    _, key = await make_key("alice")
    async with edge_connection(context) as (reader, writer, _):
        writer.write(request("/rpa/x", key, extra=extra))
        everything = await asyncio.wait_for(reader.read(), 5)
    assert everything.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert everything.count(b"HTTP/1.1 ") == 1


async def test_a_head_just_under_the_limit_is_served(
    context: Context, make_key: KeyMaker
) -> None:
    _, key = await make_key("alice")
    async with edge_connection(context) as (reader, writer, _):
        writer.write(request("/rpa/x", key, extra="X-Big: " + "a" * 60_000 + "\r\n"))
        status, _, body = await read_answer(reader)
    assert status == 200 and orjson.loads(body)["path"] == "/rpa/x"
