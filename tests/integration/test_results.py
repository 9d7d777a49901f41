"""Responses are recorded as the client saw them: the rows of each SQL action (masked),
within per-action and per-session budgets, with the full row count and a SHA-256 of
the whole result stream; `wardgate sessions show` prints them under the statement."""

from __future__ import annotations

import hashlib
import json
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER
from tests.integration.conftest import Gateway, admin_conn, base_config, make_gateway
from wardgate.audit.query import get_session, list_sessions
from wardgate.store.db import Store

pytestmark = pytest.mark.integration


def _config(database: str) -> str:
    upstream = (
        f"{{host: {PG_HOST}, port: {PG_PORT}, database: {database}, user: {PG_USER}, tls: disable}}"
    )
    extra = f"""\
    small:
      type: postgres
      upstream: {upstream}
      roles: {{agents: reader, engineers: engineer}}
      results: {{rows: 3, bytes: 300}}
    norec:
      type: postgres
      upstream: {upstream}
      roles: {{agents: reader, engineers: engineer}}
      results: {{record: false}}
    """
    masking = (
        "masking:\n  rules:\n"
        "    - {name: agents-no-email, principal_kinds: [agent], entities: [email], "
        "strategy: redact}\n"
    )
    return base_config(database, extra) + masking


@pytest.fixture(scope="module")
def gw(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = make_gateway(tmp_path_factory.mktemp("results"), _config(it_database))
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def people(it_database: str) -> Iterator[str]:
    name = f"people_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as conn:
        conn.execute(f"create table {name} (id int primary key, email text, note text)")
        conn.execute(
            f"insert into {name} select g, 'person' || g || '@example.com', "
            f"case when g = 5 then null else 'note ' || g end from generate_series(1, 5) g"
        )
    yield name
    with admin_conn(it_database) as conn:
        conn.execute(f"drop table if exists {name}")


def _session(gw: Gateway, app: str) -> dict[str, Any]:
    """The recorded session, read from the store in-process (a CLI call costs seconds
    on a loaded machine)."""
    store = Store(gw.env["WARDGATE_STORE"])
    try:
        deadline = time.monotonic() + 15
        while True:
            for row in list_sessions(store, limit=200):
                if row["application_name"] == app and row["ended_at"] is not None:
                    found = get_session(store, row["id"])
                    assert found is not None
                    return found
            assert time.monotonic() < deadline, app
            time.sleep(0.1)
    finally:
        store.dispose()


def _data_rows(rows: list[tuple[Any, ...]]) -> bytes:
    """The DataRow messages a text-format result of ``rows`` is on the wire."""
    out = b""
    for row in rows:
        body = struct.pack("!h", len(row))
        for value in row:
            if value is None:
                body += struct.pack("!i", -1)
            else:
                raw = str(value).encode()
                body += struct.pack("!i", len(raw)) + raw
        out += b"D" + struct.pack("!I", len(body) + 4) + body
    return out


def _action(session: dict[str, Any], fragment: str) -> dict[str, Any]:
    return next(a for a in session["actions"] if fragment in a["text"])


def test_rows_are_recorded_as_the_client_saw_them(gw: Gateway, people: str) -> None:
    app = f"results-{uuid.uuid4().hex[:6]}"
    query = f"select id, email, note from {people} order by id"
    with psycopg.connect(gw.dsn("agent", application_name=app), autocommit=True) as conn:
        seen = conn.execute(query).fetchall()  # masked for agents
        conn.execute(f"select id from {people} where id > 100").fetchall()
    assert all("@example.com" not in str(row) for row in seen)
    session = _session(gw, app)
    action = _action(session, "select id, email, note")
    result = action["result"]
    assert action["rows"] == 5
    assert result["rows"] == [[str(i), e, n] for i, e, n in seen]
    assert result["rows"][4][2] is None  # NULL stays NULL
    assert result["complete"] is True and result["recorded_rows"] == 5
    assert result["sha256"] == hashlib.sha256(_data_rows(seen)).hexdigest()
    assert "@example.com" not in json.dumps(session)
    empty = _action(session, "where id > 100")
    assert empty["rows"] == 0 and empty.get("result") is None

    shown = gw.cli("sessions", "show", session["id"]).stdout
    assert "result: 5 rows, all recorded" in shown
    assert f'      ["1", {json.dumps(seen[0][1])}, "note 1"]' in shown


def test_budgets_cut_the_rows_not_the_count_or_the_digest(gw: Gateway, people: str) -> None:
    app = f"budget-{uuid.uuid4().hex[:6]}"
    query = f"select id, email, note from {people} order by id"
    with psycopg.connect(
        gw.dsn("dev", connection="small", application_name=app), autocommit=True
    ) as conn:
        seen = conn.execute(query).fetchall()  # unmasked: rows stream through as slices
        conn.execute(f"select repeat('x', 1000) as big from {people} where id = 1").fetchall()
    session = _session(gw, app)
    action = _action(session, "select id, email, note")
    result = action["result"]
    assert action["rows"] == 5
    assert result["rows"] == [[str(i), e, n] for i, e, n in seen[:3]]
    assert result["complete"] is False and result["recorded_rows"] == 3
    assert result["sha256"] == hashlib.sha256(_data_rows(seen)).hexdigest()
    big = _action(session, "repeat('x', 1000)")["result"]
    assert big["rows"] == [] and big["complete"] is False  # over the 300-byte budget
    assert big["stream_bytes"] > 1000
    shown = gw.cli("sessions", "show", session["id"]).stdout
    assert "result: 5 rows, first 3 recorded (budget reached)" in shown

    app = f"norec-{uuid.uuid4().hex[:6]}"
    with psycopg.connect(
        gw.dsn("dev", connection="norec", application_name=app), autocommit=True
    ) as conn:
        conn.execute(query).fetchall()
    plain = _action(_session(gw, app), "select id, email, note")
    assert plain["rows"] == 5 and plain.get("result") is None
