"""``wardgate_mask.partial`` on the real server: the definition with the ASCII path
(translate() instead of ``regexp_replace(..., '[[:alnum:]]', '*', 'g')``) gives the
value the regex-only definition of earlier versions gave, for every input Hypothesis
makes (ASCII, control characters, Unicode letters and digits, every kind of
whitespace, ``@`` and ``.`` anywhere, emails, phone numbers, NULL, short strings),
under the database's collation, C and ICU; it stays inlinable; and a gateway replaces
an earlier definition it finds in the database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import admin_conn, base_config, make_gateway, scratch_database
from wardgate.postgres.mask_catalog import install_sql

# partial() as versions up to this one defined it (mask_catalog.install_sql), verbatim.
OLD_PARTIAL = r"""
CREATE OR REPLACE FUNCTION {schema}.partial(v text) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $f$
  SELECT CASE
    WHEN v OPERATOR(pg_catalog.~) '^[^@[:space:]]+@[^@[:space:]]+$'::pg_catalog.text
      THEN pg_catalog.left(v, 1) OPERATOR(pg_catalog.||) '****@*****'::pg_catalog.text
      OPERATOR(pg_catalog.||) coalesce(pg_catalog.substring(v, '\.[[:alpha:]]+$'::pg_catalog.text), ''::pg_catalog.text)
    WHEN pg_catalog.length(v) OPERATOR(pg_catalog.<=) 8 THEN '****'::pg_catalog.text
    ELSE pg_catalog.regexp_replace(pg_catalog.left(v, -4), '[[:alnum:]]', '*', 'g')
      OPERATOR(pg_catalog.||) pg_catalog.right(v, 4) END $f$;
