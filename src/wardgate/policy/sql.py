"""What a PostgreSQL statement *does*, from the real grammar (pglast), never from its text.

Each statement gets a class (read, write, ddl, admin, unknown) and precise kinds.
The walk covers the whole tree, so a write hidden in a CTE, a sub-query or a
side-effecting function call is seen. Anything the parser cannot understand is
``unknown``; the gate fails closed on it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from pglast.parser import ParseError, fingerprint, parse_sql_json

from wardgate.actions import StatementInfo
from wardgate.policy.functions import function_class

# The order of severity between classes, used when a statement mixes several.
_CLASS_RANK = {"read": 0, "write": 1, "ddl": 2, "admin": 3, "unknown": 4}

_DML = {
    "InsertStmt": "insert",
    "UpdateStmt": "update",
    "DeleteStmt": "delete",
    "MergeStmt": "merge",
}

# Top-level statements whose class is fixed by their node type.
_FIXED: dict[str, tuple[str, str]] = {
    "TransactionStmt": ("read", "transaction"),
    "VariableShowStmt": ("read", "show"),
    "FetchStmt": ("read", "fetch"),
    "ClosePortalStmt": ("read", "close_cursor"),
    "DeallocateStmt": ("read", "deallocate"),
    "ListenStmt": ("read", "listen"),
    "UnlistenStmt": ("read", "unlisten"),
    "DiscardStmt": ("read", "discard"),
    "NotifyStmt": ("write", "notify"),
    "CallStmt": ("write", "call"),
    "LockStmt": ("write", "lock"),
    "ExecuteStmt": ("write", "execute"),  # what a PREPAREd name runs is not visible here
    "TruncateStmt": ("ddl", "truncate"),
    "DropStmt": ("ddl", "drop"),
    "RenameStmt": ("ddl", "alter"),
    "CommentStmt": ("ddl", "comment"),
    "DoStmt": ("admin", "do_block"),
    "GrantStmt": ("admin", "grant"),
    "GrantRoleStmt": ("admin", "grant"),
    "CreateRoleStmt": ("admin", "create_role"),
    "AlterRoleStmt": ("admin", "alter_role"),
    "AlterRoleSetStmt": ("admin", "alter_role"),
    "DropRoleStmt": ("admin", "drop_role"),
    "VacuumStmt": ("admin", "vacuum"),
    "ReindexStmt": ("admin", "reindex"),
    "ClusterStmt": ("admin", "cluster"),
    "CheckPointStmt": ("admin", "checkpoint"),
    "AlterSystemStmt": ("admin", "alter_system"),
    "LoadStmt": ("admin", "load"),
    "CreatedbStmt": ("admin", "create_database"),
    "DropdbStmt": ("admin", "drop_database"),
    "AlterDatabaseStmt": ("admin", "alter_database"),
    "AlterDatabaseSetStmt": ("admin", "alter_database"),
    "DropOwnedStmt": ("admin", "drop_owned"),
    "ReassignOwnedStmt": ("admin", "reassign_owned"),
    "CreateTableSpaceStmt": ("admin", "tablespace"),
    "DropTableSpaceStmt": ("admin", "tablespace"),
    "AlterOwnerStmt": ("admin", "alter_owner"),
    "CreateSubscriptionStmt": ("admin", "subscription"),
    "AlterSubscriptionStmt": ("admin", "subscription"),
    "DropSubscriptionStmt": ("admin", "subscription"),
    "CreateUserMappingStmt": ("admin", "user_mapping"),
    "AlterUserMappingStmt": ("admin", "user_mapping"),
    "CreateForeignServerStmt": ("admin", "foreign_server"),
    "CreateExtensionStmt": ("admin", "create_extension"),
    "SecLabelStmt": ("admin", "security_label"),
}

# Every kind the classifier gives (besides "function:<name>"); guardrails may only name
# these, so a typo in a policy is an error instead of a rule that never matches.
KNOWN_KINDS = frozenset(
    {
        *(kind for _, kind in _FIXED.values()),
        "select", "select_into", "select_for_update", "no_limit", "insert", "update",
        "delete", "merge", "update_without_where", "delete_without_where", "copy_to",
        "copy_from", "copy_file", "copy_to_program", "copy_from_program", "explain",
        "explain_analyze", "set", "reset_role", "set_role", "set_session", "read_only_off",
        "transaction_mode", "parser_setting", "search_path", "search_path_shadowing", "prepare", "declare_cursor", "create", "alter",
        "drop", "unknown_function", "parse_error",
    }
)  # fmt: skip

# Settings whose change lifts a privilege boundary or the read-only guard.
_GUARDED_SETTINGS = {
    "role": "set_role",
    "session_authorization": "set_session",
    "transaction_read_only": "read_only_off",
    "default_transaction_read_only": "read_only_off",
    "transaction_isolation": "set",
}


def _walk(node: Any) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every (parent field, node type, fields) in a pglast JSON tree, depth first.

    The parent field is the name under which the node sits in its parent ("relation",
    "fromClause", ...); it tells a table that is written from one that is read.
    """
    stack: list[tuple[str, Any]] = [("", node)]
    while stack:
        key, item = stack.pop()
        if isinstance(item, dict):
            if "relname" in item:
                # A field typed RangeVar (InsertStmt.relation, IntoClause.rel ...) comes
                # without its type wrapper.
                yield key, "RangeVar", item
            for k, v in item.items():
                if isinstance(v, dict) and k[:1].isupper():
                    yield key, k, v
                    stack.extend((fk, fv) for fk, fv in v.items() if isinstance(fv, dict | list))
                elif isinstance(v, dict | list):
                    stack.append((k, v))
        elif isinstance(item, list):
            stack.extend((key, x) for x in item)


