"""Column masking by rewriting: a statement's parse tree with every reference to a
sensitive column replaced by an expression that computes the masked value in the
database, so whatever the query does to the column (``replace``, ``encode``, casts,
aggregates) it does to masked values. Pure: SQL and a catalog snapshot in, SQL out.

What the rewriter cannot prove safe it refuses (``Refused``), never passes: whole-row
references of a table with sensitive columns, views and routines over them, ``COPY t
TO``, predicates on sensitive columns (unless the rule allows them), catalogs that
hold row values or secrets (pg_stats, pg_authid...), functions that run SQL text.
``SELECT *`` and ``TABLE t`` are expanded from the catalog into the table's columns,
masked where a rule says so. See docs/masking.md, "Column masking by rewriting".
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from pglast import ast, parse_sql
from pglast.enums.parsenodes import AlterTableType, ConstrType, ObjectType, SetOperation
from pglast.parser import ParseError, parse_sql_json
from pglast.stream import RawStream

from wardgate.policy.functions import BUILTIN_READ_ONLY, WRITE_FUNCTIONS
from wardgate.policy.mask_rules import ColumnRule as ColumnRule  # re-exported
from wardgate.postgres.mask_path import TEMP, Paths, search_order

_new: Any = ast  # pglast's node constructors are untyped
_Stream: Any = RawStream

MASK_SCHEMA = "wardgate_mask"
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})

# Catalog relations that hold row values, statistics about them, or secrets.
BLOCKED_RELATIONS = frozenset(
    {
        "pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic",
        "pg_statistic_ext_data", "pg_authid", "pg_shadow", "pg_user_mappings",
        "pg_user_mapping", "pg_largeobject", "pg_largeobject_metadata", "pg_stat_statements",
        "pg_stat_statements_info",
    }
)  # fmt: skip
# Built-ins that read values past the rewrite: SQL text they run, files, large objects,
# the query texts of sessions (this one's is the rewritten text, with no clear value,
# but other sessions' are not), statistics.
BLOCKED_FUNCTIONS = frozenset(
    {
        "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml",
        "cursor_to_xmlschema", "table_to_xml", "table_to_xmlschema",
        "table_to_xml_and_xmlschema", "schema_to_xml", "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema", "database_to_xml", "database_to_xmlschema",
        "database_to_xml_and_xmlschema", "ts_stat", "current_query", "lo_get", "loread",
        "lo_export", "lo_import", "lo_open", "pg_read_file", "pg_read_binary_file",
        "pg_stat_get_activity", "pg_stat_get_backend_activity", "pg_mcv_list_items",
        "pg_get_statisticsobjdef_expressions", "pg_stat_statements", "dblink",
        "ts_rewrite",  # ts_rewrite(tsquery, text): runs the SELECT in its text
    }
)  # fmt: skip
# pg_stat_activity: the query text of the session itself only.
_ACTIVITY = frozenset({"pg_stat_activity"})
_ACTIVITY_COLUMNS = frozenset(
    {
        "datid", "datname", "pid", "leader_pid", "usesysid", "usename", "application_name",
        "client_addr", "client_hostname", "client_port", "backend_start", "xact_start",
        "query_start", "state_change", "wait_event_type", "wait_event", "state",
        "backend_xid", "backend_xmin", "query_id", "query", "backend_type",
    }
)  # fmt: skip
_TEXT_TYPES = ("text", "character varying", "character", "name", "citext", "bpchar", "varchar")


@dataclass(frozen=True, slots=True)
class Table:
    """A relation of the catalog: its columns in order (name, format_type), and for a
    view what it reads (``schema.table.column``, ``schema.table.*`` for a whole row,
    ``function schema.name`` for a user routine), closed over views of views."""

    schema: str
    name: str
    kind: str  # pg_class.relkind
    columns: tuple[tuple[str, str], ...]
    reads: frozenset[str] = frozenset()
    children: frozenset[tuple[str, str]] = frozenset()  # partitions, inheritors: all levels


@dataclass(frozen=True, slots=True)
class MaskCatalog:
    tables: Mapping[str, tuple[Table, ...]]  # by relname, every schema
    system: frozenset[str] = frozenset()  # relnames in pg_catalog / information_schema
    user_functions: frozenset[str] = frozenset()  # names of routines outside them
    functions_installed: bool = False  # the wardgate_mask schema's functions
    # Operators implemented by user routines; types whose cast or input runs one (or
    # domains, whose CHECK may).
    user_operators: frozenset[str] = frozenset()
    user_types: frozenset[str] = frozenset()
    # The connection's credential's default search_path and user name (``$user``), as
    # a session without a startup search_path starts with them; None: not read.
    default_search_path: str | None = None
    user: str | None = None
    # (rules, schema, table) -> the table has no masked column and reads nothing
    # refused: the fast path asks it for every statement.
    clean: dict[tuple[Any, ...], bool] = field(default_factory=dict, compare=False)
    # (schema, table) -> the tables it is a partition or inheritance child of, all
    # levels; computed on first use.
    _parents: dict[tuple[str, str], tuple[tuple[str, str], ...]] = field(
        default_factory=dict, compare=False
    )
    # (paths, relname) -> the tables an unqualified name may mean under those
    # search_paths, and the path schemas before them that may hold one since the snapshot.
    _resolved: dict[tuple[Any, str], tuple[tuple[Table, ...], tuple[Table, ...]]] = field(
        default_factory=dict, compare=False
    )

    def resolve(
        self, name: str, paths: Paths | None
    ) -> tuple[tuple[Table, ...], tuple[Table, ...]]:
        """The tables an unqualified ``name`` may mean: under each possible search_path,
        the first schema holding it (the session's temporary schema first, unless the
        path places it; every temporary table of the name counts, since the gateway does
        not know which temporary schema is the session's); and the ``shadows``, the
        path's schemas searched before it, where a table of that name created since the
        snapshot (or in the session's open transaction) would be read instead. None:
        the path is unknown, every schema's table of the name is a candidate."""
        tables = self.tables.get(name, ())
        if paths is None:
            return tables, ()
        key = (paths, name)
        found = self._resolved.get(key)
        if found is not None:
            return found
        by_schema = {t.schema: t for t in tables}
        temps = [t for t in tables if t.schema.startswith("pg_temp_")]
        hits: list[Table] = []
        shadows: list[Table] = []
        for path in paths:
            for schema in search_order(path):
                if schema == TEMP:
                    hits.extend(temps)  # possible, not certain: the search goes on
                    shadows.append(Table(TEMP, name, "r", ()))
                    continue
                if schema in SYSTEM_SCHEMAS:
                    continue  # system relations are resolved before
                table = by_schema.get(schema)
                if table is not None:
                    hits.append(table)
                    break
                shadows.append(Table(schema, name, "r", ()))
        found = (tuple(dict.fromkeys(hits)), tuple(dict.fromkeys(shadows)))
        if len(self._resolved) > 65536:
            self._resolved.clear()
        self._resolved[key] = found
        return found

    def parents(self, table: Table) -> tuple[tuple[str, str], ...]:
        if not self._parents and self.tables:
            found: dict[tuple[str, str], list[tuple[str, str]]] = {}
            for tables in self.tables.values():
                for parent in tables:
                    for child in parent.children:
                        found.setdefault(child, []).append((parent.schema, parent.name))
            self._parents.update({k: tuple(sorted(v)) for k, v in found.items()})
            self._parents[("", "")] = ()  # computed, even when nothing inherits
        return self._parents.get((table.schema, table.name), ())

    @staticmethod
    def of(
        tables: Iterable[Table],
        system: Iterable[str] = (),
        user_functions: Iterable[str] = (),
        functions_installed: bool = False,
        user_operators: Iterable[str] = (),
        user_types: Iterable[str] = (),
        default_search_path: str | None = None,
        user: str | None = None,
    ) -> MaskCatalog:
        by_name: dict[str, list[Table]] = {}
        for t in tables:
            by_name.setdefault(t.name, []).append(t)
        return MaskCatalog(
            {k: tuple(v) for k, v in by_name.items()},
            frozenset(system),
            frozenset(user_functions),
            functions_installed,
            frozenset(user_operators),
            frozenset(user_types),
            default_search_path,
            user,
        )


class Refused(Exception):
    """The statement cannot be proven safe to run for this principal."""

    def __init__(self, reason: str, rule: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rule = rule


class UnknownRelation(Refused):
    """Refused: a relation the catalog snapshot does not hold (made since it was read,
    or no such relation): the gateway reads the catalog again (catalog_watch.py)."""


@dataclass(frozen=True, slots=True)
class Masked:
    """A sensitive column of one relation: the rule and the column's type."""

    rule: ColumnRule
    type: str


@dataclass(slots=True)
class _Entry:
    """One relation of a FROM list, by the name the query refers to it."""

    refname: str
    schema: str | None
    table: Table | None  # None: a subquery, CTE or function (its output is safe)
    masked: dict[str, Masked]  # by the name the query sees (an alias may rename)
    activity: bool = False  # pg_stat_activity
    names: tuple[str, ...] = ()  # the columns as the query sees them
    # A rule names this table (or a parent or child): a column added since the
    # snapshot may be masked, so * is expanded from the snapshot and whole rows refused.
    named: ColumnRule | None = None
    # Path schemas searched before the table, where one of that name created since the
    # snapshot would be read instead (pseudo-tables without columns): their rules count.
    shadows: tuple[Table, ...] = ()
    ambiguous: bool = False  # the name may mean tables of several schemas

    @property
    def guarded(self) -> bool:
        return bool(self.masked) or self.named is not None

    def rule(self) -> ColumnRule | None:
        return next(iter(self.masked.values())).rule if self.masked else self.named

    def has(self, column: str) -> bool:
        return self.table is not None and column in self.names


_Level = list[_Entry]
_OUTPUT, _PREDICATE, _WRITE = "output", "predicate", "write"


def rewrite(
    sql: str,
    catalog: MaskCatalog,
    rules: tuple[ColumnRule, ...],
    paths: Paths | None = None,
) -> str | None:
    """``sql`` with sensitive columns masked, or None when nothing needed a change.
    ``paths``: every search_path the session may have (mask_path.py), None when unknown.
    Raises Refused, also for text the gateway cannot parse: the gate blocks it (or a
    human approved it, with ``on_parse_error: review``), and the server's grammar may
    read it (PostgreSQL 15 reads ``select 1email, email`` as ``1 AS email, email``,
    which libpg_query of PostgreSQL 17 refuses), so it is never passed unmasked."""
    try:
        tree = json.loads(parse_sql_json(sql))
    except ParseError:
        raise Refused(
            "the gateway cannot parse this statement, so it cannot mask the columns it "
            "reads; a principal under a masking rule may only run statements it can "
            "parse (check the syntax)",
            rules[0].rule if rules else "masking",
        ) from None
    _refuse_changing_mask_schema(tree, rules)
    pins = _nothing_to_do(tree, catalog, rules, paths)
    if pins is not None:  # the fast path: no masked table, nothing refused
        return _pinned(sql, pins) if pins else None
    statements = parse_sql(sql)
    rewriter = _Rewriter(catalog, rules, paths)
    for raw in statements:
        raw.stmt = rewriter.statement(raw.stmt)
    if not rewriter.changed:
        return None
    return "; ".join(str(_Stream()(raw)) for raw in statements)


# Statements that only set a session setting: SET search_path = wardgate_mask is not
# refused here (a relation then reached unqualified is, _relation).
_SETTINGS = frozenset({"VariableSetStmt", "VariableShowStmt"})


def _refuse_changing_mask_schema(tree: Any, rules: tuple[ColumnRule, ...]) -> None:
    """DDL naming the wardgate_mask schema (CREATE OR REPLACE FUNCTION
    wardgate_mask.partial, ALTER, DROP, GRANT, a rename or move into it): its functions
    are the gateway's. Replaced, a masked column would come back as whatever they
    return, and the second layer trusts a column they compute (mask_outputs.py).
    Queries that read or call into it are refused where they do (_relation, _call)."""
    kinds = {next(iter(raw.get("stmt") or {"?": None})) for raw in tree.get("stmts", ())}
    if kinds <= _PINNED_STATEMENTS | _SETTINGS:
        return
    stack: list[Any] = [
        raw.get("stmt")
        for raw in tree.get("stmts", ())
        if next(iter(raw.get("stmt") or {"?": None})) not in _PINNED_STATEMENTS | _SETTINGS
    ]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, str) and MASK_SCHEMA in item.lower():
            raise Refused(
                f"the {MASK_SCHEMA} schema holds the gateway's masking key and functions; "
                "a principal under a masking rule cannot change it (or name it in DDL)",
                rules[0].rule if rules else "masking",
            )


_SLOW_STATEMENTS = frozenset(
    {
        "DoStmt", "CallStmt", "ListenStmt", "CreateFunctionStmt", "CreateTrigStmt",
        "RuleStmt", "CreatePolicyStmt", "AlterPolicyStmt", "AlterDomainStmt",
        "CreateStatsStmt", "CreateCastStmt", "CreateTransformStmt", "DefineStmt",
        "CreateForeignTableStmt", "ImportForeignSchemaStmt", "CreateForeignServerStmt",
        "AlterForeignServerStmt", "CreateUserMappingStmt", "AlterUserMappingStmt",
        "CreateFdwStmt", "AlterFdwStmt",
    }
)  # fmt: skip
# Foreign-data DDL (_Rewriter.statement): a foreign table's rows come from wherever its
# server and options say, which may be this database's masked table through a loopback
# server; the snapshot sees only a table without rules.
_FOREIGN_DATA = (
    ast.CreateForeignTableStmt,
    ast.ImportForeignSchemaStmt,
    ast.CreateForeignServerStmt,
    ast.AlterForeignServerStmt,
    ast.CreateUserMappingStmt,
    ast.AlterUserMappingStmt,
    ast.CreateFdwStmt,
    ast.AlterFdwStmt,
)
# ALTER FOREIGN TABLE ... OPTIONS: its remote table or column, changed.
_FOREIGN_OPTIONS = frozenset(
    {AlterTableType.AT_GenericOptions, AlterTableType.AT_AlterColumnGenericOptions}
)
# Objects the rewriter judges by name (a built-in's name is trusted, a user routine's or
# type's is not): renamed or moved, a routine answers to a trusted name (_Rewriter.statement).
_JUDGED_BY_NAME = frozenset(
    {
        ObjectType.OBJECT_FUNCTION, ObjectType.OBJECT_PROCEDURE, ObjectType.OBJECT_ROUTINE,
        ObjectType.OBJECT_AGGREGATE, ObjectType.OBJECT_OPERATOR, ObjectType.OBJECT_TYPE,
        ObjectType.OBJECT_DOMAIN, ObjectType.OBJECT_EXTENSION,
    }
)  # fmt: skip
# Statements that write the rows of the relation they name.
_WRITE_STATEMENTS = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CopyStmt"})
# ALTER TABLE subcommands that change which table's rows another table returns.
_RELINKING = frozenset(
    {
        AlterTableType.AT_AddInherit, AlterTableType.AT_DropInherit,
        AlterTableType.AT_AttachPartition, AlterTableType.AT_DetachPartition,
        AlterTableType.AT_DetachPartitionFinalize,
    }
)  # fmt: skip
# Statements that create code the server runs later, unseen (_Rewriter.statement).
_LATER_CODE = (
    ast.CreateFunctionStmt,
    ast.CreateTrigStmt,
    ast.RuleStmt,
    ast.CreatePolicyStmt,
    ast.AlterPolicyStmt,
    # A cast or transform calls its function wherever a query converts the types, unseen
    # in a statement the same transaction runs (the snapshot's user types lack it yet):
    # CREATE CAST (int4 AS text) WITH FUNCTION get_pw(int4); SELECT 1::text.
    ast.CreateCastStmt,
    ast.CreateTransformStmt,
)
# CREATE OPERATOR, AGGREGATE, TYPE: objects that call routines named in them, likewise.
_ROUTINE_OBJECTS = frozenset(
    {ObjectType.OBJECT_OPERATOR, ObjectType.OBJECT_AGGREGATE, ObjectType.OBJECT_TYPE}
)
# Statements whose relation references the rewriter resolves (_Rewriter.statement), so
# pins; the others' (DDL) are left as written. A rename or move of a relation is pinned
# by the full rewrite only.
_PINNED_STATEMENTS = frozenset(
    {
        "SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "CopyStmt", "ExplainStmt",
        "DeclareCursorStmt", "PrepareStmt", "CreateTableAsStmt", "MergeStmt",
    }
)  # fmt: skip
_FULL_STATEMENTS = frozenset({"RenameStmt", "AlterObjectSchemaStmt", "ViewStmt"})
Pin = tuple[int, str]  # (byte offset of an unqualified relation name, its schema)


def pin_schema(table: Table) -> str:
    """The schema an unqualified reference to ``table`` is pinned to: its own, or for a
    temporary table ``pg_temp``, the session's own temporary schema (the snapshot does
    not say which ``pg_temp_N`` is the session's)."""
    return TEMP if table.schema.startswith("pg_temp_") else table.schema


def _pinned(sql: str, pins: list[Pin]) -> str:
    """``sql`` with each pinned relation name qualified with its schema, in place."""
    data = sql.encode()
    for at, schema in sorted(pins, reverse=True):
        quoted = '"' + schema.replace('"', '""') + '".'
        data = data[:at] + quoted.encode() + data[at:]
    return data.decode()


def _nothing_to_do(
    tree: Any,
    catalog: MaskCatalog,
    rules: tuple[ColumnRule, ...],
    paths: Paths | None = None,
) -> list[Pin] | None:
    """The pins (below) when the statement names no relation with a masked column (so
    no column reference can resolve to one) and nothing the rewriter refuses or rewrites
    on its own: a blocked or unknown relation, pg_stat_activity, a view it refuses, a
    function that is not a plain built-in, a user operator or type, DO, CALL, or a column
    a rule would mask that the snapshot lacks. Walks libpg_query's JSON (no AST
    objects), which costs a tenth of the full rewrite; when in doubt it says None (the
    full rewrite decides).

    Pins: every unqualified relation name the gateway resolved to one table is sent
    qualified with that table's schema, as the full rewrite does (_Rewriter._relation),
    so the server reads the table the gateway judged whatever its search_path has
    become since (SQL the gateway never sees can change it: ``set_config`` in a view)."""
    rewriter = _Rewriter(catalog, rules, paths)
    kinds = {next(iter(raw.get("stmt") or {"?": None})) for raw in tree.get("stmts", ())}
    if kinds & _FULL_STATEMENTS:
        return None
    pinning = kinds <= _PINNED_STATEMENTS
    if not pinning and kinds & _PINNED_STATEMENTS:
        return None  # DDL and queries in one string: the full rewrite, statement by statement
    pins: list[tuple[int, str, str]] = []
    into: set[int] = set()  # the relations SELECT INTO / CREATE TABLE AS create
    ctes: set[str] = set()
    tables: list[Table] = []
    columns: set[str] = set()
    star = False
    refnames: set[str] = set()  # what a whole-row reference may name
    stack: list[Any] = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        if "aliasname" in item:  # tables', joins', subqueries' aliases
            refnames.add(item["aliasname"])
        if "ctename" in item:
            ctes.add(item["ctename"])
        if isinstance(item.get("intoClause"), dict):
            into.add(id(item["intoClause"].get("rel")))
        if "relname" in item:
            found = _quick_relation(item, catalog, rewriter)
            if found is None:
                return None
            tables.extend(found)
            if (
                pinning
                and len(found) == 1
                and not item.get("schemaname")
                and id(item) not in into
                and item["relname"] not in catalog.system
            ):
                pins.append((item["location"], pin_schema(found[0]), item["relname"]))
            alias = item.get("alias")
            refnames.add(alias.get("aliasname", "") if isinstance(alias, dict) else "")
            refnames.add(item.get("relname") or "")
        for key, value in item.items():
            if key in _SLOW_STATEMENTS:
                return None
            if key in _WRITE_STATEMENTS and isinstance(value, dict):
                # A server file or program, or a write into a system catalog: the full
                # rewrite refuses them.
                if key == "CopyStmt" and value.get("filename"):
                    return None
                target = value.get("relation")
                if (key != "CopyStmt" or value.get("is_from")) and _is_system(target, catalog):
                    return None
            if key == "CopyStmt" and isinstance(value, dict) and not value.get("attlist"):
                star = True  # COPY t TO: every column, like *
            if key == "FuncCall" and not _quick_function(value, catalog):
                return None
            if key == "A_Expr":
                name = [n["String"]["sval"] for n in value.get("name", ()) if "String" in n]
                if name and name[-1] in catalog.user_operators:
                    return None
            if key == "typeName" and isinstance(value, dict):
                names = [n["String"]["sval"] for n in value.get("names", ()) if "String" in n]
                if names and names[-1] in catalog.user_types:
                    return None
            if key == "ColumnRef":
                fields = value.get("fields", ())
                if fields and "String" in fields[-1]:
                    columns.add(fields[-1]["String"]["sval"])
                elif fields:
                    star = True
            if isinstance(value, dict | list):
                stack.append(value)
    for table in tables:
        unknown = columns.difference(c for c, _ in table.columns)
        if unknown and any(rewriter._column_rule(table, c) for c in unknown):
            return None
        # A table a rule names: * and whole rows (a name no table's column has) take
        # the full rewrite, which expands them from the snapshot or refuses them.
        if (star or columns & refnames) and rewriter._table_rule(table) is not None:
            return None
    if any(name in ctes for _, _, name in pins):
        return None  # a CTE of a table's name: the full rewrite knows which is which
    return [(at, schema) for at, schema, _ in pins]


def _is_system(rv: Any, catalog: MaskCatalog) -> bool:
    """A RangeVar (JSON) that names a relation of the system schemas, or may."""
    if not isinstance(rv, dict):
        return False
    schema = rv.get("schemaname") or None
    return schema in SYSTEM_SCHEMAS or (schema is None and rv.get("relname") in catalog.system)


def _quick_relation(
    rv: dict[str, Any], catalog: MaskCatalog, rewriter: _Rewriter
) -> tuple[Table, ...] | None:
    """The tables a RangeVar may name, or None when the full rewrite must look."""
    schema = rv.get("schemaname") or None
    name = rv.get("relname") or ""
    if schema in (None, "pg_catalog") and (name in BLOCKED_RELATIONS or name in _ACTIVITY):
        return None
    if schema == MASK_SCHEMA:
        return None
    if schema in SYSTEM_SCHEMAS:
        return ()
    tables, shadows = rewriter._candidates(schema, name)
    if not tables:
        return () if schema is None and name in catalog.system else None
    if any(t.schema == MASK_SCHEMA for t in tables):
        return None  # SET search_path = wardgate_mask; TABLE key: the full rewrite refuses
    for shadow in shadows:
        shadow_key = (rewriter.rules, "shadow", shadow.schema, shadow.name)
        clean = catalog.clean.get(shadow_key)
        if clean is None:
            clean = rewriter._table_rule(shadow) is None
            catalog.clean[shadow_key] = clean
        if not clean:
            return None  # a rule names a table there: the full rewrite masks by it
    for table in tables:
        key = (rewriter.rules, table.schema, table.name)
        clean = catalog.clean.get(key)
        if clean is None:
            clean = not table.reads and not any(
                rewriter._column_rule(table, c) for c, _ in table.columns
            )
            if len(catalog.clean) > 65536:
                catalog.clean.clear()
            catalog.clean[key] = clean
        if not clean:
            return None
    return tables


def _quick_function(call: dict[str, Any], catalog: MaskCatalog) -> bool:
    names = [n["String"]["sval"] for n in call.get("funcname", ()) if "String" in n]
    if not names:
        return False
    name = names[-1]
    schema = names[0] if len(names) > 1 else None
    if schema not in (None, "pg_catalog") or name in BLOCKED_FUNCTIONS:
        return False
    if schema is None and name in catalog.user_functions:
        return False
    return name in BUILTIN_READ_ONLY or name in WRITE_FUNCTIONS


def _strings(fields: Iterable[Any]) -> list[str]:
    return [str(f.sval) for f in fields if isinstance(f, ast.String)]


def _function_refname(item: Any) -> str:
    """A function in FROM without an alias is referred to by its (first) name."""
    for pair in item.functions or ():
        call = pair[0] if isinstance(pair, tuple | list) and pair else pair
        if isinstance(call, ast.FuncCall):
            return _strings(call.funcname)[-1]
        break
    return ""


def _column_name(val: Any) -> str | None:
    """The output name PostgreSQL gives an expression that is a column under casts and
    collations (``email``, ``email::varchar``); None for any other expression, whose
    name (a function's, ``?column?``) a rewrite inside it does not change."""
    while isinstance(val, ast.TypeCast | ast.CollateClause):
        val = val.arg
    if isinstance(val, ast.ColumnRef) and isinstance(val.fields[-1], ast.String):
        return str(val.fields[-1].sval)
    return None


def _deparse(node: Any) -> str:
    return str(_Stream()(node))


def _parse_expr(sql: str) -> Any:
    stmt = parse_sql(f"SELECT {sql}")[0].stmt
    return stmt.targetList[0].val


def _is_text(type_name: str) -> bool:
    return type_name.split("(")[0].strip() in _TEXT_TYPES


_STRATEGY_FUNCTIONS = {"partial": "partial", "hash": "hash", "pseudonym": "pseudonym"}


def mask_expression(column_sql: str, masked: Masked, functions_installed: bool) -> str:
    """The SQL computing the masked value of ``column_sql`` with its type kept."""
    kind = masked.rule.strategy
    function = _STRATEGY_FUNCTIONS.get(kind)
    if function is None or not _is_text(masked.type) or not functions_installed:
        return f"CAST(NULL AS {masked.type})"
    return f"CAST({MASK_SCHEMA}.{function}(CAST({column_sql} AS pg_catalog.text)) AS {masked.type})"


@dataclass
class _Rewriter:
    catalog: MaskCatalog
    rules: tuple[ColumnRule, ...]
    paths: Paths | None = None  # the session's possible search_paths; None: unknown
    pin: bool = True  # qualify unqualified relation names (_relation); False: a probe
    changed: bool = False
    masked_refs: int = 0  # masked expressions made so far
    _merged: set[int] = field(default_factory=set)  # FROM lists with USING/NATURAL joins
    _ctes: list[set[str]] = field(default_factory=list)

    # ------------------------------------------------------------- statements

    def statement(self, stmt: Any) -> Any:
        if isinstance(stmt, ast.SelectStmt):
            return self.select(stmt, [])
        if isinstance(stmt, ast.InsertStmt):
            return self._insert(stmt)
        if isinstance(stmt, ast.UpdateStmt):
            return self._update(stmt)
        if isinstance(stmt, ast.DeleteStmt):
            return self._delete(stmt)
        if isinstance(stmt, ast.CopyStmt):
            return self._copy(stmt)
        if isinstance(stmt, ast.ExplainStmt | ast.DeclareCursorStmt | ast.PrepareStmt):
            stmt.query = self.statement(stmt.query)
            return stmt
        if isinstance(stmt, ast.CreateTableAsStmt):
            if isinstance(stmt.query, ast.ExecuteStmt):
                # PostgreSQL analyses the prepared statement again if the search_path
                # changed since it was prepared; the gateway checks that at EXECUTE and
                # Bind (relay_state.py), not here, where the name's SQL is unknown.
                raise Refused(
                    "CREATE TABLE AS EXECUTE is not supported for principals under a "
                    "masking rule; use CREATE TABLE AS SELECT",
                    self._any_rule(),
                )
            stmt.query = self.statement(stmt.query)
            return stmt
        if isinstance(stmt, ast.MergeStmt):
            if isinstance(stmt.relation, ast.RangeVar):
                self._refuse_writing_system(stmt.relation)
            if self._mentions_masked(stmt):
                raise Refused(
                    "MERGE over a table with masked columns (or one a masking rule names) "
                    "is not supported for this principal; use INSERT, UPDATE or DELETE",
                    self._any_rule(),
                )
            # What it computes is checked like any expression: a blocked or user
            # function (query_to_xml) would write clear values into an unmasked table.
            return self.expr(stmt, [], _OUTPUT)
        if isinstance(stmt, ast.ViewStmt):
            return self._view(stmt)
        if isinstance(stmt, ast.RenameStmt) and stmt.renameType == ObjectType.OBJECT_SCHEMA:
            self._refuse_renaming_schema(stmt.subname or "", stmt.newname or "")
            return stmt
        if isinstance(stmt, ast.RenameStmt | ast.AlterObjectSchemaStmt) and isinstance(
            stmt.relation, ast.RangeVar
        ):
            self._refuse_moving_masked(stmt)
            return stmt
        kind = getattr(stmt, "renameType", None) or getattr(stmt, "objectType", None)
        if isinstance(stmt, ast.RenameStmt | ast.AlterObjectSchemaStmt) and (
            kind in _JUDGED_BY_NAME
        ):
            # ALTER FUNCTION pg_catalog.query_to_xml(text, bool, bool, text) RENAME TO
            # upper: upper('select pw from t', true, false, '') passed as a built-in and
            # ran the SELECT past the rewrite, in the same transaction and for every
            # masked principal after it committed.
            raise Refused(
                "renaming functions, procedures, aggregates, operators, types, domains or "
                "extensions, or moving them to another schema, is not supported for "
                "principals under a masking rule: the gateway judges routines and types by "
                "name and schema, and under a built-in's name a routine that runs SQL or "
                "reads masked columns would pass; ask a principal without the rule to do it",
                self._any_rule(),
            )
        if isinstance(stmt, _FOREIGN_DATA) or (
            isinstance(stmt, ast.AlterTableStmt)
            and any(
                isinstance(c, ast.AlterTableCmd) and c.subtype in _FOREIGN_OPTIONS
                for c in stmt.cmds or ()
            )
        ):
            # CREATE FOREIGN TABLE ft (v text OPTIONS (column_name 'pw')) SERVER loopback
            # OPTIONS (table_name 't'): the snapshot saw a table without rules, and every
            # principal read t.pw through it in clear.
            raise Refused(
                "foreign tables, foreign servers and user mappings cannot be created or "
                "changed by principals under a masking rule: a foreign table reads whatever "
                "its server and options name (this database's masked columns through a "
                "loopback server), which the gateway cannot see; ask a principal without "
                "the rule to do it",
                self._any_rule(),
            )
        if isinstance(stmt, ast.CreateStmt | ast.AlterTableStmt):
            self._refuse_masked_references(stmt)
        if isinstance(stmt, ast.IndexStmt | ast.AlterTableStmt) and isinstance(
            stmt.relation, ast.RangeVar
        ):
            self._refuse_evaluating_masked(stmt, stmt.relation)  # and blocked calls, below
        if isinstance(stmt, ast.CreateStatsStmt) and stmt.relations:
            for relation in stmt.relations:
                if isinstance(relation, ast.RangeVar):
                    self._refuse_evaluating_masked(stmt, relation)
        if isinstance(stmt, ast.AlterDomainStmt) and (
            stmt.subtype == "V"
            or (
                stmt.subtype == "C"
                and isinstance(stmt.def_, ast.Constraint)
                and stmt.def_.contype == ConstrType.CONSTR_CHECK
            )
        ):
            raise Refused(
                "adding or validating a CHECK constraint of a domain is not supported for "
                "principals under a masking rule: the server evaluates it over every stored "
                "value of the domain, masked columns' too, and its errors echo them "
                '(invalid input syntax for type integer: "<value>"); ask a principal '
                "without the rule to run it",
                self._any_rule(),
            )
        if isinstance(stmt, _LATER_CODE) or (
            isinstance(stmt, ast.DefineStmt) and stmt.kind in _ROUTINE_OBJECTS
        ):
            raise Refused(
                "creating functions, procedures, triggers, rules, row-level security "
                "policies, casts, operators, aggregates or types is not supported for principals under a masking rule: the server "
                "runs them later, out of the gateway's sight, where they can read masked "
                "columns in clear (a trigger, a column default, an index expression); ask a "
                "principal without the rule to create it",
                self._any_rule(),
            )
        if isinstance(stmt, ast.ListenStmt):
            # NOTIFY payloads come from other sessions (a trigger's row_to_json(NEW))
            # and reach the client as they are: nothing masks them.
            raise Refused(
                "LISTEN is not supported for principals under a masking rule: other "
                "sessions' NOTIFY payloads (often whole rows) would reach you unmasked",
                self._any_rule(),
            )
        if isinstance(stmt, ast.DoStmt | ast.CallStmt):
            what = "a DO block" if isinstance(stmt, ast.DoStmt) else "CALL of a procedure"
            raise Refused(
                f"{what} runs code the gateway cannot read, and it could read masked "
                "columns in clear; run the SQL as separate statements",
                self._any_rule(),
            )
        self._refuse_blocked_calls(stmt)
        return stmt

    def _view(self, stmt: Any) -> Any:
        """CREATE [OR REPLACE] VIEW: its query is judged as a SELECT of this principal's,
        and refused when the rewrite would change it (a masked column, a ``*`` over a
        table a rule names, pg_stat_activity.query) or refuses it. A view over masked
        columns is refused to read, but only once a snapshot lists what it reads: in the
        transaction that created or replaced it (``CREATE OR REPLACE VIEW v0 AS SELECT
        id, pw AS name FROM t; SELECT name FROM v0``, v0 known clean), the snapshot's
        clean view was read, clear values and all. Its relation names are pinned, as a
        query's."""
        probe = _Rewriter(self.catalog, self.rules, self.paths, pin=False)
        probe.select(copy.deepcopy(stmt.query), [])
        if probe.changed:
            raise Refused(
                f"view {stmt.view.relname} would read masked columns (or whole rows of a "
                "table a masking rule names, or other sessions' query texts) in clear: "
                "until the gateway's snapshot lists what it reads, a read of it in this "
                "transaction would not be refused. Select from the tables instead, or ask "
                "a principal without the rule to create it",
                self._any_rule(),
            )
        stmt.query = self.select(stmt.query, [])
        return stmt

    def _refuse_renaming_schema(self, old: str, new: str) -> None:
        """``ALTER SCHEMA crm RENAME TO crm2`` under a rule ``crm.customers.email``: every
        table of the schema leaves the rule (its columns were read clear by every
        principal once the snapshot had the new name). Refused when a rule's schema
        part matches the old name and not the new one."""
        for rule in self.rules:
            schema_glob = rule.glob.split(".", 1)[0]
            if fnmatchcase(old.lower(), schema_glob) and not fnmatchcase(new.lower(), schema_glob):
                raise Refused(
                    f"renaming schema {old} would take its tables out of masking rule "
                    f"{rule.rule!r} ({rule.glob}); a principal without the rule (or an "
                    "administrator changing the rule too) can do it",
                    rule.rule,
                )

    def _refuse_moving_masked(self, stmt: Any) -> None:
        """Renaming a table or column, or moving it to another schema, would take its
        columns out of the rules that name them. A relation whose read is refused (a
        view over masked columns) is not renamed either: under the name of a relation
        the snapshot knows clean, a read in the same transaction returned its values
        (``ALTER VIEW v0 RENAME TO x; ALTER VIEW masked_view RENAME TO v0``)."""
        try:
            entry = self._relation(stmt.relation)
        except UnknownRelation:
            return  # not a table the snapshot knows: nothing masked to move
        except Refused as exc:
            raise Refused(
                f"renaming or moving {stmt.relation.relname} is not supported for this "
                f"principal: it may not read it ({exc.reason}), and under another name a "
                "read in the same transaction would not be refused",
                exc.rule,
            ) from None
        if entry.masked:
            rule = next(iter(entry.masked.values())).rule
            raise Refused(
                f"renaming or moving {entry.refname}, which has masked columns, would take "
                f"them out of masking rule {rule.rule!r}; a principal without the rule "
                "(or an administrator changing the rule too) can do it",
                rule.rule,
            )

    def _refuse_evaluating_masked(self, stmt: Any, relation: Any) -> None:
        """CREATE INDEX, ALTER TABLE and CREATE STATISTICS on a table (``relation``) with
        masked columns whose expressions (an index expression or predicate, a generated
        column, a CHECK or EXCLUDE constraint, ALTER COLUMN ... TYPE ... USING, an
        expression statistic, computed at ANALYZE) read a masked column, or that change
        a masked column's type: the server evaluates them over the clear values, and
        stores them (a generated column is read back unmasked) or echoes them in errors
        (``create index on t ((reverse(pw)::int))``: ``invalid input syntax for type
        integer: "2retnuh"``)."""
        entry = self._quietly(relation)
        self._refuse_relinking(stmt, entry)
        if entry is None or not entry.masked:
            return  # not a table the snapshot knows, or none with masked columns
        hit: str | None = None

        def visit(node: Any) -> Any:
            nonlocal hit
            if isinstance(node, tuple | list):
                for n in node:
                    visit(n)
            elif isinstance(node, ast.ColumnRef):
                # A masked column, or anything that is no column of the snapshot's: a
                # whole row (``check (reverse(t::text)::int > 0)`` echoed every column).
                names = _strings(node.fields)
                star = isinstance(node.fields[-1], ast.A_Star)
                if star or not names:
                    hit = hit or "*"
                elif names[-1] in entry.masked:
                    hit = hit or names[-1]
                elif not entry.has(names[-1]):
                    hit = hit or f"{names[-1]} (a whole row?)"
            elif isinstance(node, ast.AlterTableCmd) and (
                node.subtype == AlterTableType.AT_AlterColumnType and node.name in entry.masked
            ):
                hit = hit or node.name
            if isinstance(node, ast.Node):
                self._children(node, visit)
            return node

        visit(stmt)
        if hit is not None:
            masked = entry.masked.get(hit)
            rule = masked.rule.rule if masked is not None else self._any_rule()
            what = f"the masked column {entry.refname}.{hit}"
            if masked is None:
                what = f"{hit} of {entry.refname}, which has masked columns,"
            raise Refused(
                f"this statement makes the server compute over {what} (an index or "
                "generated column, a constraint, a type change): it would store or echo "
                f"its clear values (masking rule {rule!r}); ask a principal without the "
                "rule to run it",
                rule,
            )

    def _quietly(self, rv: Any) -> _Entry | None:
        """The relation ``rv`` names, None when the snapshot does not know it; DDL is not
        pinned (it is sent as written, as on the fast path). What reading it refuses
        (a materialized view of masked columns, whose index expressions would run over
        its clear values) is refused here too."""
        schema, changed = rv.schemaname, self.changed
        try:
            return self._relation(rv)
        except UnknownRelation:
            return None
        finally:
            rv.schemaname, self.changed = schema, changed

    def _refuse_relinking(self, stmt: Any, entry: _Entry | None) -> None:
        """ALTER TABLE ... INHERIT / NO INHERIT / ATTACH PARTITION / DETACH PARTITION
        with a table a rule names on either side: the rules follow pg_inherits as the
        snapshot has it, so a new parent read in the same transaction (``begin; alter
        table t inherit p; select pw from p``) returned t's rows clear, and a detached
        partition is no longer its masked parent's once the snapshot is read again."""
        if not isinstance(stmt, ast.AlterTableStmt):
            return
        for cmd in stmt.cmds or ():
            if not isinstance(cmd, ast.AlterTableCmd) or cmd.subtype not in _RELINKING:
                continue
            other = cmd.def_.name if isinstance(cmd.def_, ast.PartitionCmd) else cmd.def_
            entries = [entry, self._quietly(other) if isinstance(other, ast.RangeVar) else None]
            guarded = [e for e in entries if e is not None and e.guarded]
            if guarded:
                rule = guarded[0].rule()
                raise Refused(
                    f"changing the inheritance or partitions of {guarded[0].refname}, which "
                    "a masking rule names, would let its rows be read under another "
                    f"table's name (masking rule {rule.rule if rule else self._any_rule()!r}); "
                    "a principal without the rule can do it",
                    rule.rule if rule else self._any_rule(),
                )

    def _with(self, with_clause: Any, outer: list[_Level]) -> set[str]:
        """The CTE names the statement sees. Each CTE's own query sees the CTEs before
        it, and with RECURSIVE every one of them: in ``WITH people AS (SELECT email
        FROM people)`` the inner ``people`` is the table."""
        names: set[str] = set()
        if with_clause is None:
            return names
        ctes = list(with_clause.ctes or ())
        every = {cte.ctename for cte in ctes}
        for cte in ctes:
            if with_clause.recursive:
                names = set(every)
            self._ctes.append(set(names))
            try:
                cte.ctequery = self._nested(cte.ctequery, outer)
            finally:
                self._ctes.pop()
            names.add(cte.ctename)
        return names

    def _nested(self, stmt: Any, outer: list[_Level]) -> Any:
        if isinstance(stmt, ast.SelectStmt):
            return self.select(stmt, outer)
        return self.statement(stmt)

    def select(self, stmt: Any, outer: list[_Level]) -> Any:
        ctes = self._with(stmt.withClause, outer)
        self._ctes.append(ctes)
        try:
            return self._select(stmt, outer)
        finally:
            self._ctes.pop()

    def _select(self, stmt: Any, outer: list[_Level]) -> Any:
        if stmt.op is not None and stmt.op != SetOperation.SETOP_NONE:
            stmt.larg = self.select(stmt.larg, outer)
            stmt.rarg = self.select(stmt.rarg, outer)
            # Its ORDER BY names output columns (masked); LIMIT may hold a subquery.
            for name in ("sortClause", "limitCount", "limitOffset"):
                value = getattr(stmt, name)
                if value is not None:
                    setattr(stmt, name, self.expr(value, outer, _PREDICATE))
            return stmt
        if stmt.valuesLists:
            stmt.valuesLists = tuple(
                tuple(self.expr(v, outer, _OUTPUT) for v in row) for row in stmt.valuesLists
            )
        level: _Level = []
        for item in stmt.fromClause or ():
            self._from_item(item, level, outer)
        scopes = [level, *outer]
        if stmt.fromClause:
            stmt.fromClause = tuple(self._join_quals(i, scopes) for i in stmt.fromClause)
        if stmt.targetList:
            stmt.targetList = tuple(self._targets(stmt.targetList, level, scopes))
        for name in ("whereClause", "havingClause", "limitCount", "limitOffset"):
            value = getattr(stmt, name)
            if value is not None:
                setattr(stmt, name, self.expr(value, scopes, _PREDICATE))
        for name in ("groupClause", "sortClause", "distinctClause", "windowClause"):
            value = getattr(stmt, name)
            if value:
                setattr(stmt, name, self.expr(value, scopes, _PREDICATE))
        return stmt

    def _insert(self, stmt: Any) -> Any:
        before = self.masked_refs  # its WITH may feed the rows it writes
        ctes = self._with(stmt.withClause, [])
        self._ctes.append(ctes)
        try:
            if stmt.selectStmt is not None:
                stmt.selectStmt = self._writing(stmt.selectStmt, before)
            level: _Level = []
            level.append(self._relation(stmt.relation, target=True))
            clause = stmt.onConflictClause
            if clause is not None:
                # DO UPDATE SET writes, as UPDATE's SET does: with ``predicates: allow``
                # (the clause was all a condition) ``SET note = t.pw`` copied the clear
                # value into a column no rule masks. The target and WHERE are conditions.
                if clause.targetList:
                    clause.targetList = tuple(
                        self._set_target(t, [level]) for t in clause.targetList
                    )
                for name in ("infer", "whereClause"):
                    value = getattr(clause, name)
                    if value is not None:
                        setattr(clause, name, self.expr(value, [level], _PREDICATE))
            if stmt.returningList:
                stmt.returningList = tuple(self._targets(stmt.returningList, level, [level]))
        finally:
            self._ctes.pop()
        return stmt

    def _writing(self, select: Any, before: int) -> Any:
        """The rows an INSERT writes: a sensitive column there would be stored masked
        (or, unmasked, copied where it is not masked): refused."""
        self.select(select, [])
        if self.masked_refs != before:
            raise Refused(
                "this INSERT copies a masked column; the gateway neither writes masked "
                "values into a table nor copies clear ones where a rule cannot see them. "
                "A principal without this masking rule can run it",
                self._any_rule(),
            )
        return select

    def _update(self, stmt: Any) -> Any:
        before = self.masked_refs
        ctes = self._with(stmt.withClause, [])
        self._ctes.append(ctes)
        try:
            level: _Level = []
            level.append(self._relation(stmt.relation, target=True))
            for item in stmt.fromClause or ():
                self._from_item(item, level, [])
            scopes = [level]
            if self.masked_refs != before:  # its WITH or FROM computes masked values
                self._set_refused()
            stmt.targetList = tuple(self._set_target(t, scopes) for t in stmt.targetList or ())
            if stmt.whereClause is not None:
                stmt.whereClause = self.expr(stmt.whereClause, scopes, _PREDICATE)
            if stmt.returningList:
                stmt.returningList = tuple(self._targets(stmt.returningList, level, scopes))
        finally:
            self._ctes.pop()
        return stmt

    def _set_target(self, target: Any, scopes: list[_Level]) -> Any:
        before = self.masked_refs
        target.val = self.expr(target.val, scopes, _WRITE)
        if self.masked_refs != before:  # a subquery of a masked column
            self._set_refused()
        return target

    def _set_refused(self) -> None:
        raise Refused(
            "this UPDATE writes a value computed from a masked column; the gateway "
            "neither writes masked values nor copies clear ones. A principal without "
            "the masking rule can run it",
            self._any_rule(),
        )

    def _delete(self, stmt: Any) -> Any:
        ctes = self._with(stmt.withClause, [])
        self._ctes.append(ctes)
        try:
            level: _Level = []
            level.append(self._relation(stmt.relation, target=True))
            for item in stmt.usingClause or ():
                self._from_item(item, level, [])
            if stmt.whereClause is not None:
                stmt.whereClause = self.expr(stmt.whereClause, [level], _PREDICATE)
            if stmt.returningList:
                stmt.returningList = tuple(self._targets(stmt.returningList, level, [level]))
        finally:
            self._ctes.pop()
        return stmt

    def _copy(self, stmt: Any) -> Any:
        if stmt.filename is not None:
            # COPY t FROM PROGRAM 'psql -c "select pw from t"' stored the clear values in
            # a table without rules; a server file can be the table's own storage.
            raise Refused(
                "COPY to or from a server file or program is not supported for principals "
                "under a masking rule: a program can run any SQL and a file can be a "
                "table's storage, past the masking; use COPY ... TO STDOUT or FROM STDIN",
                self._any_rule(),
            )
        if stmt.is_from and isinstance(stmt.relation, ast.RangeVar):
            self._refuse_writing_system(stmt.relation)
        if stmt.query is not None:
            stmt.query = self.statement(stmt.query)
            return stmt
        if stmt.is_from or stmt.relation is None:
            if stmt.whereClause is not None:
                # COPY ... FROM ... WHERE runs over the incoming rows (the client's values),
                # but a routine it calls may read anything: ``WHERE reverse(get_pw(1))::int
                # > 0`` echoed a masked value in its error.
                self._refuse_blocked_calls(stmt.whereClause)
            return stmt
        level: _Level = []
        self._from_item(stmt.relation, level, [])
        entry = level[0]
        listed = _strings(stmt.attlist or ())
        self._refuse_unknown_column_list(listed, entry)
        wanted = set(listed) or set(entry.masked)
        hit = wanted & set(entry.masked)
        if hit:
            rule = entry.masked[sorted(hit)[0]].rule
            raise Refused(
                f"COPY {entry.refname} TO reads masked columns ({', '.join(sorted(hit))}) "
                f"in clear (masking rule {rule.rule!r}); copy a query instead: "
                f"COPY (SELECT ... FROM {entry.refname}) TO STDOUT",
                rule.rule,
            )
        if not listed and entry.named is not None and entry.table is not None:
            # The columns of the snapshot, named: one a rule masks added since is left out.
            columns = entry.table.columns
            stmt.attlist = tuple(_new.String(sval=c) for c, _ in columns)
            self.changed = True
        return stmt

    def _refuse_writing_system(self, rv: Any) -> None:
        """An INSERT, UPDATE, DELETE, MERGE or COPY FROM into a system catalog: with a
        superuser upstream credential it changes what the gateway judges by
        (``UPDATE pg_proc SET proname = 'upper' WHERE proname = 'query_to_xml'`` made
        ``upper(...)`` run SQL text; a row of pg_attribute renames a masked column)."""
        schema = rv.schemaname or None
        name = rv.relname or ""
        if schema is not None:
            system = schema in SYSTEM_SCHEMAS
        else:
            # pg_catalog is searched first unless the search_path places it later.
            system = name in self.catalog.system and (
                name.startswith("pg_") or not self._candidates(None, name)[0]
            )
        tables = () if system else self._candidates(schema, name)[0]
        through = sorted(r[7:] for t in tables for r in t.reads if r.startswith("system "))
        if through:
            # An automatically updatable view over pg_proc (CREATE VIEW pv AS SELECT
            # oid, proname FROM pg_proc; UPDATE pv SET proname = 'upper' ...) writes it.
            name = f"{through[0]} (through the view {name})"
            system = True
        if system:
            raise Refused(
                f"writing to the system catalog {name} is not supported for principals "
                "under a masking rule: it changes the functions, columns and settings the "
                "gateway judges statements by; ask an administrator",
                self._any_rule(),
            )

    def _refuse_masked_references(self, stmt: Any) -> None:
        """A FOREIGN KEY from or to a masked column: validating it compares the clear
        values with another table's, so whether ``ALTER TABLE t ADD FOREIGN KEY (pw)
        REFERENCES guesses (v)`` succeeds said whether every value was among the
        agent's guesses (and a key to it, whether an inserted guess exists): an exact
        oracle, like a join on the column. A key to a table with masked columns must
        name the referenced columns (without them it is the primary key, which the
        snapshot does not know)."""
        own = self._quietly(stmt.relation) if isinstance(stmt, ast.AlterTableStmt) else None
        hit: tuple[str, Masked | None] | None = None

        def visit(node: Any) -> Any:
            nonlocal hit
            if isinstance(node, tuple | list):
                for n in node:
                    visit(n)
            elif isinstance(node, ast.Node):
                if isinstance(node, ast.Constraint) and node.contype == ConstrType.CONSTR_FOREIGN:
                    for column in _strings(node.fk_attrs or ()):
                        if own is not None and column in own.masked:
                            hit = hit or (f"{own.refname}.{column}", own.masked[column])
                    other = (
                        self._quietly(node.pktable)
                        if isinstance(node.pktable, ast.RangeVar)
                        else None
                    )
                    if other is not None and other.masked:
                        named = _strings(node.pk_attrs or ())
                        for column in named or sorted(other.masked):
                            if column in other.masked:
                                hit = hit or (f"{other.refname}.{column}", other.masked[column])
                self._children(node, visit)
            return node

        visit(stmt)
        if hit is not None:
            column, masked = hit
            rule = masked.rule.rule if masked is not None else self._any_rule()
            raise Refused(
                f"a foreign key from or to the masked column {column} compares its clear "
                f"values with another table's, an oracle on them (masking rule {rule!r}); "
                "reference other columns, and name them (REFERENCES t (id))",
                rule,
            )

    def _refuse_unknown_column_list(self, columns: list[str], entry: _Entry) -> None:
        for column in columns:
            self._refuse_unknown_column(column, [entry])

    # ------------------------------------------------------------- FROM

    def _from_item(self, item: Any, level: _Level, outer: list[_Level]) -> None:
        if isinstance(item, ast.RangeVar):
            level.append(self._relation(item))
        elif isinstance(item, ast.JoinExpr):
            start = len(level)
            self._from_item(item.larg, level, outer)
            self._from_item(item.rarg, level, outer)
            if item.alias is not None and any(e.guarded for e in level[start:]):
                raise Refused(
                    f"a join aliased as {item.alias.aliasname!r} over a table with masked "
                    "columns is not supported for this principal; refer to the tables by "
                    "their own names or aliases",
                    self._any_rule(),
                )
            using = _strings(item.usingClause or ())
            if using or item.isNatural:
                self._merged.add(id(level))  # * merges the join columns: not expandable
            if (item.isNatural or "query" in using) and any(e.activity for e in level[start:]):
                # The merged column compares the raw query texts of every session (no
                # column reference to rewrite): an exact-match oracle on them.
                raise Refused(
                    "pg_stat_activity in a NATURAL join or a join USING (query) compares "
                    "other sessions' query texts; join ON other columns (query shows this "
                    "session's only)",
                    self._any_rule(),
                )
            if item.isNatural:
                using = [c for e in level for c in e.masked]
            for name in using:
                for entry in level:
                    if name in entry.masked:
                        self._predicate_refused(entry.masked[name].rule, name, "a join")
        elif isinstance(item, ast.RangeSubselect):
            scopes = [*([level] if item.lateral else []), *outer]
            item.subquery = self._nested(item.subquery, scopes)
            level.append(_Entry(item.alias.aliasname if item.alias else "", None, None, {}))
        elif isinstance(item, ast.RangeFunction):
            # A function in FROM sees the items before it with or without LATERAL
            # (there it is a noise word): ``FROM t, unnest(array[email])``.
            item.functions = self.expr(item.functions, [level, *outer], _OUTPUT)
            name = item.alias.aliasname if item.alias else _function_refname(item)
            level.append(_Entry(name, None, None, {}))
        elif (
            isinstance(item, ast.RangeTableSample)
            and isinstance(item.relation, ast.RangeVar)
            and _strings(item.method or ())[-1:] in (["system"], ["bernoulli"])
        ):
            # A sample of the table's rows: its columns are the table's, masked as in
            # a plain FROM (and * expanded, new columns refused, whole rows refused).
            # The sampling arguments cannot name its columns.
            for part in ("args", "repeatable"):
                value = getattr(item, part)
                if value is not None:
                    setattr(item, part, self.expr(value, outer, _PREDICATE))
            level.append(self._relation(item.relation))
        else:
            # XMLTABLE, JSON_TABLE, other sampling methods... over a table a rule names:
            # not proven safe.
            level.append(_Entry("", None, None, {}))
            if self._mentions_masked(item):
                raise Refused(
                    f"{type(item).__name__} over a table with masked columns is not "
                    "supported for this principal; select the columns instead",
                    self._any_rule(),
                )
            self.expr(item, [level, *outer], _OUTPUT)  # masks its column references

    def _join_quals(self, item: Any, scopes: list[_Level]) -> Any:
        if isinstance(item, ast.JoinExpr):
            item.larg = self._join_quals(item.larg, scopes)
            item.rarg = self._join_quals(item.rarg, scopes)
            if item.quals is not None:
                item.quals = self.expr(item.quals, scopes, _PREDICATE)
        return item

    def _relation(self, rv: Any, target: bool = False) -> _Entry:
        """``target``: the table an INSERT, UPDATE or DELETE writes, which is never a CTE
        (``WITH t AS (SELECT 1) UPDATE t SET note = reverse(pw)`` writes the table t:
        taken for the CTE, its masked columns were read clear)."""
        schema = rv.schemaname or None  # the parser folded unquoted names already
        name = rv.relname or ""
        refname = rv.alias.aliasname if rv.alias else rv.relname
        if schema is None and not target and any(name in c for c in self._ctes):
            return _Entry(refname, None, None, {})
        if target:
            self._refuse_writing_system(rv)
        if schema == MASK_SCHEMA:
            raise Refused(
                f"the {MASK_SCHEMA} schema holds the gateway's masking key and functions; "
                "it cannot be read by a masked principal",
                self._any_rule(),
            )
        if schema in (None, "pg_catalog") and name in BLOCKED_RELATIONS:
            raise Refused(
                f"pg_catalog.{name} exposes row values or secrets (statistics samples, "
                "password verifiers, large objects) and is blocked for principals under "
                "a masking rule; ask a human without it",
                self._any_rule(),
            )
        if schema in (None, "pg_catalog") and name in _ACTIVITY:
            if rv.alias is not None and rv.alias.colnames:
                # pg_stat_activity a(c1, ..., q): the query column under another name.
                raise Refused(
                    "pg_stat_activity with renamed columns is not supported for a masked "
                    "principal (query shows this session's only); alias the columns in the "
                    "select list instead",
                    self._any_rule(),
                )
            return _Entry(refname, "pg_catalog", None, {}, activity=True)
        if schema in SYSTEM_SCHEMAS:
            return _Entry(refname, schema, None, {})
        tables, shadows = self._candidates(schema, name)
        if any(t.schema == MASK_SCHEMA for t in tables):
            # Unqualified, after SET search_path = wardgate_mask: the same key.
            raise Refused(
                f"{name!r} may name a relation of the {MASK_SCHEMA} schema (the session's "
                "search_path decides), which holds the gateway's masking key; it cannot be "
                "read by a masked principal",
                self._any_rule(),
            )
        if not tables:
            if schema is None and name in self.catalog.system:
                return _Entry(refname, "pg_catalog", None, {})
            where = ""
            if schema is None and self.paths is not None and self.catalog.tables.get(name):
                where = (
                    " in a schema of the session's search_path ("
                    + "; ".join(", ".join(p) for p in self.paths)
                    + ")"
                )
            raise UnknownRelation(
                f"relation {name!r} is not in the gateway's catalog snapshot{where}, so it "
                "cannot tell whether it holds masked columns; if it was just created, retry "
                "in a few seconds",
                self._any_rule(),
            )
        # An unqualified name may mean the tables of several schemas (every value the
        # session's search_path may have): every candidate's masked columns count, and
        # the rules of the schemas searched before it (a table created there since).
        renamed = _strings(rv.alias.colnames or ()) if rv.alias is not None else []
        masked: dict[str, Masked] = {}
        for table in tables:
            self._refuse_view(table)
            for i, (column, type_name) in enumerate(table.columns):
                visible = renamed[i] if i < len(renamed) else column
                rule = self._column_rule(table, column)
                for shadow in shadows:
                    rule = rule or self._column_rule(shadow, column)
                if rule is not None:
                    previous = masked.get(visible)
                    if previous is not None and previous.type != type_name:
                        raise Refused(
                            f"{name!r} names tables in several schemas whose masked column "
                            f"{column!r} differ in type; qualify the table with its schema",
                            rule.rule,
                        )
                    masked[visible] = Masked(rule, type_name)
        first = tables[0].columns
        names = tuple(
            renamed[i] if i < len(renamed) else column for i, (column, _) in enumerate(first)
        )
        all_names = {
            renamed[i] if i < len(renamed) else c
            for t in tables
            for i, (c, _) in enumerate(t.columns)
        }
        names += tuple(sorted(all_names - set(names)))
        named = next(
            (r for t in (*tables, *shadows) if (r := self._table_rule(t)) is not None), None
        )
        if self.pin and schema is None and len(tables) == 1 and name not in self.catalog.system:
            # Pinned: the server reads the table judged here whatever its search_path has
            # become (SQL the gateway never sees can change it); the reference keeps its
            # name (``FROM s.t`` is still ``t``), so column references bind the same.
            rv.schemaname = pin_schema(tables[0])
            self.changed = True
        return _Entry(
            refname,
            schema,
            tables[0],
            masked,
            names=names,
            named=named,
            shadows=shadows,
            ambiguous=len(tables) > 1,
        )

    def _candidates(
        self, schema: str | None, name: str
    ) -> tuple[tuple[Table, ...], tuple[Table, ...]]:
        """The tables a relation name may mean, and the shadows (MaskCatalog.resolve).
        A name that may mean several tables cannot be pinned to one schema, so the server
        resolves it by its search_path, which SQL the gateway never sees may have set to
        anything: every schema's table of the name counts, as with an unknown path."""
        if schema is not None:
            return tuple(t for t in self.catalog.tables.get(name, ()) if t.schema == schema), ()
        tables, shadows = self.catalog.resolve(name, self.paths)
        if len(tables) > 1:
            return self.catalog.tables.get(name, ()), shadows
        return tables, shadows

    def _table_rule(self, table: Table) -> ColumnRule | None:
        """A rule whose glob names this table, or a parent or child of it, whatever the
        column: a column added since the catalog snapshot may be one it masks."""
        related = ((table.schema, table.name), *table.children, *self.catalog.parents(table))
        for rule in self.rules:
            table_glob = rule.glob.rpartition(".")[0]
            for schema, name in related:
                qualified = f"{schema}.{name}".lower()
                # ``*.t.email``: its table part; ``public.*``: any column name matches.
                if fnmatchcase(qualified, table_glob) or fnmatchcase(f"{qualified}.*", rule.glob):
                    return rule
        return None

    def _refuse_view(self, table: Table) -> None:
        for read in sorted(table.reads):
            if read.startswith("system "):
                # A system relation from the rule's range table, which pg_depend does not
                # record for pinned catalogs (pg_statistic, pg_authid): read, allowed,
                # unless it is one the rewriter refuses to read directly (written:
                # _refuse_writing_system).
                if read[7:] not in BLOCKED_RELATIONS:
                    continue
                raise Refused(
                    f"view {table.schema}.{table.name} reads pg_catalog.{read[7:]}, which "
                    "exposes row values or secrets to principals under a masking rule; ask "
                    "a human without it",
                    self._any_rule(),
                )
            schema, _, rest = read.partition(".")
            if schema == "pg_catalog" or read.startswith("function pg_catalog."):
                raise Refused(
                    f"view {table.schema}.{table.name} reads {read.removeprefix('function ')}, "
                    "which exposes row values or secrets to principals under a masking "
                    "rule; ask a human without it",
                    self._any_rule(),
                )
            if read.startswith("function "):
                raise Refused(
                    f"view {table.schema}.{table.name} calls the user routine "
                    f"{read[9:]}, which may read masked columns in clear; select from the "
                    "tables instead",
                    self._any_rule(),
                )
            rule = self._read_rule(read)
            if rule is not None:
                raise Refused(
                    f"view {table.schema}.{table.name} reads the masked column "
                    f"{read} (masking rule {rule.rule!r}); the view's result cannot be "
                    "masked by name. Select from the tables instead",
                    rule.rule,
                )

    def _read_rule(self, read: str) -> ColumnRule | None:
        """The rule masking what a view reads: ``schema.table.column``, or any masked
        column of ``schema.table.*`` (a whole row)."""
        schema, name, column = read.split(".", 2)
        rule = self._rule_for(read) if column != "*" else None
        for table in self.catalog.tables.get(name, ()):
            if table.schema == schema and rule is None:
                columns = [c for c, _ in table.columns] if column == "*" else [column]
                rule = next(
                    (r for c in columns if (r := self._column_rule(table, c)) is not None), None
                )
        return rule

    def _column_rule(self, table: Table, column: str) -> ColumnRule | None:
        """A rule on this column of the table, or of any of its partitions or
        inheritance children (a read of the parent returns their rows), or of a table
        it is a partition or child of (its rows are the parent's rows, read directly)."""
        rule = self._rule_for(f"{table.schema}.{table.name}.{column}")
        for schema, name in (*sorted(table.children), *self.catalog.parents(table)):
            if rule is None:
                rule = self._rule_for(f"{schema}.{name}.{column}")
        return rule

    def _rule_for(self, qualified: str) -> ColumnRule | None:
        qualified = qualified.lower()
        for rule in self.rules:
            if fnmatchcase(qualified, rule.glob):
                return rule
        return None

    def _any_rule(self) -> str:
        return self.rules[0].rule if self.rules else "masking"

    # ------------------------------------------------------------- target lists

    def _targets(self, targets: Iterable[Any], level: _Level, scopes: list[_Level]) -> list[Any]:
        out: list[Any] = []
        for target in targets:
            val = target.val
            if isinstance(val, ast.ColumnRef) and isinstance(val.fields[-1], ast.A_Star):
                out.extend(self._star(val, level, scopes))
                continue
            name = _column_name(val) if target.name is None else None
            before = self.masked_refs
            target.val = self.expr(val, scopes, _OUTPUT)
            if name is not None and self.masked_refs != before:
                target.name = name  # the column keeps the name PostgreSQL gave it
            out.append(target)
        return out

    def _star(self, ref: Any, level: _Level, scopes: list[_Level]) -> list[Any]:
        """``*`` or ``t.*``: as is when no masked column is under it, else expanded
        from the catalog into the columns, in order, masked where a rule says so."""
        names = _strings(ref.fields)
        if names:
            entries = [e for e in level if e.refname == names[-1]]
            if not entries:
                entries = [e for lv in scopes[1:] for e in lv if e.refname == names[-1]]
        else:
            entries = list(level)
        if not any(e.guarded or e.activity for e in entries):
            return [_new.ResTarget(val=ref)]
        if not names and id(level) in self._merged:
            raise Refused(
                "SELECT * over a join with USING or NATURAL and a table with masked columns "
                "cannot be expanded exactly (the join columns merge); name the columns",
                self._any_rule(),
            )
        out: list[Any] = []
        for entry in entries:
            if entry.activity:
                raise Refused(
                    "SELECT * from pg_stat_activity is not supported for a masked principal; "
                    "name the columns (query is shown for this session only)",
                    self._any_rule(),
                )
            if not entry.guarded:
                if not entry.refname:
                    # A bare * here would expand the masked tables' columns too.
                    raise Refused(
                        "SELECT * over a table with masked columns and a subquery or "
                        "function without an alias cannot be expanded exactly; give it an "
                        "alias or name the columns",
                        self._any_rule(),
                    )
                star = _new.ColumnRef(fields=(_new.String(sval=entry.refname), _new.A_Star()))
                out.append(_new.ResTarget(val=star))
                continue
            table = entry.table
            assert table is not None  # only tables have masked columns
            if entry.ambiguous:
                raise Refused(
                    f"SELECT * over {entry.refname!r}, a name that may mean tables of "
                    "several schemas (the session's search_path may have several values, "
                    "or it is not known), cannot be expanded exactly; qualify it with its "
                    "schema or name the columns",
                    (entry.rule() or ColumnRule(self._any_rule(), "", "")).rule,
                )
            for column in entry.names[: len(table.columns)]:
                col = _new.ColumnRef(
                    fields=(_new.String(sval=entry.refname), _new.String(sval=column))
                )
                masked = entry.masked.get(column)
                val = col if masked is None else self._masked(col, masked)
                out.append(_new.ResTarget(name=column, val=val))
        self.changed = True
        return out

    # ------------------------------------------------------------- expressions

    def expr(self, node: Any, scopes: list[_Level], context: str) -> Any:
        if isinstance(node, tuple | list):
            return tuple(self.expr(n, scopes, context) for n in node)
        if not isinstance(node, ast.Node):
            return node
        if isinstance(node, ast.ColumnRef):
            return self._column(node, scopes, context)
        if isinstance(node, ast.SubLink):
            node.testexpr = self.expr(node.testexpr, scopes, context)
            node.subselect = self._nested(node.subselect, scopes)
            return node
        if isinstance(node, ast.SelectStmt):
            return self.select(node, scopes)
        if isinstance(node, ast.RangeVar):
            self._relation(node)
            return node
        if isinstance(node, ast.FuncCall):
            return self._call(node, scopes, context)
        if isinstance(node, ast.A_Expr):
            self._refuse_user_operator(_strings(node.name or ()))
        if isinstance(node, ast.TypeCast) and node.typeName is not None:
            self._refuse_user_type(_strings(node.typeName.names or ()))
        if isinstance(node, ast.A_Expr) and context == _PREDICATE:
            joined = self._pseudonym_equality(node, scopes)
            if joined is not None:
                return joined
        if isinstance(node, ast.WindowDef):
            context = _PREDICATE  # a window's order is an oracle on its values
        return self._children(node, lambda n: self.expr(n, scopes, context))

    def _children(self, node: Any, fn: Callable[[Any], Any]) -> Any:
        for name in type(node).__slots__:
            value = getattr(node, name, None)
            if isinstance(value, ast.Node | tuple | list):
                new = fn(value)
                if new is not value:
                    setattr(node, name, new)
        return node

    def _refuse_blocked_calls(self, stmt: Any) -> None:
        """Any other statement (DDL): a blocked built-in, a wardgate_mask function or a
        routine that is not a built-in in it (a column default, a constraint, an index
        expression), an operator implemented by a user routine or a cast to a type whose
        cast, input or CHECK may run one, runs later, on the server, past the rewrite:
        ``CREATE TABLE x (v text DEFAULT pg_stat_get_backend_activity(7))`` and an INSERT
        stored another session's query; ``ALTER TABLE o ADD COLUMN w text DEFAULT
        get_pw(1)`` (a function someone else made, refused in a query) stored the clear
        value at the next INSERT, and a CHECK over it echoed it."""

        def visit(node: Any) -> Any:
            if isinstance(node, tuple | list):
                for n in node:
                    visit(n)
            elif isinstance(node, ast.Node):
                if isinstance(node, ast.FuncCall):
                    self._refuse_blocked_call(_strings(node.funcname))
                    self._refuse_user_call(_strings(node.funcname))
                if isinstance(node, ast.A_Expr):
                    self._refuse_user_operator(_strings(node.name or ()))
                if isinstance(node, ast.TypeCast) and node.typeName is not None:
                    self._refuse_user_type(_strings(node.typeName.names or ()))
                self._children(node, visit)
            return node

        visit(stmt)

    def _refuse_blocked_call(self, names: list[str]) -> None:
        name = names[-1]
        schema = names[0] if len(names) > 1 else None
        if name in BLOCKED_FUNCTIONS and schema in (None, "pg_catalog"):
            raise Refused(
                f"{name}() reads values past the masking (SQL text, files, large objects, "
                "statistics or other sessions' queries) and is blocked for principals under "
                "a masking rule",
                self._any_rule(),
            )
        if schema == MASK_SCHEMA:
            raise Refused(
                f"the {MASK_SCHEMA} functions are the gateway's; calling them directly is "
                "an oracle on the masking key",
                self._any_rule(),
            )

    def _refuse_user_call(self, names: list[str]) -> None:
        name = names[-1]
        schema = names[0] if len(names) > 1 else None
        builtin = schema in (None, "pg_catalog") and (
            name in BUILTIN_READ_ONLY or name in WRITE_FUNCTIONS
        )
        if not builtin or (schema is None and name in self.catalog.user_functions):
            raise Refused(
                f"{'.'.join(names)}() is not a built-in function; a user routine may read "
                "masked columns in clear, so it is refused for principals under a masking "
                "rule",
                self._any_rule(),
            )

    def _refuse_user_operator(self, operator: list[str]) -> None:
        if operator and operator[-1] in self.catalog.user_operators:
            raise Refused(
                f"the operator {operator[-1]} runs a user routine, which may read masked "
                "columns in clear; it is refused for principals under a masking rule",
                self._any_rule(),
            )

    def _refuse_user_type(self, type_name: list[str]) -> None:
        if type_name and type_name[-1] in self.catalog.user_types:
            raise Refused(
                f"a cast to {'.'.join(type_name)} may run a user routine (its cast, "
                "input function or domain CHECK), which may read masked columns in "
                "clear; it is refused for principals under a masking rule",
                self._any_rule(),
            )

    def _call(self, node: Any, scopes: list[_Level], context: str) -> Any:
        names = _strings(node.funcname)
        name = names[-1]
        self._refuse_blocked_call(names)
        self._refuse_user_call(names)
        for arg in node.args or ():
            self._refuse_whole_row(arg, scopes, f"{name}()")
        for part in ("args", "agg_order", "agg_filter", "over"):
            value = getattr(node, part)
            if value is None:
                continue
            # An ordered-set aggregate's WITHIN GROUP (ORDER BY x) is its input, not an
            # order: mode() and percentile_disc() return a value of x (with ``predicates:
            # allow`` they returned the clear value), so x is masked as an argument is.
            within = part == "agg_order" and node.agg_within_group
            sub = context if part == "args" or within else _PREDICATE
            setattr(node, part, self.expr(value, scopes, sub))
        return node

    def _refuse_whole_row(self, arg: Any, scopes: list[_Level], where: str) -> None:
        if not isinstance(arg, ast.ColumnRef):
            return
        names = _strings(arg.fields)
        star = isinstance(arg.fields[-1], ast.A_Star)
        if star or (len(names) == 1 and self._find(names[0], scopes) is None):
            entry = self._entry(names[-1], scopes) if names else None
            entries = [entry] if entry is not None else (scopes[0] if not names else [])
            for e in entries:
                if e.guarded or e.activity:
                    self._whole_row_refused(e, where)

    def _whole_row_refused(self, entry: _Entry, where: str) -> None:
        if entry.activity:
            raise Refused(
                f"a whole-row reference to pg_stat_activity in {where} would carry other "
                "sessions' query texts; name the columns instead (query shows this "
                "session's only)",
                self._any_rule(),
            )
        rule = entry.rule()
        assert rule is not None  # only guarded tables come here
        columns = ", ".join(sorted(entry.masked)) or "columns a rule on the table may mask"
        raise Refused(
            f"a whole-row reference to {entry.refname!r} in {where} would carry its masked "
            f"columns ({columns}, masking rule {rule.rule!r}) in "
            "clear; name the columns instead",
            rule.rule,
        )

    def _entry(self, refname: str, scopes: list[_Level]) -> _Entry | None:
        for level in scopes:
            for entry in level:
                if entry.refname == refname:
                    return entry
        return None

    def _find(self, column: str, scopes: list[_Level]) -> _Entry | None:
        """The relation an unqualified column name resolves to, innermost first; a
        subquery's or function's output (unknown columns) is safe."""
        for level in scopes:
            hits = [e for e in level if e.has(column) or (e.activity and column == "query")]
            if hits:
                masked = [e for e in hits if column in e.masked or e.activity]
                return masked[0] if masked else hits[0]
        return None

    def _column(self, ref: Any, scopes: list[_Level], context: str) -> Any:
        names = _strings(ref.fields)
        if isinstance(ref.fields[-1], ast.A_Star):
            self._refuse_whole_row(ref, scopes, "an expression")
            return ref
        column = names[-1]
        if len(names) == 1:
            entry = self._find(column, scopes)
            if entry is None:
                whole = self._entry(column, scopes)
                if whole is not None and (whole.guarded or whole.activity):
                    self._whole_row_refused(whole, "an expression")
                self._refuse_unknown_column(column, [e for level in scopes for e in level])
                return ref
        else:
            entry = self._entry(names[-2], scopes)
            if entry is None:
                return ref
            if not entry.has(column):
                self._refuse_unknown_column(column, [entry])
                known = entry.activity and column in _ACTIVITY_COLUMNS
                if (entry.guarded or entry.activity) and not known:
                    # p.row_to_json is row_to_json(p): a function on the whole row.
                    self._whole_row_refused(entry, f"{entry.refname}.{column}")
        if entry.activity and column == "query":
            self.changed = True
            pid = _deparse(_new.ColumnRef(fields=(*ref.fields[:-1], _new.String(sval="pid"))))
            return _parse_expr(
                f"CASE WHEN {pid} = pg_catalog.pg_backend_pid() THEN {_deparse(ref)} END"
            )
        masked = entry.masked.get(column)
        if masked is None:
            return ref
        if context == _WRITE:
            raise Refused(
                f"this statement writes a value computed from the masked column "
                f"{entry.refname}.{column} (masking rule {masked.rule.rule!r}); the gateway "
                "neither writes masked values nor copies clear ones. A principal without "
                "this rule can run it",
                masked.rule.rule,
            )
        if context == _PREDICATE:
            if masked.rule.predicates == "allow":
                return ref
            self._predicate_refused(masked.rule, column, "a condition, grouping or ordering")
        return self._masked(ref, masked)

    def _refuse_unknown_column(self, column: str, entries: list[_Entry]) -> None:
        """A column the snapshot does not list (added since?) whose name a rule would
        mask on one of these tables: refused until the snapshot knows it."""
        for entry in entries:
            table = entry.table
            if table is None or entry.has(column):
                continue
            rule = self._column_rule(table, column)
            for shadow in entry.shadows:
                rule = rule or self._column_rule(shadow, column)
            if rule is not None:
                raise Refused(
                    f"column {column!r} of {table.schema}.{table.name} is not in the "
                    f"gateway's catalog snapshot and masking rule {rule.rule!r} would mask "
                    "it; if it was just added, retry in a few seconds",
                    rule.rule,
                )

    def _masked(self, ref: Any, masked: Masked) -> Any:
        self.changed = True
        self.masked_refs += 1
        return _parse_expr(mask_expression(_deparse(ref), masked, self.catalog.functions_installed))

    def _predicate_refused(self, rule: ColumnRule, column: str, where: str) -> None:
        if rule.predicates == "allow":
            return
        raise Refused(
            f"the masked column {column!r} is used in {where}: a condition on clear values "
            f"is an oracle on them (masking rule {rule.rule!r}, predicates: block). Filter "
            "on other columns, or ask for the rule to set predicates: allow",
            rule.rule,
        )

    def _pseudonym_equality(self, node: Any, scopes: list[_Level]) -> Any:
        """``a.key = b.key`` between two pseudonymised columns: compared as pseudonyms
        (deterministic, so the join still matches) and allowed by default."""
        if _strings(node.name or ()) != ["="]:
            return None
        sides = []
        for side in (node.lexpr, node.rexpr):
            if not isinstance(side, ast.ColumnRef) or isinstance(side.fields[-1], ast.A_Star):
                return None
            names = _strings(side.fields)
            entry = (
                self._find(names[0], scopes) if len(names) == 1 else self._entry(names[-2], scopes)
            )
            masked = entry.masked.get(names[-1]) if entry is not None else None
            if masked is None or masked.rule.strategy != "pseudonym":
                return None
            if masked.rule.predicates == "allow":
                return None
            sides.append(masked)
        if not self.catalog.functions_installed or not all(_is_text(m.type) for m in sides):
            return None
        node.lexpr = self._masked(node.lexpr, sides[0])
        node.rexpr = self._masked(node.rexpr, sides[1])
        return node

    def _mentions_masked(self, node: Any) -> bool:
        found = False

        def visit(n: Any) -> Any:
            nonlocal found
            if isinstance(n, tuple | list):
                for x in n:
                    visit(x)
            elif isinstance(n, ast.RangeVar):
                # Guarded, not only masked: a rule naming the table may mask a column
                # added since the snapshot, which this statement may read.
                entry = self._relation(n)
                found = found or entry.guarded or entry.activity
            elif isinstance(n, ast.Node):
                self._children(n, visit)
            return n

        visit(copy.copy(node))
        return found
