"""``rpa-gateway demo`` from the outside: the printed commands work."""

from __future__ import annotations

import asyncio
import re
import signal

import httpx
import pytest

from gateway.keys import is_well_formed
from tests.conftest import free_port, require_binary
from tests.gateway.conftest import GatewayProcess

pytestmark = pytest.mark.slow


def printed_commands(text: str) -> list[str]:
    """The curl commands in the demo's output, continuation lines joined."""
    commands, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and not stripped.startswith("curl "):
            continue
        current += stripped.removesuffix("\\").rstrip() + " "
        if not stripped.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


async def run(command: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command.replace("curl ", "curl -sS --max-time 10 ", 1),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, command
    return out.decode()


async def test_the_demo_prints_a_working_key_and_commands_that_work() -> None:
    require_binary("curl")
    gateway, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    demo = GatewayProcess(
        {"RPA_GATEWAY_LISTEN": gateway, "RPA_GATEWAY_ADMIN_LISTEN": admin},
        "demo",
        checked_streams=("stderr",),
    )
    await demo.start()
    try:
        await demo.wait_for("Press Ctrl+C to stop.", stream="stdout")
        await demo.wait_for("Subscribed to key invalidations.")
        text = "\n".join(demo.lines["stdout"])
        keys = re.findall(r"rpa_[0-9A-Za-z]{46}", text)
        assert keys and is_well_formed(keys[0])
        assert f"http://{admin}/" in text

        start, status, whoami, jwks, anonymous = printed_commands(text)
        assert re.search(r"^HTTP/1.1 201 ", await run(start), re.M)
        assert re.search(r"^HTTP/1.1 204 ", await run(start), re.M)
        answer = await run(status)
        assert re.search(r"^HTTP/1.1 200 ", answer, re.M)
        assert '"executionId":"demo-1"' in answer
        assert '"startedBy":"admin"' in answer
        assert re.search(r"^HTTP/1.1 401 ", await run(anonymous), re.M)
        # The backend took the identity only with the gateway's signature.
        answer = await run(whoami)
        assert re.search(r"^HTTP/1.1 200 ", answer, re.M)
        assert '"userId":"admin"' in answer
        assert '"kty":"OKP"' in await run(jwks)

        async with httpx.AsyncClient(timeout=10) as client:
            metrics = await client.get(f"http://{admin}/metrics")
        assert metrics.status_code == 200
    finally:
        assert await demo.stop(signal.SIGINT) == 0
    assert keys[0] not in "\n".join(demo.lines["stderr"])
