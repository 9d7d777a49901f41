"""Cancel keys shared by every gateway process.

A PostgreSQL CancelRequest arrives on a *new* connection, possibly at another replica
behind the load balancer, carrying only the (pid, secret) the gateway gave the client in
BackendKeyData. This table maps that pair to the upstream backend's own key, so whichever
process receives the request can forward it.

The pid the client sees is the upstream backend's own (so ``pg_backend_pid()``,
``pg_stat_activity`` and notifications match it); the secret is the gateway's. Backends
of different servers may share a pid, so a row is keyed by the pid *and* 32 bits of the
secret's hash (``row_key``); the full hash is still compared on lookup.

Only a hash of the gateway secret is stored; lookups compare hashes in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from sqlalchemy import delete

from wardgate.store.db import Store
from wardgate.store.models import CancelKey


@dataclass(frozen=True, slots=True)
class CancelTarget:
    connection: str
    host: str
    port: int
    pid: int
    secret: bytes
    tls: str


def _secret_hash(secret: bytes) -> bytes:
    return hashlib.sha256(b"wardgate cancel key\x00" + secret).digest()


def row_key(pid: int, secret: bytes) -> int:
    """The store's key for (pid, secret): a pid is at most 2**31 - 1, so this fits the
    signed 64-bit column."""
    return (pid << 32) | int.from_bytes(_secret_hash(secret)[:4], "big")


def _row_values(
    gw_secret: bytes, target: CancelTarget, now: float, gateway: str | None
) -> dict[str, object]:
    return {
        "gateway": gateway,
        "secret_hash": _secret_hash(gw_secret),
        "connection": target.connection,
        "upstream_host": target.host,
        "upstream_port": target.port,
        "upstream_pid": target.pid,
        "upstream_secret": target.secret,
        "tls": target.tls,
        "created_at": now,
    }


class CancelKeys:
    def __init__(self, store: Store, gateway: str | None = None) -> None:
        self._store = store
        self._gateway = gateway  # this gateway instance: its keys go when it restarts

    def register(self, gw_pid: int, gw_secret: bytes, target: CancelTarget) -> None:
        """Remember ``target`` under (gw_pid, gw_secret).

        A key already present is replaced: the same pid and the same 32 bits of the
        secret's hash mean a stale row from a process that died without ``remove()``
        (or a 1 in 2**32 clash of two live sessions, whose older one then cannot cancel).
        """
        values = _row_values(gw_secret, target, time.time(), self._gateway)
        stmt = (
            self._store.insert(CancelKey)
            .values(gw_pid=row_key(gw_pid, gw_secret), **values)
            .on_conflict_do_update(index_elements=["gw_pid"], set_=values)
        )
        with self._store.connection() as conn:
            conn.execute(stmt)

    def apply(self, changes: dict[tuple[int, bytes], CancelTarget | None]) -> None:
        """Register (a target) or remove (None) many keys in one transaction."""
        now = time.time()
        with self._store.connection() as conn:
            for (gw_pid, gw_secret), target in changes.items():
                key = row_key(gw_pid, gw_secret)
                if target is None:
                    conn.execute(delete(CancelKey).where(CancelKey.gw_pid == key))
                    continue
                values = _row_values(gw_secret, target, now, self._gateway)
                conn.execute(
                    self._store.insert(CancelKey)
                    .values(gw_pid=key, **values)
                    .on_conflict_do_update(index_elements=["gw_pid"], set_=values)
                )

    def lookup(self, gw_pid: int, gw_secret: bytes) -> CancelTarget | None:
        with self._store.session(write=False) as session:
            row = session.get(CancelKey, row_key(gw_pid, gw_secret))
            if row is None:
                return None
            if not hmac.compare_digest(bytes(row.secret_hash), _secret_hash(gw_secret)):
                return None
            return CancelTarget(
                connection=row.connection,
                host=row.upstream_host,
                port=row.upstream_port,
                pid=row.upstream_pid,
                secret=bytes(row.upstream_secret),
                tls=row.tls,
            )

    def remove(self, gw_pid: int, gw_secret: bytes) -> None:
        key = row_key(gw_pid, gw_secret)
        with self._store.connection() as conn:
            conn.execute(delete(CancelKey).where(CancelKey.gw_pid == key))

    def purge_gateway(self, gateway: str) -> int:
        """Drop the keys of sessions of an earlier run of ``gateway`` (all gone now)."""
        with self._store.session() as session:
            result = session.execute(delete(CancelKey).where(CancelKey.gateway == gateway))
            return int(getattr(result, "rowcount", 0) or 0)

    def purge_older_than(self, seconds: float) -> int:
        """Drop rows registered more than ``seconds`` ago (sessions of crashed processes)."""
        cutoff = time.time() - seconds
        with self._store.session() as session:
            result = session.execute(delete(CancelKey).where(CancelKey.created_at < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)
