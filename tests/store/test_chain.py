from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Sequence

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, func, select, text, update

from wardgate.audit.chain import (
    GENESIS_HASH,
    NewEvent,
    append,
    canonical_json,
    verify_chain,
)
from wardgate.store.db import Store
from wardgate.store.models import AuditEvent, AuditHead, Base


def _events(n: int, tag: str = "t", start: float = 1_700_000_000.0) -> list[NewEvent]:
    return [
        NewEvent(
            ts=start + i / 1000,
            type="action",
            session_id=f"s-{tag}",
            principal="bot",
            connection="orders",
            payload={"text": f"select {i}", "tag": tag, "n": i, "unicode": "é€😀"},
        )
        for i in range(n)
    ]


def _count(store: Store) -> int:
    with store.session(write=False) as s:
        return int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def test_migrated_schema_matches_models(store: Store) -> None:
    store.migrate()  # a second upgrade is a no-op
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == []


def test_empty_chain_is_intact(store: Store) -> None:
    result = verify_chain(store)
    assert result.ok and result.checked == 0 and result.first_broken_id is None


def test_hash_follows_the_documented_formula(store: Store) -> None:
    append(store, _events(2))
    with store.session(write=False) as s:
        rows = s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
        head = s.get(AuditHead, 1)
    prev = GENESIS_HASH
    for row in rows:
        assert row.prev_hash == prev
        # The formula of audit/chain.py's docstring, written out independently.
        fields = [
            str(row.id),
            repr(row.ts),
            row.type,
            row.session_id,
            row.principal,
            row.connection,
            row.payload,
        ]
        framed = prev + "\n" + "".join(f"{len(f)}:{f}\n" for f in fields)
        assert row.hash == hashlib.sha256(framed.encode("utf-8")).hexdigest()
        assert json.loads(row.payload)["unicode"] == "é€😀"
        prev = row.hash
    assert [r.id for r in rows] == [1, 2]
    assert head is not None and head.last_id == 2 and head.last_hash == prev


def test_canonical_json_is_compact_sorted_and_total() -> None:
    assert canonical_json({"b": 1, "a": [1, "x"]}) == '{"a":[1,"x"],"b":1}'
    # Anything JSON cannot express degrades to text instead of failing a batch.
    assert canonical_json({"v": b"\x00"}) == '{"v":"b\'\\\\x00\'"}'
    assert canonical_json({"v": "\udcff"}).encode("utf-8")


def test_intact_chain_across_many_batches(store: Store) -> None:
    for i in range(3):
        append(store, _events(1100, tag=str(i)))
    result = verify_chain(store)
    assert result.ok, result
    assert result.checked == 3300


def test_edited_payload_is_reported_by_id(store: Store) -> None:
    append(store, _events(10))
    with store.session() as s:
        s.execute(
            update(AuditEvent).where(AuditEvent.id == 7).values(payload='{"text":"select 42"}')
        )
    result = verify_chain(store)
    assert not result.ok
    assert result.first_broken_id == 7
    assert result.checked == 6
    assert "edited" in result.reason


def test_edited_metadata_column_is_detected(store: Store) -> None:
    append(store, _events(5))
    with store.session() as s:
        s.execute(update(AuditEvent).where(AuditEvent.id == 3).values(principal="alice"))
    assert verify_chain(store).first_broken_id == 3
    with store.session() as s:
        s.execute(update(AuditEvent).where(AuditEvent.id == 3).values(principal="bot"))
    assert verify_chain(store).ok
    with store.session() as s:
        s.execute(update(AuditEvent).where(AuditEvent.id == 2).values(ts=AuditEvent.ts + 1))
    assert verify_chain(store).first_broken_id == 2


def test_deleted_event_is_detected(store: Store) -> None:
    append(store, _events(10))
    with store.session() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id == 4))
    result = verify_chain(store)
    assert not result.ok
    assert result.first_broken_id == 4
    assert "missing" in result.reason


def test_deleted_event_with_renumbering_is_detected(store: Store) -> None:
    append(store, _events(6))
    with store.session() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id == 3))
        for i in (4, 5, 6):
            s.execute(update(AuditEvent).where(AuditEvent.id == i).values(id=i - 1))
    result = verify_chain(store)
    assert not result.ok and result.first_broken_id == 3


