"""What a PostgreSQL statement *does*, from the real grammar (pglast), never from its text.

Each statement gets a class (read, write, ddl, admin, unknown) and precise kinds.
The walk covers the whole tree, so a write hidden in a CTE, a sub-query or a
side-effecting function call is seen. Anything the parser cannot understand is
``unknown``; the gate fails closed on it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError, fingerprint, parse_sql_json, scan
from pglast.stream import RawStream

from wardgate.actions import StatementInfo
from wardgate.policy.encodings import python_codec
from wardgate.policy.functions import BUILTIN_READ_ONLY, function_class
from wardgate.policy.settings import ENCODING_SETTINGS, PARSER_SETTINGS, catalogue, why_privileged

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
    "CompositeTypeStmt": ("ddl", "create"),  # CREATE TYPE t AS (a int, b text)
    "RuleStmt": ("ddl", "create"),  # CREATE RULE: what later statements on a table do
    "RefreshMatViewStmt": ("write", "refresh"),
    "ConstraintsSetStmt": ("read", "set_constraints"),  # SET CONSTRAINTS ... DEFERRED
    "ImportForeignSchemaStmt": ("admin", "foreign_server"),
    "AlterForeignServerStmt": ("admin", "foreign_server"),
    "CreateFdwStmt": ("admin", "foreign_server"),
    "AlterFdwStmt": ("admin", "foreign_server"),
    "AlterDefaultPrivilegesStmt": ("admin", "grant"),
    "CreateEventTrigStmt": ("admin", "event_trigger"),
    "AlterEventTrigStmt": ("admin", "event_trigger"),
    "AlterExtensionStmt": ("admin", "alter_extension"),
    "AlterExtensionContentsStmt": ("admin", "alter_extension"),
    "CreatePLangStmt": ("admin", "create_language"),
    "CreatePublicationStmt": ("admin", "publication"),
    "AlterPublicationStmt": ("admin", "publication"),
    "AlterTableMoveAllStmt": ("admin", "tablespace"),
    "AlterTableSpaceOptionsStmt": ("admin", "tablespace"),
    "AlterDatabaseRefreshCollStmt": ("admin", "alter_database"),
    # Casts, operators and operator classes decide which function PostgreSQL calls for
    # `x::t`, `a = b`, ORDER BY: code every later statement may run without naming it.
    "CreateCastStmt": ("admin", "create_cast"),
    "AlterOperatorStmt": ("admin", "alter_operator"),
    "CreateOpClassStmt": ("admin", "create_operator_class"),
    "CreateOpFamilyStmt": ("admin", "create_operator_class"),
    "AlterOpFamilyStmt": ("admin", "create_operator_class"),
}

# ALTER TABLE sub-commands that switch off a control others rely on: triggers (audit
# logs among them), rules, row-level security, or make triggers fire in replica mode.
_CONTROLS_OFF = frozenset(
    {
        "AT_DisableTrig", "AT_DisableTrigAll", "AT_DisableTrigUser", "AT_EnableAlwaysTrig",
        "AT_EnableReplicaTrig", "AT_DisableRule", "AT_EnableAlwaysRule", "AT_EnableReplicaRule",
        "AT_DisableRowSecurity", "AT_NoForceRowSecurity",
    }
)  # fmt: skip

# SQL/JSON syntax of newer grammars (pglast parses PostgreSQL 17's) that PostgreSQL 14
# and 15 read as plain calls of a function by that name, which anyone who may create a
# function can define: judged as calls of such a function whatever the server version.
_VERSION_SYNTAX = {
    "JsonScalarExpr": "json_scalar",
    "JsonSerializeExpr": "json_serialize",
    "JsonParseExpr": "json",
    "JsonTable": "json_table",
    "MergeSupportFunc": "merge_action",
    "JsonObjectConstructor": "json_object",
    "JsonArrayConstructor": "json_array",
    "JsonArrayQueryConstructor": "json_array",
    "JsonObjectAgg": "json_objectagg",
    "JsonArrayAgg": "json_arrayagg",
}
_JSON_FUNC_OPS = {
    "JSON_EXISTS_OP": "json_exists",
    "JSON_QUERY_OP": "json_query",
    "JSON_VALUE_OP": "json_value",
    "JSON_TABLE_OP": "json_table",
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
        "drop", "unknown_function", "parse_error", "client_encoding", "unreadable_encoding",
        "privileged_setting", "controls_off", "limited", "refresh", "set_constraints",
        "event_trigger", "alter_extension", "create_language", "publication",
        "transaction_end", "two_phase", "shadows_builtin",
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
    if parts == ["pg_catalog", "json_object"]:
        # PostgreSQL 16+'s grammar (pglast's) writes the legacy json_object(a, b, ...)
        # as pg_catalog.json_object; 14 and 15 look the bare name up in the search_path,
        # where a user routine with those argument types wins. The stricter reading:
        # unqualified, so a shadowing routine found on the target makes it unknown.
        return None, "json_object"
    return (parts[-2] if len(parts) > 1 else None), parts[-1]


# Nodes that name an operator, and the field that holds the name.
_OPERATOR_FIELDS = {"A_Expr": "name", "SubLink": "operName", "SortBy": "useOp"}
# Constructs PostgreSQL rewrites into operators found by name: BETWEEN into >= and <=
# (NOT BETWEEN into < and >), SYMMETRIC into both.
_IMPLIED_OPERATORS = {
    "between": ("<=", ">="),
    "not between": ("<", ">"),
    "between symmetric": ("<=", ">="),
    "not between symmetric": ("<", ">"),
}


def _operators(parts: list[Any]) -> list[str]:
    """The operators one name list stands for: ``===``, ``public.===``."""
    names = _names(parts)
    if not names:
        return []
    implied = _IMPLIED_OPERATORS.get(names[-1].lower())
    if implied is not None:
        return list(implied)
    return [".".join(names)]


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


def _explain_analyzes(options: list[Any]) -> bool:
    """EXPLAIN (ANALYZE) runs the statement; EXPLAIN (ANALYZE false|off|0) does not.

    PostgreSQL applies options in order, so the last ANALYZE decides; the gateway reads
    the stricter way instead: any ANALYZE that is not plainly false means it runs.
    """
    return any(
        _truthy_option(o) for o in options if o.get("DefElem", {}).get("defname") == "analyze"
    )


def _truthy_option(option: dict[str, Any]) -> bool:
    """A boolean DefElem is on unless its value is one PostgreSQL reads as false."""
    arg = option["DefElem"].get("arg")
    if arg is None:
        return True
    ((kind, body),) = arg.items()
    if kind == "Boolean":
        return bool(body.get("boolval"))
    if kind == "Integer":
        return bool(body.get("ival"))
    if kind == "String":
        return str(body.get("sval", "")).lower() not in ("false", "off", "0", "no")
    return True  # anything else: PostgreSQL would refuse it, or read it as true


def _setting_class(
    name: str, values: list[str] | None = None, *, one_string: bool = False
) -> tuple[str, list[str]]:
    """A change of setting ``name``; ``values`` are its new values when known (None when
    chosen at run time or reset). ``one_string``: the value is one string the server
    splits itself (``set_config``), not the separate items of a ``SET`` list."""
    name = name.lower()
    if name in PARSER_SETTINGS:
        if values is not None and len(values) == 1 and values[0].lower() in _PARSER_DEFAULTS:
            # The value the gateway parses with. The server-confirmed current value is
            # always that too: the gateway ends any session whose server reports another
            # (at startup and in every ParameterStatus). So this changes nothing, and
            # whatever ran before it, afterwards the server reads SQL as the gateway does.
            return "read", ["set", "parser_setting_unchanged"]
        return "admin", ["parser_setting"]
    if name == "search_path":
        schemas = None
        if values is not None:
            schemas = split_identifiers(values[0]) if one_string and values else list(values)
        if schemas is not None and not search_path_shadows_builtins(schemas):
            return "read", ["set", "search_path"]
        # Ahead of pg_catalog, a schema's functions replace the built-ins the gate
        # trusts by name (evil.lower() runs for lower()).
        return "admin", ["set", "search_path", "search_path_shadowing"]
    if name in ENCODING_SETTINGS:
        # Every later message is decoded in the new encoding; one the gateway cannot read
        # as the server does (or one it cannot know yet) is never allowed.
        if values is None or len(values) != 1 or python_codec(values[0]) is None:
            return "admin", ["set", "client_encoding", "unreadable_encoding"]
        return "read", ["set", "client_encoding"]
    kind = _GUARDED_SETTINGS.get(name)
    if kind is not None and kind != "set":
        # Turning read-only off grants nothing beyond writing: a role that may write may.
        return ("write" if kind == "read_only_off" else "admin"), [kind]
    if kind is None and name not in catalogue():
        # Not PostgreSQL's: an extension's setting or a custom variable. The gate judges
        # it as admin unless the configuration lists it in safe_settings.
        return "read", ["set", f"setting:{name}"]
    if kind is None and why_privileged(name) is not None:
        return "admin", ["set", "privileged_setting", f"setting:{name}"]
    return "read", ["set"]


def split_identifiers(text: str) -> list[str]:
    """A setting's list of names as PostgreSQL splits it (``SplitIdentifierString``):
    comma-separated, blanks around items dropped, ``"quoted"`` items kept exactly, others
    folded to lower case in ASCII only. Blanks are only space, tab, newline, carriage
    return and form feed: a no-break space is part of a name, as it is for the server."""
    names: list[str] = []
    i, n = 0, len(text)
    blanks = " \t\n\r\f"
    while True:
        while i < n and text[i] in blanks:
            i += 1
        if i < n and text[i] == '"':
            j, name = i + 1, []
            while j < n:
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        name.append('"')
                        j += 2
                        continue
                    break
                name.append(text[j])
                j += 1
            names.append("".join(name))
            i = j + 1
        else:
            j = i
            while j < n and text[j] != "," and text[j] not in blanks:
                j += 1
            names.append(_ascii_lower(text[i:j]))
            i = j
        while i < n and text[i] in blanks:
            i += 1
        if i >= n or text[i] != ",":
            break
        i += 1
    return names


def _ascii_lower(name: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in name)


def search_path_shadows_builtins(schemas: list[str]) -> bool:
    """True when a search_path lists pg_catalog after another schema.

    Unlisted, pg_catalog is searched first, so built-in names cannot be shadowed.
    ``schemas`` are the names exactly as the server holds them (no folding, no trimming).
    """
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


# Spellings PostgreSQL reads as on for standard_conforming_strings (a subset: its
# prefixes such as 'tr' are also on, but stay refused).
_PARSER_DEFAULTS = frozenset({"on", "true", "yes", "1"})


def _classify_set(fields: dict[str, Any]) -> tuple[str, list[str]]:
    name = str(fields.get("name", "")).lower()
    kind = fields.get("kind")
    if name in PARSER_SETTINGS and kind != "VAR_SET_VALUE":
        return _setting_class(name)  # even RESET: the server's default is not ours to trust
    if kind == "VAR_RESET_ALL":
        # RESET ALL leaves role, session authorization and transaction_read_only alone
        # (PostgreSQL marks them GUC_NO_RESET_ALL): poolers send it on every release. It
        # may put client_encoding back to the session's start value.
        return "read", ["set", "client_encoding"]
    if kind == "VAR_SET_MULTI":
        if _turns_read_only_off(fields.get("args", [])):
            return "write", ["transaction_mode", "read_only_off"]
        return "read", ["transaction_mode"]
    if name in ("role", "session_authorization") and kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        # Back to the credential the gateway dialled with: no privilege is gained.
        return "read", ["reset_role"]
    if name == "search_path" and kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        return "read", ["set", "search_path"]  # back to the session's (checked) start value
    if name in ENCODING_SETTINGS and kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        return "read", ["set", "client_encoding"]  # back to the session's (accepted) start
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
        ref = args[0].get("ParamRef", {}) if args else {}
        param = ref.get("number")
        if isinstance(param, int) and not ref.get("unbound"):
            # A bound parameter: the gate judges it with the value of $N at Execute.
            return "read", ["function:set_config", f"set_config_param:{param}"]
        # The setting is chosen at run time: it could be a parser setting too.
        return "admin", ["function:set_config", "parser_setting"]
    value = _const_text(args[1]) if len(args) > 1 else None
    ref = args[1].get("ParamRef", {}) if len(args) > 1 else {}
    param = ref.get("number")
    if value is None and isinstance(param, int) and not ref.get("unbound"):
        # The value is a bound parameter (drivers set client_encoding this way): judged
        # with the value of $N at Execute, like a bound name.
        return "read", ["function:set_config", f"set_config_param:{param}"]
    klass, kinds = _setting_class(literal, None if value is None else [value], one_string=True)
    return klass, ["function:set_config", *kinds]


# Transaction statements that end (or undo part of) a transaction: settings changed in it
# may revert, so the session model is unsure until the server answers.
_TRANSACTION_ENDS = frozenset(
    {"TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK", "TRANS_STMT_ROLLBACK_TO", "TRANS_STMT_PREPARE"}
)
# Two-phase commit: COMMIT/ROLLBACK PREPARED finish a transaction any session prepared.
_TWO_PHASE = frozenset(
    {"TRANS_STMT_PREPARE", "TRANS_STMT_COMMIT_PREPARED", "TRANS_STMT_ROLLBACK_PREPARED"}
)


_ROUTINES = frozenset({"OBJECT_FUNCTION", "OBJECT_PROCEDURE", "OBJECT_ROUTINE", "OBJECT_AGGREGATE"})


def _shadows_builtin(node_type: str, fields: dict[str, Any]) -> bool:
    """A statement that makes a routine carry the name of a built-in the gate trusts as
    read-only (lower, now, ...): PostgreSQL would pick it for calls whose argument types
    the built-in does not take, so a `select lower(5)` would run it. Whatever volatility
    it declares: a STABLE or IMMUTABLE routine may call a VOLATILE one, which writes
    (PostgreSQL refuses only the routine's own UPDATE, INSERT, ...)."""
    name: str | None = None
    if node_type == "CreateFunctionStmt":
        name = (_names(fields.get("funcname", [])) or [""])[-1]
    elif node_type == "AlterFunctionStmt":
        volatile = any(
            o.get("DefElem", {}).get("defname") == "volatility"
            and o["DefElem"].get("arg", {}).get("String", {}).get("sval") == "volatile"
            for o in fields.get("actions", [])
        )
        func = fields.get("func", {})
        name = (_names(func.get("objname", [])) or [""])[-1] if volatile else None
    elif node_type == "DefineStmt" and fields.get("kind") == "OBJECT_AGGREGATE":
        name = (_names(fields.get("defnames", [])) or [""])[-1]
    elif node_type == "RenameStmt" and fields.get("renameType") in _ROUTINES:
        name = str(fields.get("newname", ""))
    elif node_type == "AlterObjectSchemaStmt" and fields.get("objectType") in _ROUTINES:
        objname = fields.get("object", {}).get("ObjectWithArgs", {}).get("objname", [])
        name = (_names(objname) or [""])[-1]
    return name is not None and name.lower() in BUILTIN_READ_ONLY


def _classify_node(node_type: str, fields: dict[str, Any]) -> tuple[str, list[str]]:
    if _shadows_builtin(node_type, fields):
        kind = "create" if node_type.startswith(("Create", "Define")) else "alter"
        return "admin", [kind, "shadows_builtin"]
    if node_type == "TransactionStmt" and fields.get("kind") in _TWO_PHASE | _TRANSACTION_ENDS:
        kinds = ["transaction"]
        if fields.get("kind") in _TRANSACTION_ENDS:
            kinds.append("transaction_end")
        if fields.get("kind") in _TWO_PHASE:
            return "admin", [*kinds, "two_phase"]
        return "read", kinds
    if node_type == "TransactionStmt" and fields.get("options"):
        if _turns_read_only_off(fields["options"]):
            return "write", ["transaction", "transaction_mode", "read_only_off"]
        return "read", ["transaction", "transaction_mode"]
    if node_type == "DiscardStmt" and fields.get("target") == "DISCARD_ALL":
        return "read", ["discard", "client_encoding"]  # includes a RESET ALL
    if node_type == "DefineStmt" and fields.get("kind") == "OBJECT_OPERATOR":
        return "admin", ["create", "create_operator"]
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
        target = fields.get("relation", {})
        if (
            kind == "update"
            and target.get("relname") == "pg_settings"
            and target.get("schemaname") in (None, "pg_catalog")
        ):
            # pg_settings' rule turns the UPDATE into set_config(name, setting): a
            # change of any setting, named by the rows it matches at run time.
            return "admin", ["update", "privileged_setting"]
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
    if node_type == "AlterTableStmt" and any(
        c.get("AlterTableCmd", {}).get("subtype") in _CONTROLS_OFF for c in fields.get("cmds", [])
    ):
        return "admin", ["alter", "controls_off"]
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
    types: list[str] = []
    operators: list[str] = []
    if node_type == "CopyStmt" and "relation" in fields:
        # COPY t TO reads t; COPY t FROM writes it.
        rel = _relation(fields["relation"])
        (written if fields.get("is_from") else read).append(rel)
    if node_type == "DropStmt" and fields.get("removeType") in _DROPPED_RELATIONS:
        for obj in fields.get("objects", []):
            if "List" in obj:
                written.append(".".join(_names(obj["List"].get("items", []))))
    if _has_key(fields, "limitCount"):
        # LIMIT 5 and LIMIT NULL share a fingerprint (see below), at any depth: in a
        # sub-query, a CTE or a branch of a UNION they decide too.
        kinds.append("limited")
    if node_type in ("CopyStmt", "DeclareCursorStmt", "PrepareStmt") and _query_reads_without_limit(
        fields
    ):
        # COPY t TO, COPY (SELECT ...) TO, a cursor's SELECT and what EXECUTE of a
        # prepared SELECT returns hand over every row they read, as an unbounded SELECT.
        kinds.append("no_limit")
    if node_type == "SelectStmt" and _values_unbounded(fields):
        # One row may carry every row read: array_agg(x) ... LIMIT 1, ARRAY(SELECT ...).
        kinds.append("no_limit")
    elif node_type == "SelectStmt" and _reads_without_limit(fields):
        ref = fields.get("limitCount", {}).get("ParamRef", {})
        param = None if ref.get("unbound") else ref.get("number")
        # LIMIT $n: the gate judges it with the value bound to $n (NULL is no limit).
        kinds.append(f"limit_param:{param}" if isinstance(param, int) else "no_limit")
    # Everything nested counts: CTE writes, sub-selects INTO, side-effecting functions.
    attributes: list[str] = []
    sources: set[str] = set()  # tables and aliases in FROM: a bare one is a whole row
    whole_row = False
    array_value = False
    for parent, inner_type, inner in _walk(fields):
        alias = inner.get("alias")
        if isinstance(alias, dict) and alias.get("aliasname"):
            sources.add(str(alias["aliasname"]))
        if inner_type == "RangeVar":
            sources.add(str(inner.get("relname", "")))
        inner_class: str | None = None
        inner_kinds: list[str] = []
        selected: list[str] = []
        type_name = inner.get("typeName")
        if isinstance(type_name, dict):
            # A cast (`x::t`, `CAST`, `t 'x'`) or a column definition that coerces
            # values (`json_to_record(j) AS r(a t)`, XMLTABLE, JSON_TABLE) to type t.
            types.append(".".join(_names(type_name.get("names", []))))
        elif inner_type == "TypeName":
            # A type in a list: `PREPARE p(t) AS ...` coerces every EXECUTE argument to
            # t (its input function, a domain's CHECK), as a cast would.
            types.append(".".join(_names(inner.get("names", []))))
        if inner_type == "RangeVar":
            if node_type == "CopyStmt" and parent == "relation":
                continue  # counted above
            written_here = parent in _WRITTEN_FIELDS and not plans_only
            (written if written_here else read).append(_relation(inner))
        elif inner_type == "CommonTableExpr":
            ctes.add(str(inner.get("ctename", "")))
        elif inner_type == "ColumnRef":
            parts = inner.get("fields", [{}])
            last = parts[-1]
            columns.append("*" if "A_Star" in last else last.get("String", {}).get("sval", ""))
            if len(parts) > 1 and "A_Star" in last:
                whole_row = True  # `t.*`: in an expression, the row as one value
            if len(parts) > 1 and "String" in last:
                # t.f, or column.f: f(t) when t has no column f, f(column) when it is
                # a column (its value need not be a row: note.nextval is nextval(note)).
                selected = [last["String"]["sval"]]
        elif inner_type == "A_ArrayExpr" or (
            inner_type == "SubLink" and inner.get("subLinkType") == "ARRAY_SUBLINK"
        ):
            # ARRAY[c], ARRAY(SELECT c): an array of c's own type, a domain included,
            # which a comparison or a COALESCE converts other values to.
            array_value = True
        elif inner_type == "A_Indirection":
            # (x).f, (x).f.g: each name a field of the value before it, or a function
            # called with it: ('s'::regclass).nextval is nextval('s').
            selected = _names(inner.get("indirection", []))
            columns.extend(selected)  # (c).ssn names the column ssn
            if any("A_Star" in part for part in inner.get("indirection", [])):
                columns.append("*")  # (c).*
        elif inner_type in _OPERATOR_FIELDS:
            operators.extend(_operators(inner.get(_OPERATOR_FIELDS[inner_type], [])))
        elif inner_type in _VERSION_SYNTAX or inner_type == "JsonFuncExpr":
            name = _VERSION_SYNTAX.get(inner_type) or _JSON_FUNC_OPS.get(
                str(inner.get("op")), "json"
            )
            functions.append(name)
            if f"user_definable:{name}" not in kinds:
                kinds.append(f"user_definable:{name}")
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
        for name in selected:
            attributes.append(name)
            fclass = function_class(None, name)
            if fclass in ("admin", "write"):
                # A built-in with effects, called as a field: judged as its call.
                functions.append(name)
                if not plans_only and _CLASS_RANK[fclass] > _CLASS_RANK[inner_class or "read"]:
                    inner_class, inner_kinds = fclass, [f"function:{name}"]
        if inner_class is not None:
            kinds.extend(k for k in inner_kinds if k not in kinds)
            if _CLASS_RANK[inner_class] > _CLASS_RANK[klass]:
                klass = inner_class
    if ctes:
        read = [t for t in read if t not in ctes]
    if sources.intersection(columns):
        # `select c from customers c`, row_to_json(c): every column of the row.
        columns.append("*")
        whole_row = True
    if whole_row:
        # A value of the row type, which a COALESCE, a comparison or a UNION may
        # convert another value to (that type's input, its columns' CHECKs).
        kinds.append("whole_row")
    if array_value:
        kinds.append("array_value")
    return StatementInfo(
        klass=klass,
        kinds=tuple(kinds),
        text=text,
        tables_read=_unique(read),
        tables_written=_unique(written),
        # As PostgreSQL resolves them: a quoted "F" is another routine than f.
        functions=tuple(dict.fromkeys(f for f in functions if f)),
        columns=_unique(columns),
        types=_unique(types),
        operators=_unique(operators),
        attributes=_unique(attributes),
    )


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i.lower() for i in items if i))


