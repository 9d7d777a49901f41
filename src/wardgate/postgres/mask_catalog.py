"""The catalog facts column masking by rewriting needs (mask_rewrite.py), per connection:
every relation's columns and types, what each view reads (pg_depend on pg_rewrite,
closed over views of views), the names of user routines; and the ``wardgate_mask``
schema's functions, installed idempotently with the upstream credential.

Looked up on a short-lived gateway session and cached per worker for ``TTL`` seconds;
a DDL statement through the gateway drops the cache (``invalidate``).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pglast.parser import ParseError, parse_sql_json

from wardgate.postgres.internal import CATALOG_READER, InternalQueryFailed, internal_session
from wardgate.postgres.mask_path import SessionPaths
from wardgate.postgres.mask_rewrite import (
    BLOCKED_FUNCTIONS,
    BLOCKED_RELATIONS,
    MASK_SCHEMA,
    ColumnRule,
    MaskCatalog,
    Refused,
    Table,
    rewrite,
)
from wardgate.postgres.mask_shape import fill, shape_of, template_of

if TYPE_CHECKING:
    from wardgate.core.services import Services

log = logging.getLogger("wardgate.postgres")

TTL = 30.0
_MAX_ROWS = 500_000
_MAX_REWRITES = 4096

TABLES_SQL = """
SELECT n.nspname, c.relname, c.relkind, a.attname,
       pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a
  ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
ORDER BY n.nspname, c.relname, a.attnum
"""
SYSTEM_SQL = """
SELECT DISTINCT c.relname FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('pg_catalog', 'information_schema') AND c.relkind IN ('r', 'v', 'm')
"""
# User routines by name; operators and types through which PostgreSQL runs one.
FUNCTIONS_SQL = """
WITH userfn AS (
  SELECT p.oid, p.proname FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'wardgate_mask')
)
SELECT 'function', proname FROM userfn
UNION SELECT 'operator', o.oprname FROM pg_catalog.pg_operator o
  WHERE o.oprcode IN (SELECT oid FROM userfn)
UNION SELECT 'type', t.typname FROM pg_catalog.pg_cast c
  JOIN pg_catalog.pg_type t ON t.oid = c.casttarget WHERE c.castfunc IN (SELECT oid FROM userfn)
UNION SELECT 'type', t.typname FROM pg_catalog.pg_type t
  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
  WHERE t.typinput IN (SELECT oid FROM userfn)
     OR (t.typtype = 'd' AND n.nspname NOT IN ('pg_catalog', 'information_schema'))
"""
# What each view (or materialized view) outside the system schemas reads: a column,
# a whole row ('*'), a user routine, or a built-in that reads past the rewrite. Reads
# of blocked catalogs (pg_stats...) are refused by the rewriter. ``system`` rows: the
# view reads a system catalog (allowed), so a write through it may write the catalog;
# read from the rule's range table (its ``:relid``s), since pg_depend records no
# dependency on a pinned object (a system catalog).
VIEW_READS_SQL = """
SELECT vn.nspname, v.relname, tn.nspname, t.relname, coalesce(a.attname, '*')
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_catalog.pg_rewrite'::regclass
JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace
JOIN pg_catalog.pg_class t ON t.oid = d.refobjid AND d.refclassid = 'pg_catalog.pg_class'::regclass
JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
LEFT JOIN pg_catalog.pg_attribute a
  ON a.attrelid = t.oid AND a.attnum = d.refobjsubid AND d.refobjsubid > 0
WHERE v.oid <> t.oid AND vn.nspname NOT IN ('pg_catalog', 'information_schema')
  AND (tn.nspname <> 'pg_catalog' OR t.relname IN ({BLOCKED_RELATIONS})
       OR (t.relname = 'pg_stat_activity' AND a.attname = 'query'))
UNION
SELECT vn.nspname, v.relname, 'function', pn.nspname || '.' || p.proname, ''
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_catalog.pg_rewrite'::regclass
JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace
JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid AND d.refclassid = 'pg_catalog.pg_proc'::regclass
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE (pn.nspname NOT IN ('pg_catalog', 'information_schema') OR p.proname IN ({BLOCKED}))
  AND vn.nspname NOT IN ('pg_catalog', 'information_schema')
UNION
SELECT vn.nspname, v.relname, 'system', t.relname, ''
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace
CROSS JOIN LATERAL pg_catalog.regexp_matches(
  r.ev_action::pg_catalog.text, ':relid ([0-9]+)', 'g') m
