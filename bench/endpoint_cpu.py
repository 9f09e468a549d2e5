"""CPU time per forward-auth answer of each endpoint alone, without nginx.

Behind nginx the endpoint and nginx share the proxy CPU, and how the
scheduler interleaves the two moves ``gateway_forward_auth /
nginx_trivial_auth`` from run to run on a shared machine. Here wrk asks
each endpoint directly (the allow-all endpoint and the gateway's
``/_gateway/auth``, same path, same key header) in short alternating runs,
and the figure is the CPU time (user + system) of the endpoint's process
per answer: what each endpoint costs by itself. Reported, no target.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from bench import configs, cpustat
from bench.configs import KEY_HEADER, Environment
from bench.procs import Service, Supervisor
from bench.wrk import run_wrk

AUTH_PATH = "/_gateway/auth"


def _cpu_seconds(service: Service) -> float:
    return sum(cpustat.process_seconds(pid) for pid in service.tree())


def measure(
    env: Environment, *, rounds: int, seconds: float, connections: int = 32
) -> dict[str, Any]:
    """Median CPU microseconds per answer of each endpoint, and their ratio."""
    supervisor = Supervisor(env.run_dir)
    own = dataclasses.replace(env, supervisor=supervisor)
    try:
        allow_all, allow_port = configs.start_trivial_auth(own, "endpoint_allow_all")
        gateway, gateway_port = configs.start_gateway(own, "endpoint_gateway")
        endpoints = {
            "allow_all": (allow_all, f"http://127.0.0.1:{allow_port}{AUTH_PATH}"),
            "gateway": (gateway, f"http://127.0.0.1:{gateway_port}{AUTH_PATH}"),
        }
        runs: dict[str, list[float]] = {name: [] for name in endpoints}
        for round_index in range(rounds):
            order = list(endpoints)
            if round_index % 2:
                order.reverse()
            for name in order:
                service, url = endpoints[name]
                before = _cpu_seconds(service)
                result = run_wrk(
                    url,
                    connections=connections,
                    duration=seconds,
                    key_file=env.pool.hit_file,
                    key_header=KEY_HEADER,
                    cpus=env.load_cpus,
                )
                used = _cpu_seconds(service) - before
                if result.errors or not result.requests:
                    raise RuntimeError(
                        f"{name}: {result.errors} failed of {result.requests} "
                        "forward-auth checks; every one must be allowed."
                    )
                runs[name].append(round(used * 1e6 / result.requests, 2))
    finally:
        supervisor.stop_all()
    allow_us = statistics.median(runs["allow_all"])
    gateway_us = statistics.median(runs["gateway"])
    return {
        "allow_all_us": round(allow_us, 2),
        "gateway_us": round(gateway_us, 2),
        "allow_all / gateway": round(allow_us / gateway_us, 3),
        "connections": connections,
        "seconds_per_run": seconds,
        "runs": runs,
    }
