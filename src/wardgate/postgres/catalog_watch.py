"""User routines that share a name with a built-in the gate trusts, per connection.

``select lower(5)`` calls ``pg_catalog.lower`` only if no other ``lower`` fits an integer
better: a VOLATILE ``public.lower(int)`` (or one in any schema a search_path may list
after pg_catalog) wins, and it may write (a STABLE one too: it may call a VOLATILE one). The classifier judges names, not argument
types, so the gate must know which trusted names have such overloads on each target.
This watch looks them up in every worker process: at start, every ``INTERVAL`` seconds,
and right after a DDL statement ran through this worker; found names are judged as
unknown functions (writes) on that connection (``Gate.facts``). Creating such a routine
through the gateway is itself an ``admin`` statement (kind ``shadows_builtin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from wardgate.gate import OBJECT_WRITES, UserCode
from wardgate.policy.functions import BUILTIN_READ_ONLY
from wardgate.policy.routine_code import ddl_reason, trigger_function_reason, written_tables
from wardgate.postgres.commit_barrier import CommitBarrier, Flight
from wardgate.postgres.commit_barrier import Refused as BarrierRefused
from wardgate.postgres.internal import CATALOG_READER, InternalQueryFailed, internal_session
from wardgate.postgres.mask_catalog import MaskCatalogs

if TYPE_CHECKING:
    from wardgate.core.services import Services

log = logging.getLogger("wardgate.postgres")

INTERVAL = 30.0
MISS_INTERVAL = 1.0
# Whatever their declared volatility: a STABLE or IMMUTABLE routine may call a VOLATILE
# one, which writes (PostgreSQL refuses only the routine's own writing commands), and an
# aggregate's state function may write. The same rows give every routine outside the
# system schemas by name: a bare call of a name that safe_functions lists only qualified
# (`public.f`) is safe only when no other schema holds a routine of that name
# (Gate._listed_safe).
_QUERY = """
SELECT DISTINCT lower(p.proname), n.nspname FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
"""

# Where PostgreSQL runs a user function for a cast or an operator: rows (what, schema,
# name). "user" functions: outside the system schemas; a domain CHECK also counts
# VOLATILE built-ins (nextval, set_config). "type": an explicit cast to it may run one
# (its cast or input function, its CHECK), or a value of it may be converted by a user
# cast with no cast in the text (the JSON functions use a type's cast to json), closed
# over domains, arrays and composites
# of such types, with its OID ("type 16390": a Parse may declare a parameter's type by
# OID alone; one scan of the closure, a second made the query ten times slower). "column_type": each column of a non-built-in type, from which
# `user_code` picks the tables with a column of such a type that is not a domain over a
# harmless one (an array or row of a checked domain, a user base type): COALESCE, UNION,
# comparisons, parameters and writes convert other values to it. "column_table": a
# table with a column whose default (its own, its domain's) calls a user function,
# which planning folds when it is IMMUTABLE.
# "operator": in a user schema, or implemented by a user function.
# "code_relation": a view or table whose reading runs a user function (a view's query,
# a row security policy, through views over it too), with that function.
# "trigger <language>" (the function's schema and source), "trigger_when" (a trigger's
# definition, for its WHEN condition) and "rule" (a rule's on a write): code every write
# to their table runs, which may run DDL (policy/routine_code.py); "write_code
# <language>": a user function a CHECK constraint or a column default calls (a write
# runs it, a trigger's own writes too).
# "implicit": a user cast PostgreSQL may insert into any expression. "attribute": a user
# function one argument can call, which a field selection calls too (`(3).bump`,
# `t.bump` is bump(t) when t has no column bump).
#
# Objects of an installed extension (pg_depend deptype 'e': citext's type and its `=`,
# PostGIS's operators, hstore's) whose function is not VOLATILE are trusted like
# built-ins: an administrator installed them (CREATE EXTENSION is `admin` through the
# gateway), and PostgreSQL refuses writes in a non-volatile SQL function. Without this,
# a citext column made every read on its connection a write. A VOLATILE extension
# function stays a user function.
_USER_CODE_QUERY = """
WITH RECURSIVE extension_member AS (
  SELECT d.classid, d.objid FROM pg_catalog.pg_depend d WHERE d.deptype = 'e'
), userfn AS (
  SELECT p.oid FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND (p.provolatile = 'v' OR (
      'pg_catalog.pg_proc'::regclass, p.oid) NOT IN (SELECT * FROM extension_member))
), userfn_code AS (
  /* each user function, and each operator it implements, as pg_depend names them */
  SELECT 'pg_catalog.pg_proc'::regclass AS classid, p.oid AS objid,
    pg_catalog.format('%s.%s', n.nspname, p.proname) AS fn
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  WHERE p.oid IN (SELECT oid FROM userfn)
  UNION ALL
  SELECT 'pg_catalog.pg_operator'::regclass, o.oid,
    pg_catalog.format('%s.%s', n.nspname, p.proname)
  FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  WHERE p.oid IN (SELECT oid FROM userfn)
), coded(rel, fn) AS (
  /* relations whose reading runs a user function: a view's query calls it (or an
     operator it implements), a row security policy on a table does, or a view reads
     such a relation; with the function (schema.name), for safe_functions */
  SELECT COALESCE(r.ev_class, pol.polrelid), u.fn FROM userfn_code u
  JOIN pg_catalog.pg_depend d ON d.refclassid = u.classid AND d.refobjid = u.objid
  LEFT JOIN pg_catalog.pg_rewrite r
    ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND r.oid = d.objid
  LEFT JOIN pg_catalog.pg_policy pol
    ON d.classid = 'pg_catalog.pg_policy'::regclass AND pol.oid = d.objid
  WHERE d.classid IN ('pg_catalog.pg_rewrite'::regclass, 'pg_catalog.pg_policy'::regclass)
  UNION
  SELECT r.ev_class, coded.fn FROM coded
  JOIN pg_catalog.pg_depend d
    ON d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = coded.rel
  JOIN pg_catalog.pg_rewrite r
    ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND r.oid = d.objid
  WHERE r.ev_class <> coded.rel
), fn_code AS (
  /* a routine run with writes or DDL (a trigger's, an event trigger's, one a CHECK, a
     default or an index calls): "<schema> <language>[ (with ... set)]" and its text,
     for policy/routine_code.py; a setting that changes how PL/pgSQL reads the text is
     said in the language, which is then not read. A SQL-standard body (BEGIN ATOMIC)
     has no prosrc: its definition instead, read after this query ($1: _DEFINITIONS) */
  SELECT p.oid, n.nspname || ' ' || l.lanname || CASE WHEN
      pg_catalog.array_to_string(p.proconfig, ' ')
      OPERATOR(pg_catalog.~*) 'standard_conforming_strings|backslash_quote'
      THEN ' (with standard_conforming_strings or backslash_quote set)' ELSE '' END AS label,
    CASE WHEN p.prosrc = '' THEN $1::text || 'f' || p.oid ELSE p.prosrc END AS body
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_catalog.pg_language l ON l.oid = p.prolang
  WHERE p.oid IN (SELECT tgfoid FROM pg_catalog.pg_trigger WHERE NOT tgisinternal)
     OR p.oid IN (SELECT evtfoid FROM pg_catalog.pg_event_trigger)
     OR p.oid IN (SELECT oid FROM userfn)
), usercast AS (
  SELECT c.* FROM pg_catalog.pg_cast c
  JOIN pg_catalog.pg_type s ON s.oid = c.castsource
  JOIN pg_catalog.pg_type t ON t.oid = c.casttarget
  WHERE c.castfunc IN (SELECT oid FROM userfn)
     OR (c.castmethod = 'i' AND (s.typoutput IN (SELECT oid FROM userfn)
                                 OR t.typinput IN (SELECT oid FROM userfn)))
), risky AS (
  SELECT casttarget AS t FROM usercast
  /* to_json, to_jsonb, row_to_json, json_agg, json_build_object ... convert a value of
     a type outside pg_catalog with its cast to json when one exists: a cast from it */
  UNION SELECT castsource FROM usercast WHERE casttarget = 'pg_catalog.json'::pg_catalog.regtype
  UNION SELECT t.oid FROM pg_catalog.pg_type t WHERE t.typinput IN (SELECT oid FROM userfn)
  UNION SELECT r.rngtypid FROM pg_catalog.pg_range r
  WHERE r.rngcanonical IN (SELECT oid FROM userfn) OR r.rngsubdiff IN (SELECT oid FROM userfn)
  UNION SELECT con.contypid FROM pg_catalog.pg_constraint con
  JOIN pg_catalog.pg_depend d
    ON d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid = con.oid
  WHERE con.contypid <> 0 AND (
    (d.refclassid = 'pg_catalog.pg_proc'::regclass
     AND (d.refobjid IN (SELECT oid FROM userfn) OR EXISTS (
       SELECT 1 FROM pg_catalog.pg_proc p WHERE p.oid = d.refobjid AND p.provolatile = 'v')))
    OR (d.refclassid = 'pg_catalog.pg_operator'::regclass AND EXISTS (
       SELECT 1 FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
       WHERE o.oid = d.refobjid
         AND (p.oid IN (SELECT oid FROM userfn) OR p.provolatile = 'v'))))
) /* what contains what: a domain its base type, an array its element, a composite
     its columns' types, a range its subtype, a multirange its range; a cast to the
     container casts to the contained */
