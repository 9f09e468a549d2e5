"""Load runs: check each configuration, warm it, then alternate rounds.

Rounds alternate direction (forward, then backward, ...) over the
connection counts and the configurations, so slow drift on a shared machine
(a neighbour's load, thermal limits) falls on every configuration alike
instead of on whichever happens to run last. Within a round, each
connection count runs every configuration in turn, in the order given
(``configs.NAMES`` puts the two sides of each target ratio next to each
other), so the two runs of a ratio are seconds apart, not minutes.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import cpustat
from bench.configs import KEY_HEADER, Setup
from bench.keypool import read_keys
from bench.procs import http_status
from bench.wrk import WrkResult, run_wrk


class PreflightError(RuntimeError):
    """A configuration does not answer as it must before any load."""


@dataclass(frozen=True, slots=True)
class Plan:
    duration: float
    warmup: float
    rounds: int
    connections: tuple[int, ...]
    load_cpus: str | None
    pause: float = 0.3
    # Seconds the whole run may spend waiting for other processes to calm
    # down before a load run, and what counts as calm (foreign CPU share).
    quiet_budget: float = 0.0
    quiet_threshold: float = 15.0
    # Processes outside the harness's tree that work for the runs (Redis).
    extra_pids: tuple[int, ...] = ()


@dataclass
class Series:
    """Every run of one configuration at one connection count."""

    runs: list[WrkResult] = field(default_factory=list)
    noise: list[dict[str, Any]] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        runs = self.runs
        return {
            "rps": round(statistics.median(r.rps for r in runs), 1),
            "p50_ms": round(statistics.median(r.p50_ms for r in runs), 3),
            "p99_ms": round(statistics.median(r.p99_ms for r in runs), 3),
            "errors": sum(r.errors for r in runs),
            "requests": sum(r.requests for r in runs),
            "foreign_cpu_pct": statistics.median(
                n["foreign_cpu_pct"] for n in self.noise
            ),
            "cpu_us_per_request": _median_cpu(self.cpu),
            "rps_min": round(min(r.rps for r in runs), 1),
            "rps_max": round(max(r.rps for r in runs), 1),
            "runs": [
                {**r.as_dict(), **noise, "cpu_us_per_request": cpu}
                for r, noise, cpu in zip(runs, self.noise, self.cpu, strict=True)
            ],
        }


def _median_cpu(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per process (and in all), the median CPU time per request."""
    names = runs[0] if runs else {}
    return {
        name: round(statistics.median(run[name] for run in runs), 2) for name in names
    }


def service_seconds(setup: Setup) -> dict[str, float]:
    """CPU seconds used so far by each service's process tree."""
    return {
        service.name: sum(cpustat.process_seconds(pid) for pid in service.tree())
        for service in setup.services
    }


def cpu_per_request(
    before: dict[str, float], after: dict[str, float], requests: int
) -> dict[str, float]:
    """Microseconds of CPU per request, per service and ``total``.

    Other load on the machine stretches a run's wall-clock time but hardly
    the CPU time each process needs for a request, so this figure tells a
    slow configuration from a busy machine. Children that exited during the
    run are not counted (the services keep theirs for the whole run).
    """
    if requests <= 0 or not before:
        return {}  # nothing ran, or nothing of the configuration's own (direct)
    used = {
        name: max(0.0, after.get(name, 0.0) - start) for name, start in before.items()
    }
    used["total"] = sum(used.values())
    return {name: round(seconds * 1e6 / requests, 2) for name, seconds in used.items()}


def preflight(setup: Setup) -> None:
    """A request with the key gets 200; one without gets the refusal."""
    if setup.key_file is None:
        raise PreflightError(f"{setup.name}: no key file.")
    key = read_keys(setup.key_file)[0]
    status = http_status(setup.url, {KEY_HEADER: key})
    if status != 200:
        raise PreflightError(
            f"{setup.name}: a request with a valid key got {status or 'no answer'}, "
            "not 200."
        )
    if setup.keyless_status is not None:
        status = http_status(setup.url)
        if status != setup.keyless_status:
            raise PreflightError(
                f"{setup.name}: a request without a key got {status or 'no answer'},"
                f" not {setup.keyless_status}."
            )


def _run(
    setup: Setup, plan: Plan, connections: int, duration: float
) -> tuple[WrkResult, dict[str, Any], dict[str, float]]:
    window = cpustat.Window.open(plan.extra_pids)
    started = service_seconds(setup)
    result = run_wrk(
        setup.url,
        connections=connections,
        duration=duration,
        key_file=setup.key_file,
        key_header=KEY_HEADER,
        cpus=plan.load_cpus,
    )
    for service in setup.services:
        if not service.alive():
            raise service.fail("died during a load run")
    cpu = cpu_per_request(started, service_seconds(setup), result.requests)
    return result, window.close(plan.extra_pids), cpu


def measure(setups: Sequence[Setup], plan: Plan) -> dict[str, dict[int, Series]]:
    """Warm every configuration, then run the alternating rounds."""
    results = {s.name: {c: Series() for c in plan.connections} for s in setups}
    for setup in setups:
        preflight(setup)
        _progress(f"warm-up  {setup.name}")
        _run(setup, plan, max(plan.connections), plan.warmup)
    total = plan.rounds * len(setups) * len(plan.connections)
    done = 0
    budget = plan.quiet_budget
    for round_index in range(plan.rounds):
        forward = round_index % 2 == 0
        order = list(setups) if forward else list(reversed(setups))
        counts = plan.connections if forward else tuple(reversed(plan.connections))
        for connections in counts:
            for setup in order:
                budget -= _settle(plan, budget)
                result, noise, cpu = _run(setup, plan, connections, plan.duration)
                series = results[setup.name][connections]
                series.runs.append(result)
                series.noise.append(noise)
                series.cpu.append(cpu)
                done += 1
                _progress(
                    f"[{done}/{total}] round {round_index + 1}  {setup.name:<21}"
                    f" c={connections:<4} {result.rps:>9,.0f} rps"
                    f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
                    f"  errors {result.errors}  {_cpu_text(cpu)}  {_noise_text(noise)}"
                )
    return results


def _settle(plan: Plan, budget: float) -> float:
    """Pause between runs; while others load the machine, wait (within budget).

    Returns the seconds spent waiting beyond the plain pause.
    """
    waited = 0.0
    while True:
        window = cpustat.Window.open(plan.extra_pids)
        time.sleep(plan.pause)
        foreign = window.close(plan.extra_pids)["foreign_cpu_pct"]
        if foreign <= plan.quiet_threshold or waited + plan.pause > budget:
            if waited:
                _progress(f"waited {waited:.1f} s for a quieter machine")
            return waited
        waited += plan.pause


def _cpu_text(cpu: dict[str, float]) -> str:
    return f"cpu/req {cpu['total']:.0f} us" if cpu else "cpu/req n/a"


def _noise_text(noise: dict[str, Any]) -> str:
    steal = "/".join(f"{v:.0f}%" for v in noise["steal_pct"].values()) or "n/a"
    return f"steal {steal}  foreign {noise['foreign_cpu_pct']:.0f}%"


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
