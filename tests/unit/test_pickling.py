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


def _quick_classes() -> list[type]:
    """Every class whose __init__ quick_init replaced (it keeps the generated one)."""
    import wardgate.audit.journal as journal
    import wardgate.audit.records as records
    import wardgate.postgres.codec.messages as messages

    found = []
    for module in (records, journal, messages, __import__("wardgate.actions").actions):
        for value in vars(module).values():
            if isinstance(value, type) and hasattr(value.__init__, "__wrapped_init__"):
                found.append(value)
    return found


def test_quick_init_builds_what_the_generated_init_builds() -> None:
    """quick_init's __init__ takes the same parameters (names, defaults, order) and
    sets every field as the dataclass-generated one would, factories and
    __post_init__ included."""
    import dataclasses
    import inspect

    classes = _quick_classes()
    assert {c.__name__ for c in classes} >= {"Action", "ActionRecord", "Verdict", "Bind"}
    for cls in classes:
        fast, generated = cls.__init__, cls.__init__.__wrapped_init__
        ours = [(p.name, p.default, p.kind) for p in inspect.signature(fast).parameters.values()]
        theirs = [
            (p.name, p.default, p.kind) for p in inspect.signature(generated).parameters.values()
        ]
        factory = {
            f.name for f in dataclasses.fields(cls) if f.default_factory is not dataclasses.MISSING
        }
        assert [(n, k) for n, _, k in ours] == [(n, k) for n, _, k in theirs], cls
        assert [d for n, d, _ in ours if n not in factory] == [
            d for n, d, _ in theirs if n not in factory
        ], cls
        # Build one with distinct values for the required fields, defaults for the rest.
        required = [
            p.name
            for p in list(inspect.signature(generated).parameters.values())[1:]
            if p.default is inspect.Parameter.empty
        ]
        values = [f"v{i}" for i in range(len(required))]
        if cls.__name__ == "Verdict":
            values[0] = Decision.ALLOW  # __post_init__ reads its rule only
        a = object.__new__(cls)
        fast(a, *values)
        b = object.__new__(cls)
        generated(b, *values)
        for f in dataclasses.fields(cls):
            assert getattr(a, f.name) == getattr(b, f.name), (cls, f.name)