def _names(parts: list[Any]) -> list[str]:
    return [p["String"]["sval"] for p in parts if "String" in p]


def _func_name(fields: dict[str, Any]) -> tuple[str | None, str]:
    """(schema or None, name) as written; unquoted names are already lower-case."""
    parts = _names(fields.get("funcname", []))
    if not parts:
        return None, ""
    return (parts[-2] if len(parts) > 1 else None), parts[-1]


def _relation(fields: dict[str, Any]) -> str:
    name = str(fields.get("relname", ""))
    schema = fields.get("schemaname")
    return f"{schema}.{name}" if schema else name


# Fields under which a table is the target of a change rather than read.
_WRITTEN_FIELDS = frozenset({"relation", "relations", "rel", "view", "sequence", "objects"})
_DROPPED_RELATIONS = frozenset(
    {"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE", "OBJECT_SEQUENCE",
     "OBJECT_INDEX"}
)  # fmt: skip


# Settings that change how the server's lexer reads SQL text. pglast always reads it
# with standard_conforming_strings on; with it off, 'a\\'' hides whatever follows, so the
# gateway would judge a different statement from the one the server runs.
PARSER_SETTINGS = frozenset({"standard_conforming_strings"})


def _explain_analyzes(options: list[Any]) -> bool:
    """EXPLAIN (ANALYZE) runs the statement; EXPLAIN (ANALYZE false|off|0) does not."""
    for option in options:
        elem = option.get("DefElem", {})
        if elem.get("defname") != "analyze":
            continue
        arg = elem.get("arg")
        if arg is None:
            return True
        value = str(next(iter(next(iter(arg.values())).values()), "")).lower()
        ((kind, body),) = arg.items()
        if kind == "Boolean":
            return bool(body.get("boolval"))
        if kind == "Integer":
            return bool(body.get("ival"))
        return value not in ("false", "off", "0", "no")
    return False


def _setting_class(name: str, values: list[str] | None = None) -> tuple[str, list[str]]:
    """A change of setting ``name``; ``values`` are its new values when known (None when
    chosen at run time or reset)."""
    name = name.lower()
    if name in PARSER_SETTINGS:
        return "admin", ["parser_setting"]
    if name == "search_path":
        if values is not None and not search_path_shadows_builtins(values):
            return "read", ["set", "search_path"]
        # Ahead of pg_catalog, a schema's functions replace the built-ins the gate
        # trusts by name (evil.lower() runs for lower()).
        return "admin", ["set", "search_path", "search_path_shadowing"]
    kind = _GUARDED_SETTINGS.get(name, "set")
    if kind == "set":
        return "read", ["set"]
    # Turning read-only off grants nothing beyond writing: a role that may write may.
    return ("write" if kind == "read_only_off" else "admin"), [kind]


