"""The metrics hooks, the readiness rules and the drain loop, without a gateway process
(tests/integration/test_operations.py scrapes a real one)."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from wardgate import metrics, telemetry
from wardgate.actions import Action, Decision, Verdict
from wardgate.audit.records import ActionRecord, SessionEnd, SessionRecord
from wardgate.config import parse_config
from wardgate.gate import Gate
from wardgate.identity.principals import Principal, PrincipalKind
from wardgate.lifecycle import Lifecycle, drain
from wardgate.store.db import Store

WHO = Principal("bot", PrincipalKind.AGENT, frozenset({"agents"}), "alice")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_sessions_and_actions_are_counted_once() -> None:
    observer = metrics.RecordObserver()
    opened = sample("wardgate_sessions_open", protocol="unit")
    total = sample("wardgate_sessions_total", protocol="unit")
    blocked = sample("wardgate_actions_total", protocol="unit", verdict="block", status="blocked")
    start = SessionRecord("s_1", "unit", WHO, "db", "127.0.0.1", time.time())
    observer.submitted(start)
    observer.submitted(start)  # the same session twice is one session
    assert sample("wardgate_sessions_open", protocol="unit") == opened + 1
    assert sample("wardgate_sessions_total", protocol="unit") == total + 1
    action = Action(WHO, "db", "unit", "sql", "drop table t")
    record = ActionRecord("s_1", 1, action, Verdict(Decision.BLOCK, "r", "no"), 0.0, 1.0, "blocked")
    traced: list[ActionRecord] = []
    observer.on_action = traced.append
    observer.submitted(record)
    assert traced == [record]
    metrics.flush()  # actions are tallied, and published after each recorded batch
    assert (
        sample("wardgate_actions_total", protocol="unit", verdict="block", status="blocked")
        == blocked + 1
    )
    observer.submitted(SessionEnd("s_unknown", time.time()))  # never opened: ignored
    observer.submitted(SessionEnd("s_1", time.time()))
    observer.submitted(SessionEnd("s_1", time.time()))
    assert sample("wardgate_sessions_open", protocol="unit") == opened


def test_tallied_decisions_land_in_the_buckets_observe_would_use() -> None:
    """`flush` publishes the hot path's tallies as Histogram.observe would have: a
    value on a bucket's bound counts in that bucket."""
    bounds = metrics._DECISION_BOUNDS
    values = [0.0, bounds[0], bounds[0] * 1.01, bounds[3], 0.05, 7.0]
    buckets = ("2.5e-05", "0.0001", "0.00025", "0.1", "+Inf")

    def seen() -> tuple[float, ...]:
        return (
            sample("wardgate_gate_decision_seconds_sum", protocol="unit3"),
            *(
                sample("wardgate_gate_decision_seconds_bucket", protocol="unit3", le=le)
                for le in buckets
            ),
        )

    before = seen()
    for v in values:
        metrics.note_decision("unit3", v)
    metrics.RecordObserver.backlog(0, 0.0)  # what the recorder calls after each batch
    after = seen()
    assert after[0] - before[0] == pytest.approx(sum(values))
    # cumulative buckets: <=2.5e-05: 2, <=1e-4: 3, <=2.5e-4: 4, <=0.1: 5, +Inf: 6
    assert [a - b for a, b in zip(after[1:], before[1:], strict=True)] == [2, 3, 4, 5, 6]


def test_backlog_and_lag() -> None:
    metrics.RecordObserver.backlog(7, 2.5)
    assert sample("wardgate_recorder_queue_depth") == 7
    assert sample("wardgate_recorder_lag_seconds") == 2.5
    metrics.RecordObserver.backlog(0, 9.0)
    assert sample("wardgate_recorder_lag_seconds") == 0.0


def test_gate_decisions_and_dials_are_timed() -> None:
    config = parse_config("groups: {g: {}}\n", Path("unit.yaml"))
    before = sample("wardgate_gate_decision_seconds_count", protocol="unit2")
    Gate(config).check(Action(WHO, "db", "unit2", "sql", "select 1"))
    metrics.flush()
    assert sample("wardgate_gate_decision_seconds_count", protocol="unit2") == before + 1

    @metrics.timed_dial("unit")
    async def dial(fail: bool) -> int:
        if fail:
            raise OSError("refused")
        return 1

    ok = sample("wardgate_upstream_connect_seconds_count", protocol="unit", outcome="ok")
    error = sample("wardgate_upstream_connect_seconds_count", protocol="unit", outcome="error")
    assert asyncio.run(dial(False)) == 1
    with pytest.raises(OSError):
        asyncio.run(dial(True))
    assert (
        sample("wardgate_upstream_connect_seconds_count", protocol="unit", outcome="ok") == ok + 1
    )
    assert (
        sample("wardgate_upstream_connect_seconds_count", protocol="unit", outcome="error")
        == error + 1
    )


def test_review_wait_is_measured_at_the_decision() -> None:
    from types import SimpleNamespace

    info = SimpleNamespace(created_at=100.0, decided_at=160.0)
    before = sample("wardgate_review_wait_seconds_sum", outcome="approved")
    metrics.review_event(info, "requested")  # type: ignore[arg-type]
    metrics.review_event(info, "approved")  # type: ignore[arg-type]
    assert sample("wardgate_review_wait_seconds_sum", outcome="approved") == before + 60.0


