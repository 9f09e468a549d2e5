"""The configurations under test and how each one is started.

Every configuration serves ``PATH`` and ends at the same upstream nginx.
The processes under test run on the proxy CPUs; wrk and the upstream run on
the load CPUs. A configuration's processes are its own: none is shared with
another configuration, so each one's peak memory is its own too.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import nginx
from bench.keypool import KeyPool
from bench.procs import Service, Supervisor, free_port, wait_for_http, wait_for_port

REPO_ROOT = Path(__file__).resolve().parent.parent
PATH = "/rpa/api/v1/bench/status"
KEY_HEADER = "X-API-Key"

# Also the order of the runs in a round: the two sides of each target ratio
# are neighbours (nginx_trivial_auth and gateway_forward_auth; python_proxy,
# gateway and gateway_miss).
DESCRIPTIONS = {
    "direct": "wrk straight to the upstream nginx",
    "nginx_proxy": "nginx proxy_pass with upstream keep-alive (the C reference)",
    "nginx_trivial_auth": (
        "nginx auth_request to an allow-all ASGI endpoint on uvicorn "
        "(uvloop, httptools)"
    ),
    "gateway_forward_auth": "nginx auth_request to the gateway's /_gateway/auth",
    "python_proxy": (
        "aiohttp.web forwarding with one pooled aiohttp ClientSession, "
        "one process, no authentication"
    ),
    "gateway": "rpa-gateway serve, one worker, real Redis, one key: cache hits",
    "gateway_miss": (
        "as gateway, positive cache off (CACHE_TTL_SECONDS=0) and a pool of "
        "keys rotated per request: one Redis lookup per request"
    ),
    "gateway_workers": "rpa-gateway serve --workers 2",
    "gateway_assertions": (
        "as gateway, with signed identity assertions on (Ed25519): each "
        "proxied request carries a JWT"
    ),
}
NAMES = tuple(DESCRIPTIONS)
GATEWAY_NAMES = tuple(name for name in NAMES if name.startswith("gateway"))


@dataclass
class Setup:
    """One running configuration: where to send load, what to watch."""

    name: str
    url: str
    key_file: Path | None
    services: list[Service] = field(default_factory=list)
    # Status codes a request without a key must get: proves auth is on.
    keyless_status: int | None = None

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.name]

    def peak_rss(self) -> dict[str, int]:
        return {service.name: service.peak_rss() for service in self.services}


@dataclass
class Environment:
    """What every configuration is started from."""

    supervisor: Supervisor
    run_dir: Path
    pool: KeyPool
    proxy_cpus: str | None
    load_cpus: str | None
    upstream_port: int = 0
    gateway_env: dict[str, str] = field(default_factory=dict)

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    def prefix(self, name: str) -> Path:
        path = self.run_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def gateway_available() -> bool:
    return importlib.util.find_spec("gateway.server") is not None


def start_upstream(env: Environment) -> Service:
    env.upstream_port = free_port()
    prefix = env.prefix("upstream")
    conf = nginx.upstream_conf(prefix, env.upstream_port)
    return nginx.start_nginx(
        env.supervisor, "upstream", conf, prefix, env.upstream_port, env.load_cpus
    )


def _python(env: Environment, name: str, module: str, *args: str) -> Service:
    return env.supervisor.start(
        name,
        [sys.executable, "-m", module, *args],
        cpus=env.proxy_cpus,
        env=clean_environ(),
        cwd=env.prefix(name),
    )


def clean_environ() -> dict[str, str]:
    """This environment minus gateway settings, with the repository importable."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RPA_GATEWAY_")}
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    paths = [str(REPO_ROOT), *filter(None, [environ.get("PYTHONPATH")])]
    environ["PYTHONPATH"] = os.pathsep.join(paths)
    return environ


def start_gateway(
    env: Environment,
    name: str,
    *,
    workers: int = 1,
    cpus: str | None = None,
    extra: dict[str, str] | None = None,
) -> tuple[Service, int]:
    """``rpa-gateway serve`` on free ports; returns it and its gateway port."""
    port, admin_port = free_port(), free_port()
    environ = clean_environ()
    environ.update(env.pool.settings_env())
    environ.update(
        {
            "RPA_GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "RPA_GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
            "RPA_GATEWAY_UPSTREAM_URL": env.upstream_url,
            "RPA_GATEWAY_LOG_LEVEL": "warning",
        }
    )
    environ.update(env.gateway_env)
    environ.update(extra or {})
    command = [sys.executable, "-m", "gateway", "serve", f"--workers={workers}"]
    # cwd is a directory of its own, so no developer's .env is read.
    service = env.supervisor.start(
        name,
        command,
        cpus=env.proxy_cpus if cpus is None else cpus,
        env=environ,
        cwd=env.prefix(name),
    )
    wait_for_http(service, f"http://127.0.0.1:{port}/_gateway/ready", timeout=30)
    return service, port