JOIN pg_catalog.pg_class t ON t.oid = m[1]::pg_catalog.oid
JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
WHERE v.oid <> t.oid AND vn.nspname NOT IN ('pg_catalog', 'information_schema')
  AND tn.nspname IN ('pg_catalog', 'information_schema')
""".format(
    BLOCKED=", ".join(f"'{n}'" for n in sorted(BLOCKED_FUNCTIONS)),
    BLOCKED_RELATIONS=", ".join(f"'{n}'" for n in sorted(BLOCKED_RELATIONS)),
)


# Partitions and inheritance children, every level: a read of the parent returns them.
INHERITS_SQL = """
WITH RECURSIVE down(parent, child) AS (
  SELECT inhparent, inhrelid FROM pg_catalog.pg_inherits
  UNION SELECT d.parent, i.inhrelid FROM down d
  JOIN pg_catalog.pg_inherits i ON i.inhparent = d.child
)
SELECT pn.nspname, p.relname, cn.nspname, c.relname FROM down
JOIN pg_catalog.pg_class p ON p.oid = down.parent
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
JOIN pg_catalog.pg_class c ON c.oid = down.child
JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
"""
# The search_path a session of this credential starts with when the client names none
# (the role's and database's defaults; the gateway's own session passes no search_path),
# and the name "$user" stands for.
SESSION_SQL = "SELECT pg_catalog.current_setting('search_path'), pg_catalog.current_user()::text"


def db_key(masking_key: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer padded keys for the database's own key, derived
    from (never equal to) the gateway's masking key."""
    key = hmac.digest(masking_key, b"wardgate-db-mask\x00v1", "sha256").ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def _op(name: str) -> str:
    return f"OPERATOR(pg_catalog.{name})"


def _text(literal: str) -> str:
    return "'" + literal.replace("'", "''") + "'::pg_catalog.text"


_EMAIL = "'^[^@[:space:]]+@[^@[:space:]]+$'::pg_catalog.text"
_TLD = "'\\.[[:alpha:]]+$'::pg_catalog.text"


# translate()'s map for the ASCII path: alphanumerics to '*', and the characters
# values hold most besides them to themselves, listed first: translate looks each
# character up in this list in order, so one found early costs little (a character
# not in the list is kept, after a scan of the whole list).
_KEEP = " +-()./,:_#'"
_DIGITS = "0123456789"
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_STAR_FROM = _KEEP[:1] + _DIGITS + _KEEP[1:] + _LETTERS
_STAR_TO = _KEEP[:1] + "*" * len(_DIGITS) + _KEEP[1:] + "*" * len(_LETTERS)


def partial_sql(server_encoding: str, v: str = "v") -> str:
    """partial()'s body: the value the regex-only body of earlier versions gives for
    every input, at a fraction of its cost for values that are not emails
    (tests/integration/test_mask_partial_sql.py compares the two on the server).

    ``regexp_replace(..., '[[:alnum:]]', '*', 'g')`` cost about 3 µs of the server's
    CPU for a phone number, most of partial()'s cost. For an ASCII value
    translate() stars the same characters: on ASCII, ``[[:alnum:]]`` is
    ``[0-9A-Za-z]`` in every collation (C, libc, ICU, the builtin provider), and no
    control character is alphanumeric in any. In UTF-8 a value is ASCII when it has as
    many bytes as characters; in other encodings (a single-byte one has as many bytes
    as characters whatever it holds) the regex does it, as before. The email test
    (now behind a cheap ``strpos(v, '@') > 0``, which it implies) and the TLD are
    the regular expressions as they were: one-pass matches that cost well under a µs
    each, and ``[[:space:]]``, unlike ``[[:alnum:]]``, differs between collations on
    ASCII control characters (ICU counts U+001C to U+001F as whitespace)."""
    cat, gt, le, eq = _op("||"), _op(">"), _op("<="), _op("=")
    match = _op("~")
    ascii_path = (
        f"""
    WHEN pg_catalog.octet_length({v}) {eq} pg_catalog.length({v})
      THEN pg_catalog.translate(pg_catalog.left({v}, -4), {_text(_STAR_FROM)},
        {_text(_STAR_TO)}) {cat} pg_catalog.right({v}, 4)"""
        if server_encoding.upper() in ("UTF8", "UNICODE")
        else ""
    )
    return f"""SELECT CASE
    WHEN pg_catalog.strpos({v}, '@'::pg_catalog.text) {gt} 0 AND {v} {match} {_EMAIL}
      THEN pg_catalog.left({v}, 1) {cat} '****@*****'::pg_catalog.text
      {cat} coalesce(pg_catalog.substring({v}, {_TLD}), ''::pg_catalog.text)
    WHEN pg_catalog.length({v}) {le} 8 THEN '****'::pg_catalog.text{ascii_path}
    ELSE pg_catalog.regexp_replace(pg_catalog.left({v}, -4), '[[:alnum:]]', '*', 'g')
      {cat} pg_catalog.right({v}, 4) END"""


