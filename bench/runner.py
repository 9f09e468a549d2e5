"""One benchmark run from start to report.

Phases: check the tools, make the keys, start the upstream and every
configuration, run the load rounds, read peak memory, stop the
configurations, then the in-process and replica measurements. Whatever
happens, every started process is stopped and the run's Redis namespace is
deleted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    configs,
    endpoint_cpu,
    keypool,
    memory,
    profile,
    report,
    revocation,
)
from bench.configs import Environment, Setup
from bench.nginx import UPSTREAM_BODY, nginx_binary
from bench.procs import (
    Supervisor,
    free_port,
    pinned,
    pinning_available,
    wait_for_port,
)
from bench.throughput import Plan, measure
from bench.wrk import run_wrk

PROXY_CPUS = "0"
LOAD_CPUS = "1"
RESULTS_DIR = Path(__file__).with_name("results")


@dataclass(frozen=True, slots=True)
class Options:
    mode: str
    duration: float
    rounds: int
    warmup: float
    connections: tuple[int, ...]
    names: tuple[str, ...]
    redis_url: str | None
    miss_keys: int
    revocations: int
    cached_keys: int
    verify_seconds: float
    extras: bool
    endpoint_seconds: float
    output_dir: Path
    keep_run_dir: bool
    gateway_env: dict[str, str]
    profile: tuple[str, ...] = ()
    quiet_budget: float = 0.0
    # Seconds between two load runs (also the window that measures whether
    # other processes are busy).
    pause: float = 0.3


class SetupError(RuntimeError):
    """Something the run needs is missing; the message says how to fix it."""


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check_tools(options: Options) -> None:
    tools = ["wrk", "nginx"] + ([] if options.redis_url else ["redis-server"])
    missing = [tool for tool in tools if not _tool(tool)]
    if missing:
        raise SetupError(
            f"{' and '.join(missing)} not found. Install them with "
            "'sudo apt-get install wrk nginx-light redis-server' (Debian, Ubuntu) "
            "or your distribution's packages, then run again."
        )
    needs_gateway = options.extras or any(
        name in configs.GATEWAY_NAMES for name in options.names
    )
    if needs_gateway and not configs.gateway_available():
        raise SetupError(
            "The gateway server (gateway/server.py) is not there yet; run only "
            "the other configurations with --only and --no-extras."
        )


def _tool(name: str) -> bool:
    if name == "nginx":
        return nginx_binary() is not None
    return shutil.which(name) is not None


async def _redis_pid(url: str) -> int | None:
    """Redis's process id when it runs on this machine, for CPU accounting."""
    from gateway.redis_client import open_redis

    redis = open_redis(url).client
    try:
        info = await redis.info("server")
    except Exception as exc:
        raise SetupError(
            f"Redis at the URL given by --redis-url does not answer ({exc})."
        ) from None
    finally:
        await redis.aclose()
    pid = int(info.get("process_id", 0))
    try:
        local = "redis" in Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        local = False
    return pid if local else None


def _private_redis(supervisor: Supervisor, cpus: str | None) -> str:
    """A Redis of the run's own, on the load CPUs like the upstream.

    The machine's Redis floats between CPUs; on the proxy's CPU its work on
    every cache miss would be charged to the gateway. Nothing is persisted.
    """
    port = free_port()
    command = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    service = supervisor.start("redis", command, cpus=cpus)
    wait_for_port(service, port)
    log(f"Started a private Redis on 127.0.0.1:{port}.")
    return f"redis://127.0.0.1:{port}/0"


def run(options: Options) -> dict[str, Any]:
    check_tools(options)
    pinning = pinning_available()
    proxy_cpus, load_cpus = (PROXY_CPUS, LOAD_CPUS) if pinning else (None, None)
    if pinning:
        # The harness itself stays off the proxy's CPU.
        os.sched_setaffinity(0, {int(LOAD_CPUS)})
    run_dir = Path(tempfile.mkdtemp(prefix="rpa-bench-"))
    supervisor = Supervisor(run_dir)
    redis_url = options.redis_url or _private_redis(supervisor, load_cpus)
    redis_pid = asyncio.run(_redis_pid(redis_url))
    pool = keypool.new_pool(redis_url, run_dir)
    env = Environment(
        supervisor=supervisor,
        run_dir=run_dir,
        pool=pool,
        proxy_cpus=proxy_cpus,
        load_cpus=load_cpus,
        gateway_env=options.gateway_env,
    )
    started = time.monotonic()
    ok = False
    try:
        log(f"Making {options.miss_keys + 1} keys in namespace '{pool.namespace}'.")
        asyncio.run(keypool.fill(pool, options.miss_keys))
        result = _measure_all(options, env, redis_pid)
        ok = True
    finally:
        try:
            # Before stop_all: the run's own Redis is one of its services.
            deleted = asyncio.run(keypool.drop_namespace(redis_url, pool.namespace))
            log(f"Deleted {deleted} Redis keys of namespace '{pool.namespace}'.")
        finally:
            env.supervisor.stop_all()
            keypool.forget_key_files(pool)
        if ok and not options.keep_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            log(f"Logs of this run are in {run_dir}.")
    result["method"]["wall_seconds"] = round(time.monotonic() - started, 1)
    result["method"]["pinning"] = (
        {"proxy_cpus": proxy_cpus, "load_cpus": load_cpus} if pinning else None
    )
    return result