def search_path_shadows_builtins(values: list[str]) -> bool:
    """True when a search_path lists pg_catalog after another schema.

    Unlisted, pg_catalog is searched first, so built-in names cannot be shadowed.
    ``values`` are the list elements as given (a quoted string may hold several).
    """
    schemas: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part.startswith('"') and part.endswith('"') and len(part) >= 2:
                schemas.append(part[1:-1].replace('""', '"'))
            elif part:
                schemas.append(part.lower())
    return "pg_catalog" in schemas and schemas[0] != "pg_catalog"


def _turns_read_only_off(options: list[Any]) -> bool:
    """True when transaction modes (SET TRANSACTION, BEGIN ...) include READ WRITE."""
    for option in options:
        elem = option.get("DefElem", {})
        if elem.get("defname") == "transaction_read_only":
            # READ WRITE is the integer constant 0, which pglast's JSON leaves empty.
            if not elem.get("arg", {}).get("A_Const", {}).get("ival", {}).get("ival"):
                return True
    return False


def _classify_set(fields: dict[str, Any]) -> tuple[str, list[str]]:
    name = str(fields.get("name", "")).lower()
    kind = fields.get("kind")
    if name in PARSER_SETTINGS:
        return _setting_class(name)  # even RESET: the server's default is not ours to trust
    if kind == "VAR_RESET_ALL":
        # RESET ALL leaves role, session authorization and transaction_read_only alone
        # (PostgreSQL marks them GUC_NO_RESET_ALL): poolers send it on every release.
        return "read", ["set"]
    if kind == "VAR_SET_MULTI":
        if _turns_read_only_off(fields.get("args", [])):
            return "write", ["transaction_mode", "read_only_off"]
        return "read", ["transaction_mode"]
    if name in ("role", "session_authorization") and kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        # Back to the credential the gateway dialled with: no privilege is gained.
        return "read", ["reset_role"]
    if name == "search_path" and kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        return "read", ["set", "search_path"]  # back to the session's (checked) start value
    values = [_const_text(a) for a in fields.get("args", [])]
    return _setting_class(name, None if None in values else [v for v in values if v is not None])


def _const_text(node: dict[str, Any]) -> str | None:
    const = node.get("A_Const")
    if const is None or "sval" not in const:
        return None
    return str(const["sval"].get("sval", ""))


def _classify_set_config(call: dict[str, Any]) -> tuple[str, list[str]]:
    """set_config(name, value, is_local) is judged like SET name when name is a literal."""
    args = call.get("args", [])
    literal = args[0].get("A_Const", {}).get("sval", {}).get("sval") if args else None
    if not isinstance(literal, str):
        # The setting is chosen at run time: it could be a parser setting too.
        return "admin", ["function:set_config", "parser_setting"]
    value = _const_text(args[1]) if len(args) > 1 else None
    klass, kinds = _setting_class(literal, None if value is None else [value])
    return klass, ["function:set_config", *kinds]


