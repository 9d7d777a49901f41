"""The store-backed services on both SQLite and PostgreSQL: their upserts and locks are
dialect-specific, so each gets at least one run on each store."""

from __future__ import annotations

import asyncio
import threading
import time

from sqlalchemy import update

from wardgate.core.tasks import Tasks
from wardgate.identity.ratelimit import LoginLimiter
from wardgate.identity.tokens import TokenService
from wardgate.postgres.cancel_registry import CancelRegistry
from wardgate.store.cancel import CancelKeys, CancelTarget, row_key
from wardgate.store.db import Store
from wardgate.store.models import CancelKey
from wardgate.vault.secrets import SecretError, Vault

TARGET = CancelTarget("orders", "db.internal", 5432, 4242, b"\x01\x02\x03\x04", "require")


def test_cancel_keys_register_lookup_remove(store: Store) -> None:
    keys = CancelKeys(store)
    keys.register(1234, b"gw-secret", TARGET)
    assert keys.lookup(1234, b"gw-secret") == TARGET
    assert keys.lookup(1234, b"wrong") is None
    assert keys.lookup(9999, b"gw-secret") is None
    # Backends of two servers with the same pid: the secrets tell them apart.
    other = CancelTarget("billing", "h", 6543, 1, b"s" * 32, "disable")
    keys.register(1234, b"new-secret", other)
    assert keys.lookup(1234, b"gw-secret") == TARGET
    assert keys.lookup(1234, b"new-secret") == other
    keys.remove(1234, b"new-secret")
    assert keys.lookup(1234, b"new-secret") is None
    assert keys.lookup(1234, b"gw-secret") == TARGET
    # The same key again (a stale row of a process that died) is replaced.
    keys.register(1234, b"gw-secret", other)
    assert keys.lookup(1234, b"gw-secret") == other


def test_cancel_keys_purge_old_entries(store: Store) -> None:
    keys = CancelKeys(store)
    keys.register(1, b"a", TARGET)
    keys.register(2, b"b", TARGET)
    with store.session() as s:
        s.execute(
            update(CancelKey)
            .where(CancelKey.gw_pid == row_key(1, b"a"))
            .values(created_at=time.time() - 7200)
        )
    assert keys.purge_older_than(3600) == 1
    assert keys.lookup(1, b"a") is None
    assert keys.lookup(2, b"b") == TARGET


def test_tokens_on_both_stores(store: Store) -> None:
    service = TokenService(store, b"pepper")
    issued = service.create("bot", "ci")
    assert service.check_password("bot", issued.token) == issued.id
    assert service.revoke(issued.id)
    assert service.check_password("bot", issued.token) is None


def test_first_tokens_created_concurrently_share_one_salt(store: Store, store_url: str) -> None:
    stores = [Store(store_url) for _ in range(4)]
    issued: list[str] = []
    errors: list[BaseException] = []

    def create(s: Store) -> None:
        try:
            issued.append(TokenService(s, b"pepper").create("newcomer").token)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for s in stores:
        s.dispose()
    assert errors == [] and len(issued) == 4
    service = TokenService(store, b"pepper")
    assert len(service.verifiers("newcomer").keys) == 4
    assert all(service.check_password("newcomer", token) for token in issued)


def test_login_limiter_on_both_stores(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=2, window=60, address_failures=3)
    assert limiter.record_failure("bot", "10.0.0.1", tls=True) == 0.0
    assert limiter.record_failure("bot", "10.0.0.1", tls=False) == 0.0  # its retry
    assert limiter.record_failure("bot", "10.0.0.1") == 1.0
    assert limiter.check("bot", "10.0.0.1") == (None, True)
    limiter.record_success("bot", "10.0.0.1")
    assert limiter.check("bot", "10.0.0.1") == (None, False)
    limiter.record_failure(None, "10.0.0.1")
    assert limiter.retry_after("bot", "10.0.0.1") is not None


def test_concurrent_failures_are_all_counted(store: Store, store_url: str) -> None:
    stores = [Store(store_url) for _ in range(4)]

    def fail(s: Store) -> None:
        limiter = LoginLimiter(s, max_failures=1000, window=60)
        for _ in range(10):
            limiter.record_failure("bot", "10.0.0.1")

    threads = [threading.Thread(target=fail, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for s in stores:
        s.dispose()
    limits = {"max_failures": 1000, "window": 60}
    assert LoginLimiter(store, **limits, address_failures=40).retry_after("bot", "10.0.0.1")
    assert LoginLimiter(store, **limits, address_failures=41).retry_after("bot", "10.0.0.1") is None


def test_vault_on_both_stores(store: Store) -> None:
    vault = Vault(store, b"k" * 32)
    vault.set("pg", "first")
    vault.set("pg", "second")
    assert vault.get("pg") == "second"
    assert vault.names() == ["pg"]
    try:
        Vault(store, b"x" * 32).get("pg")
    except SecretError as exc:
        assert "second" not in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a wrong master key must not decrypt")


def test_cancel_keys_are_written_in_batches(store: Store) -> None:
    """A session's key reaches the store within a batch; one that ends before its batch
    is written costs no write; a written one is removed in a later batch."""
    keys = CancelKeys(store)

    async def scenario() -> None:
        registry = CancelRegistry(keys, Tasks())
        short = registry.add(7, b"s1", TARGET, None)
        registry.remove(short)  # ended before the batch: never written
        long = registry.add(8, b"s2", TARGET, None)
        assert registry.find(8, b"s2") is long and registry.find(8, b"xx") is None
        assert await registry.lookup(8, b"s2") == TARGET  # from memory
        await registry.flush()
        assert keys.lookup(8, b"s2") == TARGET
        assert keys.lookup(7, b"s1") is None
        registry.remove(long)
        assert registry.find(8, b"s2") is None
        await registry.flush()
        assert keys.lookup(8, b"s2") is None

    asyncio.run(scenario())
