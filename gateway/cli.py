"""The ``rpa-gateway`` command: the operator's tool.

Exit status: 0 on success, 1 when the store refuses an operation (an unknown
user, say), 2 for a usage or settings error. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TextIO

from admin.audit import AuditLog, Event
from gateway import keys
from gateway.assertion import Asserter
from gateway.problems import GatewayError, InvalidInput, StoreUnavailable
from gateway.settings import Settings, SettingsError, load_settings
from gateway.store import (
    PRIVILEGES,
    KeyRecord,
    KeyStore,
    User,
    explain,
    iso,
    store_from_settings,
)

EXIT_REFUSED = 1
EXIT_USAGE = 2


class CliError(Exception):
    def __init__(self, message: str, status: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.status = status


def _fail(message: str, status: int) -> NoReturn:
    print(f"rpa-gateway: {message}", file=sys.stderr)
    raise SystemExit(status)


def key_json(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "user_id": record.user_id,
        "name": record.name,
        "description": record.description,
        "hint": record.hint,
        "created_at": iso(record.created_at),
        "created_by": record.created_by,
        "expires_at": iso(record.expires_at),
        "status": record.status(),
        "last_used_at": iso(record.last_used_at) if record.last_used_at else None,
    }


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "privileges": sorted(user.privileges),
        "disabled": user.disabled,
    }


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        )
        print(line.rstrip(), file=out)


# Commands on the store -----------------------------------------------------

Handler = Callable[[KeyStore, argparse.Namespace], Awaitable[None]]


async def audit(args: argparse.Namespace, action: str, **details: Any) -> None:
    """Operator actions land in the same audit trail as the admin API's."""
    log: AuditLog = args.audit_log
    await log.record(
        Event(
            action=action,
            actor="cli",
            request_id=f"cli-{keys.new_key_id()}",
            client=f"cli:{getpass.getuser()}@{socket.gethostname()}",
            status=200,
            **details,
        )
    )


async def users_add(store: KeyStore, args: argparse.Namespace) -> None:
    privileges = PRIVILEGES if args.all_privileges else args.privilege or ()
    user = await store.add_user(args.user_id, args.name, privileges)
    await audit(
        args,
        "user.add",
        user_id=user.id,
        changes={"name": user.name, "privileges": sorted(user.privileges)},
    )
    granted = ", ".join(sorted(user.privileges)) or "none"
    print(f"Added user '{user.id}' with privileges: {granted}.")


async def users_list(store: KeyStore, args: argparse.Namespace) -> None:
    users = await store.list_users()
    if args.json:
        print(json.dumps([user_json(u) for u in users], indent=2))
        return
    if not users:
        print("No users.")
        return
    rows = [["ID", "NAME", "STATUS", "PRIVILEGES"]]
    for user in users:
        status = "disabled" if user.disabled else "enabled"
        rows.append([user.id, user.name, status, ",".join(sorted(user.privileges))])
    _table(rows, sys.stdout)


async def users_disable(store: KeyStore, args: argparse.Namespace) -> None:
    await store.update_user(args.user_id, disabled=True)
    await audit(args, "user.edit", user_id=args.user_id, changes={"disabled": True})
    print(f"Disabled user '{args.user_id}'; their keys stop working now.")


async def users_enable(store: KeyStore, args: argparse.Namespace) -> None:
    await store.update_user(args.user_id, disabled=False)
    await audit(args, "user.edit", user_id=args.user_id, changes={"disabled": False})
    print(f"Enabled user '{args.user_id}'.")


async def users_remove(store: KeyStore, args: argparse.Namespace) -> None:
    revoked = await store.remove_user(args.user_id)
    await audit(args, "user.remove", user_id=args.user_id, changes={"revoked": revoked})
    print(f"Removed user '{args.user_id}' and revoked {revoked} key(s).")


async def keys_create(store: KeyStore, args: argparse.Namespace) -> None:
    record, plaintext = await store.create_key(
        args.user,
        name=args.name or "CLI key",
        description=args.description or "",
        expires_at=args.expires,
        created_by="cli",
    )
    await audit(
        args,
        "key.create",
        key_id=record.id,
        user_id=record.user_id,
        changes={"name": record.name, "expires_at": iso(record.expires_at)},
    )
    if args.json:
        body = {
            "id": record.id,
            "key": plaintext,
            "user_id": record.user_id,
            "name": record.name,
            "expires_at": iso(record.expires_at),
        }
        print(json.dumps(body))
    else:
        print(plaintext)
    print(
        f"Created key '{record.id}' for user '{record.user_id}', expiring "
        f"{iso(record.expires_at)}. Store it now: it will not be shown again.",
        file=sys.stderr,
    )


async def keys_list(store: KeyStore, args: argparse.Namespace) -> None:
    if args.user:
        await store.require_user(args.user)
    records = await store.list_keys(args.user)
    if args.json:
        print(json.dumps([key_json(r) for r in records], indent=2))
        return
    if not records:
        print("No keys.")
        return
    rows = [["ID", "USER", "NAME", "HINT", "EXPIRES", "STATUS"]]
    for r in records:
        rows.append(
            [r.id, r.user_id, r.name, "..." + r.hint, iso(r.expires_at), r.status()]
        )
    _table(rows, sys.stdout)


async def keys_edit(store: KeyStore, args: argparse.Namespace) -> None:
    if args.expires is None and args.name is None and args.description is None:
        raise CliError(
            "Nothing to change: give --expires, --name or --description.", EXIT_USAGE
        )
    record = await store.edit_key(
        args.key_id,
        name=args.name,
        description=args.description,
        expires_at=args.expires,
    )
    changes = {
        name: value
        for name, value in (
            ("name", args.name),
            ("description", args.description),
            ("expires_at", iso(record.expires_at) if args.expires else None),
        )
        if value is not None
    }
    await audit(
        args, "key.edit", key_id=record.id, user_id=record.user_id, changes=changes
    )
    expires = iso(record.expires_at)
    print(f"Updated key '{record.id}': expires {expires}, {record.status()}.")