, contains AS (
  SELECT oid AS outer_t, typbasetype AS inner_t FROM pg_catalog.pg_type WHERE typtype = 'd'
  UNION ALL
  SELECT oid, typelem FROM pg_catalog.pg_type WHERE typcategory = 'A' AND typelem <> 0
  UNION ALL
  SELECT t.oid, a.atttypid FROM pg_catalog.pg_type t
  JOIN pg_catalog.pg_attribute a ON a.attrelid = t.typrelid
  WHERE t.typrelid <> 0 AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT rngtypid, rngsubtype FROM pg_catalog.pg_range
  UNION ALL
  SELECT rngmultitypid, rngtypid FROM pg_catalog.pg_range
), flagged AS (
  SELECT t FROM risky
  UNION
  SELECT c.outer_t FROM contains c JOIN flagged f ON c.inner_t = f.t
)
SELECT 'type ' || t.oid, n.nspname::text, t.typname::text FROM flagged f
JOIN pg_catalog.pg_type t ON t.oid = f.t
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
UNION
SELECT 'column_type', pg_catalog.format('%s.%s', n.nspname, c.relname),
  pg_catalog.format('%s %s', a.atttypid, CASE WHEN t.typtype = 'd' THEN t.typbasetype END)
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p') AND a.attnum > 0 AND NOT a.attisdropped
  AND a.atttypid >= 16384
UNION
SELECT 'column_table', n.nspname, c.relname FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_attrdef ad ON ad.oid = d.objid
JOIN pg_catalog.pg_class c ON c.oid = ad.adrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE d.classid = 'pg_catalog.pg_attrdef'::regclass
  AND d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid IN (SELECT oid FROM userfn)
UNION
SELECT 'column_table', n.nspname, c.relname FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_attribute a ON a.atttypid = d.objid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE d.classid = 'pg_catalog.pg_type'::regclass AND c.relkind IN ('r', 'v', 'm', 'f', 'p')
  AND d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid IN (SELECT oid FROM userfn)
UNION
SELECT 'operator', n.nspname, o.oprname FROM pg_catalog.pg_operator o
JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
WHERE (n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND ('pg_catalog.pg_operator'::regclass, o.oid) NOT IN (SELECT * FROM extension_member))
   OR o.oprcode IN (SELECT oid FROM userfn)
UNION
SELECT 'implicit', '', format('%s AS %s', c.castsource::regtype, c.casttarget::regtype)
FROM usercast c WHERE c.castcontext IN ('i', 'a')
UNION
SELECT 'attribute', n.nspname, lower(p.proname) FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE p.oid IN (SELECT oid FROM userfn) AND p.prokind <> 'p'
  AND (p.provariadic <> 0 OR (p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1))
UNION
SELECT 'code_relation', pg_catalog.format('%s.%s', n.nspname, c.relname), coded.fn
FROM coded JOIN pg_catalog.pg_class c ON c.oid = coded.rel
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
UNION
SELECT 'trigger ' || f.label, pg_catalog.format('%s.%s', tn.nspname, tc.relname), f.body
FROM pg_catalog.pg_trigger t
JOIN fn_code f ON f.oid = t.tgfoid
JOIN pg_catalog.pg_class tc ON tc.oid = t.tgrelid
JOIN pg_catalog.pg_namespace tn ON tn.oid = tc.relnamespace
WHERE NOT t.tgisinternal
UNION
/* an event trigger runs on DDL, and on what the gate counts as writes that make or
   refresh objects (SELECT INTO, REFRESH MATERIALIZED VIEW): on no one table */
SELECT 'trigger ' || f.label, '', f.body FROM pg_catalog.pg_event_trigger t
JOIN fn_code f ON f.oid = t.evtfoid
UNION
SELECT 'write_code ' || f.label,
  CASE WHEN tc.oid IS NULL THEN '' ELSE pg_catalog.format('%s.%s', tn.nspname, tc.relname) END,
  f.body
FROM pg_catalog.pg_depend d
JOIN fn_code f ON f.oid = d.refobjid
LEFT JOIN pg_catalog.pg_constraint con
  ON d.classid = 'pg_catalog.pg_constraint'::regclass AND con.oid = d.objid
LEFT JOIN pg_catalog.pg_attrdef ad
  ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND ad.oid = d.objid
LEFT JOIN pg_catalog.pg_index ix
  ON d.classid = 'pg_catalog.pg_class'::regclass AND ix.indexrelid = d.objid
LEFT JOIN pg_catalog.pg_class tc ON tc.oid = coalesce(
  con.conrelid, ad.adrelid, ix.indrelid,
  CASE WHEN d.classid = 'pg_catalog.pg_class'::regclass THEN d.objid END)
LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid = tc.relnamespace
WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass
  AND d.classid IN ('pg_catalog.pg_constraint'::regclass, 'pg_catalog.pg_attrdef'::regclass,
                    'pg_catalog.pg_class'::regclass)
  AND f.oid IN (SELECT oid FROM userfn)
  /* a domain's CHECK: a write to a column of it is a conversion to a type with user
     code already (UserCode.written_tables), judged as calling it */
  AND coalesce(con.contypid, 0) = 0
UNION
SELECT 'trigger_when', pg_catalog.format('%s.%s', tn.nspname, tc.relname),
  $1::text || 't' || t.oid
FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class tc ON tc.oid = t.tgrelid
JOIN pg_catalog.pg_namespace tn ON tn.oid = tc.relnamespace
WHERE NOT t.tgisinternal AND t.tgqual IS NOT NULL
UNION
SELECT 'rule', pg_catalog.format('%s.%s', tn.nspname, tc.relname),
  $1::text || 'r' || r.oid
FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class tc ON tc.oid = r.ev_class
JOIN pg_catalog.pg_namespace tn ON tn.oid = tc.relnamespace
WHERE r.ev_type <> '1'
UNION
/* where a write to one table goes on to another, whose triggers and checks run too:
   a parent's rows are its partitions' (or children's), a cascading foreign key
   changes the referencing table, a write to a view writes its base tables */
SELECT 'reaches', pg_catalog.format('%s.%s', sn.nspname, sc.relname),
  CASE WHEN dc.oid IS NULL THEN '*' ELSE pg_catalog.format('%s.%s', dn.nspname, dc.relname) END
FROM (
  SELECT i.inhparent AS src, i.inhrelid AS dst FROM pg_catalog.pg_inherits i
  UNION
  /* a foreign table's rows are wherever its server says, this database's too */
  SELECT c.oid, 0 FROM pg_catalog.pg_class c WHERE c.relkind = 'f'
  UNION
  SELECT con.confrelid, con.conrelid FROM pg_catalog.pg_constraint con
  WHERE con.contype = 'f'
    AND (con.confdeltype IN ('c', 'n', 'd') OR con.confupdtype IN ('c', 'n', 'd'))
  UNION
  SELECT r.ev_class, d.refobjid FROM pg_catalog.pg_rewrite r
  JOIN pg_catalog.pg_class vc ON vc.oid = r.ev_class AND vc.relkind = 'v'
  JOIN pg_catalog.pg_depend d
    ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
    AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> r.ev_class
) e
JOIN pg_catalog.pg_class sc ON sc.oid = e.src
JOIN pg_catalog.pg_namespace sn ON sn.oid = sc.relnamespace
LEFT JOIN pg_catalog.pg_class dc ON dc.oid = e.dst
LEFT JOIN pg_catalog.pg_namespace dn ON dn.oid = dc.relnamespace
"""
# PostgreSQL deparses a rule, a trigger's WHEN and a SQL-standard (BEGIN ATOMIC) body
# only after locking every table the definition names (ACCESS SHARE, to the end of the
# statement). Read inside the query above, one table a migration holds in ACCESS
# EXCLUSIVE stopped the whole look while the tables locked before it stayed locked: a
# migration that went on to alter one of those deadlocked with the watch, and reads of
# them queued behind it meanwhile. So the query gives each such definition as its
# look's marker ($1), a kind and an oid, and each is read by itself afterwards on a
# session whose lock_timeout gives up within LOCK_TIMEOUT_MS. One that cannot be read
# is UNREAD: writes that may reach it count as DDL (_ddl_by_writes), and the watch
# looks again a second later.
_DEFINITIONS = {
    "r": "SELECT pg_catalog.pg_get_ruledef($1::pg_catalog.oid)",
    "t": "SELECT pg_catalog.pg_get_triggerdef($1::pg_catalog.oid)",
    "f": "SELECT pg_catalog.pg_get_functiondef($1::pg_catalog.oid)",
}
LOCK_TIMEOUT_MS = 50  # well below deadlock_timeout (1 s by default)
UNREAD = "\x00"  # never a value PostgreSQL returns (text holds no NUL)


def marker() -> str:
    """A marker for one look's deferred definitions, which no catalogue text can forge."""
    return f"wardgate-definition-{secrets.token_hex(8)}:"


def deferred(rows: Iterable[Sequence[object]], mark: str) -> dict[str, str]:
    """Each deferred definition the query's ``rows`` name: its key (kind and oid) ->
    the statement that reads it, whose one parameter is the oid."""
    keys = {str(row[2])[len(mark) :] for row in rows if str(row[2]).startswith(mark)}
    return {key: _DEFINITIONS[key[0]] for key in sorted(keys)}


