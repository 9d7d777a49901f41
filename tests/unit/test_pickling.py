"""Records cross to the recorder process pickled; they must come back equal."""

from __future__ import annotations

import pickle

from wardgate.actions import Action, Decision, StatementInfo, Verdict
from wardgate.audit.records import ActionRecord, SessionEnd, SessionRecord
from wardgate.identity.principals import Principal, PrincipalKind


def test_records_round_trip() -> None:
    bot = Principal("bot", PrincipalKind.AGENT, frozenset({"agents"}), sponsor="ann")
    verdict = Verdict(
        Decision.BLOCK, "no-drop", "blocked", (StatementInfo("ddl", ("drop",), "", None),)
    )
    action = Action(bot, "db", "postgres", "sql", "drop table t", ("1", None), "s_1", "::1")
    records = [
        SessionRecord("s_1", "postgres", bot, "db", "::1", 1.5, "psql", True),
        ActionRecord("s_1", 3, action, verdict, 2.5, 0.1, "blocked", None, None, "no", "42501"),
        SessionEnd("s_1", 3.5, "closed", None),
    ]
    again = pickle.loads(pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL))
    assert again == records
    assert again[1].action.principal.kind is PrincipalKind.AGENT
