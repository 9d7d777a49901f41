"""Casts, domains and operators that run user functions, per connection (issue 14):
what the catalogue watch found turns them into calls of unknown functions (writes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wardgate.actions import Action, Decision
from wardgate.config import Config, parse_config
from wardgate.gate import Gate, UserCode
from wardgate.policy.sql import classify
from wardgate.postgres.catalog_watch import user_code

CONFIG = """
groups: {agents: {}}
principals:
  ann: {kind: user, groups: []}
  bot: {kind: agent, groups: [agents], sponsor: ann}
connections:
  shop:
    type: postgres
    upstream: {database: shop, user: app}
    roles: {agents: reader}
  other:
    type: postgres
    upstream: {database: other, user: app}
    roles: {agents: reader}
roles:
  reader: {read: allow}
"""

FOUND = user_code(
    [
        ("type", "public", "mood"),
        ("type", "public", "_mood"),
        ("type", "public", "posint"),
        ("operator", "public", "==="),
    ]
)


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(CONFIG, Path("gate.yaml"))


def judge(config: Config, sql: str, found: UserCode = FOUND, connection: str = "shop") -> str:
    gate = Gate(config)
    gate.facts.set_user_code("shop", found)
    p = config.principal("bot")
    assert p is not None
    verdict = gate.check(Action(p, connection, "postgres", "sql", sql))
    return f"{verdict.decision.value}:{verdict.reason}"


def test_classifier_names_casts_and_operators() -> None:
    (info,) = classify(
        "select 5::mood, cast(1 as public.posint), mood 'a', 1 === 2, "
        "1 operator(public.===) 2, a between 1 and 2 from t order by a using ~<~"
    )
    assert set(info.types) == {"mood", "public.posint"}
    assert set(info.operators) >= {"===", "public.===", "<=", ">=", "~<~"}


@pytest.mark.parametrize(
    "sql",
    [
        "select 5::mood",
        "select cast(5 as public.mood)",
        "select mood 'a'",
        "select array[5]::mood[]",
        "select 5::posint",
        "select * from json_to_record('{\"a\": 5}') as r(a posint)",
        "select row(5)::public.mood",
        "select 1 === 2",
        "select 1 operator(evil.+) 2",  # a user schema: whatever it holds now or later
    ],
)
def test_user_code_is_an_unknown_function(config: Config, sql: str) -> None:
    verdict = judge(config, sql)
    assert verdict.startswith("block") and "unknown_function" in verdict, verdict


@pytest.mark.parametrize(
    "sql",
    [
        "select 5::int",
        "select 'a'::text",
        "select 1 = 2",
        "select 1 operator(pg_catalog.=) 2",
        "select * from t where x = any (select y from u) order by 1",
    ],
)
def test_built_in_casts_and_operators_stay_reads(config: Config, sql: str) -> None:
    assert judge(config, sql).startswith("allow")


def test_facts_are_per_connection(config: Config) -> None:
    assert judge(config, "select 5::mood", connection="other").startswith("allow")


def test_an_implicit_user_cast_makes_every_expression_unknown(config: Config) -> None:
    found = user_code([("implicit", "", "integer AS mood")])
    assert "integer AS mood" in found.implicit
    verdict = judge(config, "select 1", found)
    assert verdict.startswith("block") and "implicit or assignment user cast" in verdict
    assert judge(config, "begin", found).startswith("allow")
    assert judge(config, "show search_path", found).startswith("allow")


def test_a_user_comparison_operator_is_implicit_too(config: Config) -> None:
    found = user_code([("operator", "public", "=")])
    assert "user operator =" in found.implicit
    assert judge(config, "select 1 in (1, 2)", found).startswith("block")


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("create cast (int as mood) with function f(int) as implicit", "create_cast"),
        ("create operator === (function = f, leftarg = int, rightarg = int)", "create_operator"),
        ("alter operator === (int, int) set (restrict = f)", "alter_operator"),
        ("create operator class c for type mood using btree as function 1 f(mood, mood)",
         "create_operator_class"),
    ],
)  # fmt: skip
def test_making_casts_and_operators_is_admin(sql: str, kind: str) -> None:
    (info,) = classify(sql)
    assert (info.klass, kind in info.kinds) == ("admin", True)


def test_a_cast_never_shares_a_verdict_with_its_fingerprint(config: Config) -> None:
    """PostgreSQL's fingerprint reads `5::mood` and `mood 'a'` as constants like `5`."""
    gate = Gate(config)
    gate.facts.set_user_code("shop", FOUND)
    p = config.principal("bot")
    assert p is not None
    for sql, decision in [
        ("select 5", Decision.ALLOW),
        ("select 5::mood", Decision.BLOCK),
        ("select mood 'a'", Decision.BLOCK),
        ("select mood $x$a$x$", Decision.BLOCK),
        ("select 6", Decision.ALLOW),
    ]:
        assert gate.check(Action(p, "shop", "postgres", "sql", sql)).decision == decision, sql