def with_definitions(
    rows: Iterable[Sequence[object]], mark: str, read: dict[str, str]
) -> list[tuple[str, str, str]]:
    """``rows`` as text, each deferred definition replaced by what ``read`` holds for it
    (UNREAD when it holds nothing)."""
    out = []
    for what, schema, text in rows:
        body = str(text)
        if body.startswith(mark):
            body = read.get(body[len(mark) :], UNREAD)
        out.append((str(what), str(schema), body))
    return out


# A user operator by one of these names may be picked where no statement names it:
# IN, CASE, NULLIF, IS DISTINCT FROM, joins USING, GROUP BY and sorting compare with them.
_IMPLIED = frozenset({"=", "<>", "<", ">", "<=", ">="})


def user_code(
    rows: list[tuple[str, str, str]], user_routines: frozenset[str] = frozenset()
) -> UserCode:
    """The facts one catalogue answer gives (``_USER_CODE_QUERY``); ``user_routines``:
    the names of routines outside the system schemas (``_QUERY``)."""
    types: set[str] = set()
    type_oids: set[tuple[int, str]] = set()
    column_tables: set[str] = set()
    column_types: list[tuple[str, str]] = []  # ("schema.table", "type-oid base-oid")
    operators: set[str] = set()
    attributes: set[str] = set()
    implicit: list[str] = []
    code: list[tuple[str, str, str]] = []  # triggers and rules, read once the rest is
    code_relations: dict[str, set[str]] = {}
    for what, schema, name in rows:
        if what == "type" or what.startswith("type "):
            types.update((name.lower(), f"{schema}.{name}".lower()))
            if what != "type":
                type_oids.add((int(what[5:]), f"{schema}.{name}"))
        elif what == "column_table":
            column_tables.update((name.lower(), f"{schema}.{name}".lower()))
        elif what == "column_type":
            column_types.append((schema, name))
        elif what == "operator":
            operators.add(name)
        elif what == "attribute":
            attributes.add(name.lower())
        elif what.startswith(("trigger", "write_code ")) or what in ("rule", "reaches"):
            code.append((what, schema, name))
        elif what == "code_relation":
            relation = schema.lower()
            for key in (relation, relation.rpartition(".")[2]):
                code_relations.setdefault(key, set()).add(name.lower())
        else:
            implicit.append(f"implicit or assignment user cast {name}")
    # A column of a flagged type other than a domain over a harmless base type (which
    # PostgreSQL resolves to its base type when it converts a value for it).
    # A write converts to the column's own type, a domain's CHECK included.
    flagged = {str(oid) for oid, _ in type_oids}
    written_tables: set[str] = set()
    for table, typed in column_types:
        column_type, _, base = typed.partition(" ")
        names = (table.lower(), table.rpartition(".")[2].lower())
        if column_type in flagged:
            written_tables.update(names)
            if not base or base in flagged:
                column_tables.update(names)
    implicit += [f"user operator {op}" for op in sorted(operators & _IMPLIED)]
    return UserCode(
        frozenset(types),
        frozenset(operators),
        "; ".join(sorted(implicit)[:10]),
        frozenset(attributes),
        frozenset(type_oids),
        frozenset(column_tables),
        frozenset(written_tables),
        *_ddl_by_writes(code, types, operators, user_routines),
        {relation: frozenset(fns) for relation, fns in code_relations.items()},
    )


def _ddl_by_writes(
    code: list[tuple[str, str, str]],
    types: set[str],
    operators: set[str],
    routines: frozenset[str],
) -> tuple[str, frozenset[str]]:
    """Why a write on this connection may run DDL through a trigger, a rule, a CHECK or
    a default (the first few reasons; empty: none may), and the tables (bare names) a
    write to which may reach such code: its own table's, and through partitions and
    children, cascading foreign keys, views' base tables, and what other triggers and
    rules write ("*": any write)."""
    reasons = []
    flagged: set[str] = set()
    reaches: list[tuple[str, str]] = []  # a write to the first reaches the second
    for what, table, text in code:
        owner = table.rpartition(".")[2].lower() if table else "*"
        if not table and what.startswith("trigger "):
            owner = OBJECT_WRITES  # an event trigger: DDL, SELECT INTO and REFRESH
        if what == "reaches":
            reaches.append((owner, text.rpartition(".")[2].lower()))
            continue
        if what.startswith(("trigger ", "write_code ")):
            _, schema, language = what.split(" ", 2)
            where = (
                f"a trigger on {table or 'DDL (an event trigger)'}" if what.startswith("trigger ")
                else f"a CHECK or default of {table or 'a domain'}"
            )  # fmt: skip
        else:
            where = f"a rule on {table}" if what == "rule" else f"a trigger's WHEN on {table}"
        why: str | None
        if text == UNREAD:
            why = "its definition could not be read yet (a lock on a table it names)"
        elif what.startswith(("trigger ", "write_code ")):
            why = trigger_function_reason(
                language,
                schema,
                text,
                user_types=types,
                user_operators=operators,
                user_routines=routines,
            )
        else:
            part = "rule" if what == "rule" else "when"
            why = ddl_reason(
                text, user_types=types, user_operators=operators, user_routines=routines, part=part
            )
        if why is not None:
            reasons.append(f"{where}: {why}")
            flagged.add(owner)
        elif what != "trigger_when":  # a condition writes nothing
            reaches += [(owner, target) for target in written_tables(text)]
    if not flagged:
        return "", frozenset()
    while True:  # what reaches a table that reaches flagged code, until nothing is added
        more = {
            src for src, dst in reaches if (dst in flagged or dst == "*") and src not in flagged
        }
        if not more:
            break
        flagged |= more
    return "; ".join(sorted(reasons)[:5]), frozenset(flagged)


