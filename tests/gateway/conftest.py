"""Fixtures for the edge: a recording upstream, a gateway context, clients.

The upstream always listens on a real socket (the gateway's aiohttp client
needs one); the gateway itself is driven in-process through
``httpx.ASGITransport`` unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import uvicorn
from redis.exceptions import NoScriptError

from gateway.server import Context, _Server, build_gateway_app
from gateway.settings import Settings
from gateway.store import PRIVILEGES, KeyStore
from tests.conftest import (
    PEPPER,
    REAL_REDIS_URL,
    RedisProcess,
    free_port,
    record_process_output,
)

GATEWAY = "http://gateway.test"


@dataclass
class Seen:
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for key, value in self.headers:
            if key == wanted:
                return value.decode("latin-1")
        return None

    def names(self) -> set[str]:
        return {key.decode() for key, _ in self.headers}


@dataclass
class Upstream:
    """A small upstream that records what reaches it.

    ``/status/<n>`` answers with that status, ``/redirect`` with a 302,
    ``/chunked`` without a length, ``/hop`` with hop-by-hop headers,
    ``/stall`` never answers, anything else echoes the request as JSON.
    """

    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last(self) -> Seen:
        return self.seen[-1]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append(
            Seen(
                scope["method"],
                scope["raw_path"].decode(),
                scope["query_string"],
                list(scope["headers"]),
                body,
            )
        )
        path = scope["path"]
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            headers = [(b"etag", b'"v1"')]
            if status not in (204, 304):
                headers.append((b"content-length", b"0"))
            await send(
                {"type": "http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/redirect":
            await send(
                {
                    "type": "http.response.start",
                    "status": 302,
                    "headers": [
                        (b"location", b"/elsewhere?x=1"),
                        (b"content-length", b"0"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/chunked":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"one,", b"two,", b"three"):
                await send(
                    {"type": "http.response.body", "body": part, "more_body": True}
                )
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/stall":
            await self.release.wait()
        payload = orjson.dumps(
            {
                "method": scope["method"],
                "path": scope["raw_path"].decode(),
                "query": scope["query_string"].decode(),
                "body_length": len(body),
            }
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        if path == "/hop":
            headers += [
                (b"connection", b"x-upstream-private"),
                (b"x-upstream-private", b"secret"),
                (b"keep-alive", b"timeout=5"),
                (b"x-request-id", b"upstream-made-this"),
                (b"x-upstream-public", b"fine"),
            ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextlib.asynccontextmanager
async def serving(app: Any, **config: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free port in this loop; its URL."""
    # uvicorn's access line has the query string, where a test may put a
    # key; pytest attaches its handler to non-propagating loggers too.
    logging.getLogger("uvicorn.access").disabled = True
    sock = listening_socket()
    server = _Server(
        uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
            **config,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    recorder = Upstream()
    async with serving(recorder) as url:
        recorder.url = url
        yield recorder
    recorder.release.set()


@pytest.fixture
def gateway_settings(settings: Settings, upstream: Upstream) -> Settings:
    return settings.model_copy(update={"upstream_url": upstream.url})


@pytest.fixture
async def context(
    gateway_settings: Settings, store: KeyStore
) -> AsyncIterator[Context]:
    ctx = Context.create(gateway_settings, store)
    await ctx.start()
    await asyncio.wait_for(ctx.subscriber.subscribed.wait(), 5)
    yield ctx
    await ctx.aclose()


@pytest.fixture
async def client(context: Context) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_gateway_app(context))
    async with httpx.AsyncClient(transport=transport, base_url=GATEWAY) as http:
        yield http


KeyMaker = Callable[..., Any]


@pytest.fixture
def make_key(store: KeyStore) -> KeyMaker:
    """Create (user, key) pairs: ``await make_key("alice")`` -> (record, key)."""

    async def make(
        user_id: str = "alice", *, expires_in: float = 86400.0
    ) -> tuple[Any, str]:
        if await store.get_user(user_id) is None:
            await store.add_user(user_id, privileges=PRIVILEGES)
        return await store.create_key(
            user_id, name="test", expires_at=float(time.time() + expires_in)
        )

    return make


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def until_refused(
    client: httpx.AsyncClient, key: str, path: str = "/x"
) -> httpx.Response:
    """Ask ``path`` with the key until it answers 401, for up to 5 seconds.

    A revocation reaches the cache through the invalidation subscriber,
    a task of its own: the pause between attempts lets it run.
    """
    async with asyncio.timeout(5):
        while (
            response := await client.get(path, headers=bearer(key))
        ).status_code != 401:
            await asyncio.sleep(0.005)
    return response


