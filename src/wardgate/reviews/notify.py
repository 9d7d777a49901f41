"""Review notifications: webhooks and Slack incoming webhooks told about review events.

The review service calls ``Notifier.listener`` after each commit, often from a worker
thread, so the listener only hands the event to the loop (``call_soon_threadsafe``)
and returns; a bounded count of accepted-but-unsent events makes it drop, never block,
when receivers fall behind. One sender task on the loop turns each event into one
delivery per interested target; deliveries run concurrently up to a limit, each bounded
by its target's timeout and retried with capped exponential backoff.

Target URLs may hold a secret (a Slack webhook URL is its own credential), so no log
line names one: failures name the target's index and type, and while a delivery is in
flight its URL is redacted from httpx's own request log.

Payload building is pure (``webhook_payload``, ``slack_payload``) and unit-tested alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from wardgate import __version__
from wardgate.config import Config, NotifyConfig
from wardgate.reviews.messages import review_url
from wardgate.reviews.model import ReviewInfo
from wardgate.vault.secrets import SecretError, Vault, resolve_secret

log = logging.getLogger("wardgate.reviews.notify")

QUEUE_SIZE = 1000
CONCURRENCY = 8
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
USER_AGENT = f"wardgate/{__version__}"

# Slack allows 3000 characters in a section's text and 2000 in a field.
SLACK_STATEMENT_MAX = 2500
SLACK_FIELD_MAX = 500
SLACK_NOTE_MAX = 1000
SLACK_VOTES_SHOWN = 10

_EVENT_TITLES = {
    "requested": "requested",
    "vote": "got a vote",
    "approved": "approved",
    "denied": "denied",
    "expired": "expired",
    "cancelled": "cancelled",
    "executed": "executed",
    "failed": "failed",
    "rolled_back": "was rolled back",
    "revoked": "revoked",
}


def review_link(config: Config, review_id: str) -> str:
    """Where an approver opens a review (the API's review resource)."""
    return review_url(config.review_url, review_id)


# -- payloads (pure) --------------------------------------------------------------------


def webhook_payload(
    info: ReviewInfo, event: str, link: str, *, sent_at: float | None = None
) -> dict[str, Any]:
    """The generic webhook body: the whole review, as the API shows it."""
    return {
        "event": event,
        "review": info.to_dict(),
        "url": link,
        "sent_at": time.time() if sent_at is None else sent_at,
        "source": "wardgate",
    }


_MRKDWN_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def slack_escape(text: str, limit: int | None = None) -> str:
    """Escape Slack mrkdwn control characters; with ``limit``, cut the result to at most
    that many characters (ending in "…") without splitting an escape."""
    escaped = "".join(_MRKDWN_ESCAPES.get(ch, ch) for ch in text)
    if limit is None or len(escaped) <= limit:
        return escaped
    out: list[str] = []
    size = 0
    for ch in text:
        piece = _MRKDWN_ESCAPES.get(ch, ch)
        if size + len(piece) > limit - 1:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out) + "…"


def _code_block(text: str, limit: int) -> str:
    # Three backticks inside would end the block early; a zero-width space breaks them.
    body = slack_escape(text.replace("```", "`\u200b``"), limit)
    return f"```{body}```"


def _slack_link(link: str, label: str) -> str:
    target = slack_escape(link).replace("|", "%7C")
    return f"<{target}|{slack_escape(label)}>"


def _requester(info: ReviewInfo) -> str:
    if info.sponsor:
        return f"{info.principal} (sponsor {info.sponsor})"
    return info.principal


def _deciders(info: ReviewInfo, event: str) -> list[str]:
    if event == "approved":
        return [v.voter for v in info.votes if v.decision == "approve"]
    if event == "denied":
        return [v.voter for v in info.votes if v.decision == "deny"]
    if event == "vote" and info.votes:
        return [info.votes[-1].voter]
    return []


