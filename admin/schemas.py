"""Request and response models: what the API accepts, what it answers.

These models are the source of the OpenAPI document (``admin.openapi``).
Requests forbid unknown fields. Expiration dates stay strings here and are
parsed by ``gateway.store.parse_expiration``, the one place that knows that
a date alone means the end of that day in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from admin.privileges import Privilege
from gateway.keys import KEY_ID_PATTERN
from gateway.store import DESCRIPTION_MAX, NAME_MAX, USER_ID_PATTERN, KeyRecord, User

USER_ID_REGEX = USER_ID_PATTERN.pattern
# Each part of a stream entry id is an unsigned 64-bit number (Redis streams
# introduction, "Entry IDs").
STREAM_ID_PART_MAX = 2**64 - 1
UserId = Annotated[str, Field(pattern=USER_ID_REGEX, examples=["alice"])]
KeyName = Annotated[
    str, Field(min_length=1, max_length=NAME_MAX, examples=["Composer flow"])
]
Description = Annotated[str, Field(max_length=DESCRIPTION_MAX)]
Expiration = Annotated[
    str,
    Field(
        description=(
            "A date (YYYY-MM-DD, meaning the end of that day in UTC) or an "
            "RFC 3339 date-time with a time zone; in the future and within "
            "the maximum key lifetime."
        ),
        json_schema_extra={"anyOf": [{"format": "date"}, {"format": "date-time"}]},
        examples=["2030-12-31"],
    ),
]


class Request(BaseModel):
    """A JSON body: unknown fields are refused, and no type is coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    """Query parameters: strings coerced, unknown names ignored."""

    model_config = ConfigDict(extra="ignore")


class KeyCreate(Request):
    """Create a key; ``user_id`` defaults to the caller."""

    name: KeyName
    description: Description = ""
    expires_at: Expiration
    user_id: UserId | None = None


class KeyEdit(Request):
    """Change any of name, description and expiration; at least one."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"minProperties": 1}
    )

    name: KeyName | None = None
    description: Description | None = None
    expires_at: Expiration | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> KeyEdit:
        if self.name is None and self.description is None and self.expires_at is None:
            raise ValueError("Nothing to change: give name, description or expires_at.")
        return self


class UserEdit(Request):
    """Enable or disable a user, or rename them."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"minProperties": 1}
    )

    name: KeyName | None = None
    disabled: bool | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> UserEdit:
        if self.name is None and self.disabled is None:
            raise ValueError("Nothing to change: give name or disabled.")
        return self


PAGE_MAX = 1000
PageLimit = Annotated[
    int | None,
    Field(
        ge=1,
        le=PAGE_MAX,
        description="At most this many items, and a 'next' cursor; all without it.",
    ),
]


class KeysQuery(Query):
    user_id: UserId | None = None
    limit: PageLimit = None
    before: str | None = Field(
        None,
        pattern=KEY_ID_PATTERN.pattern,
        description="The 'next' cursor of the previous page (a key id).",
    )


class UsersQuery(Query):
    limit: PageLimit = None
    after: UserId | None = Field(
        None, description="The 'next' cursor of the previous page (a user id)."
    )


class AuditQuery(Query):
    limit: int = Field(50, ge=1, le=500)
    before: str | None = Field(
        None,
        pattern=r"^\d{1,20}-\d{1,20}$",
        description="The 'next' cursor of the previous page.",
    )

    @field_validator("before")
    @classmethod
    def _a_stream_entry_id(cls, before: str | None) -> str | None:
        if before is None:
            return None
        # The pattern's \d also matches other scripts' digits, which Redis
        # does not read.
        if not before.isascii():
            raise ValueError("the cursor must be written in ASCII digits")
        parts = [int(part) for part in before.split("-")]
        if max(parts) > STREAM_ID_PART_MAX:
            raise ValueError(
                f"each part of the cursor must be at most {STREAM_ID_PART_MAX}"
            )
        if not any(parts):
            raise ValueError("no entry comes before '0-0'; pass the 'next' of a page")
        return before


# Responses ------------------------------------------------------------------


class Key(BaseModel):
    id: str
    user_id: str
    name: str
    description: str
    hint: str = Field(description="The last four characters of the key.")
    created_at: datetime
    created_by: str
    expires_at: datetime
    status: Literal["active", "expired"]
    last_used_at: datetime | None

    @classmethod
    def of(cls, record: KeyRecord) -> Key:
        return cls(
            id=record.id,
            user_id=record.user_id,
            name=record.name,
            description=record.description,
            hint=record.hint,
            created_at=_moment(record.created_at),
            created_by=record.created_by,
            expires_at=_moment(record.expires_at),
            status="expired" if record.is_expired() else "active",
            last_used_at=_moment(record.last_used_at) if record.last_used_at else None,
        )


class CreatedKey(Key):
    key: str = Field(description="The API key. Returned here only, never again.")


class KeyList(BaseModel):
    items: list[Key] = Field(description="Newest first.")
    next: str | None = Field(
        description="Pass as 'before' for the next page; null on the last one."
    )


class UserOut(BaseModel):
    id: str
    name: str
    privileges: list[Privilege]
    disabled: bool

    @classmethod
    def of(cls, user: User) -> UserOut:
        privileges = [Privilege(p) for p in sorted(user.privileges)]
        return cls(
            id=user.id, name=user.name, privileges=privileges, disabled=user.disabled
        )


class UserList(BaseModel):
    items: list[UserOut] = Field(description="By user id.")
    next: str | None = Field(
        description="Pass as 'after' for the next page; null on the last one."
    )


class Me(UserOut):
    authenticated_by: Literal["api_key", "sso"]
    key_id: str | None = Field(description="The key the caller signed in with.")
    max_key_lifetime_days: int = Field(description="The furthest expiration.")


class AuditEntry(BaseModel):
    id: str = Field(description="The stream entry id; also the paging cursor.")
    time: datetime
    actor: str | None
    actor_key_id: str | None = Field(
        description="The API key the actor signed in with; null for SSO and the CLI."
    )
    action: str
    outcome: Literal["ok", "refused"]
    status: int
    key_id: str | None
    user_id: str | None
    changes: dict[str, Any]
    detail: str | None
    request_id: str
    client: str | None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next: str | None = Field(description="Pass as 'before' for the next page.")


class FieldError(BaseModel):
    field: str
    rule: str
    detail: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None
    field: str | None = None
    rule: str | None = None
    privilege: str | None = None
    errors: list[FieldError] | None = None


def _moment(timestamp: float) -> datetime:
    return datetime.fromtimestamp(int(timestamp), UTC)
