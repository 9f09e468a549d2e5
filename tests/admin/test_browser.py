"""The User API Keys page in Chromium, against the real gateway.

One stack per module, on the real Redis: the admin app (with its own store
and verifier, like a separate replica), the gateway listener (its own
context, cache and invalidation subscriber) and the stand-in RPA backend.
Every test signs in as a user of its own and saves screenshots under its
output folder.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.settings import Settings
from gateway.store import KeyStore
from tests.admin.conftest import ALL
from tests.admin.live import LiveApps
from tests.conftest import (
    PEPPER,
    REAL_REDIS_URL,
    drop_namespace,
    require,
    require_binary,
)

pytestmark = [pytest.mark.browser, pytest.mark.redis]

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SSO_HEADER = "X-Remote-User"
# Everything but Administration: the user sees their own keys only.
OWN_KEYS = tuple(p for p in ALL if p != "user_management.admin")


def day(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).date().isoformat()


class Stack:
    """admin, gateway, backend: the three listeners, and their store."""

    def __init__(self) -> None:
        self.namespace = "br" + secrets.token_hex(5)
        self.store: KeyStore | None = None
        self.live: LiveApps | None = None

    async def build(self, ports: list[int]) -> list[Any]:
        from gateway.rpa_backend import create_backend_app
        from gateway.server import Context, build_admin_app, build_gateway_app

        admin_port, gateway_port, backend_port = ports
        settings = Settings(
            key_pepper=PEPPER,
            namespace=self.namespace,
            redis_url=REAL_REDIS_URL,
            upstream_url=f"http://127.0.0.1:{backend_port}",
            listen=f"127.0.0.1:{gateway_port}",
            admin_listen=f"127.0.0.1:{admin_port}",
            admin_sso_header=SSO_HEADER,
            admin_sso_proxies=["127.0.0.1"],
            access_log=False,
        )
        admin = Context.create(settings)
        edge = Context.create(settings)
        self.store = admin.store
        for context in (admin, edge):
            await context.start()
            await context.subscriber.subscribed.wait()
            assert self.live is not None
            self.live.cleanups.append(context.aclose)
        # Last: closing a context writes last-used times into the namespace.
        self.live.cleanups.append(self._drop)
        return [
            build_admin_app(admin),
            build_gateway_app(edge),
            create_backend_app(),
        ]

    async def _drop(self) -> None:
        client = aioredis.Redis.from_url(REAL_REDIS_URL, decode_responses=True)
        await drop_namespace(client, self.namespace)
        await client.aclose()

    @property
    def admin_url(self) -> str:
        assert self.live is not None
        return self.live.urls[0] + "/"

    @property
    def gateway_url(self) -> str:
        assert self.live is not None
        return self.live.urls[1]

    def user(self, privileges: tuple[str, ...] = OWN_KEYS) -> tuple[str, str]:
        """A new user with a sign-in key: (user id, key)."""
        user_id = "u" + secrets.token_hex(4)
        assert self.live is not None and self.store is not None
        store = self.store
        self.live.run(
            store.add_user(user_id, f"User {user_id[1:5].upper()}", privileges)
        )
        _, key = self.live.run(
            store.create_key(user_id, name="Sign-in key", expires_at=day(30))
        )
        return user_id, key

    def whoami(self, key: str) -> httpx.Response:
        return httpx.get(
            f"{self.gateway_url}/rpa/api/v1/whoami",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    try:
        import redis

        redis.Redis.from_url(REAL_REDIS_URL).ping()
        reachable = True
    except Exception:
        reachable = False
    require(reachable, f"A Redis server at {REAL_REDIS_URL}")
    built = Stack()
    built.live = LiveApps(built.build, count=3)
    with built.live:
        yield built


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = require_binary("chromium")
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


class Page:
    """A page plus what it logged: console errors fail the test."""

    def __init__(self, page: Any, output: Path) -> None:
        self.page = page
        self.output = output
        self.errors: list[str] = []
        page.on(
            "console",
            lambda message: (
                self.errors.append(message.text) if message.type == "error" else None
            ),
        )
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def shot(self, name: str) -> Path:
        path = self.output / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def sign_in(self, stack: Stack, key: str) -> None:
        page = self.page
        page.goto(stack.admin_url)
        page.get_by_role("textbox", name="API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        playwright_sync.expect(
            page.get_by_role("heading", name="User API Keys")
        ).to_be_visible()


@pytest.fixture
def page(browser: Any, stack: Stack, output_dir: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=stack.admin_url.rstrip("/")
    )
    context.set_default_timeout(10_000)
    wrapped = Page(context.new_page(), output_dir)
    yield wrapped
    context.close()
    # 401s the page expects (sign-in probes, refused keys) log as console
    # errors for the failed fetch; anything else is a bug, a CSP violation
    # first of all.
    unexpected = [e for e in wrapped.errors if "status of 401" not in e]
    assert not [e for e in unexpected if "status of 40" not in e], unexpected
    assert not [e for e in wrapped.errors if "Content Security Policy" in e]


expect = playwright_sync.expect


def test_a_bad_key_is_refused_with_the_problem_detail_and_a_good_one_signs_in(
    page: Page, stack: Stack
) -> None:
    user_id, key = stack.user()
    p = page.page
    p.goto(stack.admin_url)

    p.get_by_role("textbox", name="API key").fill("rpa_not-a-real-key")
    p.get_by_role("button", name="Sign in").click()
    expect(p.get_by_text("The API key is malformed.")).to_be_visible()
    page.shot("refused")

    page.sign_in(stack, key)
    expect(p.locator("#account-name")).to_have_text(f"User {user_id[1:5].upper()}")
    expect(p.locator(".key-card")).to_have_count(1)
    page.shot("signed-in")
    assert p.evaluate("sessionStorage.getItem('rpa-admin-key')") == key


def test_a_key_created_in_the_page_is_copied_and_works_through_the_gateway(
    page: Page, stack: Stack
) -> None:
    user_id, key = stack.user()
    page.sign_in(stack, key)
    p = page.page

    p.get_by_role("button", name="Create").click()
    form = p.get_by_role("dialog", name="Create User API Key")
    expect(form).to_be_visible()
    form.get_by_label("Name").fill("Composer flow")
    form.get_by_label("Description").fill("Starts the invoice process.")
    form.get_by_label("Expiration Date").fill(day(45))
    page.shot("create-form")
    form.get_by_role("button", name="OK").click()

    created = p.get_by_role("dialog", name="Key Created!")
    expect(created).to_be_visible()
    expect(created).to_contain_text("will not be shown again")
    created.get_by_role("button", name="Copy to clipboard").click()
    expect(created.get_by_text("Copied to the clipboard.")).to_be_visible()
    copied = p.evaluate("navigator.clipboard.readText()")
    assert keys.is_well_formed(copied)
    assert created.get_by_role("textbox", name="API key").input_value() == copied
    page.shot("key-created")
    created.get_by_role("button", name="Close").click()
    expect(created).to_be_hidden()

    panel = p.locator(".key-card", has_text="Composer flow")
    expect(panel).to_contain_text("Active")
    expect(panel).to_contain_text(f"rpa_…{copied[-4:]}")
    expect(panel).to_contain_text("Starts the invoice process.")
    page.shot("listed")

    response = stack.whoami(copied)
    assert response.status_code == 200, response.text
    assert response.json()["userId"] == user_id


def test_editing_the_expiration_in_the_page_moves_it(page: Page, stack: Stack) -> None:
    _, key = stack.user()
    page.sign_in(stack, key)
    p = page.page
    new_day = day(120)

    p.get_by_role("button", name="Edit Sign-in key").click()
    form = p.get_by_role("dialog", name="Edit User API Key")
    expect(form).to_be_visible()
    expect(form.get_by_label("Expiration Date")).to_have_value(day(30))
    form.get_by_label("Expiration Date").fill(new_day)
    form.get_by_role("button", name="Save").click()
    expect(form).to_be_hidden()

    label = datetime.fromisoformat(new_day).strftime("%Y")
    panel = p.locator(".key-card", has_text="Sign-in key")
    expect(panel.locator(".key-expires")).to_contain_text(label)
    expect(p.get_by_role("status").filter(has_text="Saved")).to_be_visible()
    page.shot("edited")
    me = httpx.get(
        f"{stack.admin_url}api/keys",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert me.json()["items"][0]["expires_at"] == f"{new_day}T23:59:59Z"


def test_removing_a_key_in_the_page_makes_the_gateway_refuse_it(
    page: Page, stack: Stack
) -> None:
    user_id, key = stack.user()
    assert stack.live is not None and stack.store is not None
    _, doomed = stack.live.run(
        stack.store.create_key(user_id, name="Doomed", expires_at=day(10))
    )
    assert stack.whoami(doomed).status_code == 200  # cached by the gateway now
    page.sign_in(stack, key)
    p = page.page

    p.get_by_role("button", name="Remove Doomed").click()
    confirm = p.get_by_role("dialog", name="Remove User API Key?")
    expect(confirm).to_contain_text("stop working immediately")
    page.shot("confirm-remove")
    confirm.get_by_role("button", name="Remove").click()
    expect(p.locator(".key-card", has_text="Doomed")).to_have_count(0)
    page.shot("removed")

    refused = stack.whoami(doomed)
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert stack.whoami(key).status_code == 200


def test_a_user_without_privileges_is_told_which_privilege_is_missing(
    page: Page, stack: Stack
) -> None:
    _, key = stack.user(privileges=())
    p = page.page
    p.goto(stack.admin_url)
    p.get_by_role("textbox", name="API key").fill(key)
    p.get_by_role("button", name="Sign in").click()

    alert = p.get_by_role("alert").filter(has_text="Could not list keys")
    expect(alert).to_contain_text("'User Management Open' privilege")
    expect(p.get_by_role("button", name="Create")).to_be_disabled()
    page.shot("denied")


def test_a_user_who_may_list_but_not_delete_is_refused_by_the_api(
    page: Page, stack: Stack
) -> None:
    """The buttons follow /api/me; the server refuses when they go stale."""
    user_id, key = stack.user()
    page.sign_in(stack, key)
    p = page.page
    assert stack.live is not None and stack.store is not None
    stack.live.run(
        stack.store.update_user(
            user_id, privileges=[pr for pr in OWN_KEYS if pr != "user_api_key.delete"]
        )
    )

    p.get_by_role("button", name="Remove Sign-in key").click()
    p.get_by_role("dialog", name="Remove User API Key?").get_by_role(
        "button", name="Remove"
    ).click()

    alert = p.get_by_role("alert").filter(has_text="Could not remove")
    expect(alert).to_contain_text("'User API Key Delete' privilege")
    expect(alert).to_contain_text("HTTP 403")
    page.shot("refused-delete")


def test_single_sign_on_signs_in_without_a_key(
    browser: Any, stack: Stack, output_dir: Path
) -> None:
    user_id, _ = stack.user()
    context = browser.new_context(extra_http_headers={SSO_HEADER: user_id})
    try:
        p = context.new_page()
        p.goto(stack.admin_url)
        expect(p.locator("#account-via")).to_have_text(f"{user_id} · single sign-on")
        expect(p.get_by_role("button", name="Sign out")).to_be_hidden()
        p.screenshot(path=str(output_dir / "sso.png"), full_page=True)
    finally:
        context.close()


def test_the_create_flow_works_from_the_keyboard_alone(
    page: Page, stack: Stack
) -> None:
    _, key = stack.user()
    page.sign_in(stack, key)
    p = page.page

    p.get_by_role("button", name="Create").focus()
    p.keyboard.press("Enter")
    form = p.get_by_role("dialog", name="Create User API Key")
    expect(form.get_by_label("Name")).to_be_focused()
    p.keyboard.type("Typed key")
    p.keyboard.press("Enter")  # submits the form
    created = p.get_by_role("dialog", name="Key Created!")
    expect(created.get_by_role("button", name="Copy to clipboard")).to_be_focused()
    p.keyboard.press("Tab")
    expect(created.get_by_role("button", name="Close")).to_be_focused()
    p.keyboard.press("Enter")
    expect(created).to_be_hidden()
    expect(p.get_by_role("button", name="Create")).to_be_focused()

    p.get_by_role("button", name="Edit Typed key").focus()
    p.keyboard.press("Enter")
    expect(p.get_by_role("dialog", name="Edit User API Key")).to_be_visible()
    p.keyboard.press("Escape")
    expect(p.get_by_role("dialog", name="Edit User API Key")).to_be_hidden()
    expect(p.get_by_role("button", name="Edit Typed key")).to_be_focused()
    page.shot("keyboard")


def test_an_administrator_creates_a_key_for_another_user_and_reads_the_audit(
    page: Page, stack: Stack
) -> None:
    admin_id, key = stack.user(privileges=ALL)
    bob_id, _ = stack.user()
    page.sign_in(stack, key)
    p = page.page

    p.get_by_role("combobox", name="User").select_option(bob_id)
    expect(p.locator(".key-card")).to_have_count(1)
    p.get_by_role("button", name="Create").click()
    form = p.get_by_role("dialog", name="Create User API Key")
    expect(form.get_by_label("User")).to_have_value(bob_id)
    form.get_by_label("Name").fill("Made for Bob")
    form.get_by_role("button", name="OK").click()
    p.get_by_role("dialog", name="Key Created!").get_by_role(
        "button", name="Close"
    ).click()
    panel = p.locator(".key-card", has_text="Made for Bob")
    expect(panel.locator(".key-user")).to_have_text(bob_id)
    page.shot("admin-keys")

    p.get_by_role("button", name="Audit trail").click()
    row = p.locator("#audit-rows tr", has_text="key.create").filter(has_text=bob_id)
    expect(row.first).to_contain_text(admin_id)
    expect(row.first).to_contain_text("Made for Bob")
    assert stack.live is not None and stack.store is not None
    (signed_in_with,) = stack.live.run(stack.store.list_keys(admin_id))
    expect(row.first.locator(".via")).to_have_text(f"with key {signed_in_with.id}")
    page.shot("audit")


def test_an_administrator_disables_a_user_and_their_keys_stop_until_enabled(
    page: Page, stack: Stack
) -> None:
    admin_id, key = stack.user(privileges=ALL)
    carol_id, carol_key = stack.user()
    assert stack.whoami(carol_key).status_code == 200  # cached by the gateway now
    page.sign_in(stack, key)
    p = page.page

    p.get_by_role("button", name="Users").click()
    expect(p.get_by_role("heading", name="Users")).to_be_focused()
    row = p.locator("#user-rows tr", has_text=carol_id)
    expect(row).to_contain_text("User API Key Edit")
    expect(row.locator(".badge")).to_have_text("Active")
    row.get_by_role("button", name=f"Disable User {carol_id[1:5].upper()}").click()
    confirm = p.get_by_role("dialog", name="Disable user?")
    expect(confirm).to_contain_text("stops working at once")
    page.shot("confirm-disable")
    confirm.get_by_role("button", name="Disable").click()
    expect(row.locator(".badge")).to_have_text("Disabled")
    expect(row.get_by_role("button", name="Enable")).to_be_focused()
    page.shot("users")
    assert until(lambda: stack.whoami(carol_key).status_code == 401)

    row.get_by_role("button", name="Enable").click()
    expect(row.locator(".badge")).to_have_text("Active")
    assert until(lambda: stack.whoami(carol_key).status_code == 200)
    # The administrator's own row offers nothing to disable.
    own = p.locator("#user-rows tr", has_text=admin_id)
    expect(own.get_by_role("button")).to_have_count(0)
    expect(own).to_contain_text("You")

    p.get_by_role("button", name="Back to keys").click()
    expect(p.get_by_role("heading", name="User API Keys")).to_be_focused()


def until(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether ``check`` holds within ``seconds`` (pub/sub reaches the gateway)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