def _classify_node(node_type: str, fields: dict[str, Any]) -> tuple[str, list[str]]:
    if node_type == "TransactionStmt" and fields.get("options"):
        if _turns_read_only_off(fields["options"]):
            return "write", ["transaction", "transaction_mode", "read_only_off"]
        return "read", ["transaction", "transaction_mode"]
    if node_type in _FIXED:
        klass, kind = _FIXED[node_type]
        return klass, [kind]
    if node_type == "SelectStmt":
        kinds = ["select"]
        klass = "read"
        if "intoClause" in fields:
            klass, kinds = "write", ["select_into"]
        if "lockingClause" in fields:
            klass, kinds = "write", [*kinds, "select_for_update"]
        return klass, kinds
    if node_type in _DML:
        kind = _DML[node_type]
        if kind in ("update", "delete") and "whereClause" not in fields:
            return "write", [kind, f"{kind}_without_where"]
        return "write", [kind]
    if node_type == "CopyStmt":
        if fields.get("is_program"):
            return "admin", [
                "copy_to_program" if not fields.get("is_from") else "copy_from_program"
            ]
        if "filename" in fields:
            return "admin", ["copy_file"]
        return ("write", ["copy_from"]) if fields.get("is_from") else ("read", ["copy_to"])
    if node_type == "ExplainStmt":
        if _explain_analyzes(fields.get("options", [])):
            return "read", [
                "explain_analyze"
            ]  # the inner statement executes: see classify_statement
        return "read", ["explain"]
    if node_type == "VariableSetStmt":
        return _classify_set(fields)
    if node_type in ("PrepareStmt", "DeclareCursorStmt", "CreateTableAsStmt", "ViewStmt"):
        base = {"PrepareStmt": ("read", "prepare"), "DeclareCursorStmt": ("read", "declare_cursor")}
        if node_type in base:
            return base[node_type][0], [base[node_type][1]]
        return "ddl", ["create"]
    if node_type.startswith("Create") or node_type.startswith("Define") or node_type == "IndexStmt":
        return "ddl", ["create"]
    if node_type.startswith("Alter"):
        return "ddl", ["alter"]
    if node_type.startswith("Drop"):
        return "ddl", ["drop"]
    return "unknown", [node_type]


def _statement_info(stmt: dict[str, Any], text: str) -> StatementInfo:
    ((node_type, fields),) = stmt.items()
    klass, kinds = _classify_node(node_type, fields)
    explain_executes = node_type == "ExplainStmt" and "explain_analyze" in kinds
    # Plain EXPLAIN plans without running the statement, so its writes do not count.
    # Its tables and functions do: the plan shows what the tables hold (estimates,
    # indexes), and planning already runs immutable functions on constant arguments.
    plans_only = node_type == "ExplainStmt" and not explain_executes
    ctes: set[str] = set()
    read: list[str] = []
    written: list[str] = []
    functions: list[str] = []
    columns: list[str] = []
    if node_type == "CopyStmt" and "relation" in fields:
        # COPY t TO reads t; COPY t FROM writes it.
        rel = _relation(fields["relation"])
        (written if fields.get("is_from") else read).append(rel)
    if node_type == "DropStmt" and fields.get("removeType") in _DROPPED_RELATIONS:
        for obj in fields.get("objects", []):
            if "List" in obj:
                written.append(".".join(_names(obj["List"].get("items", []))))
    if node_type == "SelectStmt" and _reads_without_limit(fields):
        kinds.append("no_limit")
    # Everything nested counts: CTE writes, sub-selects INTO, side-effecting functions.
    for parent, inner_type, inner in _walk(fields):
        inner_class: str | None = None
        inner_kinds: list[str] = []
        if inner_type == "RangeVar":
            if node_type == "CopyStmt" and parent == "relation":
                continue  # counted above
            written_here = parent in _WRITTEN_FIELDS and not plans_only
            (written if written_here else read).append(_relation(inner))
        elif inner_type == "CommonTableExpr":
            ctes.add(str(inner.get("ctename", "")))
        elif inner_type == "ColumnRef":
            last = inner.get("fields", [{}])[-1]
            columns.append("*" if "A_Star" in last else last.get("String", {}).get("sval", ""))
        elif plans_only:
            if inner_type == "FuncCall":
                schema, name = _func_name(inner)
                functions.append(f"{schema}.{name}" if schema else name)
        elif inner_type in _DML:
            inner_class, inner_kinds = _classify_node(inner_type, inner)
        elif inner_type == "SelectStmt" and ("intoClause" in inner or "lockingClause" in inner):
            inner_class, inner_kinds = _classify_node(inner_type, inner)
        elif inner_type == "FuncCall":
            schema, name = _func_name(inner)
            functions.append(f"{schema}.{name}" if schema else name)
            if name == "set_config" and schema in (None, "pg_catalog"):
                inner_class, inner_kinds = _classify_set_config(inner)
            else:
                fclass = function_class(schema, name)
                if fclass in ("admin", "write"):
                    inner_class, inner_kinds = fclass, [f"function:{name}"]
        elif explain_executes or node_type in ("PrepareStmt", "DeclareCursorStmt"):
            if inner_type in _FIXED or inner_type.endswith("Stmt"):
                inner_class, inner_kinds = _classify_node(inner_type, inner)
        if inner_class is not None:
            kinds.extend(k for k in inner_kinds if k not in kinds)
            if _CLASS_RANK[inner_class] > _CLASS_RANK[klass]:
                klass = inner_class
    if ctes:
        read = [t for t in read if t not in ctes]
    return StatementInfo(
        klass=klass,
        kinds=tuple(kinds),
        text=text,
        tables_read=_unique(read),
        tables_written=_unique(written),
        functions=_unique(functions),
        columns=_unique(columns),
    )


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i.lower() for i in items if i))


