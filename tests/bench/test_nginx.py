"""The generated nginx configurations are ones nginx accepts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import nginx

pytestmark = pytest.mark.nginx


def _check(prefix: Path, conf: str) -> None:
    binary = nginx.nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed.")
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / kind).mkdir(parents=True, exist_ok=True)
    path = prefix / "nginx.conf"
    path.write_text(conf)
    done = subprocess.run(
        [binary, "-t", "-p", f"{prefix}/", "-c", str(path), "-e", str(prefix / "e")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda p: nginx.upstream_conf(p, 9001), id="upstream"),
        pytest.param(lambda p: nginx.proxy_conf(p, 9002, 9001), id="proxy"),
        pytest.param(
            lambda p: nginx.auth_request_conf(
                p, 9003, 9001, 9004, "/_gateway/auth", "X-API-Key"
            ),
            id="auth_request",
        ),
    ],
)
def test_configuration_passes_nginx_t(tmp_path: Path, build: object) -> None:
    assert callable(build)
    _check(tmp_path, build(tmp_path))


def test_upstream_body_is_small_fixed_json() -> None:
    assert json.loads(nginx.UPSTREAM_BODY)["status"] == "ok"
    assert len(nginx.UPSTREAM_BODY) < 100