class CatalogWatch:
    """One per worker process (``services.state(CatalogWatch)``)."""

    def __init__(self) -> None:
        self._poked = asyncio.Event()
        self._poked_connections: set[str] = set()
        self._poked_all = False  # another worker ran DDL: on any connection (CatalogFacts)
        self._unread: set[str] = set()  # connections whose last look could not read them
        self._missed: dict[str, float] = {}  # connection -> when a miss last poked it
        # Set once a connection was looked at, by (name, its upstream then): a reload
        # that points a name at another target makes it one never looked at.
        self._looked: dict[tuple[str, str | None], asyncio.Event] = {}
        self.running = False

    async def first_look(self, services: Services, connection: str) -> None:
        """Wait (at most ``limits.connect_timeout``) until the watch has looked at
        ``connection`` once, so that a session starting with the gateway (or on a
        connection a reload added) is judged with its catalogue's facts rather than
        refused as the worst case (CatalogFacts). When that look failed, ask for another
        (a miss: at most once per ``MISS_INTERVAL``) and go on: the session's statements
        are judged as the worst case until one succeeds."""
        conn = services.config.connections.get(connection)
        if not self.running or conn is None or conn.type != "postgres":
            return
        if services.gate.facts.has_read(connection):
            return
        key = (connection, _target(services, connection))
        looked = self._looked.get(key)
        if looked is None:  # not looked at yet: at start, or a connection a reload added
            looked = self._looked[key] = asyncio.Event()
            self.poke(connection)
        elif looked.is_set():
            self.missed(connection)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(looked.wait(), services.config.limits.connect_timeout)

    async def fresh(self, services: Services, connection: str) -> None:
        """Wait (at most ``limits.connect_timeout``) while ``connection`` is judged as the
        worst case after DDL through the gateway (CatalogFacts.changing), so that what
        follows is judged on the catalogue as it is now."""
        facts = services.gate.facts
        if not facts.changing(connection):
            return
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def read() -> None:
            if not settled.done():
                settled.set_result(None)

        facts.when_settled(connection, read)
        read_board_while(services, connection, lambda: not settled.done())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled, services.config.limits.connect_timeout)

    def poke(self, connection: str) -> None:
        """A DDL statement ran on ``connection``: look again now, there (DDL in one
        database cannot change another's routines, casts or types)."""
        self._poked_connections.add(connection)
        self._poked.set()

    def poke_all(self) -> None:
        """Another worker answered DDL that may have committed, on a connection this
        one cannot tell: look at every connection again now."""
        self._poked_all = True
        self._poked.set()

    def missed(self, connection: str) -> None:
        """A statement named a relation the masking snapshot does not hold (made outside
        the gateway since it was read): look again now rather than at the next
        ``INTERVAL``, so that the client's retry finds it; at most once per
        ``MISS_INTERVAL`` per connection (made-up names must not keep the catalog busy)."""
        now = time.monotonic()
        if self._missed.get(connection, -MISS_INTERVAL) + MISS_INTERVAL > now:
            return
        self._missed[connection] = now
        self.poke(connection)

    async def run(self, services: Services, *, loud: bool) -> None:
        """Forever: refresh every PostgreSQL connection's facts. ``loud``: log what is
        found (one worker does, so the log says it once)."""
        poked: set[str] | None = None  # None: every connection (at start, on the timer)
        self.running = True
        services.gate.facts.watch()
        services.gate.facts.on_others_commit = self.poke_all
        while True:
            self._poked.clear()
            # At once: a session waits for its connection's first look (`first_look`),
            # which must not queue behind a target that is slow to answer.
            await asyncio.gather(
                *(self._refresh(services, name, loud) for name in _to_refresh(services, poked))
            )
            try:
                await asyncio.wait_for(self._poked.wait(), INTERVAL)
            except TimeoutError:
                poked = None
            else:
                poked, self._poked_connections = self._poked_connections, set()
                if self._poked_all:
                    poked, self._poked_all = None, False

    async def _refresh(self, services: Services, connection: str, loud: bool) -> None:
        target = _target(services, connection)
        try:
            await self._look(services, connection, target, loud)
        finally:
            self._looked.setdefault((connection, target), asyncio.Event()).set()

    async def _look(
        self, services: Services, connection: str, target: str | None, loud: bool
    ) -> None:
        # DDL commits answered before this look began are in what it reads (CatalogFacts).
        seen = services.gate.facts.commits(connection)
        try:
            async with internal_session(
                services,
                connection,
                application_name="wardgate-catalog-watch",
                timeout=10,
                # Nothing here may wait on a lock a migration holds (_DEFINITIONS).
                settings={**CATALOG_READER, "lock_timeout": str(LOCK_TIMEOUT_MS)},
            ) as session:
                result = await session.extended(_QUERY, max_rows=1_000_000)
                mark = marker()
                code = await session.extended(_USER_CODE_QUERY, (mark,), max_rows=100_000)
                read: dict[str, str] = {}
                if code.error is None:
                    for key, sql in deferred(code.rows, mark).items():
                        one = await session.extended(sql, (key[1:],))
                        if one.error is None and one.rows and one.rows[0][0] is not None:
                            read[key] = str(one.rows[0][0])
        except Exception as exc:  # noqa: BLE001 - the target may be down; try again later
            self._unreadable(services, connection, f"{type(exc).__name__}: {exc}")
            return
        if result.error is not None:
            self._unreadable(
                services, connection, f"{result.error.sqlstate}: {result.error.message}"
            )
            return
        if connection in self._unread:
            self._unread.discard(connection)
            log.info("connection %r: the catalogue watch reads its catalogue again", connection)
        if any(
            rule.columns and (not rule.connections or connection in rule.connections)
            for rule in services.config.masking.rules
        ):
            catalogs = services.state(MaskCatalogs)
            catalogs.stale(connection, ddl=False)  # a committed change, read at once
            with contextlib.suppress(Exception):  # kept: the last snapshot, then refused
                await catalogs.get(services, connection)
        if target is None or _target(services, connection) != target:
            return  # a reload pointed the name elsewhere meanwhile: this is the old target
        routine_names = frozenset(str(row[0]) for row in result.rows)
        rows = with_definitions(code.rows, mark, read)
        if any(body == UNREAD for _, _, body in rows):
            # Judged as the worst case for the writes that reach them, meanwhile.
            asyncio.get_running_loop().call_later(MISS_INTERVAL, self.poke, connection)
        self._judge_user_code(services, connection, code, rows, routine_names, loud, seen)
        if not result.truncated:
            holders: dict[str, set[str]] = {}
            for name, schema in result.rows:
                holders.setdefault(str(name), set()).add(str(schema))
            services.gate.facts.set_routines(
                connection, {n: frozenset(s) for n, s in holders.items()}
            )
        found = {(str(row[0]), str(row[1])) for row in result.rows if row[0] in BUILTIN_READ_ONLY}
        names = frozenset(n for n, _ in found)
        if services.gate.facts.set_shadowed(connection, names) and names and loud:
            where = ", ".join(sorted(f"{schema}.{n}" for n, schema in found)[:20])
            log.warning(
                "connection %r: user routines share names with built-ins the policy trusts "
                "as read-only (%s); calls of these names are judged as calls of unknown "
                "functions (writes) on this connection. Rename them (a STABLE or IMMUTABLE "
                "routine may call a VOLATILE one, so its volatility does not make it safe)",
                connection,
                where,
            )

    def _unreadable(self, services: Services, connection: str, why: str) -> None:
        """Said once per change (a target that stays down is not a line every look):
        until a look succeeds, statements on ``connection`` whose facts are not read
        (never, or not since DDL through the gateway) are judged as the worst case.
        Sessions wait for the look after DDL: that one is tried again every second."""
        if services.gate.facts.changing(connection):
            asyncio.get_running_loop().call_later(MISS_INTERVAL, self.poke, connection)
        if connection not in self._unread:
            self._unread.add(connection)
            log.warning(
                "connection %r: the catalogue watch cannot read the catalogue (%s); "
                "statements that need what it holds are judged as the worst case (every "
                "expression may run user code) until it can; it looks again after DDL, "
                "on a miss, and every %d s",
                connection,
                why,
                int(INTERVAL),
            )

    def _judge_user_code(
        self,
        services: Services,
        connection: str,
        code: Any,
        rows: list[tuple[str, str, str]],
        routine_names: frozenset[str],
        loud: bool,
        seen: tuple[int, int],
    ) -> None:
        if code.error is not None or code.truncated:
            # Not knowing is judged as the worst case: every expression may run user code.
            # A truncated answer (max_rows) may have left out the very row that matters.
            why = str(code.error) if code.error is not None else "too many rows"
            found = UserCode(implicit="the catalogue could not be read: " + why)
        else:
            found = user_code(rows, routine_names)
        if not services.gate.facts.set_user_code(connection, found, seen) or not loud:
            return
        if found.types or found.operators:
            log.warning(
                "connection %r: casts to types %s and operators %s may run user functions; "
                "they are judged as calls of unknown functions (writes) on this connection",
                connection,
                ", ".join(sorted((t for t in found.types if "." in t), key=_user_first)[:20])
                or "(none)",
                ", ".join(sorted(found.operators)[:20]) or "(none)",
            )
        if found.ddl_by_writes:
            log.warning(
                "connection %r: a trigger or rule may run DDL (%s); every write there "
                "counts as DDL: it waits for other sessions' statements and may cancel "
                "them (docs/operations.md), and statements after it wait for the "
                "catalogue to be read again",
                connection,
                found.ddl_by_writes,
            )
        if found.implicit:
            log.warning(
                "connection %r: PostgreSQL may run a user function in any expression (%s); "
                "every statement that evaluates an expression is judged as calling an "
                "unknown function (a write) on this connection. Drop the cast or make it "
                "explicit (CREATE CAST ... without AS IMPLICIT/AS ASSIGNMENT), or drop the "
                "user comparison operator",
                connection,
                found.implicit,
            )