def _query_reads_without_limit(fields: dict[str, Any]) -> bool:
    """A COPY ... TO or DECLARE whose rows are a whole table or an unbounded SELECT."""
    if fields.get("is_from") or fields.get("is_program") or "filename" in fields:
        return False
    if "relation" in fields:
        return True  # COPY t TO: the whole table
    select = fields.get("query", {}).get("SelectStmt")
    return select is not None and _select_unbounded(select)


# Every built-in aggregate of a supported version (pg_proc.prokind 'a'): its one value is
# computed from every row it reads. Some collect the values themselves (array_agg,
# string_agg, json_agg, xmlagg ...); the others can encode them (`sum(id::numeric *
# 1000::numeric ^ id)` is every id in one number). A LIMIT on their rows bounds nothing.
_AGGREGATES = frozenset(
    {
        "any_value", "array_agg", "avg", "bit_and", "bit_or", "bit_xor", "bool_and",
        "bool_or", "corr", "count", "covar_pop", "covar_samp", "every", "json_agg",
        "json_agg_strict", "json_object_agg", "json_object_agg_strict",
        "json_object_agg_unique", "json_object_agg_unique_strict", "jsonb_agg",
        "jsonb_agg_strict", "jsonb_object_agg", "jsonb_object_agg_strict",
        "jsonb_object_agg_unique", "jsonb_object_agg_unique_strict", "max", "min", "mode",
        "percentile_cont", "percentile_disc", "range_agg", "range_intersect_agg",
        "regr_avgx", "regr_avgy", "regr_count", "regr_intercept", "regr_r2", "regr_slope",
        "regr_sxx", "regr_sxy", "regr_syy", "stddev", "stddev_pop", "stddev_samp",
        "string_agg", "sum", "var_pop", "var_samp", "variance", "xmlagg",
    }
)  # fmt: skip
# Syntax only an aggregate call may carry.
_AGGREGATE_SYNTAX = ("agg_star", "agg_distinct", "agg_order", "agg_filter", "agg_within_group")
_AGGREGATE_NODES = frozenset({"JsonArrayAgg", "JsonObjectAgg"})


