"""The one currency every protocol pays the gate in: an Action in, a Verdict out."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from wardgate.identity.principals import Principal
from wardgate.pickling import positional_pickle


class Decision(StrEnum):
    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Decision.ALLOW: 0, Decision.REVIEW: 1, Decision.BLOCK: 2}


@positional_pickle
@dataclass(frozen=True, slots=True)
class Action:
    """One thing a principal asks a connection to do, before it reaches the target.

    `text` is what the client sent (one SQL statement, one shell command, ...);
    `params` are bound parameters as the client sent them (text form, or None for NULL,
    or a short ``<binary N bytes>`` marker for binary values).
    """

    principal: Principal
    connection: str
    protocol: str
    kind: str
    text: str
    params: tuple[str | None, ...] = ()
    session_id: str = ""
    client_addr: str = ""


@positional_pickle
@dataclass(frozen=True, slots=True)
class StatementInfo:
    """What the classifier understood one statement to do."""

    klass: str  # read | write | ddl | admin | unknown
    kinds: tuple[str, ...]
    text: str = ""
    error: str | None = None


@positional_pickle
@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    rule: str
    reason: str
    statements: tuple[StatementInfo, ...] = field(default=())

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW
