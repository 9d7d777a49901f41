from __future__ import annotations

import asyncio
import logging
import time

import pytest

from wardgate.actions import Action, Decision, StatementInfo, Verdict
from wardgate.audit.chain import verify_chain
from wardgate.audit.query import get_session, list_sessions
from wardgate.audit.recorder import Recorder
from wardgate.audit.records import ActionRecord, SessionEnd, SessionRecord
from wardgate.identity.principals import Principal, PrincipalKind
from wardgate.store.db import Store

# Every test runs with the writer in a thread and in a separate recorder process.
MODES = pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])

BOT = Principal("bot", PrincipalKind.AGENT, frozenset({"agents"}), sponsor="alice")
ALICE = Principal("alice", PrincipalKind.USER, frozenset({"dba"}))


def _start(sid: str, who: Principal = BOT, connection: str = "orders") -> SessionRecord:
    return SessionRecord(
        sid, "postgres", who, connection, "10.0.0.7:5123", time.time(), "psql", True
    )


def _action(sid: str, seq: int, *, blocked: bool = False, text: str = "") -> ActionRecord:
    action = Action(
        BOT, "orders", "postgres", "query", text or f"SELECT {seq}", (str(seq), None), sid
    )
    verdict = Verdict(
        Decision.BLOCK if blocked else Decision.ALLOW,
        "no-drop" if blocked else "role:agent-proposer",
        "Destructive DDL is blocked" if blocked else "read allowed",
        (StatementInfo("ddl" if blocked else "read", ("drop",) if blocked else ("select",)),),
    )
    return ActionRecord(
        sid,
        seq,
        action,
        verdict,
        time.time(),
        0.25,
        "blocked" if blocked else "ok",
        rows=None if blocked else 1,
        command=None if blocked else "SELECT 1",
        error="permission denied" if blocked else None,
        sqlstate="42501" if blocked else None,
    )


def _submit_session(rec: Recorder, sid: str, actions: int, blocked_every: int = 0) -> None:
    rec.submit(_start(sid))
    for i in range(actions):
        rec.submit(_action(sid, i, blocked=bool(blocked_every) and i % blocked_every == 0))
    rec.submit(SessionEnd(sid, time.time(), "closed"))


async def _test_flush_writes_everything_and_summaries_add_up(process: bool, store: Store) -> None:
    rec = Recorder(store, process=process, batch=7)
    await rec.start()
    for n in range(5):
        _submit_session(rec, f"s{n}", actions=30, blocked_every=4)
    await asyncio.wait_for(rec.flush(), 30)
    assert rec.backlog == 0
    await rec.close()

    result = verify_chain(store)
    assert result.ok and result.checked == 5 * 32
    sessions = list_sessions(store)
    assert len(sessions) == 5
    for s in sessions:
        assert (s["action_count"], s["blocked_count"], s["status"]) == (30, 8, "closed")
        assert s["ended_at"] is not None and s["sponsor"] == "alice" and s["tls"] is True
    detail = get_session(store, "s2")
    assert detail is not None
    assert [a["seq"] for a in detail["actions"]] == list(range(30))
    first = detail["actions"][0]
    assert first["verdict"] == {
        "decision": "block",
        "rule": "no-drop",
        "rules": ["no-drop"],
        "reason": "Destructive DDL is blocked",
        "enforced": True,
    }
    assert first["statements"] == [
        {
            "klass": "ddl",
            "kinds": ["drop"],
            "error": None,
            "tables_read": [],
            "tables_written": [],
            "functions": [],
        }
    ]
    assert first["params"] == ["0", None]
    assert first["sqlstate"] == "42501" and first["status"] == "blocked"
    assert detail["actions"][1]["rows"] == 1 and detail["actions"][1]["command"] == "SELECT 1"


async def _test_close_flushes_without_explicit_flush(process: bool, store: Store) -> None:
    rec = Recorder(store, process=process, batch=50)
    # Submitted before start: kept until the writer runs.
    _submit_session(rec, "early", actions=10)
    await rec.start()
    for n in range(20):
        _submit_session(rec, f"s{n}", actions=10)
    await asyncio.wait_for(rec.close(), 30)
    assert rec.backlog == 0
    assert verify_chain(store).checked == 21 * 12
    with pytest.raises(RuntimeError):
        rec.submit(_start("late"))


