"""Store fixtures: every store test runs on SQLite and on PostgreSQL.

PostgreSQL: one fresh database ``wardgate_test_<random>`` per test session on
127.0.0.1:5432 (user postgres), dropped at the end, and one schema per test inside it
(``search_path`` in the URL) so tests never see each other's rows. Without a reachable
server the PostgreSQL variants are skipped, or fail when ``CI=true``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from wardgate.store.db import Store

PG_HOST = os.environ.get("WARDGATE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("WARDGATE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("WARDGATE_TEST_PG_USER", "postgres")


def _admin_connect(dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=True, connect_timeout=5
    )


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    """The name of this session's test database, or None if PostgreSQL is unreachable."""
    name = f"wardgate_test_{secrets.token_hex(4)}"
    try:
        admin = _admin_connect()
    except psycopg.OperationalError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL at {PG_HOST}:{PG_PORT} is required in CI: {exc}")
        yield None
        return
    with admin as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with _admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_url(database: str, schema: str) -> str:
    return (
        f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"
        f"?options=-csearch_path%3D{schema}"
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store' / 'wardgate.db'}"
        return
    database = request.getfixturevalue("pg_database")
    if database is None:
        pytest.skip(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}")
    schema = f"t_{secrets.token_hex(6)}"
    with _admin_connect(database) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield pg_url(database, schema)
    finally:
        with _admin_connect(database) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store.open(store_url)
    try:
        yield s
    finally:
        s.dispose()