def _select_unbounded(fields: dict[str, Any]) -> bool:
    """A SELECT (anywhere in a statement) whose result may hold unboundedly many rows'
    values: it reads without a constant LIMIT, or one of its rows collects them."""
    try:
        return _reads_without_limit(fields) or _values_unbounded(fields)
    except RecursionError:
        return True  # too deep to follow: the stricter reading


def _values_unbounded(fields: dict[str, Any]) -> bool:
    """One row of this SELECT may carry the values of unboundedly many rows: an
    aggregate over its FROM (``array_agg(x) ... LIMIT 1``, also as a window),
    a function that is not a known built-in (it may be a user aggregate), or a nested
    SELECT in an expression (``ARRAY(SELECT ...)``, ``(SELECT count(*) FROM t)``), a
    sub-query in FROM, a CTE or a branch of a UNION that does. A LIMIT bounds the rows
    of a sub-query in FROM or of a CTE read in FROM: they are not counted by themselves.
    """
    if fields.get("op", "SETOP_NONE") != "SETOP_NONE":
        if _values_unbounded(fields.get("larg", {})) or _values_unbounded(fields.get("rarg", {})):
            return True
    with_clause = fields.get("withClause", {})
    names = {c.get("CommonTableExpr", {}).get("ctename") for c in with_clause.get("ctes", [])}
    for cte in with_clause.get("ctes", []):
        query = cte.get("CommonTableExpr", {}).get("ctequery", {})
        if "SelectStmt" in query and _values_unbounded(query["SelectStmt"]):
            return True
        if with_clause.get("recursive") and any(
            k == "RangeVar" and v.get("relname") not in names for k, v in _items(query)
        ):
            # A loop: each step may add another row's values to what it carries on
            # (`acc || (select ... offset i limit 1)`), LIMITs inside it or not.
            return True
    aggregated = any(_from_rows_unbounded(item) for item in fields.get("fromClause", []))
    if any(_expr_unbounded(t, aggregated) for t in fields.get("targetList", [])):
        return True
    if any(_expr_unbounded(row, False) for row in fields.get("valuesLists", [])):
        return True
    return any(_from_unbounded(item) for item in fields.get("fromClause", []))


