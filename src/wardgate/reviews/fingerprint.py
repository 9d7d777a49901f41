"""What binds an approval to exactly one action: its fingerprint, and the reason the
client gave for it."""

from __future__ import annotations

import hashlib
import json
import re

from wardgate.actions import Action
from wardgate.policy.sql import normalised_sql

# A leading `/* wardgate: reason=... */` comment (before any statement) carries the
# client's justification; one line or several, up to the comment's end.
_REASON = re.compile(r"^\s*/\*\s*wardgate:\s*reason\s*=\s*(.*?)\s*\*/", re.DOTALL | re.IGNORECASE)
MAX_JUSTIFICATION = 2000


def action_fingerprint(action: Action) -> str:
    """sha256 of everything that decides what an action does: connection, principal,
    the normalised text it runs (and the text that names it: SQL ``EXECUTE p(1, 2)``
    with its arguments), every bound parameter (rendered, and its exact bytes, format
    and type through ``binding``) and the session state its meaning depends on.

    SQL is normalised by its parse tree, so a re-run that differs in spacing, comments
    (the justification among them) or keyword case matches, and one that differs in any
    constant, table, argument, parameter byte, search_path or principal does not.
    """
    text = action.judged_text
    normal = normalised_sql(text) if action.kind == "sql" else text.strip()
    named = None
    if action.resolved is not None:
        named = normalised_sql(action.text) if action.kind == "sql" else action.text.strip()
    payload = [
        action.kind,
        action.connection,
        action.principal.name,
        normal,
        list(action.params),
        named,
        action.binding,
        [list(pair) for pair in action.context],
    ]
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()


def fingerprint_of(*parts: object) -> str:
    """Fingerprint of a grant or proposal: its identifying parts in order."""
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


def justification(text: str) -> str | None:
    """The reason a client gave in a leading ``/* wardgate: reason=... */`` comment."""
    m = _REASON.match(text)
    if m is None:
        return None
    reason = " ".join(m.group(1).split())
    return reason[:MAX_JUSTIFICATION] or None
