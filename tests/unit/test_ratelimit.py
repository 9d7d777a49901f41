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


def test_principal_is_blocked_after_max_failures(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=3, window=60)
    for _ in range(2):
        limiter.record_failure("bot", "10.0.0.1")
    assert limiter.retry_after("bot", "10.0.0.1") is None
    limiter.record_failure("bot", "10.0.0.1")
    wait = limiter.retry_after("bot", "10.0.0.1")
    assert wait is not None and 55 < wait <= 60


def test_principal_key_spans_addresses(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=3, window=60)
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        limiter.record_failure("bot", ip)
    assert limiter.retry_after("bot", "10.9.9.9") is not None
    assert limiter.retry_after("alice", "10.9.9.9") is None


def test_address_key_spans_principals(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=3, window=60)
    for who in ("a", "b", "c"):
        limiter.record_failure(who, "10.0.0.1")
    assert limiter.retry_after("d", "10.0.0.1") is not None
    assert limiter.retry_after("d", "10.0.0.2") is None


def test_success_clears_the_principal_and_address(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=2, window=60)
    limiter.record_failure("bot", "10.0.0.1")
    limiter.record_failure("bot", "10.0.0.1")
    assert limiter.retry_after("bot", "10.0.0.1") is not None
    limiter.record_success("bot", "10.0.0.1")
    assert limiter.retry_after("bot", "10.0.0.1") is None


def test_window_expires_and_restarts_the_count(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=2, window=0.3)
    limiter.record_failure("bot", "10.0.0.1")
    limiter.record_failure("bot", "10.0.0.1")
    wait = limiter.retry_after("bot", "10.0.0.1")
    assert wait is not None and wait <= 0.3
    time.sleep(0.35)
    assert limiter.retry_after("bot", "10.0.0.1") is None
    limiter.record_failure("bot", "10.0.0.1")  # a new window: count 1, not 3
    assert limiter.retry_after("bot", "10.0.0.1") is None


def test_limiters_sharing_a_store_share_counts(store: Store, tmp_path: Path) -> None:
    other_store = Store(f"sqlite:///{tmp_path / 'wardgate.db'}")
    try:
        one = LoginLimiter(store, max_failures=4, window=60)
        two = LoginLimiter(other_store, max_failures=4, window=60)
        one.record_failure("bot", "10.0.0.1")
        two.record_failure("bot", "10.0.0.1")
        one.record_failure("bot", "10.0.0.1")
        assert two.retry_after("bot", "10.0.0.1") is None
        two.record_failure("bot", "10.0.0.1")
        assert one.retry_after("bot", "10.0.0.1") is not None
    finally:
        other_store.dispose()


def test_invalid_settings_are_rejected(store: Store) -> None:
    with pytest.raises(ValueError):
        LoginLimiter(store, max_failures=0, window=60)