async def _test_session_end_carries_identity_even_within_one_batch(
    process: bool, store: Store
) -> None:
    rec = Recorder(store, process=process, batch=500)
    rec.submit(_start("one", ALICE, "billing"))
    rec.submit(SessionEnd("one", time.time(), "error", "upstream went away"))
    await rec.start()
    await rec.close()
    from sqlalchemy import select

    from wardgate.store.models import AuditEvent

    with store.session(write=False) as s:
        rows = s.execute(
            select(AuditEvent.type, AuditEvent.principal, AuditEvent.connection).order_by(
                AuditEvent.id
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("session.start", "alice", "billing"),
        ("session.end", "alice", "billing"),
    ]
    summary = get_session(store, "one")
    assert summary is not None
    assert summary["status"] == "error" and summary["error"] == "upstream went away"


async def _test_unstorable_text_does_not_stall_recording(process: bool, store: Store) -> None:
    rec = Recorder(store, process=process)
    await rec.start()
    weird = "nul\x00 and undecodable \udcff bytes"
    record = SessionRecord("odd\x00", "postgres", BOT, "orders", weird, time.time(), weird)
    rec.submit(record)
    rec.submit(_action("odd\x00", 0, text=f"SELECT '{weird}'"))
    rec.submit(SessionEnd("odd\x00", time.time(), "error", weird))
    await asyncio.wait_for(rec.close(), 30)
    assert rec.backlog == 0
    assert verify_chain(store).checked == 3
    summary = list_sessions(store)[0]
    assert summary["action_count"] == 1 and summary["status"] == "error"
    assert "undecodable" in summary["application_name"]


async def _test_congestion_and_on_drained(process: bool, store: Store) -> None:
    rec = Recorder(store, process=process, high_water=40, batch=10)
    drained = asyncio.Event()
    calls: list[int] = []

    def on_drained() -> None:
        calls.append(rec.backlog)
        drained.set()

    for i in range(60):
        rec.submit(_action("busy", i))
    assert rec.congested
    rec.on_drained(on_drained)
    await rec.start()
    await asyncio.wait_for(drained.wait(), 30)
    assert len(calls) == 1 and calls[0] < 20
    await rec.flush()
    assert not rec.congested
    # Registered while not congested: called soon, once.
    rec.on_drained(on_drained)
    await asyncio.sleep(0.05)
    assert len(calls) == 2
    await rec.close()
    assert verify_chain(store).checked == 60


async def _test_write_failures_keep_records_queued_until_the_store_recovers(
    process: bool, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder(store, process=process, batch=5, high_water=13)
    await rec.start()
    released: list[bool] = []
    # Break the store for real: without its chain head no append can succeed.
    with store.session() as s:
        s.connection().exec_driver_sql("ALTER TABLE audit_head RENAME TO audit_head_away")
    caplog.set_level(logging.WARNING, logger="wardgate.audit.recorder")
    secret_text = "SELECT 'hunter2-should-not-be-logged'"
    rec.submit(_start("flaky"))
    for i in range(12):
        rec.submit(_action("flaky", i, text=secret_text))
    # The first failed write is logged once the writer (a process, perhaps) has tried.
    for _ in range(100):
        if any("audit store write failed" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.1)
    assert rec.backlog == 13
    assert any("audit store write failed" in r.getMessage() for r in caplog.records)
    assert not any("hunter2" in r.getMessage() for r in caplog.records)
    # The backlog is full and writes fail: refuse (not wait), and release waiting clients.
    assert rec.unavailable
    assert rec.problem is not None and "audit store is unavailable" in rec.problem
    rec.on_drained(lambda: released.append(True))
    await asyncio.sleep(0)
    assert released == [True]
    await asyncio.sleep(0.5)  # more failed retries: still one line per change of state
    assert sum("audit store write failed" in r.getMessage() for r in caplog.records) == 1
    assert sum("audit store unavailable" in r.getMessage() for r in caplog.records) == 1

    with store.session() as s:
        s.connection().exec_driver_sql("ALTER TABLE audit_head_away RENAME TO audit_head")
    await asyncio.wait_for(rec.flush(), 30)
    assert not rec.unavailable and rec.problem is None
    await rec.close()
    result = verify_chain(store)
    assert result.ok and result.checked == 13
    summary = get_session(store, "flaky")
    assert summary is not None and summary["action_count"] == 12


async def _test_close_can_be_bounded_when_the_store_is_down(process: bool, store: Store) -> None:
    rec = Recorder(store, process=process)
    await rec.start()
    with store.session() as s:
        s.connection().exec_driver_sql("ALTER TABLE audit_head RENAME TO audit_head_away")
    rec.submit(_start("lost"))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await rec.close()
    assert rec.backlog == 1
    with store.session() as s:
        s.connection().exec_driver_sql("ALTER TABLE audit_head_away RENAME TO audit_head")


# No async test plugin is assumed: each test drives its coroutine with asyncio.run.


@MODES
def test_flush_writes_everything_and_summaries_add_up(process: bool, store: Store) -> None:
    asyncio.run(_test_flush_writes_everything_and_summaries_add_up(process, store))


@MODES
def test_close_flushes_without_explicit_flush(process: bool, store: Store) -> None:
    asyncio.run(_test_close_flushes_without_explicit_flush(process, store))


@MODES
def test_session_end_carries_identity_even_within_one_batch(process: bool, store: Store) -> None:
    asyncio.run(_test_session_end_carries_identity_even_within_one_batch(process, store))


@MODES
def test_unstorable_text_does_not_stall_recording(process: bool, store: Store) -> None:
    asyncio.run(_test_unstorable_text_does_not_stall_recording(process, store))


@MODES
def test_congestion_and_on_drained(process: bool, store: Store) -> None:
    asyncio.run(_test_congestion_and_on_drained(process, store))


@MODES
def test_write_failures_keep_records_queued_until_the_store_recovers(
    process: bool, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(
        _test_write_failures_keep_records_queued_until_the_store_recovers(process, store, caplog)
    )


@MODES
def test_close_can_be_bounded_when_the_store_is_down(process: bool, store: Store) -> None:
    asyncio.run(_test_close_can_be_bounded_when_the_store_is_down(process, store))


async def _test_a_killed_recorder_process_loses_nothing(store: Store) -> None:
    rec = Recorder(store, process=True, batch=10, linger=0)
    await rec.start()
    _submit_session(rec, "before", actions=25)
    await asyncio.wait_for(rec.flush(), 30)
    proc = rec._process._proc if rec._process is not None else None
    assert proc is not None and proc.returncode is None
    proc.kill()
    await proc.wait()
    _submit_session(rec, "after", actions=25)
    await asyncio.wait_for(rec.flush(), 30)
    await rec.close()
    result = verify_chain(store)
    assert result.ok and result.checked == 2 * 27
    summary = get_session(store, "after")
    assert summary is not None and summary["action_count"] == 25


def test_a_killed_recorder_process_loses_nothing(store: Store) -> None:
    asyncio.run(_test_a_killed_recorder_process_loses_nothing(store))
