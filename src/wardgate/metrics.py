"""Prometheus metrics: every instrument of the gateway lives here, fed by one-line calls at
the central points (the gate, the recorder, the review service, the login limiter, the
upstream dial), and served at ``/metrics`` on the API port.

With ``workers > 1`` each worker process writes its values to files in one per-run
directory (prometheus_client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR``, which
``wardgate serve`` sets before anything imports this module, since prometheus_client
chooses where values live at import) and worker 0, which serves the API, adds them up at
each scrape: one registry for the whole gateway.

What the store knows for the whole fleet (reviews by status) is read from the store at
scrape time, so every replica reports the same numbers: aggregate those with max(), not
sum().
"""

from __future__ import annotations

import bisect
import functools
import os
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from wardgate.audit.records import ActionRecord, Record, SessionEnd, SessionRecord

if TYPE_CHECKING:
    from wardgate.reviews.model import ReviewInfo
    from wardgate.store.db import Store

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

SESSIONS_OPEN = Gauge(
    "wardgate_sessions_open",
    "Client sessions open now, by protocol.",
    ["protocol"],
    multiprocess_mode="livesum",
)
SESSIONS = Counter("wardgate_sessions", "Client sessions opened, by protocol.", ["protocol"])
ACTIONS = Counter(
    "wardgate_actions",
    "Actions recorded, by protocol, verdict (allow, review, block) and outcome "
    "(ok, error, blocked, not_executed).",
    ["protocol", "verdict", "status"],
)
GATE_DECISION = Histogram(
    "wardgate_gate_decision_seconds",
    "Time the gate took to judge one action (parsing included), by protocol.",
    ["protocol"],
    buckets=(25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.1),
)
UPSTREAM_CONNECT = Histogram(
    "wardgate_upstream_connect_seconds",
    "Time to dial and authenticate to a target, by protocol and outcome (ok, error).",
    ["protocol", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REVIEW_EVENTS = Counter(
    "wardgate_review_events",
    "Review events handled by this gateway (requested, approved, denied, expired, ...).",
    ["event"],
)
REVIEW_WAIT = Histogram(
    "wardgate_review_wait_seconds",
    "From a review's request to its decision, by outcome (approved, denied, expired, cancelled).",
    ["outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600),
)
RECORDER_QUEUE = Gauge(
    "wardgate_recorder_queue_depth",
    "Audit records submitted but not yet committed to the store.",
    multiprocess_mode="livesum",
)
RECORDER_LAG = Gauge(
    "wardgate_recorder_lag_seconds",
    "Age of the oldest audit record not yet committed (0 when all are written).",
    multiprocess_mode="livemax",
)
AUDIT_STORE_WRITABLE = Gauge(
    "wardgate_audit_store_writable",
    "1 while the recorder's writes to the store succeed, 0 since one failed.",
    multiprocess_mode="livemin",
)
AUDIT_REFUSING = Gauge(
    "wardgate_audit_refusing",
    "1 while the audit store is unavailable and the backlog full: new actions and "
    "sessions are refused (limits.audit_backlog).",
    multiprocess_mode="livemax",
)
AUDIT_REFUSED = Counter(
    "wardgate_audit_refused",
    "Actions and sessions refused because the audit store could not record them.",
)
LOGIN_FAILURES = Counter(
    "wardgate_login_failures",
    "Failed logins (tokens, passwords, SSH keys), every protocol and the web UI.",
)
PROTOCOL_VIOLATIONS = Counter(
    "wardgate_protocol_violations",
    "Client connections ended for breaking the protocol or a session limit, by protocol "
    "and reason.",
    ["protocol", "reason"],
)

_DECIDED = frozenset({"approved", "denied", "expired", "cancelled"})

P = ParamSpec("P")
R = TypeVar("R")


# -- the hooks ---------------------------------------------------------------------------


def timed_dial(protocol: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorates an upstream dial: its time and whether it succeeded."""

    def wrap(dial: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(dial)
        async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            outcome = "error"
            try:
                result = await dial(*args, **kwargs)
                outcome = "ok"
                return result
            finally:
                UPSTREAM_CONNECT.labels(protocol, outcome).observe(time.perf_counter() - started)

        return timed

    return wrap


def login_failed() -> None:
    LOGIN_FAILURES.inc()


def protocol_violation(protocol: str, reason: str) -> None:
    PROTOCOL_VIOLATIONS.labels(protocol, reason).inc()


def review_event(info: ReviewInfo, event: str) -> None:
    """A review service listener (``ReviewService.listeners``)."""
    REVIEW_EVENTS.labels(event).inc()
    if event in _DECIDED:
        decided = info.decided_at or time.time()
        REVIEW_WAIT.labels(event).observe(max(0.0, decided - info.created_at))


class RecordObserver:
    """What the recorder sees pass: sessions opening and closing, actions and their
    verdicts, its own backlog. One per recorder (one per process)."""

    def __init__(self) -> None:
        self._protocols: dict[str, str] = {}  # open session id -> protocol
        AUDIT_STORE_WRITABLE.set(1)
        AUDIT_REFUSING.set(0)
        self.on_action: Callable[[ActionRecord], None] | None = None  # traces (wardgate.telemetry)

    def submitted(self, record: Record) -> None:
        if isinstance(record, ActionRecord):
            protocol = record.action.protocol
            _ACTIONS_SEEN[protocol, record.verdict.decision.value, record.status] += 1
            if self.on_action is not None:
                self.on_action(record)
        elif isinstance(record, SessionRecord):
            if record.id not in self._protocols:
                self._protocols[record.id] = record.protocol
                SESSIONS.labels(record.protocol).inc()
                SESSIONS_OPEN.labels(record.protocol).inc()
        elif isinstance(record, SessionEnd):
            ended = self._protocols.pop(record.session_id, None)
            if ended is not None:
                SESSIONS_OPEN.labels(ended).dec()

    @staticmethod
    def store_state(writable: bool, refusing: bool) -> None:
        AUDIT_STORE_WRITABLE.set(1 if writable else 0)
        AUDIT_REFUSING.set(1 if refusing else 0)

    @staticmethod
    def refused() -> None:
        AUDIT_REFUSED.inc()

    @staticmethod
    def backlog(depth: int, oldest_age: float) -> None:
        """After each batch the recorder writes (so at least as often as actions are
        recorded): its backlog, and what the hot path tallied meanwhile."""
        RECORDER_QUEUE.set(depth)
        RECORDER_LAG.set(oldest_age if depth else 0.0)
        flush()


# -- the hot path's tallies ----------------------------------------------------------------
#
# An instrument's inc() or observe() takes a lock (and with several workers writes a
# mapped file): three per relayed statement cost about 25 us of a worker's CPU under
# pgbench. Statements are tallied here as plain numbers instead, and `flush` adds them
# to the instruments after each batch the recorder writes and before each scrape.

_ACTIONS_SEEN: Tally[tuple[str, str, str]] = Tally()
_DECISION_BOUNDS: tuple[float, ...] = (*GATE_DECISION._upper_bounds,)  # ends with +Inf
# protocol -> [sum of seconds, count per bucket (a value counts in the first bucket
# whose bound is >= it, as Histogram.observe does)]
_DECISIONS: dict[str, list[float]] = {}


def note_decision(protocol: str, seconds: float) -> None:
    """One gate decision of ``protocol`` took ``seconds`` (Gate.check times itself)."""
    tally = _DECISIONS.get(protocol)
    if tally is None:
        tally = _DECISIONS[protocol] = [0.0] * (1 + len(_DECISION_BOUNDS))
    tally[0] += seconds
    tally[1 + bisect.bisect_left(_DECISION_BOUNDS, seconds)] += 1


def flush() -> None:
    """Add what the hot path tallied to the Prometheus instruments."""
    global _ACTIONS_SEEN, _DECISIONS
    # Swapped, not cleared: a thread may be tallying meanwhile (at worst into the old
    # one, and that count is lost, never doubled).
    actions, _ACTIONS_SEEN = _ACTIONS_SEEN, Tally()
    decisions, _DECISIONS = _DECISIONS, {}
    for labels, count in actions.items():
        _action_child(*labels).inc(count)
    for protocol, tally in decisions.items():
        child = GATE_DECISION.labels(protocol)
        # Histogram's own parts, as its observe() updates them, a bucket at a time.
        child._sum.inc(tally[0])
        for bucket, seen in zip(child._buckets, tally[1:], strict=True):
            if seen:
                bucket.inc(seen)


@functools.cache
def _action_child(protocol: str, verdict: str, status: str) -> Any:
    return ACTIONS.labels(protocol, verdict, status)


# -- the registry ------------------------------------------------------------------------


class ReviewsCollector(Collector):
    """``wardgate_reviews{status}``: reviews in the store now, by (effective) status."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "wardgate_reviews",
            "Reviews in the store by status (the whole fleet: aggregate with max, not sum).",
            labels=["status"],
        )
        for status, count in sorted(reviews_by_status(self._store).items()):
            family.add_metric([status], count)
        yield family


def reviews_by_status(store: Store) -> dict[str, int]:
    """Reviews by the status the API shows (a pending or approved review past its time
    counts as expired), in one grouped query."""
    from sqlalchemy import and_, case, func, select

    from wardgate.store.models import ReviewRow

    now = time.time()
    status = case(
        (and_(ReviewRow.status == "pending", ReviewRow.expires_at <= now), "expired"),
        (and_(ReviewRow.status == "approved", ReviewRow.approved_until <= now), "expired"),
        else_=ReviewRow.status,
    )
    with store.session(write=False) as session:
        rows = session.execute(select(status, func.count()).group_by(status)).all()
    counts = dict.fromkeys(("pending", "approved", "denied", "expired", "cancelled"), 0)
    for name, count in rows:
        counts[str(name)] = counts.get(str(name), 0) + int(count)
    return counts


def exposition(store: Store | None) -> tuple[bytes, str]:
    """The text to answer a scrape with, and its content type."""
    flush()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    if store is not None:
        reviews = CollectorRegistry(auto_describe=False)
        reviews.register(ReviewsCollector(store))
        body += generate_latest(reviews)
    return body, CONTENT_TYPE_LATEST
