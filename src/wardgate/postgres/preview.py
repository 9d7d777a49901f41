"""How many rows a held statement would touch, for the people reviewing it.

Two ways, both on a session of the gateway's own and both leaving nothing behind:

* ``explain``: the planner's estimate (``EXPLAIN``, never ``ANALYZE``) inside a
  read-only transaction that is rolled back;
* ``rollback``: the exact count, by running the statement inside a transaction that is
  always rolled back. Only for plain INSERT/UPDATE/DELETE on an ordinary table with
  nothing attached that a rollback cannot undo (triggers, rules, user functions,
  sequences): otherwise the preview says why it is unavailable.

Nothing here raises: every outcome, a server error included, is a dict for the review.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from typing import Any

from wardgate.actions import StatementInfo
from wardgate.policy.functions import function_class
from wardgate.policy.sql import classify
from wardgate.postgres.internal import (
    LOCK_WAIT_MS,
    HasCredentials,
    InternalQueryFailed,
    InternalSession,
    Result,
    ServerError,
    internal_session,
)

log = logging.getLogger("wardgate.preview")

_DML_KINDS = frozenset({"update", "delete", "insert", "merge"})
# Kinds a plain statement may carry besides its own: nothing that writes elsewhere.
_PLAIN_KINDS = {
    "update": frozenset({"update", "update_without_where"}),
    "delete": frozenset({"delete", "delete_without_where"}),
    "insert": frozenset({"insert"}),
}
# The client's answer may come late even when the server's statement_timeout fires on
# time; past this margin the gateway gives up and cancels.
_GRACE = 2.0
_PLAN_LINES = 12
_MAX_ROWS = 4  # EXPLAIN answers one row; the catalog check one

# Everything a rollback cannot undo, on the target table, its partitions and inheritance
# children, and (for UPDATE/DELETE) every table a cascading foreign key reaches.
_SIDE_EFFECTS_SQL = """
WITH RECURSIVE edges(parent, child) AS (
    SELECT i.inhparent, i.inhrelid FROM pg_catalog.pg_inherits i
  UNION ALL
    SELECT k.confrelid, k.conrelid FROM pg_catalog.pg_constraint k
    WHERE k.contype = 'f' AND $3::text <> 'insert'
      AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))
), rels(oid) AS (
    SELECT c.oid FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1::text AND c.relname = $2::text
  UNION
    SELECT e.child FROM edges e JOIN rels r ON e.parent = r.oid
)
SELECT
  (SELECT count(*) FROM rels),
  (SELECT string_agg(c.oid::regclass::text, ', ' ORDER BY c.oid)
     FROM pg_catalog.pg_class c WHERE c.oid IN (SELECT oid FROM rels)
     AND c.relkind NOT IN ('r', 'p')),
  (SELECT string_agg(DISTINCT t.tgname || ' on ' || t.tgrelid::regclass::text, ', ')
     FROM pg_catalog.pg_trigger t WHERE t.tgrelid IN (SELECT oid FROM rels)
     AND NOT t.tgisinternal AND t.tgenabled <> 'D'),
  (SELECT string_agg(DISTINCT w.rulename || ' on ' || w.ev_class::regclass::text, ', ')
     FROM pg_catalog.pg_rewrite w WHERE w.ev_class IN (SELECT oid FROM rels)),
  (SELECT string_agg(DISTINCT d.refobjid::regprocedure::text, ', ')
     FROM pg_catalog.pg_depend d
     WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid >= 16384 AND (
          (d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid IN (
             SELECT ad.oid FROM pg_catalog.pg_attrdef ad WHERE ad.adrelid IN (SELECT oid FROM rels)))
       OR (d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid IN (
             SELECT k.oid FROM pg_catalog.pg_constraint k WHERE k.conrelid IN (SELECT oid FROM rels)))
       OR (d.classid = 'pg_catalog.pg_policy'::regclass AND d.objid IN (
             SELECT p.oid FROM pg_catalog.pg_policy p WHERE p.polrelid IN (SELECT oid FROM rels)))
       OR (d.classid = 'pg_catalog.pg_class'::regclass AND d.objid IN (
             SELECT x.indexrelid FROM pg_catalog.pg_index x WHERE x.indrelid IN (SELECT oid FROM rels))))),
  (SELECT string_agg(DISTINCT a.attrelid::regclass::text || '.' || a.attname, ', ')
     FROM pg_catalog.pg_attribute a
     WHERE $3::text = 'insert' AND a.attrelid IN (SELECT oid FROM rels) AND a.attnum > 0
     AND NOT a.attisdropped AND (a.attidentity <> '' OR EXISTS (
       SELECT 1 FROM pg_catalog.pg_attrdef ad
       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::regclass
         AND d.objid = ad.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass
       JOIN pg_catalog.pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
       WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum)))
