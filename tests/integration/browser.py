"""A real Chromium (Debian's, driven by Playwright's sync API) for the web UI's tests.

``browser`` is module-scoped and registered in conftest.py. ``signed_in_page``
signs a human in through the real login form. Screenshots go to
``test-output/screenshots/`` under the repository root.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    expect,
    sync_playwright,
)

from tests.conftest import missing
from tests.integration.conftest import ROOT, Gateway

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
PASSWORD = "correct horse battery"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for one test module. Not longer: Playwright's sync API runs an event loop
    on this thread while it is started, and later tests that call ``asyncio.run`` (most
    of tests/store and tests/unit) would fail."""
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def set_password(gw: Gateway, principal: str, password: str = PASSWORD) -> None:
    """A local user's web password (setting it again signs that user out everywhere)."""
    gw.cli("user", "add", principal, "--password-stdin", input=password + "\n")


def base_url(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.api_port}"


def new_context(
    browser: Browser, gw: Gateway, viewport: dict[str, int] | None = None, **options: Any
) -> BrowserContext:
    context = browser.new_context(
        base_url=base_url(gw),
        viewport=viewport or DESKTOP,  # type: ignore[arg-type]
        accept_downloads=True,
        **options,
    )
    context.set_default_timeout(15_000)
    return context


def sign_in(page: Page, principal: str, password: str = PASSWORD) -> None:
    """Through the real sign-in form; lands on the page ``next`` named (the inbox)."""
    page.get_by_label("User name").fill(principal)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text(f"Signed in as {principal}")).to_be_visible()


def signed_in_page(
    browser: Browser,
    gw: Gateway,
    principal: str,
    *,
    viewport: dict[str, int] | None = None,
    path: str = "/ui/reviews",
    **options: Any,
) -> Page:
    """A new browser context (its own cookies; ``options`` go to ``new_context``) with
    ``principal`` signed in, at ``path``. Close it with ``page.context.close()``."""
    page = new_context(browser, gw, viewport, **options).new_page()
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    sign_in(page, principal)
    expect(page).to_have_url(re.compile(re.escape(path) + r"$"))
    return page


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    return target