async def keys_revoke(store: KeyStore, args: argparse.Namespace) -> None:
    record = await store.revoke_key(args.key_id)
    await audit(args, "key.delete", key_id=record.id, user_id=record.user_id)
    print(f"Revoked key '{record.id}' of user '{record.user_id}'.")


async def check(store: KeyStore, args: argparse.Namespace) -> None:
    print("Settings: valid.")
    try:
        await store.ping()
    except StoreUnavailable as exc:
        raise CliError(f"Redis: not reachable ({explain(exc)})") from None
    print("Redis: reachable.")
    durable, how = await store.persistence()
    if durable is False:
        print(
            f"WARNING: Redis does not persist data ({how}). A restart loses every "
            "key and user. Use config/redis.conf (AOF, appendfsync everysec).",
            file=sys.stderr,
        )
    elif durable is None:
        print(
            f"WARNING: cannot tell whether Redis persists data ({how}).",
            file=sys.stderr,
        )
    print(f"Redis persistence: {how}.")
    asserter = Asserter.from_settings(args.settings)
    if asserter is None:
        print("Identity assertions: off.")
    else:
        print(
            f"Identity assertions: signed with {asserter.algorithm}, "
            f"key id '{asserter.kid}'."
        )


async def _run_on_store(
    settings: Settings, handler: Handler, args: argparse.Namespace
) -> None:
    store = store_from_settings(settings)
    args.audit_log = AuditLog(store.redis, settings.namespace, settings.audit_max_len)
    args.settings = settings
    try:
        await handler(store, args)
    finally:
        await store.redis.aclose()


# Parser --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpa-gateway",
        description="API-key authentication gateway for RPA Manager.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, help_text in (
        ("serve", "run the gateway and admin listeners"),
        ("demo", "run a self-contained demo"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(command_name=name)
        if name == "serve":
            sub.add_argument("--workers", type=int, default=1, help="worker processes")

    sub = commands.add_parser("check", help="check settings and Redis")
    sub.set_defaults(handler=check)

    users = commands.add_parser("users", help="manage users").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    sub = users.add_parser("add", help="add a user")
    sub.add_argument("user_id", metavar="USER_ID")
    sub.add_argument("--name", help="display name")
    sub.add_argument(
        "--privilege",
        action="append",
        choices=PRIVILEGES,
        metavar="P",
        help=f"grant a privilege (repeatable): {', '.join(PRIVILEGES)}",
    )
    sub.add_argument(
        "--all-privileges", action="store_true", help="grant every privilege"
    )
    sub.set_defaults(handler=users_add)
    sub = users.add_parser("list", help="list users")
    sub.add_argument("--json", action="store_true")
    sub.set_defaults(handler=users_list)
    for action, handler, help_text in (
        ("disable", users_disable, "disable a user: their keys stop working"),
        ("enable", users_enable, "enable a user again"),
        ("remove", users_remove, "revoke every key of a user and remove the user"),
    ):
        sub = users.add_parser(action, help=help_text)
        sub.add_argument("user_id", metavar="USER_ID")
        sub.set_defaults(handler=handler)

    key_cmds = commands.add_parser("keys", help="manage keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    sub = key_cmds.add_parser("create", help="create a key and print it once")
    sub.add_argument("--user", required=True, metavar="USER_ID")
    sub.add_argument("--expires", required=True, metavar="YYYY-MM-DD|RFC3339")
    sub.add_argument("--name")
    sub.add_argument("--description")
    sub.add_argument("--json", action="store_true")
    sub.set_defaults(handler=keys_create)
    sub = key_cmds.add_parser("list", help="list keys (never the key itself)")
    sub.add_argument("--user", metavar="USER_ID")
    sub.add_argument("--json", action="store_true")
    sub.set_defaults(handler=keys_list)
    sub = key_cmds.add_parser(
        "edit", help="change a key's expiration, name or description"
    )
    sub.add_argument("key_id", metavar="KEY_ID")
    sub.add_argument("--expires", metavar="YYYY-MM-DD|RFC3339")
    sub.add_argument("--name")
    sub.add_argument("--description")
    sub.set_defaults(handler=keys_edit)
    sub = key_cmds.add_parser("revoke", help="revoke a key now")
    sub.add_argument("key_id", metavar="KEY_ID")
    sub.set_defaults(handler=keys_revoke)
    return parser


def _serve_or_demo(args: argparse.Namespace) -> int:
    if args.command_name == "demo":
        from gateway.demo import run_demo

        return run_demo()
    from gateway.server import serve

    settings = load_settings()
    if settings.upstream_url is None:
        raise SettingsError(
            "Invalid setting RPA_GATEWAY_UPSTREAM_URL: is required to serve."
        )
    if not 1 <= args.workers <= 64:
        raise CliError(
            f"--workers must be from 1 to 64, not {args.workers}.", EXIT_USAGE
        )
    return serve(settings, workers=args.workers)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "command_name", None):
            return _serve_or_demo(args)
        settings = load_settings()
        asyncio.run(_run_on_store(settings, args.handler, args))
    except SettingsError as exc:
        _fail(str(exc), EXIT_USAGE)
    except InvalidInput as exc:
        _fail(exc.detail, EXIT_USAGE)
    except GatewayError as exc:
        _fail(exc.detail, EXIT_REFUSED)
    except CliError as exc:
        _fail(str(exc), exc.status)
    except KeyboardInterrupt:
        return 130
    return 0
