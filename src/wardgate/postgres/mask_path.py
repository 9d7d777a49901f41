"""Which schemas an unqualified table name may mean in one session, for column masking
by rewriting (mask_rewrite.py): the search_paths the session may have.

PostgreSQL 15 does not report search_path changes, so the gateway keeps every value the
session may hold: its start value (asked in the session before the client's first
message, so startup options and role defaults are the server's), and every value a
statement sent since could have set (``SET``, ``SET LOCAL``,
``set_config``). A failed or rolled-back ``SET`` leaves an earlier value, which is in
the set too, so the set only grows, and a name resolves to the union of what each
value would give: the stricter reading. Anything it cannot read (``set_config`` with a
computed value, a role change under ``"$user"``) makes the path unknown, and a name then
means every schema's table of that name, as before. Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pglast.parser import ParseError, parse_sql_json

from wardgate.policy.sql import split_identifiers

# A path: the schemas in order, ``$user`` already expanded.
Path = tuple[str, ...]
Paths = tuple[Path, ...]

_RESET, _UNKNOWN, _ROLE, CATALOG = "reset", "unknown", "role", "catalog"
# Statements that neither create, drop, rename nor move a relation; any other
# top-level statement may, and from then on the session's path is not trusted: a view
# it created in a schema searched first (over a masked column) is no table the
# snapshot knows.
_KEEPS_RELATIONS = frozenset(
    {
        "SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt",
        "VariableSetStmt", "VariableShowStmt", "TransactionStmt", "ExplainStmt", "CopyStmt",
        "PrepareStmt", "ExecuteStmt", "DeallocateStmt", "DeclareCursorStmt", "FetchStmt",
        "ClosePortalStmt", "ListenStmt", "NotifyStmt", "UnlistenStmt", "DiscardStmt",
        "LockStmt", "CallStmt", "DoStmt", "IndexStmt", "CommentStmt", "VacuumStmt",
        "CheckPointStmt", "TruncateStmt",
    }
)  # fmt: skip
_MAX_VALUES = 16  # more distinct values than that: unknown (bounded work per statement)


@lru_cache(maxsize=4096)
def path_effects(sql: str) -> tuple[tuple[str, Path], ...]:
    """What the statements of ``sql`` may do to the session's search_path: ``("set",
    schemas)``, ``("reset", ())`` (back to the start value), ``("unknown", ())`` or
    ``("role", ())`` (``$user`` may now be another name), ``("catalog", ())`` (it may
    drop, rename or move a relation)."""
    low = sql.lower()
    words = ("set", "discard", "u&", "drop", "alter", "import", "create", "into")
    if not any(word in low for word in words):
        return ()  # no SET, RESET, set_config, DISCARD, DDL, SELECT INTO, escaped name
    try:
        tree = json.loads(parse_sql_json(sql))
    except ParseError:
        # The server refuses it too, unless its grammar differs: strict if it may touch it.
        return ((_UNKNOWN, ()),) if "search_path" in low or "u&" in low else ()
    out: list[tuple[str, Path]] = []
    for raw in tree.get("stmts", ()):
        stmt = raw.get("stmt", {"?": None})
        kind = next(iter(stmt), "?")
        if kind not in _KEEPS_RELATIONS or (stmt[kind] or {}).get("intoClause"):
            out.append((CATALOG, ()))
            break
    stack: list[Any] = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key == "VariableSetStmt" and isinstance(value, dict):
                out.extend(_set_effect(value))
            elif key == "DiscardStmt" and isinstance(value, dict):
                if value.get("target") == "DISCARD_ALL":
                    out.append((_RESET, ()))
                    out.append((_ROLE, ()))
            elif key == "FuncCall" and isinstance(value, dict):
                out.extend(_set_config_effect(value))
            elif key in ("intoClause", "CreateTableAsStmt", "ViewStmt") and value:
                out.append((CATALOG, ()))  # EXPLAIN ANALYZE SELECT INTO t, and the like
            if isinstance(value, dict | list):
                stack.append(value)
    return tuple(out)


def _set_effect(stmt: dict[str, Any]) -> list[tuple[str, Path]]:
    kind = stmt.get("kind")
    name = str(stmt.get("name", "")).lower()  # setting names are matched without case
    if kind == "VAR_RESET_ALL":
        return [(_RESET, ()), (_ROLE, ())]
    if name in ("role", "session_authorization"):
        return [(_ROLE, ())]
    if name != "search_path":
        return []
    if kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        return [(_RESET, ())]
    if kind != "VAR_SET_VALUE":
        return [(_UNKNOWN, ())]
    schemas: list[str] = []
    for arg in stmt.get("args", ()):
        const = arg.get("A_Const", {}) if isinstance(arg, dict) else {}
        if "sval" not in const:
            return [(_UNKNOWN, ())]
        schemas.append(str(const["sval"].get("sval", "")))  # one item: one schema name
    return [("set", tuple(schemas))]


def _set_config_effect(call: dict[str, Any]) -> list[tuple[str, Path]]:
    names = [n.get("String", {}).get("sval", "") for n in call.get("funcname", ())]
    if not names or names[-1] != "set_config":
        return []
    args = call.get("args", ())
    first = _literal(args[0]) if args else None
    if first is not None and first.lower() != "search_path":
        return []
    value = _literal(args[1]) if len(args) > 1 else None
    if first is None or value is None:
        return [(_UNKNOWN, ())]  # chosen at run time: may be search_path, to anything
    return [("set", tuple(split_identifiers(value)))]


def _literal(node: Any) -> str | None:
    const = node.get("A_Const", {}) if isinstance(node, dict) else {}
    sval = const.get("sval")
    return str(sval.get("sval", "")) if isinstance(sval, dict) else None


@dataclass
class SessionPaths:
    """The search_paths one session may have (one per relayed session, or per MCP
    query). ``startup`` and ``user``: the search_path and user the session started
    with, as its server answered (listener.py); None: the catalog snapshot's (the
    role's defaults, read with the same credential)."""

    startup: str | None = None
    user: str | None = None
    values: list[Path] = field(default_factory=list)  # set since the start
    unknown: bool = False
    role_changed: bool = False
    # The session sent a statement that may create, drop, rename or move a relation:
    # the snapshot may not hold what the server finds first any more (unknown path).
    catalog_changed: bool = False
    _memo: tuple[Any, Paths | None] | None = None

    def note(self, sql: str) -> None:
        """``sql`` is about to be sent: whatever it may set is possible from now on."""
        effects = path_effects(sql)
        if not effects:
            return
        for kind, schemas in effects:
            if kind == "set":
                if schemas not in self.values:
                    self.values.append(schemas)
            elif kind == _UNKNOWN:
                self.unknown = True
            elif kind == _ROLE:
                self.role_changed = True
            elif kind == CATALOG:
                self.catalog_changed = True
        if len(self.values) > _MAX_VALUES:
            self.unknown = True
        self._memo = None

    def paths(self, default: str | None, user: str | None) -> Paths | None:
        """Every search_path the session may have now, ``$user`` expanded; None when
        unknown (every schema's table of a name is a candidate). ``default``/``user``:
        the role's default search_path and the user name, from the catalog snapshot."""
        key = (default, user)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        found = self._paths(default, user)
        self._memo = (key, found)
        return found

    def _paths(self, default: str | None, user: str | None) -> Paths | None:
        start = self.startup if self.startup is not None else default
        user = self.user if self.user is not None else user
        if self.unknown or self.catalog_changed or start is None:
            return None
        out: list[Path] = []
        for schemas in (tuple(split_identifiers(start)), *self.values):
            expanded: list[str] = []
            for schema in schemas:
                if schema == "$user":
                    if self.role_changed or not user:
                        return None  # another role's name: any schema may be there
                    expanded.append(user)
                else:
                    expanded.append(schema)
            path = tuple(expanded)
            if path not in out:
                out.append(path)
        return tuple(out)


TEMP = "pg_temp"


def search_order(path: Path) -> Path:
    """The schemas the server searches for a relation, in order: the session's temporary
    schema first unless the path places ``pg_temp`` itself (pg_catalog is the caller's:
    system relations are resolved before)."""
    return path if TEMP in path else (TEMP, *path)
