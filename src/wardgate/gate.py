"""The one decision seam: every protocol turns traffic into Actions and asks `Gate.check`.

The gate is pure and fast: no I/O, verdicts cached per (connection, principal, text).
Roles grant classes of statements per group on a connection; guardrails add rules
for everyone on top. All matching rules apply and the most restrictive verdict wins
(block > review > allow), so there is no rule order to get wrong. An action that no
role grants is blocked.
"""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock

from wardgate.actions import Action, Decision, StatementInfo, Verdict
from wardgate.config import Config
from wardgate.policy.sql import MAX_CACHED_TEXT, classify_keyed

_CACHE_SIZE = 16384


class Gate:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._cache: OrderedDict[tuple[str, str, frozenset[str], str, str], Verdict] = OrderedDict()
        self._lock = Lock()

    def check(self, action: Action) -> Verdict:
        if action.kind == "sql":
            text_key, statements = classify_keyed(action.text)
        else:
            text_key, statements = action.text, ()
        key = (
            action.connection,
            action.principal.name,
            action.principal.groups,
            action.kind,
            text_key,
        )
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        verdict = self._decide(action, statements)
        if len(text_key) > MAX_CACHED_TEXT:
            return verdict  # keys are texts here (multi-statement, unparsable): keep it small
        with self._lock:
            self._cache[key] = verdict
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return verdict

    # -- decisions --------------------------------------------------------------------

    def _decide(self, action: Action, statements: tuple[StatementInfo, ...]) -> Verdict:
        conn = self.config.connections.get(action.connection)
        if conn is None:
            return Verdict(
                Decision.BLOCK,
                "unknown-connection",
                f"connection {action.connection!r} is not configured",
            )
        if action.kind != "sql":
            return Verdict(
                Decision.BLOCK,
                "unsupported-action",
                f"{action.kind} actions are not allowed on this connection",
            )
        roles = sorted({conn.roles[g] for g in action.principal.groups if g in conn.roles})
        if not roles:
            return Verdict(
                Decision.BLOCK,
                "no-role",
                f"principal {action.principal.name!r} has no role on connection {action.connection!r}",
                statements,
            )
        if not statements:
            return Verdict(Decision.ALLOW, "empty", "empty statement", statements)
        worst: Verdict | None = None
        for stmt in statements:
            verdict = self._decide_statement(stmt, roles, action, statements, conn.on_parse_error)
            if worst is None or verdict.decision.severity > worst.decision.severity:
                worst = verdict
        assert worst is not None
        return worst

    def _decide_statement(
        self,
        stmt: StatementInfo,
        roles: list[str],
        action: Action,
        statements: tuple[StatementInfo, ...],
        on_parse_error: str,
    ) -> Verdict:
        if stmt.klass == "unknown":
            decision = Decision(on_parse_error)
            detail = f": {stmt.error}" if stmt.error else ""
            return Verdict(
                decision,
                "unparsed-statement",
                f"wardgate could not understand the statement{detail}; unknown statements are never allowed",
                statements,
            )
        if "parser_setting" in stmt.kinds:
            # Not a policy choice: past this statement the gateway could no longer read
            # the session's SQL as the server does, so no role may allow it.
            return Verdict(
                Decision.BLOCK,
                "wardgate:parser-setting",
                "changing standard_conforming_strings (or a setting named at run time) would "
                "make the server read SQL differently from the gateway; it is never allowed",
                statements,
            )
        # Roles grant: the most permissive of the principal's roles for this class.
        best: tuple[Decision, str] | None = None
        for role_name in roles:
            d = Decision(self.config.roles[role_name].decision_for(stmt.klass))
            if best is None or d.severity < best[0].severity:
                best = (d, role_name)
        assert best is not None
        decision, role_name = best
        verdict = Verdict(
            decision,
            f"role:{role_name}",
            f"role {role_name!r} on connection {action.connection!r} gives {decision.value} "
            f"for {stmt.klass} statements ({', '.join(stmt.kinds)})",
            statements,
        )
        # Guardrails restrict on top of roles, for everyone.
        kinds = {*stmt.kinds, stmt.klass}
        for rail in self.config.guardrails:
            if rail.match.sql and not kinds.intersection(rail.match.sql):
                continue
            d = Decision(rail.verdict)
            if d.severity > verdict.decision.severity:
                reason = (
                    rail.message or f"guardrail {rail.name!r} matches {', '.join(sorted(kinds))}"
                )
                verdict = Verdict(d, f"guardrail:{rail.name}", reason, statements)
        return verdict