def _auth_nginx(
    env: Environment, name: str, auth_port: int, auth_path: str
) -> tuple[Service, int]:
    port = free_port()
    prefix = env.prefix(name + "-nginx")
    conf = nginx.auth_request_conf(
        prefix, port, env.upstream_port, auth_port, auth_path, KEY_HEADER
    )
    service = nginx.start_nginx(
        env.supervisor, name + "-nginx", conf, prefix, port, env.proxy_cpus
    )
    return service, port


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}{PATH}"


def direct(env: Environment) -> Setup:
    return Setup("direct", _url(env.upstream_port), env.pool.hit_file)


def nginx_proxy(env: Environment) -> Setup:
    port = free_port()
    prefix = env.prefix("nginx_proxy")
    conf = nginx.proxy_conf(prefix, port, env.upstream_port)
    service = nginx.start_nginx(
        env.supervisor, "nginx_proxy", conf, prefix, port, env.proxy_cpus
    )
    return Setup("nginx_proxy", _url(port), env.pool.hit_file, [service])


def python_proxy(env: Environment) -> Setup:
    port = free_port()
    service = _python(
        env,
        "python_proxy",
        "bench.python_proxy",
        f"--port={port}",
        f"--upstream={env.upstream_url}",
    )
    wait_for_port(service, port)
    return Setup("python_proxy", _url(port), env.pool.hit_file, [service])


def start_trivial_auth(env: Environment, name: str) -> tuple[Service, int]:
    """The allow-all endpoint on a free port; returns it and its port."""
    port = free_port()
    service = _python(env, name, "bench.trivial_auth", f"--port={port}")
    wait_for_port(service, port)
    return service, port


def nginx_trivial_auth(env: Environment) -> Setup:
    auth, auth_port = start_trivial_auth(env, "trivial_auth")
    front, port = _auth_nginx(env, "nginx_trivial_auth", auth_port, "/")
    return Setup("nginx_trivial_auth", _url(port), env.pool.hit_file, [front, auth])


def gateway(env: Environment) -> Setup:
    service, port = start_gateway(env, "gateway")
    return Setup("gateway", _url(port), env.pool.hit_file, [service], 401)


def gateway_miss(env: Environment) -> Setup:
    extra = {"RPA_GATEWAY_CACHE_TTL_SECONDS": "0"}
    service, port = start_gateway(env, "gateway_miss", extra=extra)
    return Setup("gateway_miss", _url(port), env.pool.miss_file, [service], 401)


def gateway_forward_auth(env: Environment) -> Setup:
    auth, auth_port = start_gateway(env, "gateway_forward_auth")
    front, port = _auth_nginx(env, "gateway_forward_auth", auth_port, "/_gateway/auth")
    return Setup(
        "gateway_forward_auth", _url(port), env.pool.hit_file, [front, auth], 401
    )


def gateway_workers(env: Environment) -> Setup:
    service, port = start_gateway(env, "gateway_workers", workers=2)
    return Setup("gateway_workers", _url(port), env.pool.hit_file, [service], 401)


def write_signing_key(path: Path) -> Path:
    """A fresh Ed25519 private key in PEM, readable by its owner only."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.touch(mode=0o600)
    path.write_bytes(pem)
    return path


def gateway_assertions(env: Environment) -> Setup:
    signing_key = write_signing_key(env.prefix("gateway_assertions") / "signing.pem")
    extra = {"RPA_GATEWAY_ASSERTION_KEY_FILE": str(signing_key)}
    service, port = start_gateway(env, "gateway_assertions", extra=extra)
    return Setup("gateway_assertions", _url(port), env.pool.hit_file, [service], 401)


STARTERS: dict[str, Callable[[Environment], Setup]] = {
    "direct": direct,
    "nginx_proxy": nginx_proxy,
    "python_proxy": python_proxy,
    "nginx_trivial_auth": nginx_trivial_auth,
    "gateway": gateway,
    "gateway_miss": gateway_miss,
    "gateway_forward_auth": gateway_forward_auth,
    "gateway_workers": gateway_workers,
    "gateway_assertions": gateway_assertions,
}