def _measure_all(
    options: Options, env: Environment, redis_pid: int | None
) -> dict[str, Any]:
    configs.start_upstream(env)
    load = Supervisor(env.run_dir)
    env_for_setups = dataclasses.replace(env, supervisor=load)
    plan = Plan(
        duration=options.duration,
        warmup=options.warmup,
        rounds=options.rounds,
        connections=options.connections,
        load_cpus=env.load_cpus,
        extra_pids=(redis_pid,) if redis_pid else (),
        quiet_budget=options.quiet_budget,
        pause=options.pause,
    )
    try:
        setups: list[Setup] = []
        # In configs.NAMES order whatever --only says: that order keeps the
        # two sides of each ratio next to each other in a round.
        for name in sorted(options.names, key=configs.NAMES.index):
            log(f"Starting {name}.")
            setups.append(configs.STARTERS[name](env_for_setups))
        series = measure(setups, plan)
        for setup in setups:
            if setup.name in options.profile:
                _profile(setup, plan, options.output_dir)
        configurations = {
            setup.name: _configuration(setup, series[setup.name]) for setup in setups
        }
    finally:
        load.stop_all()
    result = _skeleton(options)
    result["configurations"] = configurations
    result["ratios"] = report.ratios(configurations, report.RATIO_CONNECTIONS)
    result["ratios_of_medians"] = report.ratios(
        configurations, report.RATIO_CONNECTIONS, paired=False
    )
    if 128 in options.connections:
        result["ratios_at_128"] = report.ratios(configurations, 128)
    if options.extras:
        result.update(_extras(options, env))
    result["targets"] = report.evaluate_targets(result)
    return result


def _profile(setup: Setup, plan: Plan, out_dir: Path) -> None:
    log(f"Profiling {setup.name} under load (this run is not reported).")
    started = profile.start(setup, plan.duration, out_dir / "profiles")
    run_wrk(
        setup.url,
        connections=report.RATIO_CONNECTIONS,
        duration=plan.duration,
        key_file=setup.key_file,
        key_header=configs.KEY_HEADER,
        cpus=plan.load_cpus,
    )
    for path in profile.finish(started):
        log(f"Wrote {path} and its .collapsed stacks.")


def _configuration(setup: Setup, series: dict[int, Any]) -> dict[str, Any]:
    peaks = setup.peak_rss()
    return {
        "description": setup.description,
        "connections": {str(c): s.summary() for c, s in series.items()},
        "peak_rss_bytes": sum(peaks.values()) if peaks else None,
        "peak_rss_by_process": peaks,
    }


def _extras(options: Options, env: Environment) -> dict[str, Any]:
    log("Measuring verifications per second in one process.")
    verify = _python_json(
        env,
        ["bench.verify_rate", f"--seconds={options.verify_seconds:g}"],
        cpus=env.proxy_cpus,
    )
    log(f"Measuring process memory at {options.cached_keys:,} cached keys.")
    cache = _python_json(env, ["bench.memory", f"--keys={options.cached_keys}"])
    log(f"Measuring revocation on two replicas, {options.revocations} samples.")
    replicas = Supervisor(env.run_dir)
    replica_env = dataclasses.replace(env, supervisor=replicas)
    try:
        _, port_a = configs.start_gateway(replica_env, "replica_a")
        _, port_b = configs.start_gateway(replica_env, "replica_b")
        revoked = asyncio.run(
            revocation.measure(env.pool, port_a, port_b, options.revocations)
        )
    finally:
        replicas.stop_all()
    log("Measuring CPU per answer of each forward-auth endpoint alone.")
    endpoints = endpoint_cpu.measure(
        env, rounds=max(4, options.rounds), seconds=options.endpoint_seconds
    )
    redis_memory = asyncio.run(_redis_memory(env.pool))
    return {
        "forward_auth_cpu_us": endpoints,
        "verify_per_second": verify,
        "revocation_ms": revoked,
        "memory": {
            "redis_bytes_per_key": redis_memory["bytes_per_key"],
            "process_bytes_per_cached_key": cache["bytes_per_key"],
            "cached_keys": cache["keys"],
            "redis_detail": redis_memory,
            "process_detail": cache,
        },
    }


