"""The event-loop side of reviews in one gateway process: holding an action until a
human decides, the access grants the gate honours, and housekeeping.

A waiter wakes when the review changes: at once when the decision was made in this
process, through ``LISTEN wardgate_reviews`` when another process on the same
PostgreSQL store made it, and in any case by polling the store every second (so a
missed notification, or SQLite with several workers, costs at most a second).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from wardgate.actions import Action, Verdict
from wardgate.config import Config
from wardgate.reviews.model import ReviewError, ReviewInfo
from wardgate.reviews.service import NOTIFY_CHANNEL, ReviewService
from wardgate.store.db import Store

log = logging.getLogger("wardgate.reviews")

_POLL = 1.0  # seconds between store reads while a statement waits
_GRANTS_REFRESH = 2.0  # grants made or revoked elsewhere are seen within this
_SWEEP = 10.0  # expiry housekeeping
_LISTEN_RETRY = 5.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a held action ended: ``approved`` (the approval was used now: run it),
    or ``pending``/``denied``/``expired``/``cancelled`` (do not run it)."""

    status: str
    review: ReviewInfo


ActionStarted = Callable[[ReviewInfo, Action, Verdict], Coroutine[Any, Any, None]]


class Tasks(Protocol):
    """Starts named background tasks and keeps them referenced (core.tasks.Tasks)."""

    def spawn(
        self, coro: Coroutine[Any, Any, Any], name: str, *, until_cancelled: bool = False
    ) -> asyncio.Task[Any]: ...


class ReviewRuntime:
    def __init__(
        self,
        store: Store,
        service: ReviewService,
        config: Callable[[], Config],
        tasks: Tasks,
        *,
        housekeeping: bool = True,
    ) -> None:
        self.store = store
        self.service = service
        self._config = config
        self._tasks = tasks
        self._housekeeping = housekeeping
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._grants: dict[tuple[str, str], frozenset[str]] = {}
        self._grants_dirty = asyncio.Event()
        # Set by the API layer: runs an approved proposal (needs the protocol's executor).
        self.on_proposal_approved: Callable[[ReviewInfo], Coroutine[Any, Any, None]] | None = None
        # Computes a preview for a new action review (protocol-specific), if any.
        self.previewer: (
            Callable[[ReviewInfo, Action, Verdict], Coroutine[Any, Any, None]] | None
        ) = None
        service.listeners.append(self._on_event)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._refresh_grants()
        self._tasks.spawn(self._grants_loop(), name="review-grants", until_cancelled=True)
        if self.store.dialect == "postgresql":
            self._tasks.spawn(self._listen_loop(), name="review-listen", until_cancelled=True)
        if self._housekeeping:
            await asyncio.to_thread(self.service.fail_interrupted, 300.0)
            self._tasks.spawn(self._sweep_loop(), name="review-sweep", until_cancelled=True)

    # -- grants -------------------------------------------------------------------------

    def granted(self, principal: str, connection: str) -> frozenset[str]:
        """Roles ``principal`` holds on ``connection`` through an active grant (fast,
        from memory; kept within a couple of seconds of the store)."""
        return self._grants.get((principal, connection), frozenset())

    async def _refresh_grants(self) -> None:
        try:
            grants = await asyncio.to_thread(self.service.active_grants)
        except Exception as exc:  # noqa: BLE001 - keep the last known grants, retry soon
            log.warning("cannot read access grants from the store: %s", exc)
            return
        now = time.time()
        table: dict[tuple[str, str], set[str]] = {}
        for g in grants:
            if g.approved_until is not None and g.approved_until > now:
                table.setdefault((g.principal, g.connection), set()).add(str(g.detail["role"]))
        self._grants = {k: frozenset(v) for k, v in table.items()}

    async def _grants_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._grants_dirty.wait(), _GRANTS_REFRESH)
            except TimeoutError:
                pass
            self._grants_dirty.clear()
            await self._refresh_grants()

    # -- holding an action --------------------------------------------------------------

    async def obtain(self, action: Action, verdict: Verdict, wait: float) -> Outcome:
        """Find or file the review of ``action`` and wait up to ``wait`` seconds for a
        decision. ``approved`` means this caller used the approval (exactly once)."""
        asked = time.time()
        review = await asyncio.to_thread(self.service.request_action, action, verdict)
        if review.status == "pending" and review.created_at >= asked:  # filed just now
            if self.previewer is not None:
                self._tasks.spawn(self.previewer(review, action, verdict), name="review-preview")
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            if review.status == "approved":
                if await asyncio.to_thread(self.service.consume, review.id):
                    return Outcome("approved", review)
                # Used by someone else a moment ago (the same statement twice at once):
                # this one needs a review of its own.
                review = await asyncio.to_thread(self.service.request_action, action, verdict)
                continue
            if review.status != "pending":
                return Outcome(review.status, review)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Outcome("pending", review)
            await self._wait_change(review.id, min(remaining, _POLL))
            found = await asyncio.to_thread(self.service.get, review.id)
            if found is None:
                raise ReviewError(f"review {review.id} disappeared from the store")
            review = found

    async def _wait_change(self, review_id: str, seconds: float) -> None:
        event = asyncio.Event()
        self._waiters.setdefault(review_id, set()).add(event)
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(review_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[review_id]

    def _wake(self, review_id: str) -> None:
        for event in self._waiters.get(review_id, ()):
            event.set()

    # -- events -------------------------------------------------------------------------

    def _on_event(self, info: ReviewInfo, event: str) -> None:
        """Service listener: may run in a worker thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._on_event_in_loop, info, event)

    def _on_event_in_loop(self, info: ReviewInfo, event: str) -> None:
        self._wake(info.id)
        if info.kind == "grant":
            self._grants_dirty.set()
        if info.kind == "proposal" and event == "approved" and self.on_proposal_approved:
            self._tasks.spawn(self.on_proposal_approved(info), name=f"proposal-{info.id}")

    async def _listen_loop(self) -> None:
        """Wake waiters on decisions made by other gateway processes (PostgreSQL store)."""
        import psycopg

        url = self.store.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            try:
                aconn = await psycopg.AsyncConnection.connect(url, autocommit=True)
                async with aconn:
                    await aconn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    # Anything decided while we were not listening: wake every waiter once.
                    for review_id in list(self._waiters):
                        self._wake(review_id)
                    self._grants_dirty.set()
                    async for note in aconn.notifies():
                        self._wake(note.payload)
                        self._grants_dirty.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - polling covers the gap; retry
                log.warning("review notifications from the store stopped (%s); retrying", exc)
            await asyncio.sleep(_LISTEN_RETRY)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP)
            try:
                await asyncio.to_thread(self.service.expire_due)
                orphans = await asyncio.to_thread(self.service.unstarted_proposals, _SWEEP)
            except Exception as exc:  # noqa: BLE001 - try again next round
                log.warning("review housekeeping failed: %s", exc)
                continue
            for review in orphans:
                if self.on_proposal_approved is not None:
                    self._tasks.spawn(
                        self.on_proposal_approved(review), name=f"proposal-{review.id}"
                    )
