"""The rpa-gateway command, on fakeredis and on the real Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway import keys
from gateway.assertion import load_signing_key
from gateway.cli import main
from gateway.settings import load_settings
from gateway.store import store_from_settings
from tests.conftest import PEPPER, REAL_REDIS_URL, free_port, require_binary
from tests.gateway.signing import new_key, pem_file


@pytest.fixture(params=["memory", pytest.param("real", marks=pytest.mark.redis)])
def cli_env(
    request: pytest.FixtureRequest, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> str:
    if request.param == "real":
        request.getfixturevalue("real_redis")
        url = REAL_REDIS_URL
    else:
        url = f"memory://{namespace}"
    monkeypatch.setenv("RPA_GATEWAY_REDIS_URL", url)
    monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", PEPPER)
    monkeypatch.setenv("RPA_GATEWAY_NAMESPACE", namespace)
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def tomorrow() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).date().isoformat()


def test_users_and_keys_round_trip(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(capsys, "users", "add", "alice", "--name", "Alice", "--all-privileges")[0]
        == 0
    )
    status, out, err = run(
        capsys, "keys", "create", "--user", "alice", "--expires", tomorrow()
    )
    assert status == 0
    plaintext = out.strip()
    assert keys.is_well_formed(plaintext)
    assert "will not be shown again" in err
    assert plaintext not in err

    status, out, _ = run(capsys, "keys", "list", "--json")
    listed = json.loads(out)
    assert [k["user_id"] for k in listed] == ["alice"]
    assert plaintext not in out
    key_id = listed[0]["id"]

    status, out, _ = run(capsys, "keys", "edit", key_id, "--name", "renamed")
    assert status == 0 and "Updated key" in out
    status, out, _ = run(capsys, "keys", "list")
    assert "renamed" in out and plaintext not in out

    assert run(capsys, "keys", "revoke", key_id)[0] == 0
    assert json.loads(run(capsys, "keys", "list", "--json")[1]) == []


def test_create_with_json_prints_one_object(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "users", "add", "bob", "--privilege", "user_api_key.create")
    status, out, _ = run(
        capsys,
        "keys",
        "create",
        "--user",
        "bob",
        "--expires",
        "2099-01-01T00:00:00Z",
        "--name",
        "too far",
        "--json",
    )
    assert status == 2
    status, out, _ = run(
        capsys,
        "keys",
        "create",
        "--user",
        "bob",
        "--expires",
        tomorrow(),
        "--name",
        "flow",
        "--json",
    )
    body = json.loads(out)
    assert set(body) == {"id", "key", "user_id", "name", "expires_at"}
    assert body["user_id"] == "bob" and body["name"] == "flow"
    assert body["expires_at"].endswith("T23:59:59Z")


def test_users_can_be_disabled_enabled_listed_and_removed(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "users", "add", "carol")
    assert run(capsys, "users", "disable", "carol")[0] == 0
    assert json.loads(run(capsys, "users", "list", "--json")[1])[0]["disabled"] is True
    assert run(capsys, "users", "enable", "carol")[0] == 0
    assert "enabled" in run(capsys, "users", "list")[1]
    status, out, _ = run(capsys, "users", "remove", "carol")
    assert status == 0 and "revoked 0 key(s)" in out


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        pytest.param(
            ["keys", "create", "--user", "nobody", "--expires", tomorrow()],
            1,
            "User 'nobody' does not exist.",
            id="unknown-user",
        ),
        pytest.param(
            ["keys", "revoke", "01ABC"],
            1,
            "Key '01ABC' does not exist.",
            id="unknown-key",
        ),
        pytest.param(
            ["users", "disable", "ghost"],
            1,
            "User 'ghost' does not exist.",
            id="disable-unknown",
        ),
        pytest.param(
            ["users", "add", "bad id"],
            2,
            "'bad id' is not a valid user id",
            id="bad-user-id",
        ),
        pytest.param(
            ["users", "add", "eve", "--name", "\u202eeve"],
            2,
            "The name must not contain bidirectional override",
            id="bidi-user-name",
        ),
        pytest.param(
            ["keys", "edit", "01ABC"], 2, "Nothing to change", id="empty-edit"
        ),
    ],
)
def test_refused_operations_print_one_line_and_exit_non_zero(
    cli_env: str,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    message: str,
) -> None:
    got, _, err = run(capsys, *argv)
    assert got == status
    assert message in err
    assert err.count("\n") == 1 and err.startswith("rpa-gateway: ")


def test_a_bad_expiration_is_a_usage_error(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "users", "add", "dave")
    status, _, err = run(
        capsys, "keys", "create", "--user", "dave", "--expires", "soon"
    )
    assert status == 2
    assert "'soon' is not a date" in err


def test_check_reports_settings_redis_and_persistence(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "check")
    assert status == 0
    assert "Settings: valid." in out and "Redis: reachable." in out
    assert "Redis persistence:" in out
    if cli_env == REAL_REDIS_URL:
        # The machine's Redis keeps nothing on disk: the warning must be loud.
        assert "WARNING: Redis does not persist data" in err
    assert "Identity assertions: off." in out


def test_check_names_the_assertion_signing_key(
    cli_env: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    key_file = pem_file(tmp_path, "signing.pem", new_key("ES256"))
    monkeypatch.setenv("RPA_GATEWAY_ASSERTION_KEY_FILE", str(key_file))
    kid = load_signing_key(str(key_file)).thumbprint()
    status, out, _ = run(capsys, "check")
    assert status == 0
    assert f"Identity assertions: signed with ES256, key id '{kid}'." in out


def test_check_fails_when_redis_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", PEPPER)
    monkeypatch.setenv("RPA_GATEWAY_REDIS_URL", "redis://:pw-in-url@127.0.0.1:1/0")
    status, _, err = run(capsys, "check")
    assert status == 1
    assert "Redis: not reachable" in err
    # The client's own reason, which names the address but not the password.
    assert "ConnectionError" in err and "127.0.0.1:1" in err
    assert "pw-in-url" not in err


def test_a_missing_pepper_exits_2_naming_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, _, err = run(capsys, "keys", "list")
    assert status == 2
    expected = "Invalid setting RPA_GATEWAY_KEY_PEPPER: is required but not set."
    assert err == f"rpa-gateway: {expected}\n"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "keys", "create", "--user", "x")
    assert status == 2
    assert "--expires" in err


def test_the_module_runs_as_python_dash_m(namespace: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    for command in ("serve", "demo", "users", "keys", "check"):
        assert command in result.stdout


@pytest.mark.redis
def test_check_finds_the_shipped_redis_conf_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = require_binary("redis-server")
    conf = Path(__file__).resolve().parents[2] / "config" / "redis.conf"
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            str(conf),
            "--port",
            str(port),
            "--dir",
            str(tmp_path),
            "--bind",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", PEPPER)
        monkeypatch.setenv("RPA_GATEWAY_REDIS_URL", f"redis://127.0.0.1:{port}/0")
        deadline = time.monotonic() + 10
        while True:
            status, out, err = run(capsys, "check")
            if status == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 0, err
        assert "Redis persistence: AOF (appendfsync everysec)." in out
        assert "WARNING" not in err
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_operator_actions_are_audited_without_the_key(
    cli_env: str, capsys: pytest.CaptureFixture[str], namespace: str
) -> None:
    run(capsys, "users", "add", "erin", "--all-privileges")
    plaintext = run(
        capsys, "keys", "create", "--user", "erin", "--expires", tomorrow()
    )[1]
    key_id = json.loads(run(capsys, "keys", "list", "--json")[1])[0]["id"]
    run(capsys, "keys", "edit", key_id, "--name", "renamed")
    run(capsys, "keys", "revoke", key_id)
    run(capsys, "users", "disable", "erin")

    async def read() -> list[dict[str, str]]:
        store = store_from_settings(load_settings())
        rows = await store.redis.xrange(f"{namespace}:audit")
        await store.redis.aclose()
        return [data for _, data in rows]

    entries = asyncio.run(read())
    assert [e["action"] for e in entries] == [
        "user.add",
        "key.create",
        "key.edit",
        "key.delete",
        "user.edit",
    ]
    assert {e["actor"] for e in entries} == {"cli"}
    assert {e["actor_key_id"] for e in entries} == {""}
    assert entries[2]["key_id"] == key_id
    assert json.loads(entries[2]["changes"]) == {"name": "renamed"}
    assert plaintext.strip() not in repr(entries)
