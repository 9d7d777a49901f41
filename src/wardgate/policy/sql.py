"""What a PostgreSQL statement *does*, from the real grammar (pglast), never from its text.

Each statement gets a class (read, write, ddl, admin, unknown) and precise kinds.
The walk covers the whole tree, so a write hidden in a CTE, a sub-query or a
side-effecting function call is seen. Anything the parser cannot understand is
``unknown``; the gate fails closed on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from pglast.parser import ParseError, fingerprint, parse_sql_json

from wardgate.actions import StatementInfo

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

# Settings whose change lifts a privilege boundary or the read-only guard.
_GUARDED_SETTINGS = {
    "role": "set_role",
    "session_authorization": "set_session",
    "transaction_read_only": "read_only_off",
    "default_transaction_read_only": "read_only_off",
    "transaction_isolation": "set",
}

# Functions with effects outside the reading of rows. The full catalogue and the
# "unknown function is not read" rule belong to the policy engine; these are the
# ones no gate may ever call read.
_ADMIN_FUNCTIONS = frozenset(
    {
        "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
        "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import",
        "lo_export", "dblink", "dblink_exec", "dblink_connect", "pg_promote",
        "pg_switch_wal", "pg_create_restore_point", "pg_start_backup", "pg_stop_backup",
        "pg_backup_start", "pg_backup_stop", "pg_file_write", "pg_logical_emit_message",
        "query_to_xml", "query_to_xml_and_xmlschema", "cursor_to_xml", "table_to_xml",
    }
)  # fmt: skip
_WRITE_FUNCTIONS = frozenset(
    {"nextval", "setval", "lo_create", "lo_unlink", "lo_put", "pg_advisory_lock", "pg_notify"}
)


def _walk(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (node type, fields) pair in a pglast JSON tree, depth first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if isinstance(value, dict):
                    if key[:1].isupper():
                        yield key, value
                    stack.append(value)
                elif isinstance(value, list):
                    stack.extend(value)
        elif isinstance(item, list):
            stack.extend(item)


def _func_name(fields: dict[str, Any]) -> str:
    parts = [p.get("String", {}).get("sval", "") for p in fields.get("funcname", [])]
    return parts[-1].lower() if parts else ""


# Settings that change how the server's lexer reads SQL text. pglast always reads it
# with standard_conforming_strings on; with it off, 'a\'' hides whatever follows, so the
# gateway would judge a different statement from the one the server runs.
PARSER_SETTINGS = frozenset({"standard_conforming_strings"})


def _setting_class(name: str) -> tuple[str, list[str]]:
    if name.lower() in PARSER_SETTINGS:
        return "admin", ["parser_setting"]
    kind = _GUARDED_SETTINGS.get(name.lower(), "set")
    return ("read", ["set"]) if kind == "set" else ("admin", [kind])


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
            return "admin", ["transaction_mode", "read_only_off"]
        return "read", ["transaction_mode"]
    if name in ("role", "session_authorization") and kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        # Back to the credential the gateway dialled with: no privilege is gained.
        return "read", ["reset_role"]
    return _setting_class(name)


def _classify_set_config(call: dict[str, Any]) -> tuple[str, list[str]]:
    """set_config(name, value, is_local) is judged like SET name when name is a literal."""
    args = call.get("args", [])
    literal = args[0].get("A_Const", {}).get("sval", {}).get("sval") if args else None
    if not isinstance(literal, str):
        # The setting is chosen at run time: it could be a parser setting too.
        return "admin", ["function:set_config", "parser_setting"]
    klass, kinds = _setting_class(literal)
    return klass, ["function:set_config", *kinds]


def _classify_node(node_type: str, fields: dict[str, Any]) -> tuple[str, list[str]]:
    if node_type == "TransactionStmt" and fields.get("options"):
        if _turns_read_only_off(fields["options"]):
            return "admin", ["transaction", "transaction_mode", "read_only_off"]
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
        options = {o.get("DefElem", {}).get("defname") for o in fields.get("options", [])}
        if "analyze" in options:
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
    if node_type == "ExplainStmt" and not explain_executes:
        # Plain EXPLAIN plans the statement without running it.
        return StatementInfo(klass=klass, kinds=tuple(kinds), text=text)
    # Everything nested counts: CTE writes, sub-selects INTO, side-effecting functions.
    for inner_type, inner in _walk(fields):
        inner_class: str | None = None
        if inner_type in _DML:
            inner_class, inner_kinds = _classify_node(inner_type, inner)
        elif inner_type == "SelectStmt" and ("intoClause" in inner or "lockingClause" in inner):
            inner_class, inner_kinds = _classify_node(inner_type, inner)
        elif inner_type == "FuncCall":
            name = _func_name(inner)
            if name == "set_config":
                inner_class, inner_kinds = _classify_set_config(inner)
            elif name in _ADMIN_FUNCTIONS:
                inner_class, inner_kinds = "admin", [f"function:{name}"]
            elif name in _WRITE_FUNCTIONS:
                inner_class, inner_kinds = "write", [f"function:{name}"]
        elif explain_executes or node_type in ("PrepareStmt", "DeclareCursorStmt"):
            if inner_type in _FIXED or inner_type.endswith("Stmt"):
                inner_class, inner_kinds = _classify_node(inner_type, inner)
        if inner_class is not None:
            kinds.extend(k for k in inner_kinds if k not in kinds)
            if _CLASS_RANK[inner_class] > _CLASS_RANK[klass]:
                klass = inner_class
    return StatementInfo(klass=klass, kinds=tuple(kinds), text=text)


# Kinds whose meaning depends on literal values, which a fingerprint ignores (a DO
# body, set_config's setting name, BEGIN vs BEGIN READ WRITE): never shared between
# statements by fingerprint.
_VALUE_SENSITIVE = frozenset(
    {"do_block", "parse_error", "function:set_config", "transaction_mode", "transaction"}
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
        _FINGERPRINT_CACHE[fp] = (StatementInfo(info.klass, info.kinds, "", info.error),)
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
        tree = json.loads(parse_sql_json(sql))
    except ParseError as exc:
        return (StatementInfo(klass="unknown", kinds=("parse_error",), text=sql, error=str(exc)),)
    except Exception as exc:  # noqa: BLE001 - any parser failure must fail closed
        return (StatementInfo(klass="unknown", kinds=("parse_error",), text=sql, error=repr(exc)),)
    raw = sql.encode("utf-8")
    out = []
    for entry in tree.get("stmts", []):
        start = entry.get("stmt_location", 0)
        length = entry.get("stmt_len", 0)
        chunk = raw[start : start + length] if length else raw[start:]
        text = chunk.decode("utf-8", "replace").strip()
        stmt = entry.get("stmt")
        if not stmt:
            continue
        out.append(_statement_info(stmt, text))
    return tuple(out)


# Kinds of statements that change which prepared statements a session has.
PREPARED_STATEMENT_KINDS = frozenset({"prepare", "deallocate", "discard"})


def prepared_statement_changes(sql: str) -> list[tuple[str | None, str | None]]:
    """What a query string does to the session's prepared statements, in order.

    ``(name, text)`` for ``PREPARE name AS ...`` (text is the whole PREPARE statement,
    which classifies as what it prepares), ``(name, None)`` for ``DEALLOCATE name``, and
    ``(None, None)`` for ``DEALLOCATE ALL`` and ``DISCARD ALL``. The proxy keeps its
    map from statement names to SQL in step with the server's with it.
    """
    try:
        tree = json.loads(parse_sql_json(sql))
    except Exception:  # noqa: BLE001 - unparsable text was judged (and blocked) already
        return []
    raw = sql.encode("utf-8")
    changes: list[tuple[str | None, str | None]] = []
    for entry in tree.get("stmts", []):
        ((node_type, fields),) = entry.get("stmt", {"": {}}).items()
        if node_type == "PrepareStmt":
            start, length = entry.get("stmt_location", 0), entry.get("stmt_len", 0)
            chunk = raw[start : start + length] if length else raw[start:]
            changes.append((fields.get("name", ""), chunk.decode("utf-8", "replace").strip()))
        elif node_type == "DeallocateStmt":
            changes.append((None, None) if fields.get("isall") else (fields.get("name", ""), None))
        elif node_type == "DiscardStmt" and fields.get("target") == "DISCARD_ALL":
            changes.append((None, None))
    return changes
