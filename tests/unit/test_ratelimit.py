"""Login throttling: per (principal, address) failures slow the guesser, per address
failures past a separate, higher threshold refuse the address, and nothing locks a
principal out everywhere."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wardgate.identity.ratelimit import LoginLimiter
from wardgate.store.db import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}")
    yield s
    s.dispose()


def test_a_principals_failures_slow_its_guesser_but_refuse_nothing(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=3, window=60, address_failures=100)
    delays = [limiter.record_failure("bot", "10.0.0.1") for _ in range(6)]
    assert delays == [0.0, 0.0, 1.0, 2.0, 4.0, 8.0]
    # the right token from the same address still logs in: nothing refuses it
    assert limiter.retry_after("bot", "10.0.0.1") is None
    assert limiter.check("bot", "10.0.0.1") == (None, True)


def test_the_slowdown_is_capped(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=1, window=60, address_failures=100, max_delay=5)
    assert max(limiter.record_failure("bot", "10.0.0.1") for _ in range(10)) == 5.0


def test_guessing_an_approvers_name_does_not_slow_the_approver(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=2, window=60, address_failures=100)
    for _ in range(10):
        limiter.record_failure("approver", "10.6.6.6")
    # the approver at their own address: no count, no wait, no refusal
    assert limiter.check("approver", "10.0.0.1") == (None, False)
    assert limiter.record_failure("approver", "10.0.0.1") == 0.0  # a typo of theirs


def test_the_address_threshold_is_separate_and_refuses_every_principal(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=3, window=60, address_failures=6)
    for who in ("a", "b", "c", "d", "e"):
        limiter.record_failure(who, "10.0.0.1")
    assert limiter.retry_after("z", "10.0.0.1") is None  # 5 of 6
    limiter.record_failure(None, "10.0.0.1")  # a protocol violation counts for the address
    wait = limiter.retry_after("z", "10.0.0.1")
    assert wait is not None and 55 < wait <= 60
    assert limiter.retry_after("z", "10.0.0.2") is None


def test_address_threshold_defaults_to_four_times_the_pair_threshold(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=2, window=60)
    for i in range(7):
        limiter.record_failure(f"p{i}", "10.0.0.1")
    assert limiter.retry_after("x", "10.0.0.1") is None
    limiter.record_failure("p7", "10.0.0.1")
    assert limiter.retry_after("x", "10.0.0.1") is not None


def test_a_retry_on_the_other_transport_counts_once(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=2, window=60, address_failures=100)
    # libpq sslmode=prefer: TLS, then plain text at once after the error
    limiter.record_failure("dev", "10.0.0.1", tls=True)
    assert limiter.record_failure("dev", "10.0.0.1", tls=False) == 0.0
    # the second psql call reaches the threshold of 2 (its retry adds nothing)
    assert limiter.record_failure("dev", "10.0.0.1", tls=True) == 1.0
    assert limiter.record_failure("dev", "10.0.0.1", tls=False) == 0.0
    # the same transport twice is two failures
    assert limiter.record_failure("dev", "10.0.0.1", tls=True) == 2.0
    assert limiter.record_failure("dev", "10.0.0.1", tls=True) == 4.0


def test_success_clears_the_pair_but_not_the_address(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=2, window=60, address_failures=4)
    for _ in range(3):
        limiter.record_failure("bot", "10.0.0.1")
    limiter.record_success("bot", "10.0.0.1")
    assert limiter.check("bot", "10.0.0.1") == (None, False)
    assert limiter.record_failure("bot", "10.0.0.1") == 0.0
    # 4 failures of the address: a valid token of one's own does not reset them
    assert limiter.retry_after("bot", "10.0.0.1") is not None


def test_window_expires_and_restarts_the_count(store: Store) -> None:
    # A window long enough that two failures recorded on a loaded machine (CI: 2 cores,
    # other tests' gateways) still fall in it: with 0.3 s it failed once that way.
    limiter = LoginLimiter(store, max_failures=2, window=1.0, address_failures=2)
    limiter.record_failure("bot", "10.0.0.1")
    limiter.record_failure("bot", "10.0.0.1")
    wait = limiter.retry_after("bot", "10.0.0.1")
    assert wait is not None and wait <= 1.0
    time.sleep(1.05)
    assert limiter.retry_after("bot", "10.0.0.1") is None
    assert limiter.record_failure("bot", "10.0.0.1") == 0.0  # a new window: count 1, not 3
    assert limiter.retry_after("bot", "10.0.0.1") is None


def test_limiters_sharing_a_store_share_counts(store: Store, tmp_path: Path) -> None:
    other_store = Store(f"sqlite:///{tmp_path / 'wardgate.db'}")
    try:
        one = LoginLimiter(store, max_failures=4, window=60, address_failures=4)
        two = LoginLimiter(other_store, max_failures=4, window=60, address_failures=4)
        one.record_failure("bot", "10.0.0.1")
        two.record_failure("bot", "10.0.0.1")
        one.record_failure("bot", "10.0.0.1")
        assert two.retry_after("bot", "10.0.0.1") is None
        assert two.record_failure("bot", "10.0.0.1") == 1.0
        assert one.retry_after("bot", "10.0.0.1") is not None
    finally:
        other_store.dispose()


def test_a_clean_check_is_reused_briefly_and_any_failure_from_the_address_drops_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wardgate.identity.ratelimit as module

    limiter = LoginLimiter(store, max_failures=3, window=60)
    assert not limiter.cached_check("dev", "10.0.0.1")
    assert limiter.check("dev", "10.0.0.1") == (None, False)
    assert limiter.cached_check("dev", "10.0.0.1")
    assert not limiter.cached_check("dev", "10.0.0.2")  # per address
    assert not limiter.cached_check("ops", "10.0.0.1")  # per principal
    # Only token logins' answers are kept: a surface's own counter is always read.
    assert limiter.check("web-user", "10.0.0.9", surface="web") == (None, False)
    assert not limiter.cached_check("web-user", "10.0.0.9")
    # A failure from the address, of any principal: counted in the store at once, and
    # the next login from there reads the store again.
    limiter.record_failure("bot", "10.0.0.1")
    assert not limiter.cached_check("dev", "10.0.0.1")
    limiter.record_failure("dev", "10.0.0.1")
    assert limiter.check("dev", "10.0.0.1") == (None, True)
    assert not limiter.cached_check("dev", "10.0.0.1")  # counted: never cached
    # Failures counted by another process are seen here within the bound.
    assert limiter.check("dev", "10.0.0.3") == (None, False)
    LoginLimiter(store, max_failures=3, window=60).record_failure("dev", "10.0.0.3")
    assert limiter.cached_check("dev", "10.0.0.3")
    monkeypatch.setattr(module, "CHECK_CACHE_SECONDS", 0.0)
    assert not limiter.cached_check("dev", "10.0.0.3")
    assert limiter.check("dev", "10.0.0.3") == (None, True)