def _reads_without_limit(fields: dict[str, Any]) -> bool:
    """A top-level SELECT that reads from something and has no LIMIT / FETCH FIRST."""
    if "limitCount" in fields:
        return False
    if fields.get("op", "SETOP_NONE") != "SETOP_NONE":
        return True  # a UNION etc. without an outer LIMIT
    return bool(fields.get("fromClause"))


# Kinds whose meaning depends on literal values, which a fingerprint ignores (a DO
# body, set_config's setting name, BEGIN vs BEGIN READ WRITE, EXPLAIN (ANALYZE 0)
# vs (ANALYZE 1)): never shared between
# statements by fingerprint.
_VALUE_SENSITIVE = frozenset(
    {
        "do_block",
        "parse_error",
        "function:set_config",
        "transaction_mode",
        "transaction",
        "explain",
        "explain_analyze",
        "search_path",
    }
)
_FINGERPRINT_CACHE: dict[str, tuple[StatementInfo, ...]] = {}
_FINGERPRINT_CACHE_SIZE = 16384


def classify_keyed(sql: str) -> tuple[str, tuple[StatementInfo, ...]]:
    """Like :func:`classify`, plus a cache key for verdicts.

    Statements that differ only in literal values (``WHERE id = 1`` vs ``= 2``) share
    the key, so a repeated statement costs one fingerprint (~2 µs), not a parse.
    Infos served from that cache carry no text: the caller has it.
    """
    last = _LAST[0]
    if last is not None and last[0] == sql:
        return last[1]  # the proxy splits a query string, then the gate judges the same text
    result = _classify_keyed(sql)
    _LAST[0] = (sql, result)
    return result


_LAST: list[tuple[str, tuple[str, tuple[StatementInfo, ...]]] | None] = [None]


def _classify_keyed(sql: str) -> tuple[str, tuple[StatementInfo, ...]]:
    try:
        fp = fingerprint(sql)
    except Exception:  # noqa: BLE001 - unparsable: the full path reports it
        return "t:" + sql, _classify_text(sql)
    cached = _FINGERPRINT_CACHE.get(fp)
    if cached is not None:
        return "f:" + fp, cached
    infos = _classify_text(sql)
    if len(infos) == 1 and not _VALUE_SENSITIVE.intersection(infos[0].kinds):
        if len(_FINGERPRINT_CACHE) >= _FINGERPRINT_CACHE_SIZE:
            _FINGERPRINT_CACHE.clear()
        info = infos[0]
        _FINGERPRINT_CACHE[fp] = (dataclasses.replace(info, text=""),)
        return "f:" + fp, infos
    return "t:" + sql, infos


def classify(sql: str) -> tuple[StatementInfo, ...]:
    """Split a query string into statements and classify each one.

    An empty string gives an empty tuple. Text the grammar rejects gives one
    ``unknown`` statement carrying the parser's message. A single statement may
    come back without its text (see :func:`classify_keyed`).
    """
    return classify_keyed(sql)[1]


# Texts longer than this are never cached by text: a cache bounded by entry count must
# not be filled with 16 MiB statements.
MAX_CACHED_TEXT = 8192