def _from_rows_unbounded(item: dict[str, Any]) -> bool:
    """A FROM item whose rows are not bounded by a constant LIMIT of its own: anything
    but a sub-query that has one (a table, a CTE, a function: unbounded)."""
    if "JoinExpr" in item:
        join = item["JoinExpr"]
        return _from_rows_unbounded(join.get("larg", {})) or _from_rows_unbounded(
            join.get("rarg", {})
        )
    query = item.get("RangeSubselect", {}).get("subquery", {})
    return "SelectStmt" not in query or _select_unbounded(query["SelectStmt"])


def _from_unbounded(item: dict[str, Any]) -> bool:
    if "RangeVar" in item:
        return False
    if "JoinExpr" in item:
        join = item["JoinExpr"]
        return _from_unbounded(join.get("larg", {})) or _from_unbounded(join.get("rarg", {}))
    if "RangeSubselect" in item:
        query = item["RangeSubselect"].get("subquery", {})
        return "SelectStmt" not in query or _values_unbounded(query["SelectStmt"])
    # A function, XMLTABLE, JSON_TABLE, TABLESAMPLE: a sub-query in its arguments counts.
    return _expr_unbounded(item, False)


def _expr_unbounded(node: Any, aggregated: bool) -> bool:
    """An expression (of a SELECT that reads rows when ``aggregated``) whose value may
    hold unboundedly many rows' values."""
    for key, value in _items(node, stop="SelectStmt"):
        if key == "SelectStmt":
            if _select_unbounded(value):
                return True  # (its own aggregates are its own: not descended into)
        elif aggregated and key in _AGGREGATE_NODES:
            return True
        elif aggregated and key == "FuncCall":
            schema, name = _func_name(value)
            if (
                name in _AGGREGATES
                or function_class(schema, name) is None  # may be a user aggregate
                or any(value.get(k) for k in _AGGREGATE_SYNTAX)
            ):
                return True
    return False