"""

KEY = b"m" * 32
# Whitespace of every kind PostgreSQL's classes may count (ASCII controls, which ICU
# and libc classify differently, NEL, no-break spaces, the Unicode spaces), letters
# and digits beyond ASCII (Latin-1, Greek, Cyrillic, CJK, Arabic-Indic, fullwidth,
# superscript, a combining mark), and the characters partial() looks for.
WHITESPACE = "\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2007\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
OTHER = "éßÆøΩдЖ中文٣２²\u0301ǅ"
CONTROLS = "\x01\x07\x08\x0e\x1b\x7f"
ASCII = "".join(chr(c) for c in range(0x20, 0x7F))
_CHARS = st.sampled_from(ASCII + "@@@...." + WHITESPACE + OTHER + CONTROLS)
_ANY = st.characters(codec="utf-8", exclude_characters="\x00")
_PART = st.text(st.one_of(_CHARS, _ANY), min_size=0, max_size=12)
_VALUES = st.one_of(
    st.text(st.sampled_from(ASCII + CONTROLS + "\t\n\x1c\x1f"), max_size=30),
    st.text(_CHARS, max_size=24),
    st.text(st.one_of(_CHARS, _ANY), max_size=40),
    st.text(st.sampled_from("0123456789 +-()x"), min_size=6, max_size=20),
    st.emails(),
    st.builds(lambda a, b, c: f"{a}@{b}.{c}", _PART, _PART, _PART),
    st.builds(lambda a, b: f"{a}@{b}", _PART, _PART),
    st.builds(
        lambda cc, n, sep: f"+{cc}{sep}{n[:3]}{sep}{n[3:]}",
        st.integers(1, 999),
        st.text(st.sampled_from("0123456789"), min_size=6, max_size=12),
        st.sampled_from([" ", "-", ".", "\xa0", "", " (0) "]),
    ),
)
EDGES = [
    None, "", "a", "@", "a@", "@b", "a@b", "a@b.", "a@b.c", "a@b.c.d", "a@b.c0m", "a@b.COM",
    "a.b@c", "a@b@c.com", "a b@c.com", "a\tb@c.com", "a\x1cb@c.com", "a\xa0b@c.com",
    "é@x.com", "x@y.côm", "12345678", "123456789", "+44 20 7123 4567", "ÉÉÉÉÉÉÉÉÉÉ12",
    "AB12 CD34 EF56", "abcd\x1f\x7fefgh", "٣٣٣٣٣٣٣٣٣٣", "ｘｙｚ１２３４５６７",
]  # fmt: skip


@pytest.fixture(scope="module")
def database(pg_server: None) -> Iterator[str]:
    with scratch_database("wardgate_partial_") as name:
        with admin_conn(name) as conn:
            conn.execute(install_sql(KEY, "UTF8").encode())
            conn.execute("create schema old_mask")
            conn.execute(OLD_PARTIAL.format(schema="old_mask").encode())
        yield name


def _collations(conn: psycopg.Connection[Any]) -> list[str]:
    """The database's own, C, and ICU's root locale when the server has ICU."""
    icu = conn.execute("select 1 from pg_collation where collname = 'und-x-icu'").fetchone()
    return ["", ' COLLATE "C"', ' COLLATE "POSIX"'] + ([' COLLATE "und-x-icu"'] if icu else [])


def _differences(conn: psycopg.Connection[Any], values: list[str | None]) -> list[Any]:
    out = []
    for collate in _collations(conn):
        rows = conn.execute(
            f"select v, old_mask.partial(v{collate}), wardgate_mask.partial(v{collate})"  # noqa: S608
            " from unnest(%s::text[]) v",
            (values,),
        ).fetchall()
        assert len(rows) == len(values)
        out += [(collate, *row) for row in rows if row[1] != row[2]]
    return out


def test_the_database_is_utf8_and_its_ctype_as_assumed(database: str) -> None:
    with admin_conn(database) as conn:
        encoding, ctype = conn.execute(
            "select pg_encoding_to_char(encoding), datctype from pg_database"
            " where datname = current_database()"
        ).fetchone() or ("", "")
    assert encoding == "UTF8", "the ASCII path is only installed in UTF-8 databases"
    assert ctype  # recorded in the failure message of the comparison if it ever matters


def test_edge_cases_give_the_old_values(database: str) -> None:
    with admin_conn(database) as conn:
        assert _differences(conn, EDGES) == []
        got = dict(
            conn.execute(
                "select v, wardgate_mask.partial(v) from unnest(%s::text[]) v",
                (["+44 20 7123 4567", "jane.doe@example.com", "a\x1cb@c.com"],),
            ).fetchall()
        )
    assert got["+44 20 7123 4567"] == "+** ** **** 4567"
    assert got["jane.doe@example.com"] == "j****@*****.com"


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(values=st.lists(st.one_of(st.none(), _VALUES), min_size=20, max_size=40))
def test_generated_values_give_the_old_values(database: str, values: list[str | None]) -> None:
    with admin_conn(database) as conn:
        assert _differences(conn, values) == []


def test_partial_is_still_inlined(database: str) -> None:
    """Inlined, partial() is an expression PostgreSQL evaluates in the query: no call
    of wardgate_mask.partial stays in the plan."""
    table = f"t_{uuid.uuid4().hex[:8]}"
    with admin_conn(database) as conn:
        conn.execute(f"create table {table} (v text)")
        plan = "\n".join(
            str(r[0])
            for r in conn.execute(
                f"explain (verbose) select wardgate_mask.partial(v) from {table}"  # noqa: S608
            ).fetchall()
        )
        conn.execute(f"drop table {table}")
    assert "partial" not in plan and "translate" in plan, plan


MASKING = """
masking:
  rules:
    - {name: cols, principal_kinds: [agent], connections: [it], columns: ["*.people.phone"], strategy: partial}
"""


def test_a_gateway_replaces_an_earlier_definition(tmp_path: Path) -> None:
    """A database holding an earlier version's partial() (regex only) gets this
    version's from the first gateway process that reads its catalog; the agent's
    value is masked."""
    with scratch_database("wardgate_partial_up_") as name:
        with admin_conn(name) as conn:
            conn.execute("create schema wardgate_mask")
            conn.execute(OLD_PARTIAL.format(schema="wardgate_mask").encode())
            conn.execute("create table people (id int, phone text)")
            conn.execute("insert into people values (1, '+44 20 7123 4567')")
        gw = make_gateway(tmp_path, base_config(name) + MASKING)
        gw.start()
        try:
            with psycopg.connect(gw.dsn("agent"), autocommit=True) as agent:
                rows = agent.execute("select phone from people").fetchall()
        finally:
            gw.stop()
        with admin_conn(name) as conn:
            body = conn.execute(
                "select prosrc from pg_proc where proname = 'partial'"
                " and pronamespace = 'wardgate_mask'::regnamespace"
            ).fetchone()
    assert rows == [("+** ** **** 4567",)]
    assert body is not None and "pg_catalog.translate(" in body[0]
