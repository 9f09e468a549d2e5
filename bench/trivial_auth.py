"""The trivial forward-auth endpoint: every request is allowed.

Plain ASGI on the gateway's own server stack (uvicorn with uvloop and
httptools), so ``nginx_trivial_auth`` measures what nginx ``auth_request``
costs with a Python endpoint that does no work at all: the floor for the
gateway's forward-auth mode.

    python -m bench.trivial_auth --port 8000
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Message = MutableMapping[str, Any]
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-length", b"0")],
}
_BODY = {"type": "http.response.body", "body": b""}


async def allow_all(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    await send(_START)
    await send(_BODY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        allow_all,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        # The gateway's own listener settings: no proxy-headers layer and
        # no Server or Date header, so that only the endpoint's work differs.
        proxy_headers=False,
        server_header=False,
        date_header=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
