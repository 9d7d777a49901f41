"""Login throttling shared by every gateway process through the store.

Two counters per failed login: one for the principal (guessing one account's token from
many addresses) and one for the client address (one address trying many accounts). A
login is refused while either has reached ``max_failures`` inside its fixed window.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import case, delete, select

from wardgate.store.db import Store
from wardgate.store.models import LoginFailure


def _keys(principal: str | None, client_ip: str) -> tuple[str, ...]:
    # Prefixes keep a principal named like an address from sharing its counter.
    # No principal: a failure only the source answers for (a protocol violation before
    # authentication), which must not lock out the account it names.
    if principal is None:
        return (f"addr:{client_ip}",)
    return f"principal:{principal}", f"addr:{client_ip}"


class LoginLimiter:
    def __init__(
        self,
        store: Store,
        max_failures: int,
        window: float,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        if max_failures < 1 or window <= 0:
            raise ValueError("max_failures must be >= 1 and window > 0")
        self._store = store
        self._on_failure = on_failure  # a metric (serve wires metrics.login_failed)
        self._max = max_failures
        self._window = window

    def retry_after(self, principal: str, client_ip: str) -> float | None:
        return self.check(principal, client_ip)[0]

    def check(self, principal: str, client_ip: str) -> tuple[float | None, bool]:
        """Seconds until a login may be tried again (None: now), and whether any failure
        is counted for the principal or the address (when none is, a success has nothing
        to clear: ``record_success`` can be skipped, sparing a store write per login)."""
        now = time.time()
        with self._store.connection(write=False) as conn:
            rows = conn.execute(
                select(LoginFailure.count, LoginFailure.window_start).where(
                    LoginFailure.key.in_(_keys(principal, client_ip))
                )
            ).all()
        wait = 0.0
        for count, window_start in rows:
            remaining = window_start + self._window - now
            if count >= self._max and remaining > 0:
                wait = max(wait, remaining)
        return (wait if wait > 0 else None), bool(rows)

    def record_failure(self, principal: str | None, client_ip: str) -> None:
        if self._on_failure is not None:
            self._on_failure()
        now = time.time()
        expired = LoginFailure.window_start <= now - self._window
        with self._store.session() as session:
            for key in _keys(principal, client_ip):
                # One atomic upsert per key: a new window starts when the old one is over,
                # otherwise the count grows. Safe with concurrent processes on both stores.
                stmt = (
                    self._store.insert(LoginFailure)
                    .values(key=key, count=1, window_start=now)
                    .on_conflict_do_update(
                        index_elements=["key"],
                        set_={
                            "count": case((expired, 1), else_=LoginFailure.count + 1),
                            "window_start": case((expired, now), else_=LoginFailure.window_start),
                        },
                    )
                )
                session.execute(stmt)
            # Housekeeping so the table holds only live windows. SKIP LOCKED (PostgreSQL;
            # SQLite writers are serialised anyway): never wait on rows another login is
            # updating right now, or two logins could each wait for the other.
            stale = (
                select(LoginFailure.key)
                .where(LoginFailure.window_start < now - self._window)
                .with_for_update(skip_locked=True)
            )
            session.execute(delete(LoginFailure).where(LoginFailure.key.in_(stale)))

    def record_success(self, principal: str, client_ip: str) -> None:
        with self._store.session() as session:
            session.execute(
                delete(LoginFailure).where(LoginFailure.key.in_(_keys(principal, client_ip)))
            )