def test_reviews_by_status_reads_the_effective_status(tmp_path: Path) -> None:
    from wardgate.store.models import ReviewRow

    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    now = time.time()
    columns = {c.name for c in ReviewRow.__table__.columns}
    base = {c: "" for c in columns if c not in ("id", "status", "expires_at", "approved_until")}
    base.update(
        created_at=now, detail="{}", rules="[]", requirements="[]", sponsor_may_approve=False
    )
    for key in ("decided_at", "executed_at", "preview", "result", "justification", "sponsor"):
        base[key] = None
    rows = [("pending", now + 60, None), ("pending", now - 1, None), ("approved", now + 60, now - 1),
            ("approved", now + 60, now + 60), ("denied", now + 60, None)]  # fmt: skip
    with store.session() as session:
        for i, (status, expires, until) in enumerate(rows):
            session.add(
                ReviewRow(
                    id=f"r_{i}", status=status, expires_at=expires, approved_until=until, **base
                )
            )
    counts = metrics.reviews_by_status(store)
    assert counts == {"pending": 1, "approved": 1, "denied": 1, "expired": 2, "cancelled": 0}
    store.dispose()


def test_parent_context_joins_the_agents_trace() -> None:
    from opentelemetry import trace

    def ids(ref: str | None, session: str = "s_1") -> tuple[str, str, bool]:
        ctx = trace.get_current_span(telemetry.parent_context(ref, session)).get_span_context()
        return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", ctx.trace_flags.sampled

    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert ids(tp) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    assert ids(tp[:-2] + "00")[2] is False  # the agent chose not to sample
    assert ids("4BF92F3577B34DA6A3CE929D0E0E4736")[0] == "4bf92f3577b34da6a3ce929d0e0e4736"
    same = ids(None, "s_9")
    assert same == ids(None, "s_9") and same[0] != ids(None, "s_8")[0]  # one trace per session
    assert ids("conv-7f3a")[0] == ids("conv-7f3a", "s_2")[0]  # one trace per conversation
    zero = "00-" + "0" * 32 + "-00f067aa0ba902b7-01"
    assert ids(zero)[0] != "0" * 32  # an invalid traceparent is only a name


def test_tracing_stays_off_without_endpoint_or_without_the_extra(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SDK_DISABLED",
    ):
        monkeypatch.delenv(name, raising=False)
    observer = metrics.RecordObserver()
    assert telemetry.setup_tracing(observer, "t") is None and observer.on_action is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry.setup_tracing(observer, "t") is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    # As if wardgate[otel] were not installed: the import fails, the gateway goes on.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with caplog.at_level(logging.WARNING, logger="wardgate"):
        assert telemetry.setup_tracing(observer, "t") is None
    assert "install wardgate[otel]" in caplog.text and observer.on_action is None


class FakeListener:
    def __init__(self, busy: list[int]) -> None:
        self.busy = busy  # what close_idle answers, call by call (the last one repeats)
        self.accepting = True

    def stop_accepting(self) -> None:
        self.accepting = False

    def close_idle(self) -> int:
        return self.busy.pop(0) if len(self.busy) > 1 else self.busy[0]


def test_drain_waits_for_busy_sessions_up_to_the_grace_period() -> None:
    async def run(
        busy: list[int], grace: float, hurry_after: float | None = None
    ) -> tuple[int, float, Lifecycle]:
        life = Lifecycle(listening={"postgres": True})
        listener = FakeListener(busy)
        hurry = asyncio.Event()
        if hurry_after is not None:
            asyncio.get_running_loop().call_later(hurry_after, hurry.set)
        started = time.monotonic()
        left = await drain(life, [("postgres", listener)], grace, hurry)
        assert not listener.accepting
        return left, time.monotonic() - started, life

    left, took, life = asyncio.run(run([2, 1, 0], grace=10))
    assert left == 0 and took < 1 and life.draining and life.listening == {"postgres": False}
    left, took, _ = asyncio.run(run([3], grace=0.5))
    assert left == 3 and 0.4 < took < 2
    left, took, _ = asyncio.run(run([3], grace=30, hurry_after=0.2))  # a second SIGTERM
    assert left == 3 and took < 2


def test_readiness_reasons(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    life = Lifecycle(listening={"postgres": True, "ssh": True})
    assert life.not_ready(store) == []
    # A writer holding SQLite's write lock does not make the probe wait or fail.
    import sqlite3

    writer = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    assert life.not_ready(store) == []
    assert time.monotonic() - started < 1.0
    writer.execute("ROLLBACK")
    writer.close()
    life.listening["ssh"] = False
    life.draining = True
    assert life.not_ready(store) == [
        "draining: the gateway is shutting down",
        "the ssh listener is not accepting",
    ]
    store.dispose()
    broken = Store("postgresql://nobody@127.0.0.1:1/none")
    problems = Lifecycle().not_ready(broken)
    assert len(problems) == 1 and problems[0].startswith("the store is not reachable: ")
    broken.dispose()