def install_sql(masking_key: bytes, server_encoding: str) -> str:
    """The schema, key and functions; safe to run again (one transaction, serialised
    between gateway processes by an advisory lock). Every gateway process runs it on
    its first catalog read of a connection, so CREATE OR REPLACE puts this version's
    definitions in place of an earlier one's. ``server_encoding``: the database's, as
    the server reported it (partial_sql)."""
    ipad, opad = db_key(masking_key)
    s = MASK_SCHEMA
    # Every operator qualified (and every literal typed): the functions run, inlined,
    # under the caller's search_path, and a session that places a schema of its own
    # before pg_catalog (a startup option) would otherwise call its own ``~`` or ``||``
    # with the clear value (or the key). Functions are qualified too.
    cat, eq, gt = (_op(o) for o in ("||", "=", ">"))
    return f"""
BEGIN;
SELECT pg_catalog.pg_advisory_xact_lock(7716300116);
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.key (
  id int PRIMARY KEY CHECK (id = 1), ipad bytea NOT NULL, opad bytea NOT NULL);
REVOKE ALL ON {s}.key FROM PUBLIC;
INSERT INTO {s}.key VALUES (1, '\\x{ipad.hex()}'::bytea, '\\x{opad.hex()}'::bytea)
  ON CONFLICT (id) DO UPDATE SET ipad = EXCLUDED.ipad, opad = EXCLUDED.opad;
CREATE OR REPLACE FUNCTION {s}.hmac_hex(v text) RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE AS $f$
  SELECT pg_catalog.encode(pg_catalog.sha256(k.opad {cat} pg_catalog.sha256(
    k.ipad {cat} pg_catalog.convert_to(v, 'UTF8'))), 'hex')
  FROM {s}.key k WHERE k.id {eq} 1 $f$;
CREATE OR REPLACE FUNCTION {s}.hash(v text) RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE AS $f$
  SELECT 'h:'::pg_catalog.text {cat} pg_catalog.left({s}.hmac_hex('hash'::pg_catalog.text {cat} v), 16) $f$;
CREATE OR REPLACE FUNCTION {s}.pseudonym(v text) RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE AS $f$
  SELECT CASE WHEN pg_catalog.strpos(v, '@') {gt} 0
    THEN 'user_'::pg_catalog.text {cat} pg_catalog.left({s}.hmac_hex('pseudonym'::pg_catalog.text {cat} v), 10)
      {cat} '@example.invalid'::pg_catalog.text
    ELSE 'tok_'::pg_catalog.text {cat} pg_catalog.left({s}.hmac_hex('pseudonym'::pg_catalog.text {cat} v), 12) END $f$;
CREATE OR REPLACE FUNCTION {s}.partial(v text) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $f$
  {partial_sql(server_encoding)} $f$;
COMMIT;
"""


