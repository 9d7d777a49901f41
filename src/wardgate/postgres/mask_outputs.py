"""Which result columns of a rewritten statement the database already masked, so the
second layer (content detection, masking.py) need not scan them again.

Read from the text the server runs (the rewriter's output), not from what the rewriter
meant: a column counts only when the statement is one plain SELECT and that column's
whole output expression is the masking expression the rewriter builds for a sensitive
column (``mask_rewrite.mask_expression``)::

    CAST(wardgate_mask.partial|hash|pseudonym(CAST(<column> AS pg_catalog.text)) AS <text type>)
    CAST(NULL AS <any type>)

Such a value is the mask and nothing else: ``partial(x) || other``, ``upper(partial(x))``,
a masked column of a subquery that the outer query transforms, a UNION, ``*`` (the
positions are not known) are not that, and are scanned as before. Calls of the
wardgate_mask functions are refused in what a masked principal writes (mask_rewrite.py),
so only the rewriter puts them there; and whoever wrote one, its value is a mask, as long
as the functions are the gateway's: DDL naming the schema is refused for principals
under column rules (mask_rewrite._refuse_changing_mask_schema).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast.parser import ParseError, parse_sql_json

from wardgate.postgres.mask_rewrite import MASK_SCHEMA

_MASK_FUNCTIONS = frozenset({"partial", "hash", "pseudonym"})
# What the outer cast of a masking call may name: the text types mask_expression casts
# back to (format_type's spellings, parsed), nothing that runs a user routine.
_TEXT_CASTS = frozenset({"text", "varchar", "bpchar", "name"})


@dataclass(frozen=True, slots=True)
class MaskedOutputs:
    """A plain SELECT of ``count`` output columns, of which ``positions`` (0-based)
    hold a value the database masked."""

    count: int
    positions: frozenset[int]

    def of(self, columns: int) -> frozenset[int]:
        """The masked positions for a result of ``columns`` columns; none when that is
        not the statement's shape (then every column is scanned)."""
        return self.positions if columns == self.count else frozenset()


@lru_cache(maxsize=4096)
def masked_outputs(sql: str) -> MaskedOutputs | None:
    """The masked output columns of ``sql`` as sent to the server; None when there is
    none, or the statement is not one plain SELECT whose columns map one to one onto
    its select list."""
    if MASK_SCHEMA not in sql and "NULL" not in sql:
        return None
    try:
        tree = json.loads(parse_sql_json(sql))
    except ParseError:
        return None
    statements = tree.get("stmts", ())
    if len(statements) != 1:
        return None
    select = (statements[0].get("stmt") or {}).get("SelectStmt")
    if (
        not isinstance(select, dict)
        or select.get("op", "SETOP_NONE") != "SETOP_NONE"
        or "intoClause" in select
        or "valuesLists" in select
    ):
        return None
    targets = select.get("targetList") or ()
    positions: set[int] = set()
    for i, item in enumerate(targets):
        target = item.get("ResTarget") if isinstance(item, dict) else None
        if not isinstance(target, dict) or not set(target) <= {"name", "val", "location"}:
            return None
        value = target.get("val")
        if _may_expand(value):
            return None  # *, (x).*: how many columns it gives is not in the text
        if _is_mask(value):
            positions.add(i)
    return MaskedOutputs(len(targets), frozenset(positions)) if positions else None


def _may_expand(value: Any) -> bool:
    if not isinstance(value, dict):
        return True
    if "A_Indirection" in value:
        return True
    ref = value.get("ColumnRef")
    return isinstance(ref, dict) and any("A_Star" in f for f in ref.get("fields", ()))


def _names(nodes: Any) -> list[str]:
    return [n["String"]["sval"] for n in nodes or () if isinstance(n, dict) and "String" in n]


def _only(node: Any, kind: str, keys: set[str]) -> dict[str, Any] | None:
    """``node``'s ``kind`` body when it is that node with no other fields than ``keys``."""
    if not isinstance(node, dict) or set(node) != {kind}:
        return None
    body = node[kind]
    return body if isinstance(body, dict) and set(body) <= keys | {"location"} else None


def _is_mask(value: Any) -> bool:
    cast = _only(value, "TypeCast", {"arg", "typeName"})
    if cast is None:
        return False
    null = _only(cast.get("arg"), "A_Const", {"isnull"})
    if null is not None:
        return null.get("isnull") is True  # NULL of any type is NULL
    type_name = cast.get("typeName") or {}
    names = _names(type_name.get("names"))
    if (
        not names
        or names[-1] not in _TEXT_CASTS
        or names[:-1] not in ([], ["pg_catalog"])
        or "arrayBounds" in type_name
    ):
        return False
    call = _only(cast.get("arg"), "FuncCall", {"funcname", "args", "funcformat"})
    if call is None or call.get("funcformat") != "COERCE_EXPLICIT_CALL":
        return False
    function = _names(call.get("funcname"))
    if len(function) != 2 or function[0] != MASK_SCHEMA or function[1] not in _MASK_FUNCTIONS:
        return False
    args: list[Any] = call.get("args") or []
    if len(args) != 1:
        return False
    inner = _only(args[0], "TypeCast", {"arg", "typeName"})
    return (
        inner is not None
        and _only(inner.get("arg"), "ColumnRef", {"fields"}) is not None
        and _names((inner.get("typeName") or {}).get("names")) == ["pg_catalog", "text"]
    )
