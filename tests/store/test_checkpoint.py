"""Signed checkpoints catch what the bare hash chain cannot: someone with write access
to the store who edits an event and then re-hashes every later event and the head."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import delete, select, update

from wardgate.audit.chain import GENESIS_HASH, NewEvent, append, event_hash, verify_chain
from wardgate.audit.checkpoint import (
    Checkpoint,
    generate_key,
    latest_checkpoint,
    load_private_key,
    load_public_key,
    sign_head,
    verify_with_checkpoint,
)
from wardgate.store.db import Store
from wardgate.store.models import AuditCheckpoint, AuditEvent, AuditHead


def _events(n: int, tag: str) -> list[NewEvent]:
    return [
        NewEvent(
            ts=1_700_000_000.0 + i,
            type="action",
            session_id=f"s-{tag}",
            principal="bot",
            connection="orders",
            payload={"text": f"update stock set qty = {i}", "tag": tag},
        )
        for i in range(n)
    ]


def rewrite_and_rehash(store: Store, event_id: int, new_text: str) -> None:
    """What an attacker with the store (and no signing key) can do: change one event's
    content, then recompute every hash from there on and the head, so that the plain
    chain walk passes again."""
    with store.session() as s:
        rows = s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
        prev = GENESIS_HASH
        for row in rows:
            if row.id == event_id:
                payload = json.loads(row.payload)
                payload["text"] = new_text
                row.payload = json.dumps(payload, sort_keys=True, separators=(",", ":"))
            row.prev_hash = prev
            row.hash = event_hash(
                prev,
                id=row.id,
                ts=row.ts,
                type=row.type,
                session_id=row.session_id,
                principal=row.principal,
                connection=row.connection,
                payload=row.payload,
            )
            prev = row.hash
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(last_hash=prev))


def _keys() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    private, public = generate_key()
    return load_private_key(private), load_public_key(public)


def test_checkpoint_passes_untouched_and_catches_a_rehashed_rewrite(store: Store) -> None:
    key, pub = _keys()
    append(store, _events(5, "a"))
    first = sign_head(store, key)
    append(store, _events(5, "b"))
    exported = sign_head(store, key)
    assert first is not None and exported is not None and exported.seq == 10
    # The exported JSON is what an auditor keeps; it round-trips.
    cp = Checkpoint.from_json(json.loads(json.dumps(exported.to_json())))
    good = verify_with_checkpoint(store, cp, pub)
    assert good.ok and good.checked == 10, good.reason

    rewrite_and_rehash(store, 7, "update stock set qty = 0")
    assert verify_chain(store).ok  # the gap the checkpoint closes
    bad = verify_with_checkpoint(store, cp, pub)
    assert not bad.ok
    # The stored checkpoint at event 5 still matches: the rewrite is in 6..10.
    assert bad.first_broken_id == 6
    assert "rewritten and re-hashed" in bad.reason and "events 6..10" in bad.reason
    with store.session(write=False) as s:
        assert "qty = 0" in s.scalar(select(AuditEvent.payload).where(AuditEvent.id == 7))


def test_rewrite_before_every_checkpoint_and_deleted_checkpoints(store: Store) -> None:
    key, pub = _keys()
    append(store, _events(4, "a"))
    cp = sign_head(store, key)
    assert cp is not None
    rewrite_and_rehash(store, 1, "select 1")
    with store.session() as s:  # the attacker also removes the stored checkpoints
        s.execute(delete(AuditCheckpoint))
    bad = verify_with_checkpoint(store, cp, pub)
    assert not bad.ok and bad.first_broken_id == 1 and "events 1..4" in bad.reason


def test_cut_back_chain_and_forged_or_foreign_checkpoints(store: Store) -> None:
    key, pub = _keys()
    append(store, _events(3, "a"))
    cp = sign_head(store, key)
    assert cp is not None
    # A checkpoint edited to cover another hash, or checked with another key, is refused.
    forged = Checkpoint(cp.seq, "f" * 64, cp.ts, cp.key_id, cp.signature)
    refused = verify_with_checkpoint(store, forged, pub)
    assert not refused.ok and "signature does not verify" in refused.reason
    _, other_pub = _keys()
    assert not verify_with_checkpoint(store, cp, other_pub).ok
    # Deleting the tail and re-pointing the head passes the walk, not the checkpoint.
    with store.session() as s:
        last = s.execute(select(AuditEvent).where(AuditEvent.id == 2)).scalar_one()
        s.execute(delete(AuditEvent).where(AuditEvent.id == 3))
        s.execute(update(AuditHead).values(last_id=2, last_hash=last.hash))
    assert verify_chain(store).ok
    cut = verify_with_checkpoint(store, cp, pub)
    assert not cut.ok and cut.first_broken_id == 3 and "missing" in cut.reason


def test_idle_head_is_not_signed_twice(store: Store) -> None:
    key, pub = _keys()
    empty = sign_head(store, key)
    assert empty is not None and empty.seq == 0
    assert verify_with_checkpoint(store, empty, pub).ok
    assert sign_head(store, key) is None
    append(store, _events(1, "a"))
    again = sign_head(store, key)
    assert again is not None and again.seq == 1
    assert latest_checkpoint(store) == again


def test_forged_sweep_after_the_checkpoint_does_not_excuse_a_deletion_before_it(
    store: Store,
) -> None:
    """attack17: with the store but not the key, delete an approval vote the checkpoint
    covers, then append a `retention.swept` event naming it (its hash is in the store)
    and move the head. The plain walk accepts the gap, as for a real sweep; the signed
    checkpoint must not."""
    from wardgate.audit.chain import SWEPT_TYPE

    key, pub = _keys()
    events = _events(5, "a")
    vote = NewEvent(events[2].ts, "review.vote", "s-a", "alice", "orders", {"vote": "approve"})
    append(store, [*events[:2], vote, *events[3:]])
    cp = sign_head(store, key)
    assert cp is not None and cp.seq == 5
    with store.session() as s:
        gone = s.execute(select(AuditEvent).where(AuditEvent.id == 3)).scalar_one()
        assert gone.type == "review.vote"
        digest = gone.hash
        s.execute(delete(AuditEvent).where(AuditEvent.id == 3))
    forged = {"connection": "orders", "retention_days": 0, "before": 1.8e9, "events": 1}
    append(
        store,
        [
            NewEvent(
                1.8e9, SWEPT_TYPE, "", "wardgate", "orders", {**forged, "runs": [[3, 3, digest]]}
            )
        ],
    )
    assert verify_chain(store).ok  # what a real sweep looks like to the plain walk
    bad = verify_with_checkpoint(store, cp, pub)
    assert not bad.ok, bad.reason
    assert bad.first_broken_id == 3 and "no checkpoint" in bad.reason
    with store.session(write=False) as s:  # the vote really is gone
        assert s.scalar(select(AuditEvent.id).where(AuditEvent.id == 3)) is None


def test_real_sweep_after_the_checkpoint_passes_once_signed(store: Store) -> None:
    """A sweep given the key signs the head right after it (as `wardgate serve` and
    `wardgate audit sweep` do when audit.checkpoint.key is set), so an older exported
    checkpoint still verifies after a real sweep; an unsigned one does not."""
    from wardgate.audit.retention import sweep_connection

    key, pub = _keys()
    append(store, _events(5, "a"))
    cp = sign_head(store, key)
    assert cp is not None
    append(store, _events(2, "b"))
    assert sweep_connection(store, "orders", 0, key=key) == 6  # all but event 5
    ok = verify_with_checkpoint(store, cp, pub)
    assert ok.ok, ok.reason
    with store.session(write=False) as s:
        assert s.scalars(select(AuditEvent.id).order_by(AuditEvent.id)).all() == [5, 8]
    append(store, _events(2, "c"))
    assert sweep_connection(store, "orders", 0) == 2  # no key: nothing signs it
    unsigned = verify_with_checkpoint(store, cp, pub)
    assert unsigned.ok, unsigned.reason  # the deleted events 9, 10 are past the checkpoint