class PrivateRedis:
    """A redis-server of the test's own, to stop and start at will."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.server: RedisProcess | None = None

    async def start(self) -> None:
        self.server = await RedisProcess.start(
            "private-redis",
            self.directory,
            "--port",
            str(self.port),
            "--dbfilename",
            "dump.rdb",
        )

    async def stop(self, *, save: bool = False) -> None:
        """Kill the server; with ``save`` it writes its data first."""
        if self.server is None:
            return
        if save:
            client = aioredis.Redis.from_url(self.url)
            await client.save()
            await client.aclose()
        await self.server.stop(kill=True)
        self.server = None


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    await server.start()
    yield server
    await server.stop()


class CommandCounter:
    """Counts the commands a Redis client sends and, apart, its pipelines.

    Loading the lookup script into Redis's script cache (a NOSCRIPT answer,
    then SCRIPT LOAD) happens once per server, not per lookup, so it is not
    counted.
    """

    def __init__(self, redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.pipelines = 0
        make_pipeline = redis.pipeline

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = make_pipeline(*args, **kwargs)
            execute = pipe.execute

            async def counting_execute(*args: Any, **kwargs: Any) -> Any:
                try:
                    result = await execute(*args, **kwargs)
                except NoScriptError:
                    raise
                except BaseException:
                    self.pipelines += 1
                    raise
                self.pipelines += 1
                return result

            pipe.execute = counting_execute
            return pipe

        monkeypatch.setattr(redis, "pipeline", pipeline)
        original = redis.execute_command

        async def counting(*args: Any, **kwargs: Any) -> Any:
            if args and str(args[0]).upper().startswith("SCRIPT"):
                return await original(*args, **kwargs)
            try:
                result = await original(*args, **kwargs)
            except NoScriptError:
                raise
            except BaseException:
                self.count += 1
                raise
            self.count += 1
            return result

        monkeypatch.setattr(redis, "execute_command", counting)


class GatewayProcess:
    """``rpa-gateway`` as a subprocess, its output collected line by line.

    Logs are fed to the session-wide secret check when the process stops;
    ``checked_streams`` says which streams hold logs (the demo prints its
    key on stdout on purpose).
    """

    def __init__(
        self,
        env: dict[str, str],
        *args: str,
        checked_streams: tuple[str, ...] = ("stdout", "stderr"),
    ) -> None:
        self.env = env
        self.args = args or ("serve",)
        self.checked_streams = checked_streams
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.process: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("RPA_GATEWAY_")}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            *self.args,
            env={**base, "PYTHONUNBUFFERED": "1", **self.env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(self.process.stdout, "stdout")),
            asyncio.create_task(self._read(self.process.stderr, "stderr")),
        ]

    async def _read(self, stream: asyncio.StreamReader, name: str) -> None:
        while line := await stream.readline():
            self.lines[name].append(line.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self._changed.set()

    def count(self, text: str, stream: str = "stderr") -> int:
        return sum(text in line for line in self.lines[stream])

    async def wait_for(
        self, text: str, count: int = 1, stream: str = "stderr", timeout: float = 20
    ) -> None:
        """Wait until ``text`` has appeared ``count`` times on ``stream``."""
        async with asyncio.timeout(timeout):
            while self.count(text, stream) < count:
                assert self.process is not None
                if self.process.returncode is not None:
                    raise AssertionError(
                        f"The gateway exited with {self.process.returncode}:\n"
                        + "\n".join(self.lines["stderr"][-20:])
                    )
                self._changed.clear()
                await self._changed.wait()

    async def stop(self, sig: int | None = signal.SIGTERM) -> int:
        """Signal the process (unless ``sig`` is None) and wait for its end."""
        assert self.process is not None
        if self.process.returncode is None and sig is not None:
            self.process.send_signal(sig)
        try:
            async with asyncio.timeout(40):
                status = await self.process.wait()
                await asyncio.gather(*self._readers)
        except TimeoutError:
            self.process.kill()
            status = await self.process.wait()
        for name in self.checked_streams:
            record_process_output(f"subprocess {name}", "\n".join(self.lines[name]))
        return status


def gateway_env(
    namespace: str, upstream_url: str, **extra: str
) -> tuple[dict[str, str], str, str]:
    """Environment for a serving subprocess on real Redis; its two URLs."""
    listen = f"127.0.0.1:{free_port()}"
    admin = f"127.0.0.1:{free_port()}"
    env = {
        "RPA_GATEWAY_KEY_PEPPER": PEPPER,
        "RPA_GATEWAY_NAMESPACE": namespace,
        "RPA_GATEWAY_REDIS_URL": REAL_REDIS_URL,
        "RPA_GATEWAY_UPSTREAM_URL": upstream_url,
        "RPA_GATEWAY_LISTEN": listen,
        "RPA_GATEWAY_ADMIN_LISTEN": admin,
        **{f"RPA_GATEWAY_{k.upper()}": v for k, v in extra.items()},
    }
    return env, f"http://{listen}", f"http://{admin}"


SUBSCRIBED = "Subscribed to key invalidations."


@pytest.fixture
async def serving_gateway(
    real_redis: Any, namespace: str, upstream: Upstream
) -> AsyncIterator[tuple[GatewayProcess, str, str]]:
    """One ``rpa-gateway serve`` on real Redis, ready; (process, url, admin)."""
    env, url, admin = gateway_env(namespace, upstream.url)
    process = GatewayProcess(env)
    await process.start()
    try:
        await process.wait_for(SUBSCRIBED)
        yield process, url, admin
    finally:
        await process.stop()


@pytest.fixture
def real_store(real_redis: Any, namespace: str) -> KeyStore:
    return KeyStore(real_redis, namespace, PEPPER.encode())
