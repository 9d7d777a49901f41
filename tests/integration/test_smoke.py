"""The shortest path through the real gateway: connect, read, get blocked, keep going."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.conftest import Gateway


def test_select_and_block_keep_session_usable(gateway: Gateway) -> None:
    with psycopg.connect(gateway.dsn("agent"), autocommit=True) as conn:
        assert conn.execute("select 41 + 1").fetchone() == (42,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute("create table smoke_nope (a int)")
        assert "wardgate: blocked by role:reader" in str(info.value)
        assert conn.execute("select 'still here'").fetchone() == ("still here",)
