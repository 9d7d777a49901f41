"""Signed checkpoints: the chain head, signed with a key the store never holds.

The hash chain (``audit/chain.py``) shows any edit that was not followed by re-hashing
every later event and the head. Someone who can write the store can do exactly that,
so the head is also signed, periodically and at shutdown, with an Ed25519 key that
lives outside the store (a file, an environment variable, or the vault, whose master
key is not in the store either). A checkpoint copied off the gateway (``wardgate audit
checkpoint``) then pins every event up to its ``seq``: a rewrite-and-rehash of any of
them changes the hash at ``seq``, and nobody without the private key can sign a new one.

Signed bytes (UTF-8)::

    wardgate-checkpoint/1\\n<seq>\\n<head_hash>\\n<repr(float ts)>\\n<key_id>\\n

``key_id`` is the first 16 hex digits of SHA-256 over the raw 32-byte public key.
Checkpoints are also kept in the store (``audit_checkpoints``); they cannot be forged
there, only deleted, and verification uses them to narrow down *where* a rewrite is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sqlalchemy import select

from wardgate.audit.chain import GENESIS_HASH, SWEPT_TYPE, VerifyResult, verify_chain
from wardgate.store.db import Store
from wardgate.store.models import AuditCheckpoint, AuditEvent, AuditHead

log = logging.getLogger(__name__)

_DOMAIN = "wardgate-checkpoint/1"
_HEAD_ID = 1


class CheckpointError(Exception):
    """A key or checkpoint file that cannot be used, phrased for the operator."""


# -- keys ---------------------------------------------------------------------------


def generate_key() -> tuple[str, str]:
    """A new signing key: (private key PEM, public key PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return private, public_pem(key.public_key())


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(text: str) -> Ed25519PrivateKey:
    """A PKCS#8 PEM private key, or the 32-byte seed in base64 (handy in env variables)."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(_b64_32(text))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(
            f"the checkpoint signing key is not an Ed25519 private key ({exc}); create one "
            "with `wardgate audit keygen`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(
            "the checkpoint signing key is not an Ed25519 key; create one with "
            "`wardgate audit keygen`"
        )
    return key


def load_public_key(text: str) -> Ed25519PublicKey:
    """A PEM public key (``wardgate audit keygen``'s .pub file) or 32 raw bytes in base64."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = Ed25519PublicKey.from_public_bytes(_b64_32(text))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"not an Ed25519 public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError("not an Ed25519 public key (the checkpoint key is Ed25519)")
    return key


def _b64_32(text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("neither PEM nor base64") from None
    if len(raw) != 32:
        raise ValueError(f"{len(raw)} bytes where 32 were expected")
    return raw


# -- checkpoints ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int  # the id of the last event it covers
    head_hash: str
    ts: float
    key_id: str
    signature: str  # base64

    def message(self) -> bytes:
        return _message(self.seq, self.head_hash, self.ts, self.key_id)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["time"] = datetime.fromtimestamp(self.ts, UTC).isoformat()
        data["format"] = _DOMAIN
        return data

    @classmethod
    def from_json(cls, data: Any) -> Checkpoint:
        if not isinstance(data, Mapping):
            raise CheckpointError("a checkpoint is a JSON object (`wardgate audit checkpoint`)")
        try:
            cp = cls(
                seq=int(data["seq"]),
                head_hash=str(data["head_hash"]),
                ts=float(data["ts"]),
                key_id=str(data["key_id"]),
                signature=str(data["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"the checkpoint lacks or garbles {exc}: it needs seq, head_hash, ts, key_id "
                "and signature, as `wardgate audit checkpoint` writes them"
            ) from None
        return cp

    def signed_by(self, key: Ed25519PublicKey) -> bool:
        if self.key_id != key_id(key):
            return False
        try:
            key.verify(base64.b64decode(self.signature), self.message())
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True


def _message(seq: int, head_hash: str, ts: float, kid: str) -> bytes:
    return f"{_DOMAIN}\n{seq}\n{head_hash}\n{float(ts)!r}\n{kid}\n".encode()


class UnvouchedSweep(RuntimeError):
    """A retention.swept event after the newest valid checkpoint that this process did
    not write: the gateway does not sign it into the chain."""


def sign_head(
    store: Store,
    key: Ed25519PrivateKey,
    *,
    force: bool = False,
    vouch_sweeps: bool = False,
) -> Checkpoint | None:
    """Sign the current chain head and keep the checkpoint in the store. Without
    ``force``, nothing is signed when the newest checkpoint already covers the head
    (an idle gateway does not fill the table). Returns the new checkpoint, or None.

    A signed checkpoint is what vouches for a ``retention.swept`` event before it
    (verify). Anyone with write access to the store can append one naming events they
    deleted, so a ``retention.swept`` after the newest checkpoint that still verifies is
    signed only by the sweep that wrote it (``vouch_sweeps``, audit/retention.py) or an
    operator (`audit checkpoint --now`); else UnvouchedSweep (attack17b)."""
    kid = key_id(key.public_key())
    with store.session() as session:
        head = session.execute(
            select(AuditHead.last_id, AuditHead.last_hash).where(AuditHead.id == _HEAD_ID)
        ).one_or_none()
        if head is None:
            raise RuntimeError("audit_head row is missing: the audit log has been tampered with")
        if not vouch_sweeps:
            loose = _sweeps_after_valid_checkpoint(session, key.public_key(), kid)
            if loose:
                raise UnvouchedSweep(
                    f"retention.swept event(s) {', '.join(map(str, loose[:10]))} after the "
                    "newest valid checkpoint were not written by a sweep of this gateway "
                    "(a sweep signs the head right after it): not signing them into the "
                    "chain. Run `wardgate audit verify`, compare with the sink or a backup; "
                    "if the sweep was real, sign with `wardgate audit checkpoint --now`"
                )
        if not force:
            newest = session.execute(
                select(AuditCheckpoint.seq, AuditCheckpoint.key_id)
                .order_by(AuditCheckpoint.id.desc())
                .limit(1)
            ).one_or_none()
            if newest is not None and newest.seq == head.last_id and newest.key_id == kid:
                return None
        ts = time.time()
        seq, head_hash = int(head.last_id), str(head.last_hash)
        signature = base64.b64encode(key.sign(_message(seq, head_hash, ts, kid))).decode()
        cp = Checkpoint(seq, head_hash, ts, kid, signature)
        session.add(
            AuditCheckpoint(seq=seq, head_hash=head_hash, ts=ts, key_id=kid, signature=signature)
        )
    return cp


def _sweeps_after_valid_checkpoint(
    session: Any, public_key: Ed25519PublicKey, kid: str
) -> list[int]:
    """Ids of retention.swept events after the newest stored checkpoint of this key
    that verifies and still matches its event."""
    pinned = 0
    for row in session.execute(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.key_id == kid)
        .order_by(AuditCheckpoint.seq.desc())
        .limit(_CHECKPOINTS_TRIED)
    ).scalars():
        cp = _from_row(row)
        at = session.scalar(select(AuditEvent.hash).where(AuditEvent.id == cp.seq))
        if cp.signed_by(public_key) and at == cp.head_hash:
            pinned = cp.seq
            break
    return [
        int(i)
        for i in session.scalars(
            select(AuditEvent.id)
            .where(AuditEvent.type == SWEPT_TYPE, AuditEvent.id > pinned)
            .order_by(AuditEvent.id)
            .limit(100)
        )
    ]


_CHECKPOINTS_TRIED = 50  # newest stored checkpoints tried before trusting none


def latest_checkpoint(store: Store) -> Checkpoint | None:
    with store.session(write=False) as session:
        row = session.execute(
            select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).limit(1)
        ).scalar_one_or_none()
        return None if row is None else _from_row(row)


def _from_row(row: AuditCheckpoint) -> Checkpoint:
    return Checkpoint(row.seq, row.head_hash, row.ts, row.key_id, row.signature)


def verify_with_checkpoint(
    store: Store, checkpoint: Checkpoint, public_key: Ed25519PublicKey
) -> VerifyResult:
    """The chain walk of ``verify_chain``, then: is event ``checkpoint.seq`` still the one
    that was signed? If not, every event up to it may have been rewritten and re-hashed;
    the checkpoints kept in the store (those that verify with the same key) narrow down
    the range."""
    if not checkpoint.signed_by(public_key):
        return VerifyResult(
            False,
            0,
            None,
            f"the checkpoint's signature does not verify with public key {key_id(public_key)} "
            f"(checkpoint key {checkpoint.key_id}): the file was altered or was signed by "
            "another key; nothing in it can be trusted",
        )
    walked = verify_chain(store)
    if not walked.ok:
        return walked
    stored_hash = GENESIS_HASH if checkpoint.seq == 0 else _event_hash(store, checkpoint.seq)
    if stored_hash is None:
        return VerifyResult(
            False,
            walked.checked,
            checkpoint.seq,
            f"event {checkpoint.seq}, signed in the checkpoint of "
            f"{_iso(checkpoint.ts)}, is missing: the log was cut back and re-hashed",
        )
    if stored_hash == checkpoint.head_hash:
        unsigned = _unsigned_sweep(store, public_key, checkpoint)
        if unsigned is not None:
            sweep_id, first, last = unsigned
            return VerifyResult(
                False,
                walked.checked,
                first,
                f"events {first}..{last}, covered by the checkpoint signed "
                f"{_iso(checkpoint.ts)}, were deleted by retention.swept event {sweep_id}, "
                "which no checkpoint signed by this key covers: anyone with the store can "
                "write such an event. A real sweep is signed right after it when "
                "audit.checkpoint.key is set (or run `wardgate audit checkpoint --now`)",
            )
        return VerifyResult(
            True,
            walked.checked,
            None,
            f"chain intact; events 1..{checkpoint.seq} match the checkpoint signed "
            f"{_iso(checkpoint.ts)} by key {checkpoint.key_id}",
        )
    low, high = _narrow(store, public_key, checkpoint)
    return VerifyResult(
        False,
        walked.checked,
        low + 1,
        f"event {checkpoint.seq} does not match the checkpoint signed {_iso(checkpoint.ts)}: "
        f"the chain was rewritten and re-hashed; the rewrite is in events {low + 1}..{high} "
        + (
            f"(the signed checkpoint at event {low} still matches)"
            if low
            else "(no earlier signed checkpoint still matches)"
        ),
    )


def check_sweeps(
    store: Store, walked: VerifyResult, public_key: Ed25519PublicKey | None
) -> VerifyResult:
    """``audit verify`` without a checkpoint file: the walk accepts every gap a
    ``retention.swept`` event names, and anyone with write access to the store can write
    one (and re-hash after it). A sweep is vouched for only by a checkpoint signed after
    it (sweeps sign the head when ``audit.checkpoint.key`` is set). With ``public_key``,
    a sweep that no stored checkpoint signed by it (and still matching the chain) covers
    fails the check; without a key nothing in the store can vouch for a sweep, and the
    result says loudly that its deletions are unverified."""
    if not walked.ok:
        return walked
    with store.session(write=False) as session:
        sweeps = session.execute(
            select(AuditEvent.id, AuditEvent.payload)
            .where(AuditEvent.type == SWEPT_TYPE)
            .order_by(AuditEvent.id)
        ).all()
        if not sweeps:
            return walked
        rows = []
        if public_key is not None:
            rows = list(
                session.execute(
                    select(AuditCheckpoint)
                    .where(
                        AuditCheckpoint.key_id == key_id(public_key),
                        AuditCheckpoint.seq >= sweeps[0].id,
                    )
                    .order_by(AuditCheckpoint.seq.desc())
                ).scalars()
            )
    pinned = 0
    if public_key is not None:
        for row in rows:
            cp = _from_row(row)
            if cp.signed_by(public_key) and _event_hash(store, cp.seq) == cp.head_hash:
                pinned = cp.seq
                break
    loose = [(int(i), _deleted(p)) for i, p in sweeps if i > pinned]
    if not loose:
        return walked
    ids = ", ".join(str(i) for i, _ in loose[:10]) + (" ..." if len(loose) > 10 else "")
    events = sum(n for _, n in loose)
    said = (
        f"{events} deleted events rest on {len(loose)} retention.swept event(s) ({ids}) that "
        "no signed checkpoint covers: anyone with write access to the store can write such "
        "an event to hide deletions"
    )
    if public_key is None:
        return replace(
            walked,
            warning=f"UNVERIFIED: {said}. Set audit.checkpoint.key (sweeps then sign the head) "
            "or pass --public-key to check the stored checkpoints",
        )
    return VerifyResult(
        False,
        walked.checked,
        loose[0][0],
        f"{said} (key {key_id(public_key)}); a real sweep is signed right after it. If you "
        "ran it and it was not signed (the gateway stopped), compare with the sink or a "
        "backup, then sign with `wardgate audit checkpoint --now`",
    )


def _deleted(payload: str) -> int:
    try:
        runs = json.loads(payload).get("runs", [])
        return sum(int(last) - int(first) + 1 for first, last, _ in runs)
    except (ValueError, TypeError, AttributeError):
        return 0


def _unsigned_sweep(
    store: Store, public_key: Ed25519PublicKey, cp: Checkpoint
) -> tuple[int, int, int] | None:
    """(sweep event id, first, last) of a run of events up to ``cp.seq`` that a
    ``retention.swept`` event after ``cp.seq`` says it deleted, when no checkpoint signed
    by this key (and still matching the chain) covers that sweep event; else None.

    The walk accepts any gap a retention.swept event names, and an event appended after
    the checkpoint is not pinned by it: without this, deleting an event the checkpoint
    covers (an approval vote) and appending a made-up sweep naming it would pass."""
    with store.session(write=False) as session:
        sweeps = session.execute(
            select(AuditEvent.id, AuditEvent.payload)
            .where(AuditEvent.type == SWEPT_TYPE, AuditEvent.id > cp.seq)
            .order_by(AuditEvent.id)
        ).all()
        if not sweeps:
            return None
        rows = session.execute(
            select(AuditCheckpoint).where(
                AuditCheckpoint.key_id == cp.key_id, AuditCheckpoint.seq >= sweeps[0].id
            )
        ).scalars()
        stored = [_from_row(r) for r in rows]
    pinned = cp.seq
    for later in sorted(stored, key=lambda c: c.seq, reverse=True):
        if later.seq <= pinned:
            break
        if later.signed_by(public_key) and _event_hash(store, later.seq) == later.head_hash:
            pinned = later.seq
            break
    for sweep_id, payload in sweeps:
        if sweep_id <= pinned:
            continue
        try:
            runs = [(int(f), int(last)) for f, last, _ in json.loads(payload).get("runs", [])]
        except (ValueError, TypeError, AttributeError):
            runs = []  # the walk already checked this event's hash
        for first, last in runs:
            if first <= cp.seq:
                return int(sweep_id), first, min(last, cp.seq)
    return None


def _narrow(store: Store, public_key: Ed25519PublicKey, cp: Checkpoint) -> tuple[int, int]:
    """(last seq known good, first seq known rewritten) from the stored checkpoints that
    this key signed. Forged rows do not verify and are skipped; deleted ones only widen
    the range."""
    with store.session(write=False) as session:
        rows = session.execute(
            select(AuditCheckpoint)
            .where(AuditCheckpoint.seq < cp.seq, AuditCheckpoint.key_id == cp.key_id)
            .order_by(AuditCheckpoint.seq.desc())
        ).scalars()
        stored = [_from_row(r) for r in rows]
    high = cp.seq
    for earlier in stored:
        if earlier.seq >= high or not earlier.signed_by(public_key):
            continue
        if _event_hash(store, earlier.seq) == earlier.head_hash:
            return earlier.seq, high
        high = earlier.seq
    return 0, high


def _event_hash(store: Store, seq: int) -> str | None:
    with store.session(write=False) as session:
        value = session.scalar(select(AuditEvent.hash).where(AuditEvent.id == seq))
    return None if value is None else str(value)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def dumps(cp: Checkpoint) -> str:
    return json.dumps(cp.to_json(), indent=2) + "\n"
