"""The approver's whole job in a real browser, signed in through a real OIDC provider.

An agent's UPDATE through the PostgreSQL gateway waits for review; a human signs in to
the web UI with single sign-on (oidc-provider-mock on loopback, authorization code +
PKCE), finds the review in the inbox, approves it, and the agent's re-run succeeds. The
approval power comes from the provider's group claim, mapped to a wardgate group. The
agent's sponsor and a requester see no approve button on what they may not approve.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.integration.browser import new_context, screenshot
from tests.integration.conftest import Gateway, make_gateway
from tests.integration.oidc_mock import OidcProvider
from tests.integration.test_reviews import review_config
from tests.integration.test_web_pages import agent_update, api, qty

pytestmark = pytest.mark.integration


def sso_config(database: str, issuer: str) -> str:
    # Neither human is an approver in the file: that comes from the provider's
    # "wg-approvers" group. dev sponsors the agent.
    text = review_config(database).replace(
        "dev: {kind: user, groups: [engineers, approvers]}",
        "dev: {kind: user, groups: [engineers]}",
    )
    text = text.replace(
        "reviewer: {kind: user, groups: [engineers, approvers]}",
        "reviewer: {kind: user, groups: [engineers]}",
    )
    return text + (
        "web:\n"
        "  local_users: false\n"
        "  oidc:\n"
        f"    issuer: {issuer}\n"
        "    client_id: wardgate-ui\n"
        "    groups_claim: groups\n"
        "    groups: {wg-approvers: [approvers]}\n"
    )


@pytest.fixture(scope="module")
def sso_gw(
    it_database: str,
    oidc_provider: OidcProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("sso"), sso_config(it_database, oidc_provider.issuer))
    gw.start()
    oidc_provider.set_user(
        "u-rita", {"preferred_username": "reviewer", "groups": ["wg-approvers", "staff"]}
    )
    oidc_provider.set_user("u-devon", {"preferred_username": "dev", "groups": ["wg-approvers"]})
    oidc_provider.set_user("u-bot", {"preferred_username": "agent", "groups": ["wg-approvers"]})
    yield gw
    gw.stop()


def sso_sign_in(browser: Browser, gw: Gateway, subject: str, path: str = "/ui/reviews") -> Page:
    page = new_context(browser, gw).new_page()
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    expect(page.get_by_label("Password")).to_have_count(0)  # local users are off here
    page.get_by_role("link", name="Sign in with single sign-on").click()
    # The provider's own page: it asks who is signing in.
    expect(page.get_by_role("heading", name="Authorize Client")).to_be_visible()
    page.locator("input[name=sub]").fill(subject)
    page.get_by_role("button", name="Authorize").click()
    return page


def test_reviewer_approves_an_agents_update_after_oidc_sign_in(
    browser: Browser,
    sso_gw: Gateway,
    it_database: str,
    table: str,
) -> None:
    statement = f"update {table} set qty = 40 where id = 1"
    review_id = agent_update(sso_gw, statement)

    page = sso_sign_in(browser, sso_gw, "u-rita")
    expect(page).to_have_url(re.compile(r"/ui/reviews$"))
    expect(page.get_by_text("Signed in as reviewer")).to_be_visible()
    row = page.get_by_role("row").filter(has_text=review_id)
    expect(row).to_contain_text(table)
    expect(row).to_contain_text("agent")
    expect(row).to_contain_text("yours to decide")
    screenshot(page, "e2e-oidc-inbox")

    row.get_by_role("link", name=review_id).click()
    expect(page).to_have_url(re.compile(rf"/ui/reviews/{review_id}$"))
    page.get_by_label("Reason for approving").fill("restock approved by the shop lead")
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_text("approved", exact=True).first).to_be_visible()
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    screenshot(page, "e2e-oidc-review-approved")

    # The agent runs the same statement again: it runs, once.
    with psycopg.connect(sso_gw.dsn("agent"), autocommit=True) as conn:
        assert conn.execute(statement).rowcount == 1
    assert qty(it_database, table) == 40
    with api(sso_gw, "reviewer") as client:
        assert client.get(f"/reviews/{review_id}").json()["status"] == "executed"

    # The agent's session, read back in the browser.
    page.goto("/ui/sessions?principal=agent")
    page.get_by_role("row").filter(has_text="agent").first.get_by_role("link").first.click()
    expect(page).to_have_url(re.compile(r"/ui/sessions/[^/]+$"))
    expect(page.get_by_text(statement).first).to_be_visible()
    screenshot(page, "e2e-oidc-session")
    page.context.close()


def test_sponsor_and_requester_see_no_approve_button(
    browser: Browser,
    sso_gw: Gateway,
    table: str,
) -> None:
    agents_review = agent_update(sso_gw, f"update {table} set qty = 7 where id = 2")
    with api(sso_gw, "dev") as client:
        grant = client.post(
            "/grants",
            json={"connection": "it", "role": "engineer", "duration": "30m", "reason": "hotfix"},
        )
        assert grant.status_code == 201, grant.text
        grant_id = grant.json()["id"]

    dev = sso_sign_in(browser, sso_gw, "u-devon")
    expect(dev.get_by_text("Signed in as dev")).to_be_visible()
    for review_id in (agents_review, grant_id):  # the agent's sponsor; the requester
        dev.goto(f"/ui/reviews/{review_id}")
        expect(dev.get_by_role("heading", level=1)).to_contain_text(review_id)
        expect(dev.get_by_role("button", name="Approve")).to_have_count(0)
        expect(dev.get_by_role("button", name="Deny")).to_have_count(0)
    dev.context.close()

    # Another approver does get the buttons on dev's request.
    reviewer = sso_sign_in(browser, sso_gw, "u-rita", f"/ui/reviews/{grant_id}")
    expect(reviewer).to_have_url(re.compile(rf"/ui/reviews/{grant_id}$"))
    expect(reviewer.get_by_role("button", name="Approve")).to_be_visible()
    reviewer.context.close()


def test_an_identity_naming_an_agent_is_refused(
    browser: Browser,
    sso_gw: Gateway,
) -> None:
    page = sso_sign_in(browser, sso_gw, "u-bot")
    expect(page).to_have_url(re.compile(r"/ui/oidc/callback"))
    expect(page.get_by_role("alert")).to_contain_text("agents cannot sign in to the web UI")
    page.goto("/ui/reviews")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.context.close()


def test_the_provider_saying_no_is_explained(
    browser: Browser,
    sso_gw: Gateway,
) -> None:
    page = new_context(browser, sso_gw).new_page()
    page.goto("/ui/login")
    page.get_by_role("link", name="Sign in with single sign-on").click()
    page.get_by_role("button", name="Deny").click()
    expect(page.get_by_role("alert")).to_contain_text("The identity provider said no")
    page.context.close()


def test_screenshots_exist() -> None:
    # Written by the first test of this module; kept apart so a missing file is named.
    shots = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
    for name in ("e2e-oidc-inbox", "e2e-oidc-review-approved", "e2e-oidc-session"):
        assert (shots / f"{name}.png").stat().st_size > 10_000, name