# attack14e: a type no cast in the text names.
CHECKED = user_code(
    [
        ("type 30605", "public", "touchy"),
        ("type 30607", "public", "dt"),
    ]
)


def test_prepare_argument_types_are_casts(config: Config) -> None:
    (info,) = classify("prepare p(int, public.touchy[]) as select $1")
    assert "public.touchy" in info.types
    assert judge(config, "prepare p(touchy) as select $1", CHECKED).startswith("block:")
    assert judge(config, "prepare p(int) as select $1", CHECKED).startswith("allow:")


@pytest.mark.parametrize(
    "sql",
    [
        """select json_populate_record(x, '{"d": 3}') from dt x""",
        """select * from public.dt x, jsonb_populate_recordset(x, '[{"d": 3}]')""",
    ],
)
def test_populating_a_row_of_a_checked_type_runs_user_code(config: Config, sql: str) -> None:
    verdict = judge(config, sql, CHECKED)
    assert verdict.startswith("block:") and "column types of a row of" in verdict, verdict
    assert judge(config, sql.replace("dt x", "stock x"), CHECKED).startswith("allow:")


def test_declared_parameter_types_by_oid() -> None:
    assert CHECKED.declared_types((0, 23, 30607)) == ["public.dt"]
    assert CHECKED.declared_types((23,)) == []


def test_conversions_into_a_row_or_column_type_run_user_code(config: Config) -> None:
    found = user_code(
        [
            ("type", "public", "touchy"),
            ("type", "public", "dt"),
            ("type", "public", "holder"),
            ("column_table", "public", "holder"),
        ]
    )
    for sql in [
        "select coalesce(x, '(3)') from dt x",
        "select coalesce(x.*, '(3)') from dt x",
        "select arr from holder",
        "select 1 from public.holder",
    ]:
        assert judge(config, sql, found).startswith("block:"), sql
    for sql in ["select * from dt", "select d from dt where d = '3'", "select s from stock s"]:
        assert judge(config, sql, found).startswith("allow:"), sql


def test_a_write_into_a_table_whose_columns_run_user_code_runs_user_code(config: Config) -> None:
    gate = Gate(config)
    gate.facts.set_user_code("shop", user_code([("column_table", "public", "defs")]))
    (typed,) = classify("select arr from holder")
    assert gate.runs_user_code((typed,), "shop") is False  # holder: no column_type rows
    found = user_code([("type 7", "public", "_touchy"), ("column_type", "public.holder", "7 ")])
    assert "holder" in found.column_tables
    (info,) = classify("insert into defs (b) values (1)")
    assert gate.runs_user_code((info,), "shop")
    (plain,) = classify("insert into stock (b) values (1)")
    assert not gate.runs_user_code((plain,), "shop")


def test_a_watched_connection_not_read_yet_is_judged_as_the_worst_case(config: Config) -> None:
    """Once the catalogue watch runs in the process, a connection it has not read (a
    gateway just started, a target whose catalogue could not be read) is not judged as
    one without user code: every expression may run some, so a read-only agent's
    ``(3).bump`` or shadowing ``lower(5)`` is no read until the watch has looked."""
    gate = Gate(config)
    p = config.principal("bot")
    assert p is not None

    def verdict(sql: str, connection: str = "shop") -> str:
        v = gate.check(Action(p, connection, "postgres", "sql", sql))
        return f"{v.decision.value}:{v.reason}"

    assert verdict("select (3).bump").startswith("allow")  # policy check: no catalogue
    gate.facts.watch()
    for sql in ("select (3).bump", "select lower(5)", "select 1"):
        assert verdict(sql).startswith("block"), verdict(sql)
        assert "not read this connection's catalogue yet" in verdict(sql)
    assert verdict("begin").startswith("allow")  # no expression, no user code
    # The first look found nothing: judged by what it found, on that connection only.
    assert gate.facts.set_user_code("shop", UserCode())
    assert verdict("select 1").startswith("allow")
    assert verdict("select (3).bump").startswith("allow")
    assert verdict("select 1", "other").startswith("block")
    assert not gate.facts.set_user_code("shop", UserCode())  # unchanged: no new epoch


