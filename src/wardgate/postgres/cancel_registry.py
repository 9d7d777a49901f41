"""The cancel keys of one gateway process's PostgreSQL sessions.

The client gets the upstream backend's real pid and a secret of the gateway's own. A
CancelRequest reaching this process for one of its sessions is served from memory;
one reaching another worker or replica finds the key in the store (store/cancel.py).

Store writes are batched: one writer task flushes every key registered or removed in
the last ``FLUSH_DELAY`` seconds in one transaction, and a session that ends before
its key was written costs no write at all. So a connection's setup waits for no store
write; a cancel reaching *another* process for a session younger than the batch looks
again a few times (``LOOKUP_RETRIES``, about a second in all) before giving up.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wardgate.store.cancel import CancelKeys, CancelTarget

if TYPE_CHECKING:
    from wardgate.core.tasks import Tasks

log = logging.getLogger("wardgate.postgres")

FLUSH_DELAY = 0.02
# Pauses before each store lookup of a key this process does not hold: a cancel for a
# session another process started a moment ago waits for that process's next batch.
LOOKUP_RETRIES = (0.0, 0.05, 0.1, 0.25, 0.5)


@dataclass(eq=False)
class LocalKey:
    """The cancel key of one session of this process; ``session`` is its relay."""

    pid: int
    secret: bytes
    target: CancelTarget
    session: Any


class CancelRegistry:
    def __init__(self, keys: CancelKeys, tasks: Tasks) -> None:
        self._keys = keys
        self._tasks = tasks
        self._local: dict[int, list[LocalKey]] = {}
        # Store writes not made yet: a key to register, or None to remove it.
        self._pending: dict[tuple[int, bytes], CancelTarget | None] = {}
        self._written: set[tuple[int, bytes]] = set()  # keys the store holds (or will)
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    def add(self, pid: int, secret: bytes, target: CancelTarget, session: Any) -> LocalKey:
        key = LocalKey(pid, secret, target, session)
        self._local.setdefault(pid, []).append(key)
        self._pending[(pid, secret)] = target
        self._kick()
        return key

    def remove(self, key: LocalKey) -> None:
        same_pid = self._local.get(key.pid, [])
        if key in same_pid:
            same_pid.remove(key)
        if not same_pid:
            self._local.pop(key.pid, None)
        ident = (key.pid, key.secret)
        if ident in self._written:
            self._pending[ident] = None
            self._kick()
        else:
            self._pending.pop(ident, None)  # never written: nothing to undo

    def find(self, pid: int, secret: bytes) -> LocalKey | None:
        """A session of this process with this key (secrets compared in constant time)."""
        for key in self._local.get(pid, ()):
            if hmac.compare_digest(key.secret, secret):
                return key
        return None

    async def lookup(self, pid: int, secret: bytes) -> CancelTarget | None:
        """The target of a key of this process or, through the store, of another."""
        local = self.find(pid, secret)
        if local is not None:
            return local.target
        # Not found may mean not written yet by the session's process: look again until
        # its batch must have reached the store (a guessed key costs only this wait).
        for delay in LOOKUP_RETRIES:
            await asyncio.sleep(delay)
            target = await asyncio.to_thread(self._keys.lookup, pid, secret)
            if target is not None:
                return target
        return None

    def _kick(self) -> None:
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = self._tasks.spawn(self._write_loop(), name="cancel-key-writer")

    async def _write_loop(self) -> None:
        # Ends once nothing new came while it wrote (`_kick` starts another): a writer
        # that waited forever would hold every shutdown for its whole grace.
        while self._wake.is_set():
            await asyncio.sleep(FLUSH_DELAY)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write what is pending now (the writer task calls it; shutdown may too)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        for ident, target in batch.items():
            if target is None:
                self._written.discard(ident)
            else:
                self._written.add(ident)
        try:
            await asyncio.to_thread(self._keys.apply, batch)
        except Exception as exc:  # noqa: BLE001 - cancels through other processes only
            log.warning(
                "cannot write %d cancel keys to the store (cancels reaching another "
                "worker or replica will miss those sessions): %s",
                len(batch),
                exc,
            )