async def _redis_memory(pool: keypool.KeyPool) -> dict[str, Any]:
    store = pool.store()
    try:
        return await memory.redis_bytes_per_key(store, pool.key_ids)
    finally:
        await store.redis.aclose()


def _python_json(
    env: Environment, args: Sequence[str], cpus: str | None = None
) -> dict[str, Any]:
    """Run ``python -m args`` with the pool's settings; its JSON answer."""
    environ = configs.clean_environ()
    environ.update(env.pool.settings_env())
    environ["BENCH_HIT_FILE"] = str(env.pool.hit_file)
    environ["BENCH_MISS_FILE"] = str(env.pool.miss_file)
    done = subprocess.run(
        pinned([sys.executable, "-m", *args], cpus),
        env=environ,
        cwd=env.run_dir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"'python -m {args[0]}' exited with {done.returncode}:\n"
            + done.stderr[-2000:]
        )
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def _skeleton(options: Options) -> dict[str, Any]:
    return {
        "schema": 1,
        "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "mode": options.mode,
        "machine": _machine(),
        "method": {
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "rounds": options.rounds,
            "connections": list(options.connections),
            "path": configs.PATH,
            "wrk_threads": 1,
            "gateway_miss": (
                f"RPA_GATEWAY_CACHE_TTL_SECONDS=0 and {options.miss_keys} keys "
                "rotated per request by wrk's script"
            ),
            "gateway_env": sorted(options.gateway_env),
            "notes": _notes(options),
        },
    }


def _notes(options: Options) -> list[str]:
    return [
        "Every process is started by the harness on 127.0.0.1 free ports and "
        "stopped at the end.",
        "Rounds alternate the order of connection counts and configurations "
        "(forward, then backward); within a round each connection count runs "
        "every configuration in turn, the two sides of each target ratio next "
        "to each other. Each figure is the median of its rounds; each target "
        "ratio is the median of the rounds' ratios of two runs seconds apart "
        "(ratios_of_medians has the ratios of the medians).",
        "Requests per second and latency come from wrk (one thread, keep-alive, "
        "5 s timeout); p50/p99 are wrk's latency percentiles.",
        "Errors are socket errors (connect, read, write, timeout) plus responses "
        "with status >= 400; every configuration is checked to answer 200 first.",
        f"The upstream is nginx returning a fixed {len(UPSTREAM_BODY)}-byte JSON "
        "body with keep-alive; it runs on the load CPU with wrk.",
        "gateway_miss: the positive cache is off (CACHE_TTL_SECONDS=0) and wrk "
        f"rotates through {options.miss_keys} keys, so requests in flight together "
        "never share a key and each one costs a Redis lookup.",
        "Gateways run with their default settings (access log on, written to "
        "the run's log file) except log level warning"
        + (
            f" and {', '.join(sorted(options.gateway_env))}."
            if options.gateway_env
            else "."
        ),
        "Noise: with every run the harness records the hypervisor's steal "
        "time per CPU and the CPU share used by processes other than its own, "
        "the processes it started and Redis (foreign_cpu_pct); the table shows "
        "the median of the latter.",
        "Before each load run the harness waits while other processes use "
        "more than 15% of the machine's CPU, up to "
        f"{options.quiet_budget:g} s over the whole run.",
        "Peak RSS is the sum of VmHWM over the configuration's processes and "
        "their children (nginx master and worker, gateway workers).",
        "CPU us/request is the user and system CPU time of the configuration's "
        "own processes (not wrk, the upstream or Redis) during a run divided "
        "by its requests, median of the rounds; other load on the machine "
        "stretches wall-clock figures much more than this one.",
    ]


def _machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": _version(["wrk", "-v"]),
        "nginx": _version([nginx_binary() or "nginx", "-v"]),
    }


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=5, check=False
        )
    except OSError:
        return "unknown"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"
