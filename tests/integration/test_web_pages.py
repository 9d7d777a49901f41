"""The web UI's pages in a real Chromium, against a real gateway process, real
PostgreSQL behind it, an agent's writes through psycopg and (for replay) a real OpenSSH
server: sign in through the form, decide reviews, follow other approvers live, browse
sessions, export, grants, connections, the audit chain, at desktop and phone width."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.integration.browser import (
    DESKTOP,
    PHONE,
    base_url,
    new_context,
    screenshot,
    set_password,
    sign_in,
    signed_in_page,
)
from tests.integration.conftest import Gateway, admin_conn, make_gateway
from tests.integration.sshd import SshTarget, free_port, ssh_keygen, ssh_target
from tests.integration.test_reviews import review_config

__all__ = ["ssh_target"]  # a fixture, used by name

REVIEW_ID = re.compile(r"review (r_[a-z0-9]+)")
HUMANS = ("dev", "reviewer", "second", "outsider")


def ui_config(database: str) -> str:
    # review_config: the agent's writes need one approval from approvers; dev sponsors
    # the agent (and may not approve its reviews). "second" is another approver.
    return review_config(database).replace(
        "outsider: {kind: user, groups: []}",
        "outsider: {kind: user, groups: []}\n  second: {kind: user, groups: [approvers]}",
    )


@pytest.fixture(scope="module")
def gw(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = make_gateway(tmp_path_factory.mktemp("webgw"), ui_config(it_database))
    for human in HUMANS:
        set_password(gateway, human)
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def pages(browser: Browser, gw: Gateway) -> Iterator[Any]:
    """Signs humans in, each in a browser context of their own, closed afterwards."""
    opened: list[Page] = []

    def open_as(principal: str, **kw: Any) -> Page:
        page = signed_in_page(browser, gw, principal, **kw)
        opened.append(page)
        return page

    yield open_as
    for page in opened:
        page.context.close()


def api(gw: Gateway, principal: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{base_url(gw)}/api/v1",
        headers={"Authorization": f"Bearer {gw.token(principal)}"},
        timeout=30,
    )


def agent_update(gw: Gateway, sql: str) -> str:
    """The agent's write through the gateway: held for review; the review's id."""
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)
    assert info.value.diag.sqlstate == "55000", info.value.diag.message_primary
    found = REVIEW_ID.search(info.value.diag.message_primary or "")
    assert found is not None
    return found.group(1)


def qty(database: str, table: str, row: int = 1) -> int:
    with admin_conn(database) as conn:
        found = conn.execute(f"select qty from {table} where id = %s", (row,)).fetchone()
    assert found is not None
    return int(found[0])


def wait_for_preview(gw: Gateway, review_id: str) -> None:
    """The impact preview is computed after the review is filed."""
    with api(gw, "reviewer") as client:
        deadline = time.monotonic() + 15
        while client.get(f"/reviews/{review_id}").json()["preview"] is None:
            assert time.monotonic() < deadline, "no preview was computed"
            time.sleep(0.1)


# -- sign-in --------------------------------------------------------------------------


def test_sign_in_form_wrong_password_then_right_one(browser: Browser, gw: Gateway) -> None:
    context = new_context(browser, gw)
    page = context.new_page()
    page.goto("/ui/sessions?principal=agent")
    expect(page).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Fsessions"))
    expect(page.get_by_role("heading", name="Sign in to wardgate")).to_be_visible()
    sign_in_fails = page.get_by_role("alert")
    page.get_by_label("User name").fill("reviewer")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(sign_in_fails).to_contain_text("Wrong user name or password")
    sign_in(page, "reviewer")
    expect(page).to_have_url(re.compile(r"/ui/sessions\?principal=agent$"))
    context.close()


def test_sign_out_ends_the_session(pages: Any) -> None:
    page = pages("reviewer")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    page.goto("/ui/reviews")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))


def test_an_open_inbox_says_when_its_session_ended(pages: Any) -> None:
    page = pages("reviewer")
    other_tab = page.context.new_page()  # same browser, same session
    other_tab.goto("/ui/grants")
    other_tab.get_by_role("button", name="Sign out").click()
    # The inbox's next poll gets 401: it stops and says so where a sighted user sees it.
    expect(page.get_by_role("alert")).to_contain_text("Your session has ended")
    page.get_by_role("link", name="Sign in again").click()
    expect(page).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Freviews"))


# -- reviews --------------------------------------------------------------------------


def test_inbox_and_review_page_show_the_exact_statement(
    pages: Any, gw: Gateway, table: str
) -> None:
    sql = f"/* wardgate: reason=restock after the count */ UPDATE {table} SET qty = 40 WHERE id = 1"
    review_id = agent_update(gw, sql)
    wait_for_preview(gw, review_id)
    page = pages("reviewer")
    row = page.locator("tr", has=page.get_by_role("link", name=review_id))
    expect(row).to_contain_text(f"UPDATE {table} SET qty = 40 WHERE id = 1")
    # highlighted server-side by pygments: the keyword is a token span, the text escaped
    expect(row.locator("code.hl .k", has_text="UPDATE")).to_be_visible()
    expect(row).to_contain_text("agent")
    expect(row).to_contain_text("sponsor dev")
    expect(row).to_contain_text("role:proposer")
    expect(row).to_contain_text("1 row affected")
    expect(row).to_contain_text("yours to decide")
    expect(row.get_by_text("pending", exact=True)).to_be_visible()
    screenshot(page, "inbox")

    page.get_by_role("link", name=review_id).click()
    expect(page).to_have_url(re.compile(f"/ui/reviews/{review_id}$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text(review_id)
    expect(page.locator("pre.code")).to_contain_text(f"UPDATE {table} SET qty = 40 WHERE id = 1")
    expect(page.get_by_text("restock after the count", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Approve")).to_be_visible()
    expect(page.get_by_role("button", name="Deny")).to_be_visible()
    screenshot(page, "review-detail")


def test_review_page_shows_a_long_statement_and_its_parameters_whole(
    pages: Any, gw: Gateway, table: str
) -> None:
    """No scroll box hides the end of what is approved, no parameter overflows or loses
    its spacing, at desktop and at phone width; the API answers the same text."""
    ids = ", ".join(str(n) for n in range(1000, 1060))
    sql = (
        f"UPDATE {table} SET qty = 40 WHERE id IN ({ids}) AND %s::text <> %s::text "
        + " ".join(f"AND qty <> {n}" for n in range(100, 140))
        + " AND qty <> 77777"
    )
    params = ["p" * 300 + "-end", "two  spaces   kept"]
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql, params)
    found = REVIEW_ID.search(info.value.diag.message_primary or "")
    assert found is not None
    review_id = found.group(1)
    statement = sql.replace("%s", "$1", 1).replace("%s", "$2", 1)
    with api(gw, "reviewer") as client:
        answer = client.get(f"/reviews/{review_id}").json()
    assert answer["text"] == statement and answer["detail"]["params"] == params
    page = pages("reviewer")
    for viewport in (DESKTOP, PHONE):
        page.set_viewport_size(viewport)
        page.goto(f"/ui/reviews/{review_id}")
        shown = page.locator("pre.code").first
        assert shown.inner_text() == statement
        hidden = shown.evaluate(
            "el => el.scrollHeight > el.clientHeight + 1 || el.scrollWidth > el.clientWidth + 1"
        )
        assert not hidden, f"part of the statement is scrolled out of view at {viewport}"
        values = page.locator("ol.params code.whole")
        assert values.all_inner_texts() == [json.dumps(p) for p in params]
        _assert_no_page_overflow(page, f"/ui/reviews/{review_id}")
    page.set_viewport_size(DESKTOP)
    with api(gw, "reviewer") as client:
        client.post(f"/reviews/{review_id}/deny", json={"reason": "test done"})


def test_approve_by_keyboard_with_a_reason_then_the_agent_runs_it_once(
    pages: Any, gw: Gateway, it_database: str, table: str
) -> None:
    sql = f"UPDATE {table} SET qty = qty + 5 WHERE id = 2"
    review_id = agent_update(gw, sql)
    page = pages("reviewer", path=f"/ui/reviews/{review_id}")
    # Tab from the top of the page reaches the reason field, then the Approve button.
    approve = page.get_by_role("button", name="Approve")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "approve-reason":
            break
    else:
        pytest.fail("Tab never reached the approval reason")
    page.keyboard.type("count sheet checked")
    page.keyboard.press("Tab")
    expect(approve).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status").filter(has_text="Your approval is recorded")).to_be_visible()
    expect(page.locator("#review-state")).to_contain_text("approved")
    expect(page.locator(".history")).to_contain_text("reviewer approved: “count sheet checked”")
    expect(approve).to_have_count(0)

    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        conn.execute(sql)  # runs now, once
    assert qty(it_database, table, 2) == 5
    assert agent_update(gw, sql) != review_id  # the next run needs a new review
    page.reload()
    expect(page.locator("#review-state")).to_contain_text("ran")


def test_deny_needs_and_shows_a_reason(pages: Any, gw: Gateway, table: str) -> None:
    review_id = agent_update(gw, f"DELETE FROM {table} WHERE id = 3")
    page = pages("reviewer", path=f"/ui/reviews/{review_id}")
    page.get_by_role("button", name="Deny").click()  # the browser asks for the reason
    expect(page.get_by_label(re.compile("Reason for denying"))).to_be_focused()
    page.get_by_label(re.compile("Reason for denying")).fill("wrong row")
    page.get_by_role("button", name="Deny").click()
    expect(page.get_by_role("status").filter(has_text="You denied this review")).to_be_visible()
    expect(page.locator(".history")).to_contain_text("reviewer denied: “wrong row”")
    page.get_by_role("link", name="Reviews", exact=True).first.click()
    decided = page.locator("#inbox table").last
    expect(decided.locator("tr", has=page.get_by_role("link", name=review_id))).to_contain_text(
        "denied"
    )


def test_requester_sponsor_and_outsider_get_no_vote_buttons(
    pages: Any, gw: Gateway, table: str
) -> None:
    review_id = agent_update(gw, f"UPDATE {table} SET qty = 1 WHERE id = 4")
    for human in ("dev", "outsider"):  # dev sponsors the agent; outsider approves nothing
        page = pages(human, path=f"/ui/reviews/{review_id}")
        expect(page.locator("#no-vote")).to_contain_text("You cannot vote on this review")
        expect(page.get_by_role("button", name="Approve")).to_have_count(0)
        expect(page.get_by_role("button", name="Deny")).to_have_count(0)
        page.goto("/ui/reviews")
        row = page.locator("tr", has=page.get_by_role("link", name=review_id))
        expect(row).to_be_visible()
        expect(row).not_to_contain_text("yours to decide")
    # the API refuses the sponsor too, with the reason
    page = pages("dev", path=f"/ui/reviews/{review_id}")
    response = page.request.post(
        f"/ui/reviews/{review_id}/approve",
        form={"csrf": page.locator('meta[name="csrf-token"]').get_attribute("content") or ""},
    )
    assert response.status == 403
    assert "sponsors may not approve" in response.text()


def test_another_approvers_decision_shows_up_live(pages: Any, gw: Gateway, table: str) -> None:
    review_id = agent_update(gw, f"UPDATE {table} SET qty = 2 WHERE id = 5")
    inbox = pages("reviewer")
    detail = pages("reviewer", path=f"/ui/reviews/{review_id}")
    pending_table = inbox.locator("#inbox table").first
    expect(pending_table.get_by_role("link", name=review_id)).to_be_visible()
    link = inbox.get_by_role("link", name=review_id)
    link.focus()
    expect(detail.get_by_role("button", name="Approve")).to_be_visible()

    with api(gw, "second") as client:
        answer = client.post(f"/reviews/{review_id}/approve", json={"reason": "looks right"})
        assert answer.status_code == 200, answer.text

    # Both open pages follow within a couple of polls, without a reload.
    decided_row = inbox.locator("#inbox table").last.locator("tr", has=link)
    expect(decided_row).to_contain_text("approved", timeout=10_000)
    expect(link).to_be_focused()  # focus stays on the same review's link
    expect(inbox.locator("#live-status")).to_contain_text("Updated.")
    expect(detail.locator("#review-state")).to_contain_text(
        "second approved: “looks right”", timeout=10_000
    )
    expect(detail.locator("#decide")).to_be_hidden()


def test_inbox_lists_every_kind_and_shows_text_as_text(pages: Any, gw: Gateway, table: str) -> None:
    with api(gw, "agent") as agent:
        proposal = agent.post(
            "/proposals",
            json={
                "connection": "it",
                "statements": [
                    f"UPDATE {table} SET qty = 6 WHERE id = 1",
                    f"UPDATE {table} SET qty = 7 WHERE id = 2",
                ],
                "justification": "fix both counts",
            },
        )
        assert proposal.status_code == 201, proposal.text
        # markup and a right-to-left override in what an agent wrote: shown, never run
        code = "print('<script>alert(1)</script>')  # \u202e done"
        filed = agent.post(
            "/reviews", json={"code": code, "justification": "count", "context": "coder"}
        )
        assert filed.status_code == 201, filed.text
    page = pages("reviewer")
    inbox = page.locator("#inbox")
    proposal_row = inbox.locator("tr", has=page.get_by_role("link", name=proposal.json()["id"]))
    expect(proposal_row).to_contain_text("proposal")
    expect(proposal_row).to_contain_text(f"UPDATE {table} SET qty = 6 WHERE id = 1")
    code_row = inbox.locator("tr", has=page.get_by_role("link", name=filed.json()["id"]))
    expect(code_row).to_contain_text("<script>alert(1)</script>")
    expect(code_row).to_contain_text("\\u202e done")  # the override as an escape
    assert page.locator("#inbox script").count() == 0

    page.get_by_label("Kind").select_option("proposal")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"kind=proposal"))
    kinds = page.locator("#inbox tbody th .muted").all_inner_texts()
    assert kinds and set(kinds) == {"proposal"}
    page.get_by_role("link", name=proposal.json()["id"]).click()
    expect(page.locator("ol.statements > li")).to_have_count(2)


def test_forged_posts_are_refused(pages: Any, gw: Gateway, table: str) -> None:
    review_id = agent_update(gw, f"UPDATE {table} SET qty = 3 WHERE id = 1")
    page = pages("reviewer", path=f"/ui/reviews/{review_id}")
    token = page.locator('meta[name="csrf-token"]').get_attribute("content") or ""
    target = f"/ui/reviews/{review_id}/approve"
    assert page.request.post(target, form={"reason": "forged"}).status == 403
    assert page.request.post(target, form={"reason": "x", "csrf": "wrong"}).status == 403
    other_site = {"Origin": "http://evil.example"}
    forged = page.request.post(target, form={"csrf": token}, headers=other_site)
    assert forged.status == 403
    with api(gw, "reviewer") as client:
        assert client.get(f"/reviews/{review_id}").json()["status"] == "pending"


def test_unknown_things_get_error_pages_in_the_ui(pages: Any) -> None:
    page = pages("reviewer")
    for path, said in (
        ("/ui/reviews/r_nosuchone", "no such review"),
        ("/ui/sessions/nosuchsession", "no session 'nosuchsession'"),
        ("/ui/connections/nope", "no connection named 'nope'"),
    ):
        response = page.goto(path)
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", level=1)).to_contain_text("Not Found")
        expect(page.get_by_role("alert")).to_contain_text(said)
        expect(page.get_by_text("Signed in as reviewer")).to_be_visible()


# -- grants ---------------------------------------------------------------------------


def test_grant_request_approve_and_revoke(pages: Any, gw: Gateway) -> None:
    dev = pages("dev", path="/ui/grants")
    dev.get_by_label("Connection").select_option("it")
    dev.get_by_label("Role").select_option("engineer")
    dev.get_by_label("For how long").fill("forever")
    dev.get_by_label(re.compile("^Reason")).fill("incident 4711")
    dev.get_by_role("button", name="Request").click()
    expect(dev.get_by_role("alert")).to_contain_text("duration")
    expect(dev.get_by_label(re.compile("^Reason"))).to_have_value("incident 4711")
    dev.get_by_label("For how long").fill("30m")
    dev.get_by_role("button", name="Request").click()
    expect(dev.get_by_role("status").filter(has_text="Your request is filed")).to_be_visible()
    expect(dev.get_by_text("Role engineer on it for 30 min")).to_be_visible()
    expect(dev.get_by_role("button", name="Approve")).to_have_count(0)  # never on your own
    review_id = dev.url.rsplit("/", 1)[-1].split("?")[0]

    reviewer = pages("reviewer", path=f"/ui/reviews/{review_id}")
    reviewer.get_by_label(re.compile("Reason for approving")).fill("ok for the incident")
    reviewer.get_by_role("button", name="Approve").click()
    expect(reviewer.locator("#review-state")).to_contain_text("approved")

    dev.get_by_role("link", name="Grants").click()
    active = dev.locator("section", has=dev.get_by_role("heading", name="Active grants"))
    row = active.locator("tr", has=dev.get_by_role("link", name=review_id))
    expect(row).to_contain_text("engineer")
    expect(row).to_contain_text("incident 4711")
    row.get_by_label(f"Reason for revoking {review_id}").fill("incident closed")
    row.get_by_role("button", name="Revoke").click()
    expect(dev.get_by_role("status").filter(has_text="The grant is revoked")).to_be_visible()
    past = dev.locator("section", has=dev.get_by_role("heading", name="Requests and past grants"))
    expect(past.locator("tr", has=dev.get_by_role("link", name=review_id))).to_contain_text(
        "revoked"
    )


# -- sessions -------------------------------------------------------------------------


def test_sessions_filters_search_timeline_and_exports(
    pages: Any, gw: Gateway, table: str, tmp_path: Path
) -> None:
    marker = f"marker_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(gw.dsn("agent", application_name=marker), autocommit=True) as conn:
        conn.execute(f"select qty as {marker} from {table} where id = 1").fetchall()
        with pytest.raises(psycopg.Error):
            conn.execute(f"UPDATE {table} SET qty = 9 WHERE id = 1 /* {marker} */")
    with psycopg.connect(gw.dsn("dev"), autocommit=True) as conn:
        conn.execute("select 1").fetchall()

    page = pages("reviewer", path="/ui/sessions")
    sessions = page.locator("table.sessions")
    expect(sessions).to_contain_text("agent")
    expect(sessions).to_contain_text("dev")

    page.get_by_label("Principal").select_option("agent")
    page.get_by_label("With a verdict").select_option("review")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"principal=agent.*verdict=review"))
    rows = sessions.locator("tbody tr")
    expect(rows.first).to_be_visible()
    for principal_cell in rows.locator("td:nth-child(2)").all_inner_texts():
        assert principal_cell.startswith("agent")

    page.get_by_role("link", name="Reset").click()
    page.get_by_role("searchbox", name="Search").fill(marker)
    page.get_by_role("searchbox", name="Search").press("Enter")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(marker)  # its application_name
    page.get_by_role("searchbox", name="Search").fill(table.upper())  # only in statements
    page.get_by_role("searchbox", name="Search").press("Enter")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(marker)
    page.get_by_role("searchbox", name="Search").fill("no-such-text-anywhere")
    page.get_by_role("searchbox", name="Search").press("Enter")
    expect(page.get_by_text("No sessions match.")).to_be_visible()
    page.get_by_role("searchbox", name="Search").fill("x")
    page.get_by_label("Started from (UTC)").fill("2030-01-01T00:00:00")
    page.get_by_label("Started before (UTC)").fill("2020-01-01T00:00:00")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("alert")).to_contain_text("since is after until")

    page.goto(f"/ui/sessions?q={marker}")
    page.locator("table.sessions tbody th a").first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Session")
    timeline = page.locator("table.timeline")
    expect(timeline).to_contain_text(f"select qty as {marker}")
    # The response, as recorded, beside the statement.
    select_row = timeline.locator("tr", has_text=f"select qty as {marker}")
    select_row.get_by_text("result (as recorded, masked)").click()
    expect(select_row.locator("table.result td")).to_have_text(["0"])  # a fresh table
    expect(select_row).to_contain_text("1 of 1 row")
    update_row = timeline.locator("tr", has_text="UPDATE")
    expect(update_row).to_contain_text("review")
    expect(update_row).to_contain_text("role:proposer")
    expect(update_row).to_contain_text("approval pending")
    expect(timeline.locator("tr.review-event")).to_contain_text("review.requested")
    screenshot(page, "session")

    with page.expect_download() as jsonl_download:
        page.get_by_role("link", name="JSON lines").click()
    jsonl = jsonl_download.value
    path = tmp_path / jsonl.suggested_filename
    jsonl.save_as(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [a["verdict"]["decision"] for a in lines] == ["allow", "review"]
    assert jsonl.suggested_filename.endswith(".jsonl")
    with page.expect_download() as csv_download:
        page.get_by_role("link", name="CSV").click()
    csv_path = tmp_path / csv_download.value.suggested_filename
    csv_download.value.save_as(csv_path)
    rows_out = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [r["decision"] for r in rows_out] == ["allow", "review"]
    assert marker in rows_out[0]["text"]


def test_a_failed_approved_statement_shows_failed_with_the_servers_error(
    pages: Any, gw: Gateway
) -> None:
    sql = f"UPDATE missing_{uuid.uuid4().hex[:6]} SET qty = 1 WHERE id = 1"
    review_id = agent_update(gw, sql)
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{gw.api_port}/api/v1",
        headers={"Authorization": f"Bearer {gw.token('reviewer')}"},
    )
    with api:
        assert api.post(f"/reviews/{review_id}/approve", json={}).status_code == 200
        with (
            psycopg.connect(gw.dsn("agent"), autocommit=True) as conn,
            pytest.raises(psycopg.errors.UndefinedTable),
        ):
            conn.execute(sql)
        deadline = time.monotonic() + 10
        while api.get(f"/reviews/{review_id}").json()["status"] != "failed":
            assert time.monotonic() < deadline, "the review never became failed"
            time.sleep(0.2)
    page = pages("reviewer", path=f"/ui/reviews/{review_id}")
    state = page.locator("#review-state")
    expect(state).to_contain_text(f"Review {review_id} is failed")
    expect(state).to_contain_text("does not exist")
    expect(state).not_to_contain_text("executed")


def test_an_mcp_tool_result_shows_beside_its_statement(pages: Any, gw: Gateway) -> None:
    from tests.integration.test_mcp import call

    marker = f"probe_{uuid.uuid4().hex[:6]}"
    query = ("query", {"connection": "it", "sql": f"select '{marker}' as v"})
    with ThreadPoolExecutor(1) as pool:  # Playwright's loop runs in this thread
        (result,) = pool.submit(call, gw, "agent", query).result(timeout=60)
    assert not result.isError
    page = pages("reviewer", path="/ui/sessions?protocol=mcp")
    deadline = time.monotonic() + 10
    while True:
        page.goto(f"/ui/sessions?q={marker}")
        links = page.locator("table.sessions tbody th a")
        if links.count() or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    links.first.click()
    row = page.locator("table.timeline tr", has_text=f"select '{marker}'")
    row.get_by_text("response (as recorded, masked)").click()
    expect(row.locator("details.result pre")).to_contain_text(f'"rows": [["{marker}"]]')
    expect(row).to_contain_text("SHA-256")


# -- connections and audit ------------------------------------------------------------


def test_connections_and_their_effective_policy(pages: Any, gw: Gateway) -> None:
    page = pages("reviewer", path="/ui/connections")
    table = page.locator("table")
    expect(table).to_contain_text("it")
    expect(table).to_contain_text("down")
    page.get_by_role("link", name="it", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Connection it")
    expect(page.locator("dl.facts")).to_contain_text("engineer")
    policy = page.locator("section, main").get_by_role("table").nth(1)
    expect(policy).to_contain_text("proposer")
    expect(page.get_by_role("table").last).to_contain_text("no-drop")
    html = page.content()
    assert gw.token("agent") not in html and gw.token("reviewer") not in html
    assert "password" not in html.lower()


def test_audit_page_verifies_the_chain(pages: Any) -> None:
    page = pages("reviewer", path="/ui/audit")
    expect(page.get_by_role("status")).to_contain_text("The chain is intact")


# -- phone width ----------------------------------------------------------------------


def test_pages_fit_a_phone_screen(pages: Any, gw: Gateway, table: str) -> None:
    review_id = agent_update(gw, f"UPDATE {table} SET qty = 11 WHERE id = 2")
    page = pages("reviewer", viewport=PHONE)
    session_link = None
    for path in (
        "/ui/reviews",
        f"/ui/reviews/{review_id}",
        "/ui/sessions",
        "/ui/connections",
        "/ui/connections/it",
        "/ui/grants",
        "/ui/audit",
    ):
        page.goto(path)
        _assert_no_page_overflow(page, path)
        if path == "/ui/reviews":
            screenshot(page, "inbox-phone")
        if path == "/ui/sessions":
            session_link = page.locator("table.sessions tbody th a").first.get_attribute("href")
    assert session_link is not None
    page.goto(session_link)
    _assert_no_page_overflow(page, session_link)
    page.goto(f"/ui/reviews/{review_id}")
    screenshot(page, "review-detail-phone")
    page.set_viewport_size(DESKTOP)


def _assert_no_page_overflow(page: Page, path: str) -> None:
    widths = page.evaluate(
        """() => ({
            page: document.documentElement.scrollWidth,
            view: document.documentElement.clientWidth,
            wide: Array.from(document.querySelectorAll("main *"))
                .filter(el => !el.closest(".table-wrap") && el.getBoundingClientRect().right
                        > document.documentElement.clientWidth + 1)
                .map(el => el.tagName + "." + el.className).slice(0, 5),
        })"""
    )
    assert widths["page"] <= widths["view"], (path, widths)
    assert widths["wide"] == [], (path, widths)


# -- terminal replay ------------------------------------------------------------------


def ssh_ui_config(target: SshTarget) -> str:
    upstream = (
        f"{{host: 127.0.0.1, port: {target.port}, user: {target.user}, "
        f"private_key: 'file:{target.client_key_path}', host_key: '{target.host_key_line}'}}"
    )
    return (
        "groups: {engineers: {}, approvers: {}}\n"
        "principals:\n"
        "  dev: {kind: user, groups: [engineers]}\n"
        "  reviewer: {kind: user, groups: [engineers, approvers]}\n"
        "connections:\n"
        "  web1:\n"
        "    type: ssh\n"
        f"    upstream: {upstream}\n"
        "    roles: {engineers: operator}\n"
        "roles:\n"
        "  operator: {read: allow, write: allow, admin: review, shell: allow, sftp: allow}\n"
        "reviews: {approvers: [approvers]}\n"
    )


@pytest.fixture
def ssh_gw(ssh_target: SshTarget, tmp_path: Path) -> Iterator[tuple[Gateway, int, Path]]:
    gateway = make_gateway(tmp_path / "sshgw", ssh_ui_config(ssh_target))
    ssh_port = free_port()
    gateway.env["WARDGATE_LISTEN_SSH"] = f"127.0.0.1:{ssh_port}"
    key = tmp_path / "dev_key"
    (tmp_path / "dev_key.pub").write_text(ssh_keygen(key, "dev@test") + "\n")
    gateway.cli("principal", "add-key", "dev", str(tmp_path / "dev_key.pub"))
    set_password(gateway, "reviewer")
    gateway.start()
    yield gateway, ssh_port, key
    gateway.stop()


def _store_rows(gw: Gateway, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(gw.env["WARDGATE_STORE"].removeprefix("sqlite:///"))
    try:
        rows = db.execute(sql, args).fetchall()
        db.commit()
        return rows
    finally:
        db.close()


def test_terminal_recording_replays_and_a_changed_one_is_refused(
    browser: Browser, ssh_gw: tuple[Gateway, int, Path]
) -> None:
    from wardgate.sshlib import asyncssh

    gw, ssh_port, key = ssh_gw

    async def shell() -> str:
        async with asyncssh.connect(
            "127.0.0.1", ssh_port, username="web1", client_keys=[str(key)],
            known_hosts=None, agent_path=None, config=[],
        ) as conn:  # fmt: skip
            proc = await conn.create_process(term_type="xterm", term_size=(80, 24), encoding=None)
            proc.stdin.write(b"echo replay-$((6*7))\nexit\n")
            out = b""
            while chunk := await proc.stdout.read(65536):
                out += chunk
            await proc.wait()
            return out.decode("utf-8", "replace")

    # In a thread of its own: Playwright's sync API keeps an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        assert "replay-42" in pool.submit(asyncio.run, shell()).result(timeout=60)
    deadline = time.monotonic() + 10
    while not (rows := _store_rows(gw, "select session_id, seq from recordings")):
        assert time.monotonic() < deadline, "no recording was stored"
        time.sleep(0.1)
    session_id, seq = rows[0]

    path = f"/ui/sessions/{session_id}"
    page = signed_in_page(browser, gw, "reviewer", path=path)
    try:
        expect(page.get_by_text("Matches the hash in the audit chain")).to_be_visible()
        # The player's terminal is WebAssembly: the page's own policy must let it run.
        policy = page.request.get(path).headers["content-security-policy"]
        assert "script-src 'self' 'wasm-unsafe-eval';" in policy
        _plays(page.locator(f'[data-cast-src$="/recording/{seq}.cast"]'), "replay-42")
        expect(page.locator("details.transcript pre")).to_contain_text("replay-42")
        screenshot(page, "replay")

        cast = page.request.get(f"/ui/sessions/{session_id}/recording/{seq}.cast")
        assert cast.status == 200
        header = json.loads(cast.text().splitlines()[0])
        assert header["version"] == 2 and header["width"] == 80
        download = page.request.get(f"/ui/sessions/{session_id}/recording/{seq}.cast?download=true")
        assert "attachment" in download.headers["content-disposition"]

        # An edited recording (its stored hash edited to match) is refused: the chain
        # still holds the original hash.
        text = cast.text().replace("replay-42", "replay-43")
        digest = hashlib.sha256(text.encode()).hexdigest()
        _store_rows(
            gw,
            "update recordings set cast = ?, sha256 = ? where session_id = ? and seq = ?",
            text, digest, session_id, seq,
        )  # fmt: skip
        page.reload()
        expect(page.get_by_role("alert")).to_contain_text(
            "the audit chain holds no matching hash for this recording"
        )
        expect(page.locator("[data-cast-src]")).to_have_count(0)
        expect(page.get_by_text("replay-43")).to_have_count(0)
        refused = page.request.get(f"/ui/sessions/{session_id}/recording/{seq}.cast")
        assert refused.status == 409
        assert "replay-43" not in refused.text()
        # Only the text edited, not its stored hash: refused the same way as the CLI does.
        _store_rows(
            gw, "update recordings set sha256 = ? where session_id = ?", "0" * 64, session_id
        )
        page.reload()
        expect(page.get_by_role("alert")).to_contain_text("does not match its hash")
    finally:
        page.context.close()


def _plays(player: Any, text: str) -> None:
    expect(player).to_have_attribute("data-player", "created")
    player.locator(".ap-player").click()
    expect(player.locator(".ap-term-text")).to_contain_text(text, timeout=10_000)
