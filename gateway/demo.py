"""``rpa-gateway demo``: everything in one process, nothing to set up.

An in-memory store, a generated pepper, the stand-in RPA backend on a free
port as the upstream, the gateway and admin listeners, and an administrator
with a fresh key. What to try next is printed; the logs go to stderr so
that the printed key and the log never mix.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import socket
import sys
import tempfile
import time

import uvloop
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.observability import configure_logging, error_logger
from gateway.rpa_backend import PREFIX, AssertionCheck, create_backend_app
from gateway.server import (
    Binding,
    Context,
    bind,
    build_admin_app,
    build_gateway_app,
    serve_bindings,
)
from gateway.settings import Settings, load_settings
from gateway.store import PRIVILEGES

DEMO_USER = "admin"
KEY_DAYS = 30


def _url(hostport: tuple[str, int]) -> str:
    host, port = hostport
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def instructions(settings: Settings, key: str, key_id: str, backend: str) -> str:
    gateway = _url(settings.listen_address)
    admin = _url(settings.admin_listen_address)
    header = shlex.quote(f"x-apikey: {key}")
    body = shlex.quote('{"executionId": "demo-1", "processName": "Invoice intake"}')
    return f"""\
RPA gateway demo: in-memory store, stand-in RPA backend. Nothing is kept.

  Gateway     {gateway}  (forwards to the stand-in backend at {backend})
  Admin page  {admin}/
  Metrics     {admin}/metrics

User '{DEMO_USER}' has every privilege and this API key (id {key_id}),
valid for {KEY_DAYS} days. It is shown only now:

  {key}

Start a process through the gateway (idempotent by execution id: 201, then 204):

  curl -i -X PUT {gateway}{PREFIX}/executions/startProcess \\
    -H {header} \\
    -H 'Content-Type: application/json' \\
    -d {body}

Read its status:

  curl -i {gateway}{PREFIX}/executions/demo-1/status \\
    -H {header}

See who the backend was told you are; it accepts the identity headers
only with the gateway's signed assertion, whose public keys are here:

  curl -i {gateway}{PREFIX}/whoami \\
    -H {header}
  curl {gateway}/_gateway/jwks

Without a key the gateway answers 401:

  curl -i {gateway}{PREFIX}/executions/demo-1/status

Press Ctrl+C to stop.
"""


async def _demo(settings: Settings, sockets: list[socket.socket]) -> None:
    gateway_sock, admin_sock, backend_sock = sockets
    context = Context.create(settings)
    await context.store.add_user(DEMO_USER, "Administrator", PRIVILEGES)
    record, key = await context.store.create_key(
        DEMO_USER,
        name="Demo key",
        description="Made by rpa-gateway demo.",
        expires_at=float(int(time.time()) + KEY_DAYS * 86400),
        created_by="demo",
    )
    backend_url = settings.upstream_url or ""
    print(instructions(settings, key, record.id, backend_url), flush=True)
    assert context.asserter is not None
    backend = create_backend_app(
        user_id_header=settings.user_id_header,
        key_id_header=settings.key_id_header,
        assertions=AssertionCheck(
            context.asserter.jwks,
            header=settings.assertion_header,
            issuer=settings.assertion_issuer,
            audience=settings.assertion_audience,
        ),
    )
    await serve_bindings(
        context,
        [
            Binding(build_gateway_app(context), gateway_sock, edge=True),
            Binding(build_admin_app(context), admin_sock),
            Binding(backend, backend_sock),
        ],
    )


def run_demo() -> int:
    """Run the demo until Ctrl+C; the exit status."""
    configure_logging(stream=sys.stderr)
    try:
        backend_sock = bind(("127.0.0.1", 0))
    except OSError as exc:
        error_logger.error("%s", exc)
        return 1
    port = backend_sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="rpa-gateway-demo-") as keys_dir:
        settings = load_settings(
            redis_url="memory://demo",
            key_pepper=secrets.token_urlsafe(48),
            upstream_url=f"http://127.0.0.1:{port}",
            assertion_key_file=_signing_key_file(keys_dir),
        )
        return _run(settings, backend_sock)


def _signing_key_file(directory: str) -> str:
    """A fresh Ed25519 key for the demo's assertions, readable by us alone."""
    path = os.path.join(directory, "assertion-key.pem")
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    return path


def _run(settings: Settings, backend_sock: socket.socket) -> int:
    configure_logging(settings.log_level, settings.access_log, stream=sys.stderr)
    sockets = [backend_sock]
    try:
        sockets.insert(0, bind(settings.admin_listen_address))
        sockets.insert(0, bind(settings.listen_address))
    except OSError as exc:
        error_logger.error("%s", exc)
        for sock in sockets:
            sock.close()
        return 1
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_demo(settings, list(sockets)))
    finally:
        for sock in sockets:
            sock.close()
    return 0
