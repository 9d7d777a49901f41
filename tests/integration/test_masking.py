"""Masking through the real gateway: agents see masked values, other humans clear ones,
every client still decodes every row, and the audit log holds nothing unmasked."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration.conftest import Gateway, admin_conn, base_config, make_gateway

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
SECRET = "AKIAIOSFODNN7EXAMPLE"
PASSWORD = "hunter2-correct-horse"
NOTE = f"call back, mail {EMAIL} about card {CARD}"
CLEAR = (EMAIL, CARD, SECRET, "hunter2")

MASKING = """
masking:
  rules:
    - {name: agents-see-no-pii, principal_kinds: [agent], entities: [all], strategy: partial}
    - {name: passwords, columns: ["*.password"], strategy: redact, except_groups: [approvers]}
"""


@pytest.fixture(scope="module")
def customers(it_database: str) -> str:
    table = f"customers_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as conn:
        conn.execute(
            f"create table {table} (id int primary key, name text, email text unique, card varchar(30),"
            " note text, password text, ip inet, tags text[], data jsonb, age int)"
        )
        conn.execute(
            f"insert into {table} values (1, 'Jane', %s, %s, %s, %s, '10.1.2.3', %s, %s, 41)",
            (
                EMAIL,
                CARD,
                NOTE,
                PASSWORD,
                [EMAIL, "plain"],
                json.dumps({"contact": EMAIL, "key": SECRET}),
            ),
        )
        conn.execute(f"grant select on {table} to public")
    return table


@pytest.fixture(scope="module")
def masked_gw(
    it_database: str, customers: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("masking"), base_config(it_database) + MASKING)
    gw.start()
    yield gw
    gw.stop()


def _assert_no_clear_values(values: Any) -> None:
    text = json.dumps(values, default=str)
    for clear in CLEAR:
        assert clear not in text, f"{clear!r} leaked in {text}"


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "prepared"])
def test_agent_sees_masked_values_in_text_format(
    masked_gw: Gateway, customers: str, prepare: bool
) -> None:
    with psycopg.connect(masked_gw.dsn("agent"), autocommit=True) as conn:
        cur = conn.execute(
            f"select id, name, email, card, note, password, ip, tags, data, age from {customers}",
            prepare=prepare,
        )
        (row,) = cur.fetchall()
    _assert_no_clear_values(row)
    rid, name, email, card, note, password, ip, tags, data, age = row
    assert (rid, name, age) == (1, "Jane", 41)  # untouched columns stay exact
    assert email != EMAIL and "@" in email
    assert card[-4:] == "1111" and card != CARD  # partial keeps the last digits
    assert note.startswith("call back, mail ") and " about card " in note
    assert password != PASSWORD
    assert ip is None  # an inet value cannot be masked in place: NULL, still decodable
    assert tags[1] == "plain" and tags[0] != EMAIL
    assert isinstance(data, dict) and data["contact"] != EMAIL and data["key"] != SECRET


def test_agent_sees_masked_values_in_binary_format(masked_gw: Gateway, customers: str) -> None:
    async def main() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(masked_gw.dsn("agent"), timeout=10)
        try:
            await conn.set_type_codec(
                "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )
            rows = await conn.fetch(
                f"select id, email, card, note, password, ip, tags, data, age from {customers} where id = $1",
                1,
            )
            stmt = await conn.prepare(f"select email, tags from {customers}")
            rows += await stmt.fetch()
            return rows
        finally:
            await conn.close()

    rows = asyncio.run(main())
    _assert_no_clear_values([dict(r) for r in rows])
    first = rows[0]
    assert first["id"] == 1 and first["age"] == 41
    assert "@" in first["email"] and first["ip"] is None
    assert first["tags"][1] == "plain"
    assert isinstance(first["data"], dict) and first["data"]["contact"] != EMAIL


def test_column_rules_follow_the_catalog_not_the_alias(masked_gw: Gateway, customers: str) -> None:
    with psycopg.connect(masked_gw.dsn("dev"), autocommit=True) as conn:
        (row,) = conn.execute(f"select password as p, email as e from {customers}").fetchall()
    assert row[0] != PASSWORD  # dev is not an approver: passwords are redacted
    assert row[1] == EMAIL  # dev is a human engineer: no content masking for dev
    with psycopg.connect(masked_gw.dsn("reviewer"), autocommit=True) as conn:
        (row,) = conn.execute(f"select password from {customers}").fetchall()
    assert row[0] == PASSWORD  # approvers are exempt


def test_copy_out_and_error_details_are_masked(masked_gw: Gateway, customers: str) -> None:
    with psycopg.connect(masked_gw.dsn("agent"), autocommit=True) as conn:
        with conn.cursor().copy(f"copy (select email, note from {customers}) to stdout") as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
        assert data and b"@" in data
        for clear in CLEAR:
            assert clear.encode() not in data
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as info:
            conn.execute(f"select '{EMAIL}'::int")
        # What the server said is masked (libpq adds the query text the client sent itself).
        diag = info.value.diag
        assert diag.message_primary and "invalid input syntax" in diag.message_primary
        assert EMAIL not in diag.message_primary
        # DETAIL and CONTEXT quote data too (a unique violation's "Key (email)=(...)").
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as info:
            conn.execute("select %s::jsonb", (f'{{"e": "{EMAIL}", }}',))
        diag = info.value.diag
        assert diag.context and "JSON data" in diag.context
        for field in (diag.message_primary, diag.message_detail, diag.context):
            assert EMAIL not in (field or "")
        assert conn.execute("select 'usable'").fetchone() == ("usable",)


def test_the_audit_log_holds_only_masked_parameters(masked_gw: Gateway, customers: str) -> None:
    app = f"mask-audit-{time.monotonic_ns()}"
    with psycopg.connect(masked_gw.dsn("agent", application_name=app), autocommit=True) as conn:
        conn.execute(f"select id from {customers} where email = %s", (EMAIL,)).fetchall()
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute("select %s::int", (EMAIL,))
    deadline = time.monotonic() + 10
    while True:
        rows = json.loads(masked_gw.cli("sessions", "list", "--json", "--limit", "200").stdout)
        ours = [r for r in rows if r["application_name"] == app and r["ended_at"] is not None]
        if ours or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ours, "session not recorded"
    detail = json.loads(masked_gw.cli("sessions", "show", ours[0]["id"], "--json").stdout)
    params = [a["params"] for a in detail["actions"] if a["params"]]
    assert params, detail["actions"]
    _assert_no_clear_values(detail["actions"])


def test_sessions_without_masking_rules_are_untouched(
    masked_gw: Gateway, customers: str, tmp_path: Path
) -> None:
    with psycopg.connect(masked_gw.dsn("reviewer"), autocommit=True) as conn:
        (row,) = conn.execute(f"select email, card, note, host(ip) from {customers}").fetchall()
    assert row == (EMAIL, CARD, NOTE, "10.1.2.3")


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "prepared"])
def test_a_long_result_is_masked_in_bulk(masked_gw: Gateway, prepare: bool) -> None:
    """Masked sessions take runs of whole DataRows (results.py): a result of thousands
    of rows comes in many chunks, rows cut between them; every row arrives, in order,
    the clean ones exact (passed whole when the prefilter proves the run clean) and the
    ones holding an email masked."""
    sql = (
        "select case when g % 7 = 0 then 'mail jane.doe' || g || '@example.com now' "
        "else repeat('word ', g % 40) end from generate_series(1, 4000) g"
    )
    with psycopg.connect(masked_gw.dsn("agent"), autocommit=True) as conn:
        rows = [r[0] for r in conn.execute(sql, prepare=prepare).fetchall()]
    assert len(rows) == 4000
    for g, value in enumerate(rows, start=1):
        if g % 7 == 0:
            assert f"jane.doe{g}@example.com" not in value and value.startswith("mail ")
        else:
            assert value == "word " * (g % 40)
