"""Composes the apps and runs the gateway and admin listeners.

One process serves both listeners from one event loop, so the store, the
verifier and its cache, the invalidation subscriber, the upstream session
and the metrics are shared. With ``--workers N`` the parent binds both
sockets, starts N such processes on them and restarts any that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import orjson
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from admin.app import create_app
from gateway.assertion import Asserter
from gateway.forward_auth import ForwardAuth
from gateway.headers import RawHeaders, request_id_from
from gateway.invalidation import InvalidationSubscriber
from gateway.observability import (
    MULTIPROC_ENV,
    Metrics,
    configure_logging,
    error_logger,
    flush_access_log,
    log_access,
)
from gateway.problems import GatewayError, NotFound, StoreUnavailable
from gateway.proxy import Proxy, Receive, Scope, Send, client_host, send_problem
from gateway.settings import Settings
from gateway.store import KeyStore, explain, store_from_settings
from gateway.transport import EdgeProtocol
from gateway.upstream import Upstream
from gateway.verifier import Verifier

ASGIApp = Callable[[Scope, Receive, Send], Any]

USED_FLUSH_SECONDS = 30.0
METRICS_SYNC_SECONDS = 1.0
READY_TIMEOUT_SECONDS = 1.0


class NotReady(StoreUnavailable):
    title = "Not ready"
    slug = "not-ready"


@dataclass
class Context:
    """Everything both listeners of one process share."""

    settings: Settings
    store: KeyStore
    verifier: Verifier
    subscriber: InvalidationSubscriber
    upstream: Upstream
    metrics: Metrics
    asserter: Asserter | None = None
    owns_store: bool = True
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def create(cls, settings: Settings, store: KeyStore | None = None) -> Context:
        """The shared parts; a store passed in stays open at ``aclose``."""
        owns_store = store is None
        store = store or store_from_settings(settings)
        verifier = Verifier.from_settings(settings, store)
        return cls(
            settings=settings,
            store=store,
            verifier=verifier,
            subscriber=InvalidationSubscriber(
                store.redis, store.channel, verifier.cache
            ),
            upstream=Upstream.from_settings(settings),
            metrics=Metrics(),
            asserter=Asserter.from_settings(settings),
            owns_store=owns_store,
        )

    async def start(self) -> None:
        self.subscriber.start()
        await self.report_persistence()
        if self.asserter is not None:
            error_logger.info(
                "Signing identity assertions with %s key '%s'.",
                self.asserter.algorithm,
                self.asserter.kid,
            )
        self._tasks = [
            asyncio.create_task(self._every(USED_FLUSH_SECONDS, self.flush_used)),
            asyncio.create_task(self._every(METRICS_SYNC_SECONDS, self._sync)),
        ]

    async def report_persistence(self) -> None:
        """Say at start-up whether Redis keeps keys and users across a restart."""
        if self.settings.redis_url.get_secret_value().startswith("memory://"):
            return  # the demo's store, which says so itself
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                durable, how = await self.store.persistence()
        except TimeoutError:
            error_logger.warning(
                "Could not ask Redis whether it persists data: no answer in %g s.",
                READY_TIMEOUT_SECONDS,
            )
            return
        except StoreUnavailable as exc:
            error_logger.warning(
                "Could not ask Redis whether it persists data: %s", explain(exc)
            )
            return
        if durable:
            error_logger.info("Redis persistence: %s.", how)
        elif durable is None:
            error_logger.warning("Cannot tell whether Redis persists data: %s.", how)
        else:
            error_logger.warning(
                "Redis does not persist data (%s): a restart of Redis loses every "
                "key and user. Run it with config/redis.conf (AOF, appendfsync "
                "everysec).",
                how,
            )

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.subscriber.stop()
        await self.flush_used()
        self.sync_metrics()
        flush_access_log()
        await self.upstream.aclose()
        if self.owns_store:
            await self.store.redis.aclose()

    async def flush_used(self) -> None:
        """Write last-used times, so the admin page can show them."""
        used = self.verifier.take_used()
        try:
            await self.store.mark_used(used)
        except StoreUnavailable:
            error_logger.warning(
                "Could not record last-used times of %d key(s): the key store "
                "is unreachable.",
                len(used),
            )

    def sync_metrics(self) -> None:
        verifier, metrics = self.verifier, self.metrics
        metrics.flush()
        metrics.sync_counter("hits", metrics.cache_hits, verifier.hits)
        metrics.sync_counter("misses", metrics.cache_misses, verifier.misses)
        metrics.sync_counter("errors", metrics.redis_errors, verifier.redis_errors)
        metrics.sync_counter("stale", metrics.stale_served, verifier.stale_served)
        metrics.sync_counter(
            "invalidations", metrics.invalidations, self.subscriber.messages
        )

    async def _sync(self) -> None:
        self.sync_metrics()
        flush_access_log()

    @staticmethod
    async def _every(seconds: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:
                error_logger.exception("A periodic task failed.")

    async def ready(self) -> None:
        """Raise ``NotReady`` unless Redis answers and invalidations flow."""
        if not self.subscriber.subscribed.is_set():
            raise NotReady("Not subscribed to key invalidations yet.")
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                await self.store.ping()
        except (StoreUnavailable, TimeoutError):
            raise NotReady("The key store cannot be reached.") from None


_OK_BODY = orjson.dumps({"status": "ok"})
# Backends cache the key set; five minutes bounds how long a rotation takes
# to reach them (publish the next key at least that long before using it).
_JWKS_CACHING = b"public, max-age=300"

_AUTH_PATH = b"/_gateway/auth"
_AUTH_PREFIX = _AUTH_PATH + b"/"


class Edge:
    """The gateway listener: reserved paths under /_gateway/, else the proxy."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.proxy = Proxy(
            context.settings,
            context.verifier,
            context.upstream,
            context.metrics,
            context.asserter,
        )
        self.forward_auth = ForwardAuth(
            context.settings, context.verifier, context.metrics, context.asserter
        )
        self.realm = context.settings.realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        path: str = scope["path"]
        if not path.startswith("/_gateway/"):
            await self.proxy(scope, receive, send)
        elif path == "/_gateway/auth" or path.startswith("/_gateway/auth/"):
            await self.forward_auth(scope, receive, send)
        else:
            await self._reserved(scope, send, path)

    def answer_now(
        self, method: bytes, target: bytes, headers: RawHeaders, client: str | None
    ) -> bytes | None:
        """A complete answer from the request's head alone, if one is ready now.

        Called by the listener's HTTP protocol before it starts an ASGI
        task (see ``gateway.transport``); ``None`` sends the request down
        the ASGI path as usual. Only forward-auth checks of cached keys are
        answered here, and only for plain ASCII paths without
        percent-escapes or a fragment (the ASGI path decodes and drops those).
        """
        path, _, query = target.partition(b"?")
        if path != _AUTH_PATH and not path.startswith(_AUTH_PREFIX):
            return None
        if b"%" in path or b"#" in target or not path.isascii():
            return None
        return self.forward_auth.answer_now(
            method.decode("ascii"), path.decode("ascii"), query, headers, client
        )

    async def _reserved(self, scope: Scope, send: Send, path: str) -> None:
        started = perf_counter()
        request_id = request_id_from(scope["headers"])
        body, caching = _OK_BODY, b"no-store"
        try:
            if path == "/_gateway/health":
                outcome = "health"
            elif path == "/_gateway/ready":
                outcome = "ready"
                await self.context.ready()
            elif path == "/_gateway/jwks":
                outcome = "jwks"
                body, caching = self._jwks(), _JWKS_CACHING
            else:
                raise NotFound(f"'{path}' is not a gateway endpoint.")
        except GatewayError as exc:
            status, outcome = exc.status, exc.slug
            await send_problem(send, exc, request_id, self.realm)
        else:
            status = 200
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"cache-control", caching),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        self.context.metrics.outcome(outcome)
        log_access(
            request_id=request_id,
            method=scope["method"],
            path=path,
            status=status,
            duration=perf_counter() - started,
            upstream_duration=None,
            outcome=outcome,
            user_id=None,
            key_id=None,
            client=client_host(scope),
        )

    def _jwks(self) -> bytes:
        if self.context.asserter is None:
            raise NotFound(
                "Identity assertions are off: set "
                "RPA_GATEWAY_ASSERTION_KEY_FILE to sign them and publish their keys."
            )
        return self.context.asserter.jwks


