"""Coalesced writes: one system call per loop turn, nothing lost or late."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.transport import CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8080) if name == "sockname" else default


def wrap() -> tuple[CoalescingTransport, RecordingTransport]:
    inner = RecordingTransport()
    return CoalescingTransport(inner, asyncio.get_running_loop()), inner  # type: ignore[arg-type]


async def test_writes_of_one_loop_turn_reach_the_socket_as_one_write() -> None:
    transport, inner = wrap()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"")
    transport.write(memoryview(b"ok"))
    assert inner.writes == []
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]


async def test_a_later_turn_starts_a_new_write() -> None:
    transport, inner = wrap()
    transport.write(b"head")
    await asyncio.sleep(0)
    transport.writelines([b"body-1", b"body-2"])
    await asyncio.sleep(0)
    assert inner.writes == [b"head", b"body-1body-2"]


async def test_close_flushes_what_is_pending_first() -> None:
    transport, inner = wrap()
    transport.write(b"last bytes")
    transport.close()
    assert inner.writes == [b"last bytes"]
    assert inner.closed
    await asyncio.sleep(0)
    assert inner.writes == [b"last bytes"]


async def test_abort_drops_pending_bytes_and_nothing_is_written_after_it() -> None:
    transport, inner = wrap()
    transport.write(b"never sent")
    transport.abort()
    await asyncio.sleep(0)
    assert inner.writes == []
    assert inner.aborted


async def test_other_transport_methods_pass_through() -> None:
    transport, _ = wrap()
    assert transport.get_extra_info("sockname") == ("127.0.0.1", 8080)
    assert transport.is_closing() is False