def build_catalog(
    tables: list[tuple[str, str, str, str | None, str | None]],
    system: list[str],
    functions: list[tuple[str, str]],
    view_reads: list[tuple[str, str, str, str, str]],
    installed: bool,
    inherits: Sequence[tuple[str, str, str, str]] = (),
    session: tuple[str, str] | None = None,
) -> MaskCatalog:
    """The snapshot from the four queries' rows (pure)."""
    columns: dict[tuple[str, str], list[tuple[str, str]]] = {}
    kinds: dict[tuple[str, str], str] = {}
    for schema, name, kind, column, type_name in tables:
        key = (schema, name)  # identifiers are exact: "Email" is not email
        kinds[key] = kind
        cols = columns.setdefault(key, [])
        if column is not None and type_name is not None:
            cols.append((column, type_name))
    direct: dict[tuple[str, str], set[str]] = {}
    for vschema, vname, tschema, tname, column in view_reads:
        reads = direct.setdefault((vschema, vname), set())
        if tschema in ("function", "system"):
            reads.add(f"{tschema} {tname}")
        else:
            reads.add(f"{tschema}.{tname}.{column}")
    closed = {view: _closure(view, direct) for view in direct}
    children: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for pschema, pname, cschema, cname in inherits:
        children.setdefault((pschema, pname), set()).add((cschema, cname))
    return MaskCatalog.of(
        (
            Table(
                s,
                n,
                kinds[(s, n)],
                tuple(cols),
                frozenset(closed.get((s, n), ())),
                frozenset(children.get((s, n), ())),
            )
            for (s, n), cols in columns.items()
        ),
        system,
        (name for kind, name in functions if kind == "function"),
        installed,
        (name for kind, name in functions if kind == "operator"),
        (name for kind, name in functions if kind == "type"),
        session[0] if session is not None else None,
        session[1] if session is not None else None,
    )


def _closure(view: tuple[str, str], direct: dict[tuple[str, str], set[str]]) -> set[str]:
    """What a view reads, through the views it reads."""
    seen: set[tuple[str, str]] = set()
    out: set[str] = set()
    stack = [view]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for read in direct.get(current, ()):
            out.add(read)
            if not read.startswith(("function ", "system ")):
                schema, name, _ = read.split(".", 2)
                if (schema, name) in direct:
                    stack.append((schema, name))
    return out


_MISSING: Any = object()


def _shape_entry(
    text: str, count: int, catalog: MaskCatalog, rules: tuple[ColumnRule, ...], possible: Any
) -> Any:
    """What a shape remembers: None (nothing to change), the refusal, a template to
    fill with the literals, or _MISSING (the shape does not parse: rewrite each whole)."""
    try:
        parse_sql_json(text)
    except ParseError:
        return _MISSING
    try:
        rewritten = rewrite(text, catalog, rules, possible)
    except Refused as exc:
        return exc
    if rewritten is None:
        return None
    template = template_of(rewritten, count)
    return _MISSING if template is None else template


class CatalogUnavailable(Exception):
    pass


