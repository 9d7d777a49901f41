"""Review notifications: pure payload tests, then real deliveries to a tiny HTTP receiver
on 127.0.0.1 (retries, timeouts, event filters, threads, overflow, secret URLs)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from wardgate import __version__
from wardgate.config import Config
from wardgate.reviews.model import ReviewInfo, Vote
from wardgate.reviews.notify import (
    Notifier,
    retry_delay,
    review_link,
    slack_escape,
    slack_payload,
    slack_summary,
    webhook_payload,
)
from wardgate.reviews.rules import Requirement

NOTIFY_LOG = "wardgate.reviews.notify"


def review(**fields: Any) -> ReviewInfo:
    values: dict[str, Any] = {
        "id": "r_abc123",
        "kind": "action",
        "status": "pending",
        "connection": "demo",
        "principal": "agent",
        "principal_kind": "agent",
        "sponsor": "dev",
        "protocol": "postgres",
        "session_id": "s_1",
        "client_addr": "127.0.0.1:50000",
        "text": "DELETE FROM orders WHERE id = 7",
        "detail": {"database": "shop"},
        "rule": "writes-need-review",
        "rules": ["writes-need-review"],
        "reason": "a write on production",
        "justification": "customer asked for removal",
        "requirements": [Requirement(frozenset({"dba"}), 1)],
        "sponsor_may_approve": False,
        "created_at": 1_700_000_000.0,
        "expires_at": 1_700_003_600.0,
        "decided_at": None,
        "approved_until": None,
        "executed_at": None,
        "preview": None,
        "result": None,
        "votes": [],
    }
    values.update(fields)
    return ReviewInfo(**values)


def make_config(
    tmp_path: Path, notify: list[dict[str, Any]], url: str = "https://wg.example/"
) -> Config:
    return Config.model_validate(
        {"base_dir": str(tmp_path), "reviews": {"url": url, "notify": notify}}
    )


# -- pure payloads --------------------------------------------------------------------


def test_review_link_uses_the_configured_base_url(tmp_path: Path) -> None:
    config = make_config(tmp_path, [])
    assert review_link(config, "r_x") == "https://wg.example/ui/reviews/r_x"


def test_webhook_payload_carries_the_whole_review() -> None:
    info = review()
    body = webhook_payload(info, "requested", "https://wg/r", sent_at=12.5)
    assert body == {
        "event": "requested",
        "review": info.to_dict(),
        "url": "https://wg/r",
        "sent_at": 12.5,
        "source": "wardgate",
    }
    json.dumps(body)  # serialisable as is
    assert isinstance(webhook_payload(info, "requested", "")["sent_at"], float)


@pytest.mark.parametrize(
    ("event", "votes", "summary"),
    [
        ("requested", [], "wardgate: review r_abc123 requested by agent (sponsor dev) on demo"),
        (
            "approved",
            [Vote("alice", "approve", "", 1.0), Vote("bob", "approve", "ok", 2.0)],
            "wardgate: review r_abc123 approved by alice, bob on demo",
        ),
        (
            "denied",
            [Vote("alice", "approve", "", 1.0), Vote("carol", "deny", "no", 2.0)],
            "wardgate: review r_abc123 denied by carol on demo",
        ),
        (
            "vote",
            [Vote("alice", "approve", "", 1.0)],
            "wardgate: review r_abc123 got a vote from alice (approve) on demo",
        ),
        ("expired", [], "wardgate: review r_abc123 expired on demo"),
    ],
)
def test_slack_summary(event: str, votes: list[Vote], summary: str) -> None:
    assert slack_summary(review(votes=votes), event) == summary


def test_slack_summary_without_sponsor() -> None:
    info = review(sponsor=None, principal="alice", principal_kind="user")
    assert (
        slack_summary(info, "requested") == "wardgate: review r_abc123 requested by alice on demo"
    )


def _block_texts(payload: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for block in payload["blocks"]:
        if "text" in block:
            texts.append(block["text"]["text"])
        texts.extend(f["text"] for f in block.get("fields", []))
        texts.extend(e["text"] for e in block.get("elements", []))
    return texts


def test_slack_payload_shows_statement_requester_rule_reason_and_link() -> None:
    payload = slack_payload(review(), "requested", "https://wg/ui/reviews/r_abc123")
    assert payload["text"] == "wardgate: review r_abc123 requested by agent (sponsor dev) on demo"
    text = "\n".join(_block_texts(payload))
    assert "```DELETE FROM orders WHERE id = 7```" in text
    assert "agent (sponsor dev) (agent)" in text
    assert "writes-need-review" in text
    assert "a write on production" in text and "customer asked for removal" in text
    assert "<https://wg/ui/reviews/r_abc123|" in text
    assert "Decided by" not in text


def test_slack_payload_names_who_decided() -> None:
    info = review(status="denied", votes=[Vote("carol", "deny", "too risky <now>", 2.0)])
    text = "\n".join(_block_texts(slack_payload(info, "denied", "")))
    assert "*Decided by*\n• carol denied: too risky &lt;now&gt;" in text
    assert "<|" not in text  # no link without a base URL


def test_slack_escapes_user_text() -> None:
    info = review(
        text="SELECT '<!channel>' & 1",
        reason="<@U123>",
        justification="a > b",
        principal="<!here>",
        connection="x&y",
    )
    payload = slack_payload(info, "requested", "https://wg/r?a=1&b=<2>|x")
    joined = payload["text"] + "\n".join(_block_texts(payload))
    assert "<!channel>" not in joined and "<!here>" not in joined and "<@U123>" not in joined
    assert "SELECT '&lt;!channel&gt;' &amp; 1" in joined
    assert "x&amp;y" in payload["text"]
    assert "<https://wg/r?a=1&amp;b=&lt;2&gt;%7Cx|" in joined


def test_slack_truncates_long_statements_within_slack_limits() -> None:
    info = review(text="&" * 10_000, justification="j" * 5000, reason="<" * 5000)
    payload = slack_payload(info, "requested", "https://wg/r")
    for block in payload["blocks"]:
        if "text" in block:
            assert len(block["text"]["text"]) <= 3000
        for field in block.get("fields", []):
            assert len(field["text"]) <= 2000
    statement = next(t for t in _block_texts(payload) if "```" in t)
    assert "&amp;" * 400 in statement and statement.endswith("…```")
    assert "&am…" not in statement and "&amp…" not in statement  # never cuts an escape


def test_slack_escape_limits() -> None:
    assert slack_escape("a<b") == "a&lt;b"
    assert slack_escape("abcdef", 6) == "abcdef"
    assert slack_escape("abcdefg", 6) == "abcde…"
    assert slack_escape("<<<", 8) == "&lt;…"


def test_slack_code_block_cannot_be_closed_by_the_statement() -> None:
    statement = next(
        t for t in _block_texts(slack_payload(review(text="a```b"), "requested", "")) if "```" in t
    )
    assert statement.count("```") == 2


def test_retry_delay_doubles_caps_and_jitters() -> None:
    for attempt, base in [(0, 0.5), (1, 1.0), (2, 2.0), (10, 30.0)]:
        delay = retry_delay(attempt, 0.5, 30.0)
        assert base <= delay <= base * 1.1
    assert 10.0 <= retry_delay(0, 0.5, 30.0, retry_after=10.0) <= 11.0
    assert retry_delay(0, 0.5, 30.0, retry_after=1e9) <= 33.0


# -- a real receiver on loopback ----------------------------------------------------------


class Receiver:
    """A tiny HTTP/1.1 server on 127.0.0.1. ``script[path]`` lists the statuses to answer
    in turn (then 200); ``None`` means never answer."""

    def __init__(self, script: dict[str, list[int | None]] | None = None) -> None:
        self.script = {path: list(statuses) for path, statuses in (script or {}).items()}
        self.requests: list[tuple[str, dict[str, str], bytes, float]] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._arrived = asyncio.Event()
        self.port = 0

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers))
        await self._server.wait_closed()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str) -> list[Any]:
        return [json.loads(body) for p, _, body, _ in self.requests if p == path]

    async def wait_for(self, path: str, count: int) -> None:
        async with asyncio.timeout(2):
            while sum(1 for p, *_ in self.requests if p == path) < count:
                self._arrived.clear()
                await self._arrived.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            _, path, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((path, headers, body, time.monotonic()))
            self._arrived.set()
            statuses = self.script.get(path, [])
            status = statuses.pop(0) if statuses else 200
            if status is None:
                await asyncio.Event().wait()  # never answer; cancelled at exit
                return
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        async with asyncio.timeout(10):
            await coro()

    asyncio.run(main())


def target(url: str, type_: str = "webhook", **fields: Any) -> dict[str, Any]:
    return {"type": type_, "url": url, "timeout": 1, "retries": 0, **fields}


async def started(config: Config, **kwargs: Any) -> Notifier:
    notifier = Notifier(lambda: config, None, backoff_first=0.01, **kwargs)
    await notifier.start()
    return notifier


def test_webhook_is_delivered_as_json(tmp_path: Path) -> None:
    async def main() -> None:
        async with Receiver() as rx:
            config = make_config(tmp_path, [target(rx.url("/hook"))])
            notifier = await started(config)
            info = review()
            notifier.listener(info, "requested")
            await notifier.close(grace=2)
            [(path, headers, raw, _)] = rx.requests
            assert path == "/hook"
            assert headers["content-type"] == "application/json"
            assert headers["user-agent"] == f"wardgate/{__version__}"
            body = json.loads(raw)
            assert body["event"] == "requested" and body["source"] == "wardgate"
            assert body["review"] == json.loads(json.dumps(info.to_dict()))
            assert body["url"] == "https://wg.example/ui/reviews/r_abc123"

    run(main)


def test_slack_payload_is_delivered(tmp_path: Path) -> None:
    async def main() -> None:
        async with Receiver() as rx:
            config = make_config(tmp_path, [target(rx.url("/slack"), "slack")])
            notifier = await started(config)
            notifier.listener(review(), "requested")
            await notifier.close(grace=2)
            [body] = rx.bodies("/slack")
            assert body == slack_payload(
                review(), "requested", "https://wg.example/ui/reviews/r_abc123"
            )

    run(main)


def test_5xx_and_429_are_retried_until_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Receiver({"/flaky": [500, 503, 429]}) as rx:
            config = make_config(tmp_path, [target(rx.url("/flaky"), retries=3)])
            notifier = await started(config)
            notifier.listener(review(), "requested")
            await rx.wait_for("/flaky", 4)
            await notifier.close(grace=2)
            assert len(rx.bodies("/flaky")) == 4
            assert "not delivered" not in caplog.text

    caplog.set_level(logging.INFO)
    run(main)


def test_retries_give_up_after_the_configured_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Receiver({"/down": [500, 500, 500, 500]}) as rx:
            config = make_config(tmp_path, [target(rx.url("/down"), retries=2)])
            notifier = await started(config)
            notifier.listener(review(), "requested")
            await notifier.close(grace=2)
            assert len(rx.bodies("/down")) == 3
            assert (
                "notify target 0 (webhook): review r_abc123 requested not delivered after 3 attempts: the receiver answered HTTP 500"
                in caplog.text
            )

    run(main)


def test_4xx_is_not_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with Receiver({"/bad": [400]}) as rx:
            config = make_config(tmp_path, [target(rx.url("/bad"), retries=3)])
            notifier = await started(config)
            notifier.listener(review(), "requested")
            await notifier.close(grace=2)
            assert len(rx.bodies("/bad")) == 1
            assert "HTTP 400 (not retried)" in caplog.text
            assert "/bad" not in caplog.text  # the URL is never logged

    run(main)


def test_a_receiver_that_never_answers_does_not_block_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Receiver({"/dead": [None, None]}) as rx:
            config = make_config(
                tmp_path,
                [
                    # A timeout well above what scheduling on a loaded 2-core machine
                    # can take (0.8 s once, in CI): being behind it is then unmistakable.
                    target(rx.url("/dead"), timeout=1.5),
                    target(rx.url("/ok"), events=["requested", "approved"]),
                ],
            )
            notifier = await started(config)
            start = time.monotonic()
            notifier.listener(review(), "requested")
            notifier.listener(review(id="r_second"), "requested")
            await rx.wait_for("/ok", 2)
            assert time.monotonic() - start < 1.2  # not behind the dead receiver's timeout
            await rx.wait_for("/dead", 2)
            await notifier.close(grace=4)  # both dead deliveries time out, one after the other
            assert (
                "notify target 0 (webhook): review r_abc123 requested not delivered after 1 attempts: timed out"
                in caplog.text
            )
            assert "r_second requested not delivered" in caplog.text
            assert "target 1" not in caplog.text

    run(main)


def test_close_cancels_deliveries_after_the_grace_period(tmp_path: Path) -> None:
    async def main() -> None:
        async with Receiver({"/dead": [None]}) as rx:
            config = make_config(tmp_path, [target(rx.url("/dead"), timeout=30)])
            notifier = await started(config)
            notifier.listener(review(), "requested")
            await rx.wait_for("/dead", 1)
            start = time.monotonic()
            await notifier.close(grace=0.2)
            assert time.monotonic() - start < 1.0

    run(main)


def test_events_a_target_does_not_list_are_not_sent(tmp_path: Path) -> None:
    async def main() -> None:
        async with Receiver() as rx:
            config = make_config(
                tmp_path,
                [
                    target(rx.url("/decisions"), events=["approved", "denied"]),
                    target(rx.url("/all"), events=["requested", "approved"]),
                ],
            )
            notifier = await started(config)
            notifier.listener(review(), "requested")
            notifier.listener(review(), "vote")  # nobody listens for votes
            notifier.listener(review(status="approved"), "approved")
            await notifier.close(grace=2)
            assert [b["event"] for b in rx.bodies("/decisions")] == ["approved"]
            assert sorted(b["event"] for b in rx.bodies("/all")) == ["approved", "requested"]

    run(main)


def test_listener_called_from_a_worker_thread(tmp_path: Path) -> None:
    async def main() -> None:
        async with Receiver() as rx:
            config = make_config(tmp_path, [target(rx.url("/hook"))])
            notifier = await started(config)
            ids = [f"r_{i}" for i in range(20)]

            def burst() -> None:
                for review_id in ids:
                    notifier.listener(review(id=review_id), "requested")

            await asyncio.gather(asyncio.to_thread(burst), asyncio.to_thread(burst))
            await notifier.close(grace=2)
            got = sorted(b["review"]["id"] for b in rx.bodies("/hook"))
            assert got == sorted(ids * 2)

    run(main)


def test_queue_overflow_drops_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with Receiver() as rx:
            config = make_config(tmp_path, [target(rx.url("/hook"))])
            notifier = await started(config, queue_size=2)
            for i in range(5):  # no await: the sender cannot take any before the third
                notifier.listener(review(id=f"r_{i}"), "requested")
            await notifier.close(grace=2)
            assert [b["review"]["id"] for b in rx.bodies("/hook")] == ["r_0", "r_1"]
            dropped = [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()]
            assert dropped == [
                f"notification queue full: review r_{i} requested not announced" for i in (2, 3, 4)
            ]
            assert all("127.0.0.1" not in message for message in dropped)

    run(main)


def test_listener_before_start_and_after_close_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, [target("http://127.0.0.1:9/hook")])
    notifier = Notifier(lambda: config, None)
    notifier.listener(review(), "requested")

    async def main() -> None:
        await notifier.start()
        await notifier.close(grace=0)

    run(main)
    notifier.listener(review(), "requested")
    assert caplog.text.count("the notifier is not running") == 2


def test_env_url_reference_is_resolved_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_path = "/services/T000/B000/s3cr3tT0ken"

    async def main() -> None:
        async with Receiver({secret_path: [500]}) as rx:
            monkeypatch.setenv("WARDGATE_TEST_SLACK_URL", rx.url(secret_path))
            config = make_config(
                tmp_path, [target("env:WARDGATE_TEST_SLACK_URL", "slack", retries=1)]
            )
            notifier = await started(config)
            notifier.listener(review(), "requested")
            await notifier.close(grace=2)
            assert len(rx.bodies(secret_path)) == 2

    caplog.set_level(logging.DEBUG)  # includes httpx's own "HTTP Request: POST <url>" line
    run(main)
    assert "HTTP Request: POST http://127.0.0.1" in caplog.text  # redacted, not hidden
    assert "s3cr3tT0ken" not in caplog.text


def test_file_url_reference_relative_to_the_config(tmp_path: Path) -> None:
    async def main() -> None:
        async with Receiver() as rx:
            (tmp_path / "hook.url").write_text(rx.url("/from-file") + "\n")
            config = make_config(tmp_path, [target("file:hook.url")])
            notifier = await started(config)
            notifier.listener(review(), "requested")
            await notifier.close(grace=2)
            assert len(rx.bodies("/from-file")) == 1

    run(main)


def test_unresolvable_reference_is_logged_without_raising(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WARDGATE_TEST_MISSING", raising=False)
    config = make_config(tmp_path, [target("env:WARDGATE_TEST_MISSING", "slack")])

    async def main() -> None:
        notifier = await started(config)
        notifier.listener(review(), "requested")
        await notifier.close(grace=2)

    run(main)
    assert (
        "notify target 0 (slack): review r_abc123 requested not delivered: cannot resolve the "
        "url reference: environment variable WARDGATE_TEST_MISSING is not set" in caplog.text
    )
