"""Running wrk and reading its result.

The figures come from ``load.lua``'s summary line, not from wrk's text
report, so nothing depends on how wrk formats units. wrk counts a response
with a status of 400 or more as a status error; the harness checks before
the runs that every configuration answers 200, so with the socket errors
this is the count of failed requests.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.procs import pinned

SCRIPT = Path(__file__).with_name("load.lua")
RESULT_PREFIX = "BENCH_RESULT "


class WrkError(RuntimeError):
    """wrk failed or printed no result line."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    status_errors: int
    timeouts: int

    @property
    def errors(self) -> int:
        return self.socket_errors + self.status_errors

    def as_dict(self) -> dict[str, float | int]:
        data: dict[str, float | int] = asdict(self)
        data["errors"] = self.errors
        return data


def parse_output(stdout: str) -> WrkResult:
    """The result from wrk's stdout; ``WrkError`` if the line is missing."""
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            data = json.loads(line[len(RESULT_PREFIX) :])
            break
    else:
        raise WrkError("wrk printed no result line; is load.lua in use?")
    errors = data["errors"]
    latency = data["latency_us"]
    seconds = data["duration_us"] / 1e6
    return WrkResult(
        requests=data["requests"],
        seconds=seconds,
        rps=data["requests"] / seconds if seconds > 0 else 0.0,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        # wrk keeps timeouts apart from read, write and connect errors.
        socket_errors=errors["connect"]
        + errors["read"]
        + errors["write"]
        + errors["timeout"],
        status_errors=errors["status"],
        timeouts=errors["timeout"],
    )


def run_wrk(
    url: str,
    *,
    connections: int,
    duration: float,
    key_file: Path | None,
    key_header: str,
    cpus: str | None,
    threads: int = 1,
    timeout: float = 5.0,
) -> WrkResult:
    """One fixed-duration wrk run against url."""
    command = pinned(
        [
            "wrk",
            f"--threads={threads}",
            f"--connections={connections}",
            f"--duration={max(1, round(duration))}s",
            f"--timeout={timeout:g}s",
            f"--script={SCRIPT}",
            url,
        ],
        cpus,
    )
    env = dict(os.environ)
    env["BENCH_KEY_FILE"] = str(key_file) if key_file else ""
    env["BENCH_KEY_HEADER"] = key_header
    try:
        done = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=duration + timeout + 30,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {exc.timeout:.0f} s.") from None
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip()}")
    return parse_output(done.stdout)
