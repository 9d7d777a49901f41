"""The copy of the chain outside the store: every event once, in order, resumable,
verifiable on its own, and compared with the store to name rewritten events."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from sqlalchemy import select, update
from tests.store.test_checkpoint import rewrite_and_rehash

from wardgate.audit.chain import NewEvent, append
from wardgate.audit.sink import Sink, compare_with_store, read_sink, rehash, stream_new
from wardgate.store.db import Store
from wardgate.store.models import AuditEvent


def _events(n: int, tag: str) -> list[NewEvent]:
    return [
        NewEvent(1_700_000_000.0 + i, "action", f"s-{tag}", "bot", "orders", {"text": f"q{i} é"})
        for i in range(n)
    ]


def test_every_event_once_in_order_and_resumed_after_a_restart(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "copy" / "audit.jsonl"
    append(store, _events(3, "a"))
    assert stream_new(store, Sink(path)) == 3
    append(store, _events(2, "b"))
    restarted = Sink(path)  # a new gateway process: the position comes from the file
    assert (restarted.last_id, len(restarted.last_hash)) == (3, 64)
    assert stream_new(store, restarted) == 2
    assert stream_new(store, restarted) == 0
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines] == [1, 2, 3, 4, 5]
    with store.session(write=False) as s:
        stored = s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
        assert [(r.hash, r.payload) for r in stored] == [(x["hash"], x["payload"]) for x in lines]
    # The file alone is a chain: each line's hash recomputes from the line.
    events = list(read_sink(path))
    assert all(rehash(e) == e.hash for e in events)  # type: ignore[union-attr]
    assert compare_with_store(store, path) == []


def test_a_line_cut_by_a_crash_is_copied_again(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    append(store, _events(2, "a"))
    stream_new(store, Sink(path))
    text = path.read_text(encoding="utf-8").splitlines()
    path.write_text(text[0] + "\n" + text[1][: len(text[1]) // 2], encoding="utf-8")
    sink = Sink(path)
    assert sink.last_id == 1
    assert stream_new(store, sink) == 1
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == text[0] and lines[2] == text[1]  # the cut line stays, on its own
    assert [e.id for e in read_sink(path)] == [1, 2]  # type: ignore[union-attr]
    assert compare_with_store(store, path) == []


def test_rewrites_after_the_copy_are_named(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    append(store, _events(6, "a"))
    stream_new(store, Sink(path))
    rewrite_and_rehash(store, 4, "drop table orders")
    problems = compare_with_store(store, path)
    assert problems[0] == (
        "event 4 (action, session s-a): the store's content differs from the copy in the sink"
    )
    # Re-hashing changed every later hash too.
    assert [p.split(" ")[1] for p in problems] == ["4", "5", "6"]
    # A plain edit without re-hashing is named as well.
    with store.session() as s:
        s.execute(update(AuditEvent).where(AuditEvent.id == 2).values(ts=1.0))
    assert any(p.startswith("event 2 ") for p in compare_with_store(store, path))


def test_syslog_receives_every_event(store: Store, tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    port = receiver.getsockname()[1]
    sink = Sink(None, f"udp://127.0.0.1:{port}", "local3")
    try:
        append(store, _events(2, "a"))
        assert stream_new(store, sink) == 2
        got = [receiver.recv(65536).decode() for _ in range(2)]
    finally:
        sink.close()
        receiver.close()
    # <PRI> = local3 (19) * 8 + info (6) = 158
    assert all(m.startswith("<158>wardgate-audit: {") for m in got)
    payloads = [json.loads(m.split(": ", 1)[1].rstrip("\x00")) for m in got]
    assert [p["id"] for p in payloads] == [1, 2]


def test_a_forged_sweep_does_not_hide_a_deleted_vote_from_the_sink(
    store: Store, tmp_path: Path
) -> None:
    """attack17: delete a review vote the sink copied, append a `retention.swept` event
    naming it: the walk accepts the gap; the sink's copy shows a sweep never deletes a
    review event (nor a newer one, nor another connection's)."""
    from sqlalchemy import delete

    from wardgate.audit.chain import SWEPT_TYPE, verify_chain

    path = tmp_path / "audit.jsonl"
    vote = NewEvent(1_700_000_100.0, "review.vote", "s-a", "alice", "orders", {"vote": "deny"})
    late = NewEvent(1_700_000_900.0, "action", "s-a", "bot", "orders", {"text": "q late"})
    append(store, [*_events(2, "a"), vote, late, *_events(1, "b")])
    stream_new(store, Sink(path))
    with store.session() as s:
        hashes = dict(s.execute(select(AuditEvent.id, AuditEvent.hash)).all())
        s.execute(delete(AuditEvent).where(AuditEvent.id.in_((3, 4))))
    payload = {"connection": "orders", "before": 1_700_000_500.0, "events": 2}
    append(
        store,
        [
            NewEvent(
                1.8e9,
                SWEPT_TYPE,
                "",
                "wardgate",
                "orders",
                {**payload, "runs": [[3, 4, hashes[4]]]},
            )
        ],
    )
    assert verify_chain(store).ok
    problems = compare_with_store(store, path)
    assert any("event 3 (review.vote)" in p and "forged" in p for p in problems), problems
    assert any("event 4 (action)" in p and "forged" in p for p in problems), problems
    with store.session(write=False) as s:
        assert s.scalar(select(AuditEvent.id).where(AuditEvent.id == 3)) is None