def test_a_forgotten_connection_is_judged_as_unread_again(config: Config) -> None:
    """A reload that points a connection at another target forgets what was read of the
    old one (Services.reload): judged as the worst case until the watch reads the new
    one, not with the old target's facts (attack14g)."""
    gate = Gate(config)
    p = config.principal("bot")
    assert p is not None
    gate.facts.watch()
    gate.facts.set_user_code("shop", UserCode())
    gate.facts.set_routines("shop", {})
    assert gate.check(Action(p, "shop", "postgres", "sql", "select (3).bump")).decision.value == (
        "allow"
    )
    gate.facts.forget("shop")
    assert not gate.facts.has_read("shop")
    assert gate.facts.routine_schemas("shop", "bump") is None
    v = gate.check(Action(p, "shop", "postgres", "sql", "select (3).bump"))
    assert v.decision.value == "block"
    assert "not read this connection's catalogue yet" in v.reason


def test_a_truncated_catalogue_answer_is_judged_as_the_worst_case(config: Config) -> None:
    """The user-code query keeps at most max_rows rows (a row per column of a user type
    counts): the rows left out may be the very cast or `attribute` a statement runs, so
    a truncated answer is not stored as what the catalogue holds (attack14g)."""
    from types import SimpleNamespace
    from typing import Any

    from wardgate.postgres.catalog_watch import CatalogWatch
    from wardgate.postgres.internal import Result

    gate = Gate(config)
    gate.facts.watch()
    services: Any = SimpleNamespace(gate=gate)
    rows = (("column_type", "public.t", "16400 "),)
    CatalogWatch()._judge_user_code(
        services,
        "shop",
        Result(rows=rows, truncated=True),
        list(rows),
        frozenset(),
        False,
        seen=(0, 0),
    )
    assert gate.facts.has_read("shop")
    assert "could not be read" in gate.facts.user_code("shop").implicit
    CatalogWatch()._judge_user_code(
        services, "shop", Result(rows=rows), list(rows), frozenset(), False, seen=(0, 0)
    )
    assert gate.facts.user_code("shop").implicit == ""


def test_ddl_through_the_gateway_is_the_worst_case_until_a_later_look_is_read(
    config: Config,
) -> None:
    """From a batch that may commit DDL until a look that began after its answer has
    been read, the connection is judged as the worst case (attack14h): the function
    such a batch made (`(3).bump`) is not in the facts of any look before."""
    gate = Gate(config)
    gate.facts.watch()
    gate.facts.set_user_code("shop", UserCode())
    field_call = "select (3).bump"
    assert _decide(gate, field_call) is Decision.ALLOW
    gate.facts.committing("shop")
    assert _decide(gate, field_call) is not Decision.ALLOW  # in flight: may have committed
    assert "retry in a moment" in gate.facts.user_code("shop").implicit
    seen_before = gate.facts.commits("shop")  # a look that began before the answer
    gate.facts.settled("shop", committed=True)
    gate.facts.set_user_code("shop", UserCode(), seen_before)
    assert _decide(gate, field_call) is not Decision.ALLOW  # that look may not have seen it
    gate.facts.set_user_code("shop", UserCode(), gate.facts.commits("shop"))
    assert _decide(gate, field_call) is Decision.ALLOW  # a look after it: read again
    gate.facts.committing("shop")
    gate.facts.settled("shop", committed=False)  # still in its transaction: nothing new
    assert _decide(gate, field_call) is Decision.ALLOW
    assert gate.facts.user_code("other").implicit  # other connections: never read here