def slack_summary(info: ReviewInfo, event: str) -> str:
    """One line, plain words: what Slack shows in the notification itself."""
    title = _EVENT_TITLES.get(event, event)
    line = f"wardgate: review {info.id} {title}"
    if event == "requested":
        line += f" by {_requester(info)} on {info.connection}"
    elif event == "vote" and info.votes:
        last = info.votes[-1]
        line += f" from {last.voter} ({last.decision}) on {info.connection}"
    else:
        deciders = _deciders(info, event)
        if deciders:
            line += f" by {', '.join(deciders)}"
        line += f" on {info.connection}"
    return line


def slack_payload(info: ReviewInfo, event: str, link: str) -> dict[str, Any]:
    """A Slack incoming-webhook body: a one-line summary plus Block Kit sections."""
    summary = slack_summary(info, event)
    title = _EVENT_TITLES.get(event, event)
    heading = f"*Review {info.id} {slack_escape(title)}*"
    if link:
        heading = f"*Review {_slack_link(link, info.id)} {slack_escape(title)}*"
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": heading}},
        {
            "type": "section",
            "fields": [
                _field("Requester", f"{_requester(info)} ({info.principal_kind})"),
                _field("Connection", f"{info.connection} ({info.protocol})"),
                _field("Rule", info.rule),
                _field("Status", info.status),
            ],
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"*{slack_escape(info.kind.capitalize())}*\n"
                + _code_block(info.text, SLACK_STATEMENT_MAX),
            },
        },
    ]
    notes = [f"*Reason:* {slack_escape(info.reason, SLACK_NOTE_MAX)}"]
    if info.justification:
        notes.append(f"*Justification:* {slack_escape(info.justification, SLACK_NOTE_MAX)}")
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(notes)}})
    if info.votes and event != "requested":
        lines = []
        for vote in info.votes[-SLACK_VOTES_SHOWN:]:
            verb = "approved" if vote.decision == "approve" else "denied"
            line = f"• {slack_escape(vote.voter, 200)} {verb}"
            if vote.reason:
                line += f": {slack_escape(vote.reason, 200)}"
            lines.append(line)
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "*Decided by*\n" + "\n".join(lines)},
            }
        )
    if link:
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": _slack_link(link, "Open the review")}],
            }
        )
    return {"text": slack_escape(summary, SLACK_NOTE_MAX), "blocks": blocks}