"""


def _unavailable(reason: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "unavailable", "reason": reason, **extra}


def _error(reason: str) -> dict[str, Any]:
    return {"kind": "error", "reason": reason}


async def impact_preview(
    services: HasCredentials,
    connection: str,
    sql: str,
    params: tuple[str | None, ...],
    statements: tuple[StatementInfo, ...],
    mode: str,
    timeout: float,  # noqa: ASYNC109 - also the server's statement_timeout
    context: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The preview of ``sql`` (one statement, classified as ``statements``) for a review,
    run with the client session's ``context`` (search_path, current_user) when known.

    ``{"kind": "none"}``; ``{"kind": "explain", "estimated_rows", "plan",
    "statement_timeout_ms"}``; ``{"kind": "rollback", "affected_rows", "estimated_rows",
    "plan", "statement_timeout_ms"}``; ``{"kind": "unavailable", "reason"}`` (the
    preview cannot be made safely; a rollback refused after planning also carries the
    estimate); ``{"kind": "error", "reason"}`` (the server or the connection failed).
    """
    if mode == "none":
        return {"kind": "none"}
    if mode not in ("explain", "rollback"):
        return _unavailable(f"unknown preview mode {mode!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        return _unavailable("the preview needs a positive, finite time limit")
    refusal = _explain_refusal(statements, params)
    if refusal is None and mode == "rollback":
        # What runs is ``sql``: judge the text itself too, not only what the caller says.
        own = classify(sql)
        refusal = _rollback_refusal(statements[0]) or (
            _rollback_refusal(own[0])
            if len(own) == 1
            else "the statement's text does not hold exactly one statement"
        )
    if refusal is not None:
        return _unavailable(refusal)
    timeout_ms = max(1, round(timeout * 1000))
    try:
        async with internal_session(
            services,
            connection,
            application_name=f"wardgate-preview-{mode}",
            timeout=timeout + _GRACE,
            max_rows=_MAX_ROWS,
        ) as session:
            try:
                if mode == "explain":
                    return await _explain_preview(session, sql, params, timeout_ms, context)
                return await _rollback_preview(
                    session, sql, params, timeout_ms, statements[0], context
                )
            finally:
                await _rollback(session)
    except InternalQueryFailed as exc:
        return _error(exc.reason)
    except Exception:  # noqa: BLE001 - a review must get its answer, whatever broke here
        log.exception("impact preview on connection %r failed", connection)
        return _error("the gateway could not make the preview; see its log")


def _explain_refusal(
    statements: tuple[StatementInfo, ...], params: tuple[str | None, ...]
) -> str | None:
    if len(statements) != 1:
        return f"a preview covers one statement and this holds {len(statements)}"
    info = statements[0]
    if not _DML_KINDS.intersection(info.kinds):
        return "only INSERT, UPDATE, DELETE and MERGE statements have an impact preview"
    return None


def _rollback_refusal(info: StatementInfo) -> str | None:
    kinds = set(info.kinds)
    own = [k for k in ("update", "delete", "insert") if k in kinds]
    if len(own) != 1 or not kinds <= _PLAIN_KINDS[own[0]]:
        return (
            "running it and rolling back is only done for a plain INSERT, UPDATE or DELETE "
            f"(this statement does: {', '.join(info.kinds)})"
        )
    if len(info.tables_written) != 1:
        return "running it and rolling back is only done for a statement writing one table"
    unsafe = []
    for name in info.functions:
        schema, _, bare = name.rpartition(".")
        if function_class(schema or None, bare) != "read":
            unsafe.append(name)
    if unsafe:
        return (
            f"it calls {', '.join(unsafe)}, which may do what a rollback cannot undo; "
            "only the planner's estimate is safe"
        )
    return None


async def _begin(
    session: InternalSession, read_only: bool, timeout_ms: int, context: dict[str, str] | None
) -> str | None:
    results = await session.simple(
        f"BEGIN{' READ ONLY' if read_only else ''}; "
        f"SET LOCAL statement_timeout = {timeout_ms}; "
        f"SET LOCAL lock_timeout = {min(timeout_ms, LOCK_WAIT_MS)}; "
        f"SET LOCAL idle_in_transaction_session_timeout = {timeout_ms + round(_GRACE * 1000)}"
    )
    for result in results:
        if result.error is not None:
            return result.error.message
    context = context or {}
    # The client session's search_path and role, so names resolve to what the held
    # statement will touch; pg_catalog first, so built-in function names mean the
    # built-ins the classifier judged.
    setup = await session.extended(
        "SELECT pg_catalog.set_config('search_path', 'pg_catalog, ' || "
        "coalesce($1, pg_catalog.current_setting('search_path')), true), "
        "pg_catalog.set_config('role', coalesce($2, 'none'), true)",
        [context.get("search_path"), _role_of(context)],
    )
    if setup.error is not None:
        return setup.error.message
    # The settings that change how constants read (DateStyle, TimeZone...), as the
    # client's session has them (postgres/probe.py), so the preview counts its rows.
    for name, value in context.items():
        if name in ("search_path", "current_user", "client_encoding"):
            continue
        applied = await session.extended(
            "SELECT pg_catalog.set_config($1, $2, true)", [name, value]
        )
        if applied.error is not None:
            return applied.error.message
    return None


def _role_of(context: dict[str, str]) -> str | None:
    """The role to preview as: the session's current role when it names one other than
    the login role the gateway dials with; None keeps the login role."""
    return context.get("current_user")


async def _rollback(session: InternalSession) -> None:
    """Roll back explicitly when the session still answers; when it does not, closing
    it makes the server roll back."""
    if session.in_flight:
        return
    try:
        await session.simple("ROLLBACK")
    except InternalQueryFailed:
        pass


async def _plan(
    session: InternalSession, sql: str, params: tuple[str | None, ...]
) -> dict[str, Any] | str:
    """The JSON plan's top node, or the server's error message."""
    result = await session.extended("EXPLAIN (FORMAT JSON, VERBOSE) " + sql, params)
    if result.error is not None:
        return _reason(result.error)
    try:
        plan = json.loads(result.rows[0][0] or "")[0]["Plan"]
    except (IndexError, KeyError, TypeError, ValueError):
        return "the server's plan could not be read"
    if not isinstance(plan, dict):
        return "the server's plan could not be read"
    return plan


async def _explain_preview(
    session: InternalSession,
    sql: str,
    params: tuple[str | None, ...],
    timeout_ms: int,
    context: dict[str, str] | None,
) -> dict[str, Any]:
    problem = await _begin(session, True, timeout_ms, context)
    if problem is not None:
        return _error(problem)
    plan = await _plan(session, sql, params)
    if isinstance(plan, str):
        return _error(plan)
    return {"kind": "explain", **_estimate(plan), "statement_timeout_ms": timeout_ms}


async def _rollback_preview(
    session: InternalSession,
    sql: str,
    params: tuple[str | None, ...],
    timeout_ms: int,
    info: StatementInfo,
    context: dict[str, str] | None,
) -> dict[str, Any]:
    problem = await _begin(session, False, timeout_ms, context)
    if problem is not None:
        return _error(problem)
    plan = await _plan(session, sql, params)
    if isinstance(plan, str):
        return _error(plan)
    estimate = _estimate(plan)
    modifies = _modify_nodes(plan)
    if len(modifies) != 1 or "Schema" not in modifies[0] or "Relation Name" not in modifies[0]:
        return _unavailable("the statement writes in more than one place", **estimate)
    target = modifies[0]
    kind = next(k for k in ("update", "delete", "insert") if k in info.kinds)
    check = await _catalog_check(
        session, [str(target["Schema"]), str(target["Relation Name"]), kind]
    )
    if check.error is not None:
        return _error(_reason(check.error))
    refusal = _side_effects_refusal(check.rows[0] if check.rows else ())
    if refusal is not None:
        return _unavailable(refusal, **estimate)
    result = await session.extended(sql, params, max_rows=0)
    if result.error is not None:
        return _error(_reason(result.error))
    if result.count is None:
        return _error(f"the server did not say how many rows {result.command or 'it'} touched")
    return {
        "kind": "rollback",
        "affected_rows": result.count,
        **estimate,
        "statement_timeout_ms": timeout_ms,
    }


async def _catalog_check(session: InternalSession, params: list[str]) -> Result:
    """_SIDE_EFFECTS_SQL with names resolved in pg_catalog only, then the client's
    search_path again for the statement. Under the client's path a user operator that
    matches exactly (`public.||(name, text)`) wins over the built-in, and one that
    answers NULL hid every trigger: the statement then ran with them for its count."""
    path = await session.extended("SELECT pg_catalog.current_setting('search_path')")
    if path.error is not None or not path.rows:
        return path
    switch = "SELECT pg_catalog.set_config('search_path', $1, true)"
    switched = await session.extended(switch, ["pg_catalog"])
    if switched.error is not None:
        return switched
    check = await session.extended(_SIDE_EFFECTS_SQL, params)
    if check.error is None:
        back = await session.extended(switch, [path.rows[0][0]])
        if back.error is not None:
            return back
    return check


def _reason(error: ServerError) -> str:
    """The server's refusal, for the review; a lock wait given up says whose it is."""
    if error.sqlstate == "55P03":
        return (
            "another session holds a lock on a table or row it needs (a migration or a "
            f"long transaction?); a preview waits at most {LOCK_WAIT_MS} ms for a lock, "
            "so as not to hold that session up. Ask for the preview again later"
        )
    return error.message


def _side_effects_refusal(row: tuple[str | None, ...]) -> str | None:
    if len(row) != 6 or row[0] in (None, "0"):
        return "the table it writes could not be found in the catalog"
    _, not_tables, triggers, rules, functions, sequences = row
    if not_tables:
        return f"it writes {not_tables}, which is not an ordinary table (a view or foreign table)"
    if triggers:
        return f"triggers would run ({triggers}) and may do what a rollback cannot undo"
    if rules:
        return f"rules rewrite it ({rules})"
    if functions:
        return f"the table uses functions a rollback may not undo ({functions})"
    if sequences:
        return (
            f"it would draw values from sequences ({sequences}), "
            "which a rollback does not give back"
        )
    return None


def _modify_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ModifyTable node, the top-most first (a CTE's write sits below the main one)."""
    found: list[dict[str, Any]] = []
    queue: deque[dict[str, Any]] = deque([plan])
    while queue:
        node = queue.popleft()
        if node.get("Node Type") == "ModifyTable":
            found.append(node)
        queue.extend(child for child in node.get("Plans", ()) if isinstance(child, dict))
    return found


def _estimate(plan: dict[str, Any]) -> dict[str, Any]:
    # A ModifyTable without RETURNING reports 0 rows: the rows it writes are its input's.
    estimated = plan.get("Plan Rows")
    modifies = _modify_nodes(plan)
    if modifies:
        inputs = [
            c
            for c in modifies[0].get("Plans", ())
            if isinstance(c, dict) and c.get("Parent Relationship") == "Outer"
        ]
        if inputs:
            estimated = inputs[0].get("Plan Rows", estimated)
    return {
        "estimated_rows": int(estimated) if isinstance(estimated, int | float) else None,
        "plan": _summary(plan),
    }


def _summary(plan: dict[str, Any]) -> str:
    """The plan's nodes, one a line: what runs on which relation, estimated rows, cost.
    Filters and outputs are left out: they only repeat the statement's text."""
    lines: list[str] = []
    total = 0
    stack: list[tuple[int, dict[str, Any]]] = [(0, plan)]
    while stack:
        depth, node = stack.pop()
        total += 1
        if len(lines) < _PLAN_LINES:
            lines.append("  " * depth + _describe_node(node))
        children = [c for c in node.get("Plans", ()) if isinstance(c, dict)]
        stack.extend((depth + 1, child) for child in reversed(children))
    if total > len(lines):
        lines.append(f"… {total - len(lines)} more plan nodes")
    return "\n".join(lines)


def _describe_node(node: dict[str, Any]) -> str:
    name = str(node.get("Node Type", "?"))
    if name == "ModifyTable" and "Operation" in node:
        name = str(node["Operation"])
    relation = node.get("Relation Name")
    if relation is not None:
        schema = node.get("Schema")
        name += f" on {schema}.{relation}" if schema else f" on {relation}"
    rows = node.get("Plan Rows")
    startup, cost = node.get("Startup Cost"), node.get("Total Cost")
    details = [f"est. {rows} rows"] if rows is not None else []
    if isinstance(startup, int | float) and isinstance(cost, int | float):
        details.append(f"cost {startup:.2f}..{cost:.2f}")
    return f"{name} ({', '.join(details)})" if details else name
