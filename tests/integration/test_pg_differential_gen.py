"""Generated differential sequences (issue 14): Hypothesis builds pipelined message
streams that mix setting changes (client_encoding, search_path,
standard_conforming_strings, role), Parse/Bind/Execute with reused names, SQL
PREPARE/EXECUTE/DEALLOCATE, cursors, COPY, reads and writes hidden the ways the issue's
examples hide them. Everything of one example goes to the gateway in one write; the
server's write log must stay empty for both agents (no approvals are given, so the
review principal may not write either).

Bounded: WARDGATE_DIFF_EXAMPLES examples per principal (default 40, the CI figure);
`scripts/pg_differential.py` runs large counts and prints the figures for the docs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import Gateway
from tests.integration.pg_diff import Reply, Target, Wire, make_target, start_gateway
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

EXAMPLES = int(os.environ.get("WARDGATE_DIFF_EXAMPLES", "40"))
STATS_FILE = os.environ.get("WARDGATE_DIFF_STATS")


@pytest.fixture(scope="module")
def target(pg_server: None) -> Iterator[Target]:
    yield from make_target()


@pytest.fixture(scope="module")
def gw(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("diffgen"), target)
    yield gateway
    gateway.stop()


# -- the vocabulary ----------------------------------------------------------------------

ENCODINGS = ["UTF8", "LATIN1", "SJIS", "BIG5", "GBK", "UHC", "EUC_JP", "WIN1252", "SQL_ASCII"]
SETTINGS = [
    *(f"SET client_encoding TO '{e}'" for e in ENCODINGS),
    *(f"SELECT set_config('client_encoding', '{e}', false)" for e in ("SJIS", "LATIN1")),
    "SET search_path = archive, public",
    "SET search_path = appfuncs, pg_catalog, public",
    'SET search_path = U&"pg_catalog\\00a0", appfuncs, pg_catalog',
    "SELECT set_config('search_path', 'appfuncs, pg_catalog', false)",
    "SET standard_conforming_strings = off",
    "SET LOCAL standard_conforming_strings = off",
    "SET ROLE NONE",
    "RESET ROLE",
    "RESET ALL",
    "DISCARD ALL",
    "SET default_transaction_read_only = off",
    "SET session_replication_role = replica",
    "BEGIN",
    "BEGIN READ WRITE",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT a",
    "ROLLBACK TO SAVEPOINT a",
]
WRITES = [
    "UPDATE stock SET qty = qty + 1 WHERE id = 5",
    "UPDATE archive.stock SET qty = 1 WHERE id = 5",
    "INSERT INTO big_rows VALUES (-1)",
    "DELETE FROM big_rows WHERE id = 2",
    "TRUNCATE big_rows",
    "CREATE TABLE wgd_made (a int)",
    "SELECT bump(5)",
    "SELECT json_scalar(1)",
    "SELECT json_value('x', 'y')",
    "SELECT lower('x')",
    "CALL bump_proc(5)",
    "SELECT nextval('ticket_seq')",
    "SELECT lo_create(0)",
    "DO $$ BEGIN UPDATE stock SET qty = 1 WHERE id = 5; END $$",
    "EXPLAIN (ANALYZE false, ANALYZE true) UPDATE stock SET qty = 2 WHERE id = 5",
    "ALTER ROLE CURRENT_USER SET search_path = appfuncs",
    "WITH x AS (UPDATE stock SET qty = 3 WHERE id = 5 RETURNING 1) SELECT * FROM x",
    "SELECT * FROM stock FOR UPDATE",
]
READS = ["SELECT 1", "SELECT qty FROM stock WHERE id = 5", "SHOW client_encoding", "SELECT 'é'"]
UNLOCKS = ["", "BEGIN READ WRITE; ", "SET default_transaction_read_only = off; "]
TRICKS = [b"\xc3\x81", b"\xa4", b"\x81", b"\x95", b"\xe9", b"\xa1", b""]
NAMES = ["", "s1", "s2"]
SQL_NAMES = ["s1", "s2"]


@st.composite
def hidden_write(draw: st.DrawFn) -> bytes:
    """A write, in the clear or hidden behind a literal the gateway might read
    differently from the server."""
    unlock = draw(st.sampled_from(UNLOCKS)).encode()
    write = draw(st.sampled_from(WRITES)).encode()
    payload = unlock + write + (b"; COMMIT" if unlock.startswith(b"BEGIN") else b"")
    how = draw(st.sampled_from(["plain", "literal", "backslash", "after_read"]))
    if how == "plain":
        return payload
    if how == "literal":
        return b"SELECT E'" + draw(st.sampled_from(TRICKS)) + b"\\'; " + payload + b"; --'"
    if how == "backslash":
        return b"SELECT '" + draw(st.sampled_from(TRICKS)) + b"\\'; " + payload + b"; --'"
    return b"SELECT 1; " + payload


def _copy_in() -> bytes:
    row = b"-7\n"
    return (
        build.query("COPY big_rows FROM STDIN")
        + b"d"
        + (4 + len(row)).to_bytes(4, "big")
        + row
        + b"c\x00\x00\x00\x04"
    )


@st.composite
def step(draw: st.DrawFn) -> bytes:
    """One or a few frontend messages."""
    kind = draw(
        st.sampled_from(
            ["setting", "query", "read", "parse", "bind", "execute", "close", "sync", "prepare"]
            + ["execute_sql", "deallocate", "cursor", "copy", "extended_setting"]
        )
    )
    name = draw(st.sampled_from(NAMES))
    sql_name = draw(st.sampled_from(SQL_NAMES))
    if kind == "setting":
        return build.query(draw(st.sampled_from(SETTINGS)))
    if kind == "extended_setting":
        text = draw(st.sampled_from(SETTINGS))
        return build.parse("", text) + build.bind("", "") + build.execute("")
    if kind == "query":
        return build.query(draw(hidden_write()))
    if kind == "read":
        return build.query(draw(st.sampled_from(READS)))
    if kind == "parse":
        text = draw(st.one_of(hidden_write(), st.sampled_from(READS).map(str.encode)))
        return build.parse(name, text)
    if kind == "bind":
        return build.bind(draw(st.sampled_from(["", "p1", "c1"])), name)
    if kind == "execute":
        return build.execute(draw(st.sampled_from(["", "p1", "c1"])), draw(st.sampled_from([0, 1])))
    if kind == "close":
        return build.close(draw(st.sampled_from("SP")), name)
    if kind == "sync":
        return build.sync()
    if kind == "prepare":
        text = draw(st.sampled_from(WRITES[:6] + READS[:2] + ["SELECT $1::int"]))
        return build.query(f"PREPARE {sql_name} AS {text}")
    if kind == "execute_sql":
        args = draw(st.sampled_from(["", "(1)", "(bump(5))", "(json_scalar(1))"]))
        return build.query(f"EXECUTE {sql_name}{args}")
    if kind == "deallocate":
        return build.query(draw(st.sampled_from([f"DEALLOCATE {sql_name}", "DEALLOCATE ALL"])))
    if kind == "cursor":
        return build.query(
            draw(
                st.sampled_from(
                    [
                        "DECLARE c1 CURSOR WITH HOLD FOR SELECT bump(5)",
                        "DECLARE c1 CURSOR WITH HOLD FOR SELECT 1",
                        "FETCH c1",
                        "CLOSE c1",
                        "MOVE c1",
                        # SQL on a portal bound through the protocol runs what it holds
                        "FETCH p1",
                        "MOVE ALL IN p1",
                        "DECLARE p1 CURSOR FOR SELECT 1",
                        "CLOSE p1",
                    ]
                )
            )
        )
    return _copy_in()


MARK = "wgd-end"


def _finish(w: Wire, deadline: float) -> str:
    """Read until the end marker's answer: 'done', or why not ('closed', 'timeout')."""
    seen = False
    while time.monotonic() < deadline:
        w.sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            reply: Reply = w.read(1)
        except ConnectionError:
            return "closed"
        except TimeoutError:
            return "timeout"
        if any(k == b"D" and MARK.encode() in b for k, b in reply.messages):
            seen = True
        if seen:
            return "done"
    return "timeout"


