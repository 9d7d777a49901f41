"""The shape of a statement for the column rewriter's memory (mask_catalog.py): its
text with every literal constant replaced by a parameter of the gateway's own
(``$10000``, ``$10001``...), so a statement that differs only in its literals (pgbench
-M simple, an agent paging through ids) is rewritten once. The rewriter's decisions
never depend on a literal's value (it looks at relations, columns, functions,
operators and types), and it never rewrites a literal, so the rewritten shape with the
literals put back, as their exact source text, is the statement's own rewrite.

A shape that does not parse (a typed literal ``date '2026-01-01'``, ``SET x = 'y'``,
``UESCAPE``) is not used: the statement is rewritten whole. Pure: no I/O.
"""

from __future__ import annotations

from pglast.parser import ParseError, scan

FIRST = 10000  # above any parameter a client can have used with a shaped statement
_CONSTANTS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_MAX_LITERALS = 1000

# A rewritten shape, ready to fill: text pieces and, between them, literal indexes.
Template = tuple[tuple[str, ...], tuple[int, ...]]


def shape_of(sql: str) -> tuple[str, tuple[str, ...]] | None:
    """``sql`` with its literals replaced by ``$10000``..., and the literals' source
    texts; None when it has none, too many, or parameters of its own that high."""
    try:
        tokens = scan(sql)
    except ParseError:
        return None
    pieces: list[str] = []
    literals: list[str] = []
    at = 0
    for token in tokens:
        if token.name == "PARAM" and int(sql[token.start + 1 : token.end + 1]) >= FIRST:
            return None
        if token.name not in _CONSTANTS:
            continue
        pieces.append(sql[at : token.start])
        pieces.append(f" ${FIRST + len(literals)} ")
        literals.append(sql[token.start : token.end + 1])
        at = token.end + 1
        if len(literals) > _MAX_LITERALS:
            return None
    if not literals:
        return None
    pieces.append(sql[at:])
    return "".join(pieces), tuple(literals)


def template_of(rewritten: str, count: int) -> Template | None:
    """The rewritten shape cut at the gateway's parameters; None when they do not all
    come back exactly once each (then the shape is not used)."""
    try:
        tokens = scan(rewritten)
    except ParseError:
        return None
    texts: list[str] = []
    order: list[int] = []
    at = 0
    for token in tokens:
        if token.name != "PARAM":
            continue
        number = int(rewritten[token.start + 1 : token.end + 1])
        if number < FIRST:
            continue
        texts.append(rewritten[at : token.start])
        order.append(number - FIRST)
        at = token.end + 1
    texts.append(rewritten[at:])
    if sorted(order) != list(range(count)):
        return None
    return tuple(texts), tuple(order)


def fill(template: Template, literals: tuple[str, ...]) -> str:
    texts, order = template
    out = [texts[0]]
    for text, index in zip(texts[1:], order, strict=True):
        out.append(f" {literals[index]} ")
        out.append(text)
    return "".join(out)
