"""nginx configurations for the upstream and the nginx-fronted setups.

Each nginx runs from a prefix directory of its own with one worker, no
access log, and keep-alive limits high enough that no connection is closed
during a run (nginx closes a keep-alive connection after 1,000 requests by
default, which would count as reconnects in the measurement).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.procs import Service, Supervisor, wait_for_port

UPSTREAM_BODY = '{"status":"ok","service":"bench-upstream","items":[1,2,3]}'
AUTH_LOCATION = "/_bench_auth"
_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()),
        None,
    )


def _main_block(prefix: Path, server: str, upstreams: str = "") -> str:
    # Workers of a root master would run as "nobody" and could not enter the
    # private run directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {kind}_temp_path {prefix}/tmp/{kind};\n" for kind in _TEMP_KINDS
    )
    return f"""{user}worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
{temp}{upstreams}
    server {{
{server}
    }}
}}
"""


def _upstream_block(name: str, port: int) -> str:
    return f"""    upstream {name} {{
        server 127.0.0.1:{port};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 75s;
    }}
"""


_KEEPALIVE = """            proxy_http_version 1.1;
            proxy_set_header Connection "";"""


def upstream_conf(prefix: Path, port: int) -> str:
    """The fixed small JSON body that every configuration finally reaches."""
    server = f"""        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{UPSTREAM_BODY}';
        }}"""
    return _main_block(prefix, server)


def proxy_conf(prefix: Path, port: int, upstream_port: int) -> str:
    """``proxy_pass`` with pooled upstream connections: the C reference."""
    server = f"""        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
{_KEEPALIVE}
        }}"""
    return _main_block(prefix, server, _upstream_block("backend", upstream_port))


def auth_request_conf(
    prefix: Path,
    port: int,
    upstream_port: int,
    auth_port: int,
    auth_path: str,
    key_header: str,
) -> str:
    """``auth_request`` to an HTTP endpoint, identity passed on upstream.

    Both forward-auth setups use this same file, so they differ only in the
    endpoint that answers the subrequest.
    """
    server = f"""        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            auth_request {AUTH_LOCATION};
            auth_request_set $bench_user $upstream_http_x_rpa_user_id;
            auth_request_set $bench_key $upstream_http_x_rpa_key_id;
            proxy_set_header X-RPA-User-Id $bench_user;
            proxy_set_header X-RPA-Key-Id $bench_key;
            proxy_set_header {key_header} "";
            proxy_pass http://backend;
{_KEEPALIVE}
        }}
        location = {AUTH_LOCATION} {{
            internal;
            proxy_pass http://auth{auth_path};
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-Method $request_method;
            proxy_set_header X-Forwarded-Uri $request_uri;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Proto $scheme;
{_KEEPALIVE}
        }}"""
    upstreams = _upstream_block("backend", upstream_port) + _upstream_block(
        "auth", auth_port
    )
    return _main_block(prefix, server, upstreams)


def start_nginx(
    supervisor: Supervisor,
    name: str,
    conf: str,
    prefix: Path,
    port: int,
    cpus: str | None,
) -> Service:
    """Write the configuration under prefix and run nginx in the foreground."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed.")
    for kind in _TEMP_KINDS:
        (prefix / "tmp" / kind).mkdir(parents=True, exist_ok=True)
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    command = [binary, "-p", f"{prefix}/", "-c", str(conf_path)]
    command += ["-e", str(prefix / "error.log")]
    service = supervisor.start(name, command, cpus=cpus)
    wait_for_port(service, port)
    return service