def _has_key(node: Any, key: str) -> bool:
    return any(k == key for k, _ in _items(node))


def _items(node: Any, stop: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, value) of every dict in a pglast JSON tree; the values of ``stop``
    keys (dicts) are yielded but not descended into."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                if isinstance(value, dict) and key == stop:
                    yield key, value
                    continue
                yield key, value
                if isinstance(value, dict | list):
                    stack.append(value)


def _reads_without_limit(fields: dict[str, Any]) -> bool:
    """A top-level SELECT that reads from something and has no LIMIT / FETCH FIRST.

    ``LIMIT ALL``, ``LIMIT NULL``, ``FETCH FIRST n ROWS WITH TIES`` (every row that
    ties with the last comes too: all of them, ordered by a constant) and any limit that
    is not a number written in the statement (an expression, a sub-query, a parameter that may be bound to NULL) do not
    count: only a numeric constant bounds the rows for sure.
    """
    if fields.get("limitOption") == "LIMIT_OPTION_WITH_TIES":
        return True  # FETCH FIRST 1 ROWS WITH TIES returns every row tied with the last
    if "limitCount" in fields and _numeric_constant(fields["limitCount"]):
        return False
    if fields.get("op", "SETOP_NONE") != "SETOP_NONE":
        return True  # a UNION etc. without an outer LIMIT
    # A table, a CTE, a function, or a sub-query without a constant LIMIT of its own.
    return any(_from_rows_unbounded(item) for item in fields.get("fromClause", []))