def _classify_text(sql: str) -> tuple[StatementInfo, ...]:
    if len(sql) > MAX_CACHED_TEXT:
        return _parse_and_classify(sql)
    return _classify_cached(sql)


@lru_cache(maxsize=4096)
def _classify_cached(sql: str) -> tuple[StatementInfo, ...]:
    return _parse_and_classify(sql)


def _parse_and_classify(sql: str) -> tuple[StatementInfo, ...]:
    try:
        statements = _parse(sql)
    except ParseError as exc:
        return (StatementInfo(klass="unknown", kinds=("parse_error",), text=sql, error=str(exc)),)
    except Exception as exc:  # noqa: BLE001 - any parser failure must fail closed
        return (StatementInfo(klass="unknown", kinds=("parse_error",), text=sql, error=repr(exc)),)
    return tuple(_statement_info(stmt, text) for stmt, text in statements)


def _parse(sql: str) -> list[tuple[dict[str, Any], str]]:
    """Each statement of ``sql`` as (pglast JSON node, its own text)."""
    tree = json.loads(parse_sql_json(sql))
    raw = sql.encode("utf-8")  # statement locations are byte offsets
    out = []
    for entry in tree.get("stmts", []):
        stmt = entry.get("stmt")
        if not stmt:
            continue
        start = entry.get("stmt_location", 0)
        length = entry.get("stmt_len", 0)
        chunk = raw[start : start + length] if length else raw[start:]
        out.append((stmt, chunk.decode("utf-8", "replace").strip()))
    return out


# Kinds of statements that change which prepared statements a session has.
PREPARED_STATEMENT_KINDS = frozenset({"prepare", "deallocate", "discard"})


# The two functions below parse again what the classifier already parsed: fingerprints
# ignore statement names, so classifications shared through the fingerprint cache
# cannot carry them.


def prepared_statement_changes(sql: str) -> list[tuple[str | None, str | None]]:
    """What a query string does to the session's prepared statements, in order.

    ``(name, text)`` for ``PREPARE name AS ...`` (text is the whole PREPARE statement,
    which classifies as what it prepares), ``(name, None)`` for ``DEALLOCATE name``, and
    ``(None, None)`` for ``DEALLOCATE ALL`` and ``DISCARD ALL``. The proxy keeps its
    map from statement names to SQL in step with the server's with it.
    """
    try:
        statements = _parse(sql)
    except Exception:  # noqa: BLE001 - unparsable text was judged (and blocked) already
        return []
    changes: list[tuple[str | None, str | None]] = []
    for stmt, text in statements:
        ((node_type, fields),) = stmt.items()
        if node_type == "PrepareStmt":
            changes.append((fields.get("name", ""), text))
        elif node_type == "DeallocateStmt":
            changes.append((None, None) if fields.get("isall") else (fields.get("name", ""), None))
        elif node_type == "DiscardStmt" and fields.get("target") == "DISCARD_ALL":
            changes.append((None, None))
    return changes


def executed_statement(sql: str) -> str | None:
    """The prepared-statement name a single ``EXECUTE name(...)`` runs, else None."""
    try:
        statements = _parse(sql)
    except Exception:  # noqa: BLE001 - judged (and blocked) as unparsable already
        return None
    if len(statements) != 1:
        return None
    execute = statements[0][0].get("ExecuteStmt")
    return str(execute.get("name", "")) if execute is not None else None


_POSITION_KEYS = frozenset({"location", "stmt_location", "stmt_len"})


def normalised_sql(sql: str) -> str:
    """A form of ``sql`` that two texts share exactly when they are the same statements:
    the parse tree without positions, so whitespace, comments and letter case of
    keywords do not matter while every constant, name and operator does. Text the
    parser refuses is kept with its whitespace collapsed."""
    try:
        tree = json.loads(parse_sql_json(sql))
    except Exception:  # noqa: BLE001 - any parser failure: compare the text itself
        return " ".join(sql.split())
    return json.dumps(_without_positions(tree.get("stmts", [])), sort_keys=True)


def _without_positions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_positions(v) for k, v in node.items() if k not in _POSITION_KEYS}
    if isinstance(node, list):
        return [_without_positions(v) for v in node]
    return node
