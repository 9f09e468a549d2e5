"""Fixtures shared by every tier.

Store tests run twice: on fakeredis (fast) and on the real Redis at
127.0.0.1:6379, each test in a namespace of its own. Outside CI a missing
component skips its tier; with CI=true it fails, so CI cannot go green on a
tier that did not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis

from gateway.settings import Settings
from gateway.store import KeyStore

REAL_REDIS_URL = os.environ.get(
    "RPA_GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"
)
PEPPER = "test-pepper-" + "p" * 40
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str) -> None:
    """Skip when a component is missing; fail instead in CI."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but is not available.")
    pytest.skip(f"{what} is not available.")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"The '{name}' binary")
    assert path is not None
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A redis-server (or sentinel) a test started, its output kept.

    ``start`` waits for the log line that says the server is up; after
    that its output is read on in the background (a full pipe would block
    the server's logging) and goes to the session-wide secret check.
    """

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self._drained: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        name: str,
        workdir: Path,
        *args: str,
        ready: bytes = b"Ready to accept connections",
    ) -> RedisProcess:
        """Start ``redis-server ARGS`` on 127.0.0.1, saving nothing on its own."""
        process = await asyncio.create_subprocess_exec(
            require_binary("redis-server"),
            *args,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        started = cls(name, process)
        try:
            await started._wait_for(ready)
        except BaseException:
            await started.stop()
            raise
        return started

    async def _wait_for(self, ready: bytes) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        seen: list[bytes] = []
        async with asyncio.timeout(10):
            while ready not in (line := await stdout.readline()):
                assert line, f"{self.name} exited during start-up: {b''.join(seen)!r}"
                seen.append(line)
        self._drained = asyncio.get_running_loop().create_task(self._drain(seen))

    async def _drain(self, seen: list[bytes]) -> None:
        assert self.process.stdout is not None
        lines = [line async for line in self.process.stdout]
        text = b"".join(seen + lines).decode(errors="replace")
        record_process_output(self.name, text)

    async def stop(self, *, kill: bool = False) -> None:
        """Terminate the server (``kill``: with SIGKILL) and wait for it."""
        with contextlib.suppress(ProcessLookupError):
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
        await self.process.wait()
        if self._drained is not None:
            await self._drained


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No RPA_GATEWAY_* variable and no .env leaks into a test."""
    for name in list(os.environ):
        if name.startswith("RPA_GATEWAY_") and name != "RPA_GATEWAY_TEST_REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def namespace() -> str:
    return "t" + secrets.token_hex(6)


@pytest.fixture
def settings(namespace: str) -> Settings:
    return Settings(
        key_pepper=PEPPER,
        namespace=namespace,
        redis_url=REAL_REDIS_URL,
        upstream_url="http://127.0.0.1:9",
    )


async def _real_redis_or_skip() -> Any:
    client = aioredis.Redis.from_url(REAL_REDIS_URL, decode_responses=True)
    try:
        await client.ping()
    except Exception:
        await client.aclose()
        require(False, f"A Redis server at {REAL_REDIS_URL}")
    return client


async def drop_namespace(client: Any, namespace: str) -> None:
    async for name in client.scan_iter(match=f"{namespace}:*", count=500):
        await client.delete(name)


@pytest.fixture
async def real_redis(namespace: str) -> AsyncIterator[Any]:
    client = await _real_redis_or_skip()
    yield client
    await drop_namespace(client, namespace)
    await client.aclose()


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.redis)])
async def redis_client(
    request: pytest.FixtureRequest, namespace: str
) -> AsyncIterator[Any]:
    """A Redis client: fakeredis, then the real server."""
    if request.param == "fake":
        client = fakeredis.FakeAsyncRedis(
            server=fakeredis.FakeServer(), decode_responses=True
        )
        yield client
        await client.aclose()
    else:
        client = await _real_redis_or_skip()
        yield client
        await drop_namespace(client, namespace)
        await client.aclose()


@pytest.fixture
def store(redis_client: Any, namespace: str) -> KeyStore:
    return KeyStore(redis_client, namespace, PEPPER.encode(), max_lifetime_days=366)


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A folder under test-output/ named after the test, for screenshots."""
    root = request.config.rootpath / "test-output"
    path = root / request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    path.mkdir(parents=True, exist_ok=True)
    yield path


# Session-wide: no key, pepper or secret in any log line -----------------------

_KEY_LIKE = re.compile(r"rpa_[0-9A-Za-z]{46}")
_URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")
_SESSION_LOG_LINES: list[tuple[str, str]] = []
SESSION_SECRETS: set[str] = {PEPPER}


class _EveryLogLine(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + repr(record.exc_info[1])
        _SESSION_LOG_LINES.append((record.name, text))


def record_process_output(source: str, text: str) -> None:
    """Add a subprocess's log output to the session-wide secret check."""
    _SESSION_LOG_LINES.extend((source, line) for line in text.splitlines())


def secret_leaks(lines: list[tuple[str, str]]) -> list[str]:
    """Where a secret shows, described without repeating the secret."""
    from gateway.keys import is_well_formed

    leaks = []
    for source, line in lines:
        if any(is_well_formed(m.group()) for m in _KEY_LIKE.finditer(line)):
            leaks.append(f"{source}: an API key in {line[:40]!r}...")
        if any(secret in line for secret in SESSION_SECRETS):
            leaks.append(f"{source}: a configured secret in a log line.")
        if _URL_PASSWORD.search(line):
            leaks.append(f"{source}: a URL with a password in a log line.")
    return leaks


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_log_line() -> Iterator[None]:
    """Every log line of the run, in-process and from subprocesses, is checked."""
    handler = _EveryLogLine(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    # Our own loggers at DEBUG, so that every line they could write is seen.
    levels = {}
    for name in ("gateway", "admin", "uvicorn"):
        logger = logging.getLogger(name)
        levels[name] = logger.level
        logger.setLevel(logging.DEBUG)
    yield
    root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    leaks = secret_leaks(_SESSION_LOG_LINES)
    assert not leaks, "Secrets reached the logs:\n" + "\n".join(leaks[:20])