def build_gateway_app(context: Context) -> Edge:
    return Edge(context)


def build_admin_app(context: Context) -> Starlette:
    """``/metrics`` first, then the admin app mounted at the root."""

    async def metrics(request: Request) -> Response:
        context.sync_metrics()
        body, content_type = context.metrics.render()
        return Response(body, media_type=content_type)

    admin = create_app(context.settings, context.store, context.verifier)
    return Starlette(routes=[Route("/metrics", metrics), Mount("/", admin)])


# Running -------------------------------------------------------------------


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to the caller.

    Two servers share one loop here; uvicorn's own handling would give the
    signal to whichever installed its handler last.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def uvicorn_config(app: ASGIApp, settings: Settings, *, edge: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        # One write per response, a limit on the request head, and (on the
        # gateway listener) forward-auth answers from the cache without an
        # ASGI task: see gateway.transport.
        http=EdgeProtocol,
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        # The gateway does X-Forwarded-* itself, trusting only the
        # configured proxies; uvicorn's version would trust loopback.
        proxy_headers=False,
        # Pass the upstream's Date and Server through rather than add ours.
        server_header=False,
        date_header=not edge,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=30,
        log_level=settings.log_level,
    )


@dataclass(frozen=True)
class Binding:
    app: ASGIApp
    sock: socket.socket
    edge: bool = False