def test_a_session_with_ddl_in_its_open_transaction_is_judged_as_the_worst_case(
    config: Config,
) -> None:
    """``own_changes``: the session sees what its open transaction made; so do the
    statements after DDL in one string."""
    gate = Gate(config)
    gate.facts.watch()
    gate.facts.set_user_code("shop", UserCode())
    action = _action("select (3).bump")
    assert gate.check(action).decision is Decision.ALLOW
    own = gate.check(action, own_changes=True)
    assert own.decision is not Decision.ALLOW and "commit (or roll back) first" in own.reason
    assert gate.check(action).decision is Decision.ALLOW  # cached apart
    both = _action("create table t (i int); select (3).bump")
    assert "commit (or roll back) first" in gate.check(both).reason


def _action(sql: str) -> Action:
    bot = parse_config(CONFIG, Path("gate.yaml")).principal("bot")
    assert bot is not None
    return Action(bot, "shop", "postgres", "sql", sql)


def _decide(gate: Gate, sql: str) -> Decision:
    return gate.check(_action(sql)).decision


def test_ddl_through_another_worker_makes_every_connection_the_worst_case(
    config: Config,
) -> None:
    """ddl_board.py: worker 1 sees worker 0's batch in flight and its answer; its
    connections are the worst case until its own watch has read them again."""
    import copy

    from wardgate.ddl_board import DdlBoard

    board0 = DdlBoard(2)
    board1 = copy.copy(board0)  # the same shared page, as a forked worker has it
    board1.index = 1
    here, there = Gate(config), Gate(config)
    for gate, board in ((here, board0), (there, board1)):
        gate.facts.board = board
        gate.facts.watch()
        gate.facts.set_user_code("shop", UserCode())
        gate.facts.set_user_code("other", UserCode())
    pokes: list[int] = []
    there.facts.on_others_commit = lambda: pokes.append(1)
    assert _decide(there, "select (3).bump") is Decision.ALLOW
    here.facts.committing("shop")
    assert _decide(there, "select (3).bump") is not Decision.ALLOW
    seen = there.facts.commits("other")  # a look that begins before the answer
    here.facts.settled("shop", committed=True)
    assert _decide(there, "select (3).bump") is not Decision.ALLOW and pokes == [1]
    there.facts.set_user_code("shop", UserCode(), seen)
    assert _decide(there, "select (3).bump") is not Decision.ALLOW  # read too early
    there.facts.set_user_code("shop", UserCode(), there.facts.commits("shop"))
    assert _decide(there, "select (3).bump") is Decision.ALLOW
    assert "retry in a moment" in there.facts.user_code("other").implicit  # not read yet
    assert _decide(here, "select (3).bump") is not Decision.ALLOW  # its own: read again too


def test_a_worker_that_dies_with_ddl_in_flight_counts_as_having_committed_it() -> None:
    """No answer will come for its batch: the others must not wait for one forever,
    only until its server backends have been ended."""
    import copy

    from wardgate.ddl_board import DdlBoard

    board0 = DdlBoard(2)
    board1 = copy.copy(board0)
    board1.index = 1
    board0.publish(1, 3)
    assert board1.others() == (1, 3)
    board1.worker_gone(0)
    assert board1.others() == (1, 3)  # its backends may still commit it
    board1.settle(0)  # they have ended (postgres/backends.py)
    assert board1.others() == (0, 4)


def test_a_catalogue_the_watch_cannot_read_is_said_once_per_change(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    """A target that stays unreadable is one warning, not one per look; after DDL (the
    connection `changing`) the look is tried again a second later."""
    import asyncio
    from types import SimpleNamespace
    from typing import Any

    from wardgate.postgres.catalog_watch import CatalogWatch

    gate = Gate(config)
    gate.facts.watch()
    gate.facts.set_user_code("shop", UserCode())
    services: Any = SimpleNamespace(gate=gate)
    watch = CatalogWatch()

    async def looks() -> None:
        watch._unreadable(services, "shop", "OSError: connection refused")
        watch._unreadable(services, "shop", "OSError: connection refused")
        assert not watch._poked.is_set()  # nothing changing: the next round will do
        gate.facts.committing("shop")
        gate.facts.settled("shop", committed=True)
        watch._unreadable(services, "shop", "OSError: connection refused")
        await asyncio.sleep(1.1)
        assert watch._poked.is_set() and "shop" in watch._poked_connections

    with caplog.at_level("WARNING", logger="wardgate.postgres"):
        asyncio.run(looks())
    said = [r for r in caplog.records if "cannot read the catalogue" in r.getMessage()]
    assert len(said) == 1 and "connection refused" in said[0].getMessage()