class MaskCatalogs:
    """One per worker process (``services.state(MaskCatalogs)``)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, MaskCatalog]] = {}
        # When DDL last ran through the gateway: for TTL seconds after (its transaction
        # may commit later than a snapshot is read), a relation may be gone or new, so
        # an unqualified name counts every schema's table of it, as with no path.
        self._moved: dict[str, float] = {}
        self._installed: set[str] = set()
        # Rewrites are pure in (catalog, rules, sql) and agents repeat their statements:
        # remembered per snapshot, bounded.
        # Per snapshot: by exact text, and by shape (mask_shape.py: the text with its
        # literals as parameters), so new literals in a known statement cost a scan.
        self._rewrites: dict[
            str, tuple[MaskCatalog, dict[tuple[Any, ...], Any], dict[tuple[Any, ...], Any]]
        ] = {}

    def rewrite(
        self,
        connection: str,
        sql: str,
        rules: tuple[ColumnRule, ...],
        paths: SessionPaths | None = None,
    ) -> str | None:
        """``rewrite`` on the latest snapshot, remembered; raises Refused, or
        CatalogUnavailable when there is no snapshot. ``paths``: the session's possible
        search_paths, to which ``sql`` adds what it may set (before it is rewritten: a
        later statement of the same string runs under it); None: unknown."""
        catalog = self.latest(connection)
        if catalog is None:
            raise CatalogUnavailable("no catalog snapshot of this connection yet")
        possible = None
        if paths is not None:
            paths.note(sql)
            possible = paths.paths(catalog.default_search_path, catalog.user)
        if self._moved.get(connection, -TTL) + TTL > time.monotonic():
            possible = None  # DDL through the gateway lately: a relation may be gone
        held = self._rewrites.get(connection)
        if held is None or held[0] is not catalog:
            held = (catalog, {}, {})
            self._rewrites[connection] = held
        memo = held[1]
        key = (sql, rules, possible)
        found = memo.get(key, _MISSING)
        if found is _MISSING:
            found = self._by_shape(held[2], sql, catalog, rules, possible)
            if found is _MISSING:
                try:
                    found = rewrite(sql, catalog, rules, possible)
                except Refused as exc:
                    found = exc
            if len(memo) >= _MAX_REWRITES:
                memo.clear()  # texts that differ in literals churn here; shapes stay
            memo[key] = found
        if isinstance(found, Refused):
            raise found
        assert found is None or isinstance(found, str)
        return found

    @staticmethod
    def _by_shape(
        memo: dict[tuple[Any, ...], Any],
        sql: str,
        catalog: MaskCatalog,
        rules: tuple[ColumnRule, ...],
        possible: Any,
    ) -> Any:
        """The rewrite of ``sql`` from its shape's (mask_shape.py), computed once per
        shape; _MISSING when the shape cannot serve (no literals, does not parse)."""
        shaped = shape_of(sql)
        if shaped is None:
            return _MISSING
        text, literals = shaped
        key = (text, rules, possible)
        entry = memo.get(key, _MISSING)
        if entry is _MISSING:
            if len(memo) >= _MAX_REWRITES:
                memo.clear()
            entry = _shape_entry(text, len(literals), catalog, rules, possible)
            memo[key] = entry
        if entry is None or isinstance(entry, Refused) or entry is _MISSING:
            return entry
        return fill(entry, literals)

    def known(self, connection: str) -> MaskCatalog | None:
        entry = self._cache.get(connection)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def latest(self, connection: str) -> MaskCatalog | None:
        """The last snapshot, however old (the catalog watch refreshes it)."""
        entry = self._cache.get(connection)
        return entry[1] if entry is not None else None

    def stale(self, connection: str, ddl: bool = True) -> None:
        """DDL ran through the gateway (``ddl``), or the catalog watch saw a change:
        the next ``get`` reads the catalog again."""
        if ddl:
            self._moved[connection] = time.monotonic()
        entry = self._cache.get(connection)
        if entry is not None:
            self._cache[connection] = (0.0, entry[1])

    async def get(self, services: Services, connection: str) -> MaskCatalog:
        """The snapshot, fetched when missing or stale; raises CatalogUnavailable."""
        known = self.known(connection)
        if known is not None:
            return known
        try:
            async with internal_session(
                services,
                connection,
                application_name="wardgate-mask-catalog",
                timeout=10,
                max_rows=_MAX_ROWS,
                # Not its search_path: SESSION_SQL reads the one the role starts with,
                # then the queries run under pg_catalog's (CATALOG_READER).
                settings={k: v for k, v in CATALOG_READER.items() if k != "search_path"},
            ) as session:
                if connection not in self._installed:
                    results = await session.simple(
                        install_sql(
                            services.masking_key,
                            session.parameters.get("server_encoding", ""),
                        )
                    )
                    if all(r.error is None for r in results):
                        self._installed.add(connection)
                    else:
                        await session.simple("ROLLBACK")
                        error = next(r.error for r in results if r.error is not None)
                        log.warning(
                            "connection %r: could not install the %s functions (%s); "
                            "partial, hash and pseudonym column rules mask to NULL",
                            connection,
                            MASK_SCHEMA,
                            error.message if error is not None else "unknown error",
                        )
                own = await session.extended(SESSION_SQL)
                switched = await session.extended(
                    "SELECT pg_catalog.set_config('search_path', $1, false)",
                    (CATALOG_READER["search_path"],),
                )
                if switched.error is not None:
                    raise CatalogUnavailable(switched.error.message)
                answers = [
                    await session.extended(sql, max_rows=_MAX_ROWS)
                    for sql in (TABLES_SQL, SYSTEM_SQL, FUNCTIONS_SQL, VIEW_READS_SQL, INHERITS_SQL)
                ] + [own]
        except InternalQueryFailed as exc:
            raise CatalogUnavailable(exc.reason) from None
        for answer in answers:
            if answer.error is not None:
                raise CatalogUnavailable(answer.error.message)
            if answer.truncated:
                raise CatalogUnavailable("the catalog is larger than the gateway reads")
        tables, system, functions, views, inherits, own = answers
        catalog = build_catalog(
            [(str(r[0]), str(r[1]), str(r[2]), r[3], r[4]) for r in tables.rows],
            [str(r[0]) for r in system.rows],
            [(str(r[0]), str(r[1])) for r in functions.rows],
            [(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in views.rows],
            connection in self._installed,
            [(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in inherits.rows],
            (str(own.rows[0][0]), str(own.rows[0][1])) if own.rows else None,
        )
        self._cache[connection] = (time.monotonic() + TTL, catalog)
        return catalog