def test_truncated_tail_is_detected(store: Store) -> None:
    append(store, _events(10))
    with store.session() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id >= 9))
    result = verify_chain(store)
    assert not result.ok
    assert result.first_broken_id == 9
    assert "truncated" in result.reason


def test_reordered_events_are_detected(store: Store) -> None:
    append(store, _events(6))
    cols = ("ts", "type", "session_id", "principal", "connection", "payload", "prev_hash", "hash")
    with store.session() as s:
        a = s.execute(select(AuditEvent).where(AuditEvent.id == 2)).scalar_one()
        b = s.execute(select(AuditEvent).where(AuditEvent.id == 3)).scalar_one()
        va = {c: getattr(a, c) for c in cols}
        vb = {c: getattr(b, c) for c in cols}
        s.execute(update(AuditEvent).where(AuditEvent.id == 2).values(**vb))
        s.execute(update(AuditEvent).where(AuditEvent.id == 3).values(**va))
    result = verify_chain(store)
    assert not result.ok and result.first_broken_id == 2


def test_event_forged_after_the_head_is_detected(store: Store) -> None:
    append(store, _events(3))
    with store.session() as s:
        last = s.execute(select(AuditEvent).where(AuditEvent.id == 3)).scalar_one()
        s.add(
            AuditEvent(
                id=4,
                ts=last.ts,
                type="action",
                session_id="x",
                principal="bot",
                connection="orders",
                payload="{}",
                prev_hash=last.hash,
                hash="0" * 64,
            )
        )
    result = verify_chain(store)
    assert not result.ok and result.first_broken_id == 4


def test_missing_head_is_detected(store: Store) -> None:
    append(store, _events(2))
    with store.session() as s:
        s.execute(delete(AuditHead))
    result = verify_chain(store)
    assert not result.ok and "head" in result.reason


def _run_threads(url: str, workers: int, per_worker: int, batch: int) -> list[BaseException]:
    errors: list[BaseException] = []
    store = Store(url)

    def work(tag: str) -> None:
        try:
            for i in range(0, per_worker, batch):
                append(store, _events(batch, tag=f"{tag}-{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    store.dispose()
    return errors


def test_concurrent_threads_keep_one_chain(store: Store, store_url: str) -> None:
    errors = _run_threads(store_url, workers=6, per_worker=60, batch=5)
    assert errors == []
    assert _count(store) == 360
    result = verify_chain(store)
    assert result.ok and result.checked == 360


_PROCESS_SCRIPT = """
import sys
from wardgate.audit.chain import NewEvent, append
from wardgate.store.db import Store

url, tag, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = Store(url)
for r in range(rounds):
    append(store, [
        NewEvent(ts=1.0 + r, type="action", session_id=tag, principal="p", connection="c",
                 payload={"r": r, "i": i})
        for i in range(4)
    ])
store.dispose()
"""


def _spawn(url: str, tags: Sequence[str], rounds: int) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "error", "-c", _PROCESS_SCRIPT, url, tag, str(rounds)],
            stderr=subprocess.PIPE,
        )
        for tag in tags
    ]
    errors = [p.communicate(timeout=90)[1] for p in procs]  # every pipe drained and closed
    for p, err in zip(procs, errors, strict=True):
        assert p.returncode == 0, err.decode(errors="replace")


def test_concurrent_processes_keep_one_chain(store: Store, store_url: str) -> None:
    _spawn(store_url, [f"proc{i}" for i in range(4)], rounds=25)
    assert _count(store) == 4 * 25 * 4
    result = verify_chain(store)
    assert result.ok and result.checked == 400
    with store.session(write=False) as s:
        ids = list(s.scalars(select(AuditEvent.id).order_by(AuditEvent.id)))
    assert ids == list(range(1, 401))


def test_concurrent_migrations_are_serialised(store_url: str) -> None:
    script = "import sys\nfrom wardgate.store.db import Store\nStore.open(sys.argv[1]).dispose()\n"
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "error", "-c", script, store_url], stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=90)[1] for p in procs]  # every pipe drained and closed
    for p, err in zip(procs, errors, strict=True):
        assert p.returncode == 0, err.decode(errors="replace")
    with Store(store_url) as s, s.session(write=False) as session:
        assert session.execute(text("SELECT count(*) FROM audit_head")).scalar_one() == 1
