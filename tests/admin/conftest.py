"""Fixtures for the admin app: a store, the app on it, and callers.

``world`` runs on both Redis backends (through the shared ``store``
fixture); ``fake_world`` runs on fakeredis only, for the big matrices.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import httpx
import pytest

from admin.app import create_app
from gateway.settings import Settings
from gateway.store import KeyStore
from gateway.verifier import Verifier
from tests.conftest import PEPPER

ALL = (
    "user_management.open",
    "user_management.admin",
    "user_api_key.create",
    "user_api_key.edit",
    "user_api_key.delete",
)


def future_day(days: int = 30) -> str:
    """A date ``days`` from today (UTC), as YYYY-MM-DD."""
    return (datetime.now(UTC) + timedelta(days=days)).date().isoformat()


@dataclass
class World:
    """The admin app on a store, with helpers to make users and call it."""

    settings: Settings
    store: KeyStore
    verifier: Verifier
    client: httpx.AsyncClient
    keys: dict[str, str] = field(default_factory=dict)

    async def user(self, user_id: str, privileges: Iterable[str] = ALL) -> str:
        """Add a user with a key of their own; the key."""
        await self.store.add_user(user_id, user_id.title(), privileges)
        _, plaintext = await self.store.create_key(
            user_id, name=f"{user_id} sign-in", expires_at=future_day(60)
        )
        self.keys[user_id] = plaintext
        return plaintext

    async def call(
        self, method: str, path: str, as_user: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if as_user is not None:
            headers["Authorization"] = f"Bearer {self.keys[as_user]}"
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def audit(self) -> list[dict[str, str]]:
        """The raw stream, oldest first."""
        rows = await self.store.redis.xrange(f"{self.store.ns}:audit")
        return [dict(data, id=entry_id) for entry_id, data in rows]


async def make_world(
    settings: Settings, store: KeyStore, client_host: str = "127.0.0.1"
) -> AsyncIterator[World]:
    verifier = Verifier.from_settings(settings, store)
    app = create_app(settings, store, verifier)
    transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://admin.test"
    ) as client:
        yield World(settings, store, verifier, client)


@pytest.fixture
async def world(settings: Settings, store: KeyStore) -> AsyncIterator[World]:
    async for item in make_world(settings, store):
        yield item


@pytest.fixture
async def fake_store(namespace: str) -> AsyncIterator[KeyStore]:
    client = fakeredis.FakeAsyncRedis(
        server=fakeredis.FakeServer(), decode_responses=True
    )
    yield KeyStore(client, namespace, PEPPER.encode(), max_lifetime_days=366)
    await client.aclose()


@pytest.fixture
async def fake_world(settings: Settings, fake_store: KeyStore) -> AsyncIterator[World]:
    async for item in make_world(settings, fake_store):
        yield item


@pytest.fixture
def audit_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """``caplog``, capturing ``admin.audit`` from INFO."""
    caplog.set_level(logging.INFO, logger="admin.audit")
    return caplog