def _numeric_constant(node: dict[str, Any]) -> bool:
    while "TypeCast" in node:
        node = node["TypeCast"].get("arg", {})
    const = node.get("A_Const")
    if const is None or const.get("isnull"):
        return False
    if "ival" in const or "fval" in const:
        return True
    # '5' (or a parameter bound to 5): the server reads it as bigint, blanks allowed.
    text = const.get("sval", {}).get("sval")
    return isinstance(text, str) and text.strip(" \t\n\r\f\v").lstrip("+-").isdigit()


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
        "client_encoding",  # SET client_encoding 'LATIN1' and 'EUC_TW' share a fingerprint
        "unreadable_encoding",
        "limited",  # LIMIT 5 and LIMIT NULL share one
        "parser_setting_unchanged",  # SET standard_conforming_strings TO on and TO off too
    }
)
# Kinds that carry a parameter number or a name: never shared either.
_VALUE_SENSITIVE_PREFIXES = ("set_config_param:", "limit_param:", "setting:")
_FINGERPRINT_CACHE: dict[str, tuple[StatementInfo, ...]] = {}
_FINGERPRINT_CACHE_SIZE = 16384


def classify_keyed(
    sql: str, *, by_fingerprint: bool = True
) -> tuple[str, tuple[StatementInfo, ...]]:
    """Like :func:`classify`, plus a cache key for verdicts.

    Statements that differ only in literal values (``WHERE id = 1`` vs ``= 2``) share
    the key, so a repeated statement costs one fingerprint (~2 µs), not a parse.
    Infos served from that cache carry no text: the caller has it. A fingerprint reads
    ``5::mood`` and ``mood 'a'`` as a constant like ``5``, so their ``types`` are not
    shared: ``by_fingerprint=False`` where casts matter judges the text itself.
    """
    if not by_fingerprint:
        return "t:" + sql, _classify_text(sql)
    last = _LAST[0]
    if last is not None and last[0] == sql:
        return last[1]  # the proxy splits a query string, then the gate judges the same text
    result = _classify_keyed(sql)
    _LAST[0] = (sql, result)
    return result