BOARD_POLL = 0.005  # how often a wait on another worker's DDL reads the shared page (s)


def read_board_while(services: Services, connection: str, waiting: Callable[[], bool]) -> None:
    """With several workers, what a wait for ``connection``'s facts waits on may be
    another worker's DDL batch (ddl_board.py), and nothing on this worker reads the
    shared page while every session here waits: read it every BOARD_POLL while
    ``waiting()`` and the connection is `changing` (reading it releases the waiters)."""
    facts = services.gate.facts
    if facts.board is None:
        return
    loop = asyncio.get_running_loop()

    def poll() -> None:
        if waiting() and facts.changing(connection):
            loop.call_later(BOARD_POLL, poll)

    loop.call_later(BOARD_POLL, poll)


@contextlib.asynccontextmanager
async def changing_catalogue(
    services: Services,
    connection: str,
    changes: bool,
    besides: Flight | None = None,
    since: int = 0,
) -> AsyncIterator[None]:
    """Around one statement run on a session of its own (autocommit: it commits when it
    ends): when it ``changes`` the catalogue, the connection is judged as the worst case
    from before it runs until the watch has read the catalogue again (CatalogFacts)."""
    if not changes:
        yield
        return
    facts = services.gate.facts
    names = sharing_database(services, connection)
    for name in names:
        facts.committing(name)
    try:
        try:
            # Nor may it commit while statements judged before it run (commit_barrier.py).
            await services.state(CommitBarrier).drain(
                services, connection, names, besides, since or time.monotonic_ns()
            )
        except BarrierRefused as exc:
            raise InternalQueryFailed(str(exc), "55P03") from None
        yield
    finally:
        for name in names:
            facts.settled(name, committed=True)
        services.state(CatalogWatch).poke(connection)


