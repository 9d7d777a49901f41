"""Login throttling shared by every gateway process through the store.

Two counters per failed login, with separate thresholds:

- per (principal, address): past ``max_failures`` in a window, that principal's failed
  logins *from that address* are answered slowly (1 s, 2 s, 4 s ... up to ``max_delay``).
  Nothing is refused: a correct credential still logs in at once, from that address or
  any other, so guessing an approver's name slows the guesser, never the approver.
- per address: past ``address_failures`` in a window, every failed login from the
  address is answered after ``max_delay``. Where checking a credential is cheap (SCRAM
  tokens over PostgreSQL, API bearer tokens and CLI sessions, which are found by an HMAC
  before any key stretching), the credential is still checked and a right one logs in
  at once: everyone on loopback shares 127.0.0.1, so refusing there let an agent with
  its own token lock the approver out (attack17). Where it is costly (web passwords,
  cleartext tokens, single sign-on) logins from the address are refused until the
  window ends, without checking the credential (``check``'s wait), so that a flood of
  guesses does not cost a key stretch each. Its threshold is higher: typos of a few
  people sharing an address (NAT, a jump host) should not reach it.

Surfaces whose checks are costly keep their own address counter (``surface``): web
password sign-ins ("web") and SSO sign-ins ("sso") count only their own failures per
address, so an agent's failed token logins from 127.0.0.1 never refuse the approver's
web sign-in there; and a browser that signed in as a user before presents a signed
cookie whose device id is its own surface (web/auth.py), so a web-form flood from the
same address does not refuse it either.

There is no counter per principal across addresses: it let anyone who knew an approver's
name lock that approver out from everywhere. Tokens are 256-bit random secrets; guessing
one from many addresses is not made feasible by its absence.

A client that retries the same login on the other transport right away (libpq's
``sslmode=prefer``: TLS first, then plain text after any authentication error) is counted
once: a failure on one transport within ``RETRY_GRACE`` seconds of a failure on the other,
for the same principal and address, is not counted again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import bindparam, case, delete, select
from sqlalchemy.orm import Session

from wardgate.store.db import Store
from wardgate.store.models import LoginFailure

# Seconds within which a failed login on the other transport is the client's retry.
RETRY_GRACE = 5.0
# How long a process reuses a "nothing counted, not throttled" answer of ``check`` for a
# principal and address before asking the store again (``cached_check``). Every failure
# is still written to the store at once, and a failure in this process drops the
# answers for its address; failures counted by *other* processes are seen here within
# this bound. docs/configuration.md, "Tokens".
CHECK_CACHE_SECONDS = 2.0
_CHECK_CACHE_MAX = 10_000


# Built once: constructing a select() costs more than running it on SQLite.
_COUNTS = select(LoginFailure.key, LoginFailure.count, LoginFailure.window_start).where(
    LoginFailure.key.in_((bindparam("pair"), bindparam("addr")))
)


def _pair_key(principal: str, client_ip: str) -> str:
    # Prefixes keep a principal named like an address from sharing a counter with it.
    return f"pa:{client_ip}:{principal}"


def _addr_key(client_ip: str, surface: str = "") -> str:
    # A surface with costly checks (web passwords, single sign-on) counts its own
    # failures per address: another principal's failed token logins from the address
    # (an agent on 127.0.0.1) cannot push it past its threshold.
    return f"addr:{surface}:{client_ip}" if surface else f"addr:{client_ip}"


def _retry_key(principal: str, client_ip: str) -> str:
    # count: 1 for a failure over TLS, 0 for plain text; window_start: when.
    return f"retry:{client_ip}:{principal}"


class LoginLimiter:
    def __init__(
        self,
        store: Store,
        max_failures: int,
        window: float,
        on_failure: Callable[[], None] | None = None,
        *,
        address_failures: int | None = None,
        max_delay: float = 30.0,
    ) -> None:
        address_failures = address_failures or 4 * max_failures
        if max_failures < 1 or address_failures < 1 or window <= 0 or max_delay < 0:
            raise ValueError("failure thresholds must be >= 1, window > 0, max_delay >= 0")
        self._store = store
        self._on_failure = on_failure  # a metric (serve wires metrics.login_failed)
        self._max = max_failures
        self._addr_max = address_failures
        self._window = window
        self._max_delay = max_delay
        # address -> principal -> monotonic time of a store read that found nothing
        # counted and no wait. Filled from threads; single dict operations only.
        self._clear: dict[str, dict[str, float]] = {}

    @property
    def max_delay(self) -> float:
        return self._max_delay

    def retry_after(self, principal: str, client_ip: str, *, surface: str = "") -> float | None:
        return self.check(principal, client_ip, surface=surface)[0]

    def check(
        self, principal: str, client_ip: str, *, surface: str = ""
    ) -> tuple[float | None, bool]:
        """Seconds until the address's threshold lets a costly credential check from
        ``client_ip`` be tried again (None: now; cheap checks go on regardless, see the
        module's docstring), and whether a failure is counted for this principal and
        address (when none is, a success has nothing to clear: ``record_success`` can be
        skipped, sparing a store write per login). ``surface``: whose address counter
        (see ``_addr_key``); "" for token logins."""
        read_at, now = time.monotonic(), time.time()
        pair, addr = _pair_key(principal, client_ip), _addr_key(client_ip, surface)
        with self._store.connection(write=False) as conn:
            rows = conn.execute(_COUNTS, {"pair": pair, "addr": addr}).all()
        wait, counted = 0.0, False
        for key, count, window_start in rows:
            remaining = window_start + self._window - now
            if remaining <= 0:
                continue
            if key == addr and count >= self._addr_max:
                wait = remaining
            counted = counted or key == pair
        if wait <= 0 and not counted and not surface:  # kept for token logins only
            if len(self._clear) >= _CHECK_CACHE_MAX:
                self._clear.clear()
            principals = self._clear.setdefault(client_ip, {})
            if len(principals) >= _CHECK_CACHE_MAX:
                principals.clear()
            principals[principal] = read_at
        return (wait if wait > 0 else None), counted

    def cached_check(self, principal: str, client_ip: str) -> bool:
        """Whether ``check`` (of a token login: no ``surface``) found nothing counted
        and no wait for this principal and address less than CHECK_CACHE_SECONDS ago
        (and no failure from the address, of any surface, was counted here since): no
        store access, so the event loop may call it."""
        read_at = self._clear.get(client_ip, {}).get(principal)
        return read_at is not None and time.monotonic() - read_at < CHECK_CACHE_SECONDS

    def record_failure(
        self, principal: str | None, client_ip: str, *, tls: bool = False, surface: str = ""
    ) -> float:
        """Count a failed login; returns how many seconds to wait before answering it.
        ``principal`` None: a failure only the source answers for (a protocol violation
        before authentication), counted against the address alone."""
        if self._on_failure is not None:
            self._on_failure()
        self._clear.pop(client_ip, None)  # before the write: a racing login reads the store
        now = time.time()
        expired = LoginFailure.window_start <= now - self._window
        with self._store.session() as session:
            if principal is not None and self._is_retry(session, principal, client_ip, tls, now):
                return 0.0
            keys = [_addr_key(client_ip, surface)]
            if principal is not None:
                keys.append(_pair_key(principal, client_ip))
            for key in keys:
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
            counts = dict(
                session.execute(
                    select(LoginFailure.key, LoginFailure.count).where(LoginFailure.key.in_(keys))
                ).all()
            )
        if counts.get(_addr_key(client_ip, surface), 0) > self._addr_max:
            return self._max_delay  # past the address's threshold: every failure waits
        if principal is None:
            return 0.0
        return self._delay(counts.get(_pair_key(principal, client_ip), 0))

    def _is_retry(
        self, session: Session, principal: str, client_ip: str, tls: bool, now: float
    ) -> bool:
        """Whether this failure repeats one on the other transport a moment ago (and
        note this one, so that a retry of it is recognised in turn)."""
        key = _retry_key(principal, client_ip)
        other = session.execute(
            delete(LoginFailure).where(
                LoginFailure.key == key,
                LoginFailure.count == (0 if tls else 1),
                LoginFailure.window_start > now - RETRY_GRACE,
            )
        )
        if getattr(other, "rowcount", 0):
            return True
        session.execute(
            self._store.insert(LoginFailure)
            .values(key=key, count=int(tls), window_start=now)
            .on_conflict_do_update(
                index_elements=["key"], set_={"count": int(tls), "window_start": now}
            )
        )
        return False

    def _delay(self, count: int) -> float:
        over = count - self._max
        if over < 0:
            return 0.0
        return float(min(self._max_delay, 2.0 ** min(over, 16)))

    def record_success(self, principal: str, client_ip: str) -> None:
        """Clears the principal's count at this address; the address's own count runs
        out with its window (a guesser holding one valid token cannot reset it)."""
        with self._store.session() as session:
            session.execute(
                delete(LoginFailure).where(
                    LoginFailure.key.in_(
                        (_pair_key(principal, client_ip), _retry_key(principal, client_ip))
                    )
                )
            )