_LAST: list[tuple[str, tuple[str, tuple[StatementInfo, ...]]] | None] = [None]


def _classify_keyed(sql: str) -> tuple[str, tuple[StatementInfo, ...]]:
    names = _names_fingerprint_ignores(sql)
    if names is None:
        return "t:" + sql, _classify_text(sql)
    try:
        fp = fingerprint(sql) + names
    except Exception:  # noqa: BLE001 - unparsable: the full path reports it
        return "t:" + sql, _classify_text(sql)
    cached = _FINGERPRINT_CACHE.get(fp)
    if cached is not None:
        return "f:" + fp, cached
    infos = _classify_text(sql)
    # Only reads and writes, the hot path, share a class by fingerprint: for DDL and
    # admin statements a literal can decide what they do (a routine's volatility).
    if (
        len(infos) == 1
        and infos[0].klass in ("read", "write")
        and not _value_sensitive(infos[0].kinds)
    ):
        if len(_FINGERPRINT_CACHE) >= _FINGERPRINT_CACHE_SIZE:
            _FINGERPRINT_CACHE.clear()
        info = infos[0]
        _FINGERPRINT_CACHE[fp] = (dataclasses.replace(info, text=""),)
        return "f:" + fp, infos
    return "t:" + sql, infos


# libpg_query's fingerprint drops every run of two or more ASCII digits from a table
# name (partitions: `pay2024` and `pay2025`, even `"t12"` and `pay`, share one) and
# ignores the name of a TEMP table (`SELECT ... INTO TEMP a` and `b`). The tables a
# statement names decide guardrails, so those names join its fingerprint.
# A bare identifier's digits follow a letter, `_`, `$` or a non-ASCII character; a
# quoted one (U&"..." too) needs a `"`. Literals such as `id = 42` match neither.
_FINGERPRINT_BLIND = re.compile(r'[A-Za-z_$\u0080-\U0010ffff][0-9]{2}|"|temp', re.IGNORECASE)
_TWO_DIGITS = re.compile(r"[0-9]{2}")


def _names_fingerprint_ignores(sql: str) -> str | None:
    """What the fingerprint of ``sql`` may not see of its names: "" (nothing: no
    identifier can hold two adjacent digits and no `temp` is in the text, the common
    case, at the cost of one search), the identifiers holding two adjacent digits, as
    written; None where the text must not be shared at all (a TEMP keyword, a U&"..."
    identifier whose escapes and UESCAPE spell its name, a text the scanner refuses)."""
    if _FINGERPRINT_BLIND.search(sql) is None:
        return ""
    try:
        tokens = scan(sql)
    except Exception:  # noqa: BLE001 - the full path judges it
        return None
    names = []
    place = 0  # which identifier: `s.x_2024 join x_` and `s.x_ join x_2024` hold the
    for token in tokens:  # same names, in other places (their fingerprints are one)
        kind = token.name
        if kind == "IDENT":
            raw = sql[token.start : token.end + 1]
            if _TWO_DIGITS.search(raw):
                names.append(f":{place}:{len(raw)}:{raw}")
            place += 1
        elif kind in ("UIDENT", "TEMP", "TEMPORARY"):
            return None
    return "".join(names)


def _value_sensitive(kinds: tuple[str, ...]) -> bool:
    return bool(_VALUE_SENSITIVE.intersection(kinds)) or any(
        k.startswith(_VALUE_SENSITIVE_PREFIXES) for k in kinds
    )


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
        kinds = ("parse_error", "syntax_error")  # PostgreSQL's own parser refused the text
        return (StatementInfo(klass="unknown", kinds=kinds, text=sql, error=str(exc)),)
    except Exception as exc:  # noqa: BLE001 - any parser failure must fail closed
        return (StatementInfo(klass="unknown", kinds=("parse_error",), text=sql, error=repr(exc)),)
    return tuple(_statement_info(stmt, text) for stmt, text in statements)


_PARSER_ERROR = re.compile(r"(?s)(.*), at index (\d+)")


def syntax_error(info: StatementInfo) -> tuple[str, int | None] | None:
    """PostgreSQL's message and 1-based character position for text its parser refused
    (the gateway parses with the server's own grammar, so the server would say the same),
    or None when ``info`` is not such a refusal."""
    if "syntax_error" not in info.kinds or info.error is None:
        return None
    match = _PARSER_ERROR.fullmatch(info.error)
    if match is None:
        return info.error, None
    return match.group(1), int(match.group(2)) + 1


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


# Kinds whose meaning depends on the value of a bound parameter ($n): the gate judges
# statements carrying them again with the values of the Execute (classify_with_params).
PARAM_KINDS = ("set_config_param:", "limit_param:")


def needs_params(statements: tuple[StatementInfo, ...]) -> bool:
    # Asked for every statement judged, mostly of the same cached infos: the last
    # answer is kept with the very tuple it is for (one global, rebound at once, so a
    # thread reading it never pairs one tuple with another's answer).
    global _NEEDS_PARAMS_LAST
    last = _NEEDS_PARAMS_LAST
    if last[0] is statements:
        return last[1]
    needs = any(k.startswith(PARAM_KINDS) for s in statements for k in s.kinds)
    _NEEDS_PARAMS_LAST = (statements, needs)
    return needs