def sharing_database(services: Services, connection: str) -> tuple[str, ...]:
    """``connection`` and the other PostgreSQL connections whose upstream database has
    its name (on any host, as `_to_refresh`): DDL through one changes what each of them
    may reach, and CatalogFacts holds facts per connection name."""
    names = _to_refresh(services, {connection})
    return tuple(names) if connection in names else (connection, *names)


def _to_refresh(services: Services, poked: set[str] | None) -> list[str]:
    """The PostgreSQL connections to look at: all, or those whose upstream database
    has the name of a poked connection's (on any host: one server may be reached by
    several names, and looking once too often costs only a query). Looking only where
    DDL ran keeps the watch's own sessions off other databases: a client's DROP
    DATABASE fails while any session, the watch's included, is connected to it."""
    postgres = {n: c for n, c in services.config.connections.items() if c.type == "postgres"}
    if poked is None:
        return list(postgres)

    def database(name: str) -> object:
        return getattr(postgres[name].upstream, "database", None)

    names = {database(n) for n in poked if n in postgres}
    return [n for n in postgres if database(n) in names]


def _target(services: Services, connection: str) -> str | None:
    """What a connection reaches now: its upstream, as configured (None: no such
    connection)."""
    conn = services.config.connections.get(connection)
    return None if conn is None else repr(conn.upstream)


def _user_first(qualified: str) -> tuple[bool, str]:
    """The log names user types before system composites that hold one."""
    return qualified.startswith(("pg_catalog.", "information_schema.")), qualified
