"""The second layer through the real gateway: whatever a query turns a sensitive value
into (arrays of any element type, tsvector, bytea, jsonb at depth, composite values,
numbers, notices and errors), content detection sees it, and every row still decodes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import Gateway, admin_conn, base_config, make_gateway

EMAIL = "jane.doe@example.com"
CARD = "4111111111111111"
PHONE = "+44 20 7123 4567"
CLEAR = (EMAIL, CARD, "4111 1111 1111 1111", "jane.doe", "7123 4567", EMAIL.encode().hex())

MASKING = """
masking:
  rules:
    - {name: agents-see-no-pii, principal_kinds: [agent], entities: [all], strategy: partial}
    - {name: dev-too, principals: [dev], entities: [all], strategy: redact}
"""


@pytest.fixture(scope="module")
def people(it_database: str) -> str:
    table = f"people_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as conn:
        conn.execute(f"create table {table} (id int, email text, card text, phone text)")
        conn.execute(f"insert into {table} values (1, %s, %s, %s)", (EMAIL, CARD, PHONE))
        conn.execute(f"grant select on {table} to public")
        conn.execute(
            "create or replace function second_layer_notice(v text) returns int language plpgsql"
            " as $$ begin raise notice 'value %', v; return 1; end $$"
        )
    return table


@pytest.fixture(scope="module")
def gw(
    it_database: str, people: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gateway = make_gateway(tmp_path_factory.mktemp("second"), base_config(it_database) + MASKING)
    gateway.start()
    yield gateway
    gateway.stop()


def _leaks(values: Any) -> list[str]:
    text = json.dumps(values, default=lambda v: v.hex() if isinstance(v, bytes) else str(v))
    return [c for c in CLEAR if c in text or c in text.replace("\\\\", "\\")]


QUERIES = {
    "text[]": "select string_to_array(email, NULL) from {t}",
    "array_agg::text": "select array_agg(card)::text from {t}",
    "bigint[]": "select array[card::bigint] from {t}",
    "bigint": "select card::bigint from {t}",
    "numeric": "select card::numeric from {t}",
    "tsvector": "select to_tsvector('simple', email) from {t}",
    "bytea": "select convert_to(email, 'UTF8') from {t}",
    "bytea[]": "select array[convert_to(email, 'UTF8')] from {t}",
    "bytea::text": "select convert_to(email, 'UTF8')::text from {t}",
    "jsonb deep": "select jsonb_build_object('a', jsonb_build_array(1, jsonb_build_object('b', email))) from {t}",
    "composite": "select row(id, email, card) from {t}",
    "composite of table": "select p from {t} p",
    "record[]": "select array_agg(row(email)) from {t}",
    "phone in composite": "select row(phone) from {t}",
}


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_transformed_values_are_masked_and_decode(gw: Gateway, people: str, name: str) -> None:
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        (row,) = conn.execute(QUERIES[name].format(t=people)).fetchall()
    assert _leaks(list(row)) == [], row


def test_a_phone_column_makes_bare_digits_a_phone_number(gw: Gateway, people: str) -> None:
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        row = conn.execute(
            "select '4155552671'::text as phone, '4155552671'::text as home_tel,"
            " '4155552671'::text as n, '4155552671'::text as hotel"
        ).fetchone()
    assert row is not None
    assert row[0] != "4155552671" and row[1] != "4155552671"  # the name says phone
    assert row[2:] == ("4155552671", "4155552671")  # a plain number elsewhere


def test_binary_results_are_masked(gw: Gateway, people: str) -> None:
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        cur = conn.cursor(binary=True)
        row = cur.execute(
            f"select convert_to(email, 'UTF8'), to_tsvector('simple', email), row(email),"
            f" array[email], id from {people}"
        ).fetchone()
    assert row is not None and _leaks(list(row)) == [], row
    assert row[4] == 1


def test_notices_and_errors_are_masked(gw: Gateway, people: str) -> None:
    notices: list[str] = []
    # dev (masked too) may call a function: the reader role of the agent may not.
    with psycopg.connect(gw.dsn("dev"), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
        conn.execute(f"select second_layer_notice(email) from {people}")
        with pytest.raises(psycopg.Error) as error:
            conn.execute(f"select (select card from {people})::int")
    assert notices and _leaks(notices) == [], notices
    assert _leaks([str(error.value), str(error.value.diag.message_primary)]) == []


def test_the_reviewer_still_sees_clear_values(gw: Gateway, people: str, tmp_path: Path) -> None:
    with psycopg.connect(gw.dsn("reviewer"), autocommit=True) as conn:
        (row,) = conn.execute(f"select row(email), array[card::bigint] from {people}").fetchall()
    assert EMAIL in str(row[0]) and row[1] == [int(CARD)]