STATS: dict[str, int] = {}


def _count(key: str) -> None:
    STATS[key] = STATS.get(key, 0) + 1


@pytest.mark.timeout(max(120, EXAMPLES * 2))
@pytest.mark.parametrize("who", ["ro", "rv"])
def test_generated_pipelines_never_write(gw: Gateway, target: Target, who: str) -> None:
    start, snap = target.last_id(), target.snapshot()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(step(), min_size=1, max_size=10))
    def run(steps: list[bytes]) -> None:
        w = Wire(gw, who)
        try:
            # One write: the gateway sees everything before any answer. Then a Sync (ends
            # an open batch), COMMIT (so a write in an open transaction is kept, and
            # logged) and the marker.
            try:
                w.send(*steps, build.sync(), build.query(f"COMMIT; SELECT '{MARK}'"))
            except OSError:
                outcome = "closed"  # the gateway ended the session while we wrote
            else:
                outcome = _finish(w, time.monotonic() + 10)
        finally:
            w.close()
        _count(f"{who}:{outcome}")
        if outcome == "timeout" and os.environ.get("WARDGATE_DIFF_TRACE"):
            with open(os.environ["WARDGATE_DIFF_TRACE"], "a") as trace:
                trace.write(f"{who} {steps!r}\n")
        _count("examples")
        if outcome != "done":
            time.sleep(0.2)  # what the server may still run after the session was cut
        writes = target.log(start)
        assert not writes, f"{who} made the server write: {writes}\nsequence: {steps!r}"
        assert target.snapshot() == snap, f"{who} changed the server: {steps!r}"

    try:
        run()
    finally:
        if STATS_FILE:
            Path(STATS_FILE).write_text(json.dumps(STATS))
    time.sleep(0.3)
    assert not target.log(start)
    assert target.snapshot() == snap
