"""RPA Manager's privileges and the checks the admin API makes with them.

    privilege                   grants
    user_management.open        open the module: every key endpoint needs it
    user_management.admin       other users' keys, the user list, the audit
    user_api_key.create         create a key for yourself (others: + admin)
    user_api_key.edit           edit your own keys (others: + admin)
    user_api_key.delete         delete your own keys (others: + admin)

A missing privilege is a 403 that names it. The check is made before any
key is read, so a 403 never tells whether a key exists; a key the caller may
not see is then a 404, exactly like a key that does not exist.
"""

from __future__ import annotations

from enum import StrEnum

from gateway.problems import Forbidden, NotFound
from gateway.store import PRIVILEGES, KeyRecord, User


class Privilege(StrEnum):
    OPEN = "user_management.open"
    ADMIN = "user_management.admin"
    CREATE = "user_api_key.create"
    EDIT = "user_api_key.edit"
    DELETE = "user_api_key.delete"


LABELS: dict[Privilege, str] = {
    Privilege.OPEN: "User Management Open",
    Privilege.ADMIN: "User Management Administration",
    Privilege.CREATE: "User API Key Create",
    Privilege.EDIT: "User API Key Edit",
    Privilege.DELETE: "User API Key Delete",
}

# The store owns the list; the enum must not drift from it.
assert tuple(Privilege) == PRIVILEGES


def missing(privilege: Privilege) -> Forbidden:
    return Forbidden(
        f"This action requires the '{LABELS[privilege]}' privilege "
        f"('{privilege.value}').",
        privilege=privilege.value,
    )


def require(user: User, *privileges: Privilege) -> None:
    """Raise ``Forbidden`` naming the first privilege the user lacks."""
    for privilege in privileges:
        if not user.can(privilege):
            raise missing(privilege)


def require_for_user(user: User, target_user_id: str, *privileges: Privilege) -> None:
    """Privileges to act for ``target_user_id``; another user needs admin."""
    require(user, Privilege.OPEN, *privileges)
    if target_user_id != user.id:
        require(user, Privilege.ADMIN)


def can_see(user: User, record: KeyRecord) -> bool:
    if not user.can(Privilege.OPEN):
        return False
    return record.user_id == user.id or user.can(Privilege.ADMIN)


def ensure_visible(user: User, record: KeyRecord) -> KeyRecord:
    """The record, or the same 404 a key that does not exist gets."""
    if not can_see(user, record):
        raise NotFound(f"Key '{record.id}' does not exist.")
    return record