_NEEDS_PARAMS_LAST: tuple[tuple[StatementInfo, ...] | None, bool] = (None, False)


def classify_with_params(sql: str, params: tuple[str | None, ...]) -> tuple[StatementInfo, ...]:
    """Classify ``sql`` as if each ``$n`` were the literal text of ``params[n-1]`` (a NULL
    stays NULL, a missing one stays a parameter): the verdict for one Execute."""
    try:
        statements = _parse(sql)
    except Exception as exc:  # noqa: BLE001 - any parser failure must fail closed
        return (StatementInfo(klass="unknown", kinds=("parse_error",), text=sql, error=repr(exc)),)
    return tuple(_statement_info(_bind(stmt, params), text) for stmt, text in statements)


def _bind(node: Any, params: tuple[str | None, ...]) -> Any:
    if isinstance(node, dict):
        ref = node.get("ParamRef")
        if isinstance(ref, dict) and len(node) == 1:
            number = ref.get("number")
            if isinstance(number, int) and 0 < number <= len(params):
                value = params[number - 1]
                if value is None:
                    return {"A_Const": {"isnull": True}}
                return {"A_Const": {"sval": {"sval": value}}}
            return {"ParamRef": {**ref, "unbound": True}}  # no value: the strictest reading
        return {k: _bind(v, params) for k, v in node.items()}
    if isinstance(node, list):
        return [_bind(v, params) for v in node]
    return node


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


# DECLARE ... CURSOR WITH HOLD (PostgreSQL's CURSOR_OPT_HOLD): outlives its transaction.
_CURSOR_OPT_HOLD = 0x0020


def cursor_changes(sql: str) -> list[tuple[str | None, bool | None]]:
    """What a query string does to the session's cursors (portals), in order:
    ``(name, holdable)`` for ``DECLARE name CURSOR``, ``(name, None)`` for ``CLOSE name``
    and ``(None, None)`` for ``CLOSE ALL``."""
    try:
        statements = _parse(sql)
    except Exception:  # noqa: BLE001 - unparsable text was judged (and blocked) already
        return []
    changes: list[tuple[str | None, bool | None]] = []
    for stmt, _ in statements:
        ((node_type, fields),) = stmt.items()
        if node_type == "DeclareCursorStmt":
            held = bool(int(fields.get("options", 0)) & _CURSOR_OPT_HOLD)
            changes.append((str(fields.get("portalname", "")), held))
        elif node_type == "ClosePortalStmt":
            name = fields.get("portalname")
            changes.append((None, None) if name is None else (str(name), None))
    return changes


def _single_statement(sql: str) -> dict[str, Any] | None:
    """The pglast JSON node of ``sql`` when it is a single statement, else None."""
    try:
        statements = _parse(sql)
    except Exception:  # noqa: BLE001 - judged (and blocked) as unparsable already
        return None
    return statements[0][0] if len(statements) == 1 else None


def _single_field(sql: str, node: str, field: str) -> str | None:
    """``field`` of ``sql`` when it is a single statement of type ``node``, else None."""
    found = (_single_statement(sql) or {}).get(node)
    return str(found.get(field, "")) if found is not None else None


def transaction_statement(sql: str) -> tuple[str, str | None] | None:
    """(kind, savepoint name) of ``sql`` when it is a single transaction statement
    (``TRANS_STMT_ROLLBACK_TO``, ``TRANS_STMT_SAVEPOINT``, ...), else None. PostgreSQL's
    own parser reads the name: comments, quoting, ``U&"..."`` escapes and the folding of
    only ASCII letters in a bare name come out as the server sees them."""
    found = (_single_statement(sql) or {}).get("TransactionStmt")
    if found is None:
        return None
    name = found.get("savepoint_name")
    return str(found.get("kind", "")), (str(name) if name else None)


def fetched_cursor(sql: str) -> str | None:
    """The cursor (portal) name a single ``FETCH`` or ``MOVE`` runs, else None."""
    return _single_field(sql, "FetchStmt", "portalname")


def execute_arguments(sql: str) -> str | None:
    """The arguments of a single SQL ``EXECUTE name(a, b)`` as a ``SELECT a, b``, or None
    when there are none. They are expressions the server evaluates (``EXECUTE
    sel(bump(5))`` calls bump), so they are judged besides what the name holds. Text
    that cannot be rebuilt comes back unparsable, to be refused as unknown."""
    try:
        stmt = parse_sql(sql)[0].stmt
        if isinstance(stmt, ast.ExplainStmt):
            stmt = stmt.query  # EXPLAIN ANALYZE EXECUTE runs it too
        if not isinstance(stmt, ast.ExecuteStmt) or not stmt.params:
            return None
        # One stream per expression: a stream keeps what it wrote before.
        return "SELECT " + ", ".join(
            RawStream()(p)  # type: ignore[no-untyped-call]
            for p in stmt.params
        )
    except Exception:  # noqa: BLE001 - fail closed: judged as a parse error
        return "SELECT ( -- wardgate could not read the EXECUTE arguments"


def executed_statement(sql: str) -> str | None:
    """The prepared-statement name a single ``EXECUTE name(...)`` runs, alone or under
    ``EXPLAIN``, else None."""
    node = _single_statement(sql) or {}
    explained = node.get("ExplainStmt", {}).get("query")
    found = (explained or node).get("ExecuteStmt")
    return str(found.get("name", "")) if found is not None else None


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
