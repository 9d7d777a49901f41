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
    `params` are bound parameters as text (None for NULL; binary values decoded when
    unambiguous, else ``\\x`` hex), whole.
    """

    principal: Principal
    connection: str
    protocol: str
    kind: str
    text: str
    params: tuple[str | None, ...] = ()
    session_id: str = ""
    client_addr: str = ""
    # What the action really runs when `text` only names it (SQL `EXECUTE p` of a
    # statement this session prepared): the gate judges this instead of `text`.
    resolved: str | None = None
    # A digest of what decides the action's effect beyond its text and rendered params:
    # the exact bytes, formats and declared types of bound parameters, COPY data.
    binding: str = ""
    # Session state the statement's meaning depends on, as the server confirmed it
    # (("search_path", "archive, public"), ...): shown to reviewers, bound by approvals.
    context: tuple[tuple[str, str], ...] = ()

    @property
    def judged_text(self) -> str:
        return self.text if self.resolved is None else self.resolved


@positional_pickle
@dataclass(frozen=True, slots=True)
class StatementInfo:
    """What the classifier understood one statement to do."""

    klass: str  # read | write | ddl | admin | unknown
    kinds: tuple[str, ...]
    text: str = ""
    error: str | None = None
    # As written in the statement ("schema.table" or "table"), lower-cased; CTE names
    # are not tables. Written = the target of INSERT/UPDATE/DELETE/MERGE/COPY FROM,
    # SELECT INTO, TRUNCATE, LOCK and DDL; read = every other table named.
    tables_read: tuple[str, ...] = ()
    tables_written: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()  # every function called, as PostgreSQL folds its name
    columns: tuple[str, ...] = ()  # every column named, without its table, lower-cased
    # Shell: every word a command gets (arguments, redirect targets, assigned values) as
    # the fnmatch glob of what it may become (policy/shell/inert.py shape).
    words: tuple[str, ...] = ()
    # SQL: every type named in an explicit cast (``x::t``, ``CAST(x AS t)``, ``t 'x'``)
    # or a column definition (``AS r(a t)``), and every operator used, as written ("schema.name" or "name"), lower-cased; the
    # gate matches them against what the target's catalogue says runs user code.
    types: tuple[str, ...] = ()
    operators: tuple[str, ...] = ()
    # Kubernetes: the resource as ``resource[.group][/subresource]``, its namespace and
    # the API verb (policy/kubernetes), for guardrails' resources/namespaces/verbs.
    resources: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ()
    # Kubernetes port-forward: the pod ports it opens (policy/kubernetes/sessions.py).
    ports: tuple[int, ...] = ()
    # SQL: names selected from a value (``t.f``, ``(x).f``): PostgreSQL calls a function
    # ``f(x)`` by that name when the value has no such field (``(3).bump``), lower-cased.
    attributes: tuple[str, ...] = ()


@positional_pickle
@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    rule: str  # the rule that decided; with several, the first of `rules`
    reason: str
    statements: tuple[StatementInfo, ...] = field(default=())
    # Every rule that gave this decision (all matching rules apply; ties are all named).
    rules: tuple[str, ...] = ()
    # False on a connection in `mode: observe`: the verdict is recorded, the action runs.
    enforced: bool = True

    def __post_init__(self) -> None:
        if not self.rules:
            object.__setattr__(self, "rules", (self.rule,))

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW

    @property
    def lets_through(self) -> bool:
        """Whether the action goes on to the target: allowed, or only observed."""
        return self.decision is Decision.ALLOW or not self.enforced