async def serve_bindings(context: Context, bindings: Sequence[Binding]) -> None:
    """Run one uvicorn server per binding until SIGINT or SIGTERM."""
    servers = [
        _Server(uvicorn_config(b.app, context.settings, edge=b.edge)) for b in bindings
    ]
    # uvicorn's access line carries the query string, where a key may be;
    # the gateway writes its own. Disabled, not just without handlers:
    # a handler can be attached later by whoever configures logging.
    logging.getLogger("uvicorn.access").disabled = True
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            if server.should_exit:
                server.force_exit = True
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    await context.start()
    try:
        await asyncio.gather(
            *(s.serve(sockets=[b.sock]) for s, b in zip(servers, bindings, strict=True))
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await context.aclose()


def bind(address: tuple[str, int]) -> socket.socket:
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def _serve_worker(settings: Settings, sockets: Sequence[socket.socket]) -> None:
    context = Context.create(settings)
    bindings = [
        Binding(build_gateway_app(context), sockets[0], edge=True),
        Binding(build_admin_app(context), sockets[1]),
    ]
    # Everything made so far (modules, apps, settings) lives as long as the
    # process. Moving it out of the collector's sight makes each full
    # collection scan only what requests allocate: without it, full
    # collections over the imported libraries' objects showed up as
    # tens-of-milliseconds stalls in the gateway's p99 latency under load.
    gc.collect()
    gc.freeze()
    await serve_bindings(context, bindings)


def run_worker(settings: Settings, sockets: Sequence[socket.socket]) -> None:
    """A worker process: both listeners on the given sockets, one loop."""
    configure_logging(settings.log_level, settings.access_log)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve_worker(settings, sockets))


def serve(settings: Settings, workers: int = 1) -> int:
    """Bind the listeners and serve until a signal; the exit status."""
    configure_logging(settings.log_level, settings.access_log)
    try:
        sockets = [bind(settings.listen_address), bind(settings.admin_listen_address)]
    except OSError as exc:
        error_logger.error("%s", exc)
        return 1
    error_logger.info(
        "Gateway on http://%s, admin on http://%s, %d worker(s).",
        settings.listen,
        settings.admin_listen,
        workers,
    )
    try:
        if workers == 1:
            run_worker(settings, sockets)
            return 0
        return _supervise(settings, sockets, workers)
    finally:
        for sock in sockets:
            sock.close()


def _supervise(settings: Settings, sockets: list[socket.socket], workers: int) -> int:
    """Start the workers, restart any that dies, stop them all on a signal."""
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="rpa-gateway-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    spawn = multiprocessing.get_context("spawn")
    stopping = False

    def on_signal(sig: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
    }

    def start() -> Any:
        process = spawn.Process(
            target=run_worker, args=(settings, sockets), name="rpa-gateway-worker"
        )
        process.start()
        return process

    processes = [start() for _ in range(workers)]
    try:
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p in processes], 0.5)
            for index, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    error_logger.warning(
                        "Worker %d exited with status %s; starting another.",
                        process.pid,
                        process.exitcode,
                    )
                    processes[index] = start()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=35)
            if process.is_alive():
                process.kill()
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
            del os.environ[MULTIPROC_ENV]
    return 0
