"""The background side of audit integrity, run by one gateway process (worker 0):
copying new chain events to the sink outside the store every ``sink.interval``, and
signing the chain head every ``checkpoint.interval`` and once more at shutdown. The
chain is the store's, shared by every worker, so one process is enough."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wardgate.audit.checkpoint import Checkpoint, sign_head
from wardgate.audit.sink import Sink, stream_new
from wardgate.store.db import Store, describe_error

log = logging.getLogger(__name__)


class ChainKeeper:
    def __init__(
        self,
        store: Store,
        *,
        key: Ed25519PrivateKey | None = None,
        checkpoint_interval: float = 300.0,
        sink: Sink | None = None,
        sink_interval: float = 1.0,
    ) -> None:
        self._store = store
        self._key = key
        self._checkpoint_interval = checkpoint_interval
        self._sink = sink
        self._sink_interval = sink_interval

    async def run(self) -> None:
        """Until cancelled. A failure (store down, disk full) is logged and tried again
        at the next tick; the sink's position only moves once lines are on disk."""
        tick = min(
            self._sink_interval if self._sink is not None else self._checkpoint_interval,
            self._checkpoint_interval if self._key is not None else self._sink_interval,
        )
        next_checkpoint = time.monotonic() + self._checkpoint_interval
        while True:
            await asyncio.sleep(tick)
            await self.copy()
            if self._key is not None and time.monotonic() >= next_checkpoint:
                next_checkpoint = time.monotonic() + self._checkpoint_interval
                await self.checkpoint()

    async def final(self) -> None:
        """At shutdown, after the recorder wrote its last batch."""
        await self.copy()
        await self.checkpoint()
        if self._sink is not None:
            self._sink.close()

    async def copy(self) -> int:
        if self._sink is None:
            return 0
        try:
            return await asyncio.to_thread(stream_new, self._store, self._sink)
        except Exception as exc:
            log.error("could not copy audit events to the sink: %s", _describe(exc))
            return 0

    async def checkpoint(self) -> Checkpoint | None:
        if self._key is None:
            return None
        try:
            cp = await asyncio.to_thread(sign_head, self._store, self._key)
        except Exception as exc:
            log.error("could not sign an audit checkpoint: %s", describe_error(exc))
            return None
        if cp is None:
            return None
        log.info("audit checkpoint signed at event %d (key %s)", cp.seq, cp.key_id)
        if self._sink is not None:
            line = json.dumps({"checkpoint": cp.to_json()}, separators=(",", ":"))
            try:
                await asyncio.to_thread(self._sink.write, [line])
            except OSError as exc:
                log.error("could not copy the checkpoint to the sink: %s", _describe(exc))
        return cp


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return describe_error(exc)