def _field(name: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": f"*{name}*\n{slack_escape(value, SLACK_FIELD_MAX)}"}


def target_payload(target: NotifyConfig, info: ReviewInfo, event: str, link: str) -> dict[str, Any]:
    if target.type == "slack":
        return slack_payload(info, event, link)
    return webhook_payload(info, event, link)


def retry_delay(attempt: int, first: float, cap: float, retry_after: float | None = None) -> float:
    """Backoff before retry number ``attempt`` (0-based): doubling from ``first``, at most
    ``cap``, plus up to 10% jitter so that many gateways do not retry in step."""
    delay = min(first * 2.0**attempt, cap)
    if retry_after is not None:
        delay = min(max(delay, retry_after), cap)
    return delay + random.uniform(0, delay / 10)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


# -- delivery -------------------------------------------------------------------------


class _Permanent(Exception):
    """A delivery that retrying cannot fix (bad URL, 4xx)."""


_Item = tuple[ReviewInfo, str, Config]


class Notifier:
    """Sends review events to the configured targets; ``listener`` goes into
    ``ReviewService.listeners``."""

    def __init__(
        self,
        config: Callable[[], Config],
        vault: Vault | None,
        *,
        queue_size: int = QUEUE_SIZE,
        concurrency: int = CONCURRENCY,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        if queue_size < 1 or concurrency < 1:
            raise ValueError("queue_size and concurrency must be >= 1")
        self._config = config
        self._vault = vault
        self._queue_size = queue_size
        self._concurrency = concurrency
        self._backoff_first = backoff_first
        self._backoff_max = backoff_max
        # Accepted by listener() and not yet taken by the sender: counted under a lock,
        # because callbacks waiting in the loop's ready queue would otherwise be unbounded.
        self._lock = threading.Lock()
        self._pending = 0
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Item] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._client: httpx.AsyncClient | None = None
        self._sender: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._redactor = _UrlRedactor()

    # -- any thread ---------------------------------------------------------------------

    def listener(self, info: ReviewInfo, event: str) -> None:
        """Queue ``event`` for the targets that want it. Never blocks, never raises."""
        try:
            config = self._config()
            if not any(event in t.events for t in config.reviews.notify):
                return
            loop = self._loop
            if loop is None or self._closing:
                log.warning(
                    "review %s %s not announced: the notifier is not running", info.id, event
                )
                return
            with self._lock:
                if self._pending >= self._queue_size:
                    full = True
                else:
                    full = False
                    self._pending += 1
            if full:
                log.warning("notification queue full: review %s %s not announced", info.id, event)
                return
            try:
                loop.call_soon_threadsafe(self._put, (info, event, config))
            except RuntimeError:  # the loop is closed
                self._taken()
                log.warning("review %s %s not announced: the loop is closed", info.id, event)
        except Exception:
            log.exception("review notifier failed to queue review %s %s", info.id, event)

    def _taken(self) -> None:
        with self._lock:
            self._pending -= 1

    # -- loop side ----------------------------------------------------------------------

    def _put(self, item: _Item) -> None:
        assert self._queue is not None
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:  # not expected: _pending bounds the queue
            self._taken()
            log.warning("notification queue full: review %s %s not announced", item[0].id, item[1])

    async def start(self) -> None:
        if self._sender is not None:
            raise RuntimeError("the notifier is already started")
        self._queue = asyncio.Queue(self._queue_size)
        self._slots = asyncio.Semaphore(self._concurrency)
        self._client = httpx.AsyncClient(headers={"User-Agent": USER_AGENT}, follow_redirects=False)
        logging.getLogger("httpx").addFilter(self._redactor)
        self._loop = asyncio.get_running_loop()
        self._sender = asyncio.create_task(self._run(), name="review-notify")

    async def close(self, grace: float = 5.0) -> None:
        """Send what is queued for up to ``grace`` seconds, then cancel the rest."""
        self._closing = True
        sender, self._sender = self._sender, None
        if sender is None:
            return
        assert self._queue is not None
        try:
            async with asyncio.timeout(grace):
                await asyncio.sleep(0)  # let events handed over from threads reach the queue
                await self._queue.join()
                if self._deliveries:
                    await asyncio.wait(list(self._deliveries))
        except TimeoutError:
            log.warning(
                "notifier closing: %d events and %d deliveries not finished within %.1fs",
                self._queue.qsize(),
                len(self._deliveries),
                grace,
            )
        tasks = [sender, *self._deliveries]
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        if self._client is not None:
            await self._client.aclose()
        logging.getLogger("httpx").removeFilter(self._redactor)
        self._loop = None

    async def _run(self) -> None:
        assert self._queue is not None and self._slots is not None
        while True:
            info, event, config = await self._queue.get()
            self._taken()
            try:
                link = review_link(config, info.id)
                for index, target in enumerate(config.reviews.notify):
                    if event not in target.events:
                        continue
                    # Waiting for a free slot bounds concurrent deliveries; events wait
                    # in the (bounded) queue meanwhile.
                    await self._slots.acquire()
                    task = asyncio.create_task(
                        self._deliver(index, target, config, info, event, link),
                        name=f"review-notify-{info.id}-{index}",
                    )
                    self._deliveries.add(task)
                    task.add_done_callback(self._deliveries.discard)
            except Exception:
                log.exception("review notifier failed on review %s %s", info.id, event)
            finally:
                self._queue.task_done()

    async def _deliver(
        self,
        index: int,
        target: NotifyConfig,
        config: Config,
        info: ReviewInfo,
        event: str,
        link: str,
    ) -> None:
        assert self._slots is not None
        where = f"notify target {index} ({target.type})"
        try:
            url = await self._resolve_url(target, config)
            body = json.dumps(target_payload(target, info, event, link)).encode()
            await self._post_with_retries(where, target, url, body, info.id, event)
        except _Permanent as exc:
            log.warning("%s: review %s %s not delivered: %s", where, info.id, event, exc)
        except Exception as exc:
            log.error(
                "%s: review %s %s not delivered: %s", where, info.id, event, type(exc).__name__
            )
        finally:
            self._slots.release()

    async def _resolve_url(self, target: NotifyConfig, config: Config) -> str:
        ref = target.url.strip()
        if ref.startswith(("http://", "https://")):
            return ref
        try:
            # file: and secret: touch the disk or the store: keep that off the loop.
            url = await asyncio.to_thread(
                resolve_secret, ref, self._vault, base_dir=Path(config.base_dir)
            )
        except SecretError as exc:
            raise _Permanent(f"cannot resolve the url reference: {exc}") from None
        url = url.strip()
        if not url.startswith(("http://", "https://")):
            raise _Permanent("the url reference does not hold an http(s) URL")
        return url

    async def _post_with_retries(
        self, where: str, target: NotifyConfig, url: str, body: bytes, review_id: str, event: str
    ) -> None:
        assert self._client is not None
        headers = {"Content-Type": "application/json"}
        for attempt in range(target.retries + 1):
            retry_after: float | None = None
            key = self._redactor.add(url)
            try:
                # The whole attempt is bounded, not just each read: a receiver that
                # trickles bytes cannot hold a slot for longer than the timeout.
                async with asyncio.timeout(target.timeout):
                    async with self._client.stream(
                        "POST", url, content=body, headers=headers, timeout=target.timeout
                    ) as response:
                        status = response.status_code  # the body is never read
                        retry_after = _retry_after(response)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL):
                raise _Permanent("the url is not a valid http(s) URL") from None
            except (httpx.TransportError, TimeoutError) as exc:
                problem = (
                    "timed out"
                    if isinstance(exc, TimeoutError | httpx.TimeoutException)
                    else f"connection failed ({type(exc).__name__})"
                )
            else:
                if 200 <= status < 300:
                    return
                if status != 429 and status < 500:
                    raise _Permanent(f"the receiver answered HTTP {status} (not retried)")
                problem = f"the receiver answered HTTP {status}"
            finally:
                self._redactor.discard(key)
            if attempt == target.retries:
                log.warning(
                    "%s: review %s %s not delivered after %d attempts: %s",
                    where,
                    review_id,
                    event,
                    attempt + 1,
                    problem,
                )
                return
            delay = retry_delay(attempt, self._backoff_first, self._backoff_max, retry_after)
            log.info(
                "%s: review %s %s: %s; retrying in %.2fs", where, review_id, event, problem, delay
            )
            await asyncio.sleep(delay)


class _UrlRedactor(logging.Filter):
    """Hides the URLs of in-flight deliveries in httpx's "HTTP Request: POST <url>" log."""

    def __init__(self) -> None:
        super().__init__()
        self._urls: Counter[str] = Counter()

    def add(self, url: str) -> str:
        try:
            key = str(httpx.URL(url))  # as httpx will print it
        except httpx.InvalidURL:
            key = url
        self._urls[key] += 1
        return key

    def discard(self, url: str) -> None:
        self._urls[url] -= 1
        if self._urls[url] <= 0:
            del self._urls[url]

    def filter(self, record: logging.LogRecord) -> bool:
        if self._urls and isinstance(record.args, tuple):
            record.args = tuple(
                _redacted(arg) if isinstance(arg, httpx.URL) and str(arg) in self._urls else arg
                for arg in record.args
            )
        return True


def _redacted(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.host}/[redacted]"
