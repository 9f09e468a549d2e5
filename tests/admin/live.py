"""ASGI apps on real sockets, each in a thread with its own event loop.

For clients that cannot run in the test's loop: schemathesis (requests) and
the browser. ``build`` runs inside the server's loop, so everything it makes
(Redis clients included) belongs to that loop; ``run`` executes a coroutine
there and waits for its result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import uvicorn

from gateway.transport import EdgeProtocol
from tests.conftest import free_port

T = TypeVar("T")


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self.ready = ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    def install_signal_handlers(self) -> None:
        """The test runner owns the signals."""


Build = Callable[[list[int]], Awaitable[list[Any]]]


class LiveApps:
    """``count`` apps from one ``build(ports)``, served from one loop."""

    def __init__(self, build: Build, count: int = 1) -> None:
        self.build = build
        self.ports = [free_port() for _ in range(count)]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.url = self.urls[0]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cleanups: list[Callable[[], Awaitable[Any]]] = []
        self._ready = [threading.Event() for _ in self.ports]
        self._servers: list[_Server] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> LiveApps:
        self._thread.start()
        for ready in self._ready:
            if not ready.wait(timeout=20) or self._error is not None:
                raise RuntimeError(f"The servers on {self.urls} did not start.") from (
                    self._error
                )
        return self

    def __exit__(self, *exc_info: object) -> None:
        for server in self._servers:
            server.should_exit = True
        self._thread.join(timeout=30)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by __enter__
            self._error = exc
            for ready in self._ready:
                ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        apps = await self.build(self.ports)
        for app, port, ready in zip(apps, self.ports, self._ready, strict=True):
            config = uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_config=None,
                log_level="warning",
                lifespan="off",
                access_log=False,
                http=EdgeProtocol,  # the protocol both listeners of serve use
            )
            self._servers.append(_Server(config, ready))
        try:
            await asyncio.gather(*(server.serve() for server in self._servers))
        finally:
            for cleanup in self.cleanups:
                await cleanup()


def single(build: Callable[[], Awaitable[Any]]) -> LiveApps:
    """One app that does not need to know its port."""

    async def build_one(ports: list[int]) -> list[Any]:
        return [await build()]

    return LiveApps(build_one)
