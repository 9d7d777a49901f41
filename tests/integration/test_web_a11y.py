"""Every page of the web UI checked with axe-core (WCAG 2 A and AA rules) in Chromium.

axe-core comes from npm (src/wardgate/web/assets, a dev dependency that
`scripts/test` installs); it is evaluated in the page through Playwright, so the
pages keep their own Content-Security-Policy.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.conftest import missing
from tests.integration.browser import PHONE, new_context
from tests.integration.conftest import ROOT, Gateway
from tests.integration.test_web_pages import agent_update, api, gw, pages

__all__ = ["gw", "pages"]  # fixtures, used by name

pytestmark = pytest.mark.integration

AXE = ROOT / "src/wardgate/web/assets/node_modules/axe-core/axe.min.js"
# Moderate, serious and critical findings fail; minor ones are printed.
FAILING = {"moderate", "serious", "critical"}


def axe(page: Page) -> list[dict[str, Any]]:
    if not AXE.exists():
        missing(f"{AXE} is missing: run scripts/test (it runs npm ci in src/wardgate/web/assets)")
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text())
    result = page.evaluate(
        "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', "
        "'wcag21aa', 'best-practice']}, resultTypes: ['violations']})"
    )
    return list(result["violations"])


def check(page: Page, what: str) -> None:
    found = axe(page)
    report = [
        {
            "rule": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "where": [n["target"] for n in v["nodes"][:3]],
        }
        for v in found
    ]
    if report:
        print(f"axe on {what}: " + json.dumps(report, indent=1))
    serious = [r for r in report if r["impact"] in FAILING]
    assert not serious, f"{what}: " + json.dumps(serious, indent=1)


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_every_page_passes_axe(
    browser: Browser, gw: Gateway, pages: Any, table: str, viewport: str
) -> None:
    review_id = agent_update(gw, f"update {table} set qty = 3 where id = 1")
    with api(gw, "dev") as client:
        deadline = time.monotonic() + 15
        while True:  # the agent's session reaches the store a moment after it opened
            sessions = client.get("/sessions", params={"principal": "agent", "limit": 1}).json()
            if sessions["sessions"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    session_id = sessions["sessions"][0]["id"]

    login = new_context(browser, gw, PHONE if viewport == "phone" else None).new_page()
    login.goto("/ui/login")
    check(login, f"the sign-in page ({viewport})")
    login.context.close()

    page = pages("reviewer", viewport=PHONE if viewport == "phone" else None)
    for path in (
        "/ui/reviews",
        f"/ui/reviews/{review_id}",
        "/ui/sessions",
        f"/ui/sessions/{session_id}",
        "/ui/connections",
        "/ui/connections/it",
        "/ui/grants",
        "/ui/audit",
        "/ui/reviews/r_nosuchone",
    ):
        page.goto(path)
        check(page, f"{path} ({viewport})")
