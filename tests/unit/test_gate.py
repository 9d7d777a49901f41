"""The gate's decisions as a table: roles grant, guardrails restrict, most restrictive wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from wardgate.actions import Action, Decision
from wardgate.config import Config, parse_config
from wardgate.gate import Gate

CONFIG = """
groups: {agents: {}, engineers: {}, dba: {}}
principals:
  bot: {kind: agent, groups: [agents], sponsor: ann}
  ann: {kind: user, groups: [engineers]}
  dora: {kind: user, groups: [engineers, dba]}
  nobody: {kind: user, groups: []}
connections:
  shop:
    type: postgres
    upstream: {database: shop, user: app}
    roles: {agents: reader, engineers: engineer, dba: admin}
  strict:
    type: postgres
    upstream: {database: shop, user: app}
    roles: {engineers: engineer}
    on_parse_error: review
roles:
  reader: {read: allow}
  engineer: {read: allow, write: allow, ddl: review}
  admin: {read: allow, write: allow, ddl: allow, admin: allow}
guardrails:
  - {name: no-drop, match: {sql: [drop, truncate]}, verdict: block, message: "Destructive DDL is blocked"}
  - {name: no-unbounded-delete, match: {sql: [delete_without_where]}, verdict: block}
reviews: {approvers: [dba]}
safe_settings: [app.tenant]
"""


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(CONFIG, Path("gate.yaml"))


def check(
    config: Config, principal: str, sql: str, connection: str = "shop"
) -> tuple[Decision, str]:
    p = config.principal(principal)
    assert p is not None
    verdict = Gate(config).check(Action(p, connection, "postgres", "sql", sql))
    return verdict.decision, verdict.rule


TABLE = [
    ("bot", "select * from orders", Decision.ALLOW, "role:reader"),
    ("bot", "update orders set paid = true where id = 1", Decision.BLOCK, "role:reader"),
    (
        "bot",
        "with d as (delete from orders where id = 1 returning *) select * from d",
        Decision.BLOCK,
        "role:reader",
    ),
    ("bot", "select 1; insert into t values (1)", Decision.BLOCK, "role:reader"),
    ("ann", "update orders set paid = true where id = 1", Decision.ALLOW, "role:engineer"),
    ("ann", "create table x (a int)", Decision.REVIEW, "role:engineer"),
    ("ann", "grant select on t to bob", Decision.BLOCK, "role:engineer"),
    ("ann", "drop table orders", Decision.BLOCK, "guardrail:no-drop"),
    ("ann", "delete from orders", Decision.BLOCK, "guardrail:no-unbounded-delete"),
    # dora's dba role grants admin; the most permissive role applies, guardrails still bind her.
    ("dora", "grant select on t to bob", Decision.ALLOW, "role:admin"),
    ("dora", "create table x (a int)", Decision.ALLOW, "role:admin"),
    ("dora", "drop table orders", Decision.BLOCK, "guardrail:no-drop"),
    ("nobody", "select 1", Decision.BLOCK, "no-role"),
    ("ann", "selec 1", Decision.BLOCK, "unparsed-statement"),
    # Not even an admin role may make the server read SQL differently from the gateway.
    ("dora", "set standard_conforming_strings = off", Decision.BLOCK, "wardgate:parser-setting"),
    ("dora", "select set_config($1, $2, false)", Decision.BLOCK, "wardgate:parser-setting"),
    ("dora", "set search_path = public", Decision.ALLOW, "role:admin"),
    # An encoding whose multibyte characters can hide quotes: never, whatever the role.
    ("dora", "set client_encoding to 'SJIS'", Decision.BLOCK, "wardgate:unreadable-encoding"),
    (
        "dora",
        "select set_config('client_encoding', 'BIG5', false)",
        Decision.BLOCK,
        "wardgate:unreadable-encoding",
    ),
    ("bot", "set client_encoding to 'LATIN1'", Decision.ALLOW, "role:reader"),
    # Settings that skip triggers, silence logging or stop statistics are admin.
    ("ann", "set session_replication_role = replica", Decision.BLOCK, "role:engineer"),
    ("bot", "set log_statement = 'none'", Decision.BLOCK, "role:reader"),
    ("dora", "set session_replication_role = replica", Decision.ALLOW, "role:admin"),
    ("bot", "set statement_timeout = 1000", Decision.ALLOW, "role:reader"),
    # A setting PostgreSQL does not know is admin unless the configuration says otherwise.
    ("ann", "set pgaudit.log = 'none'", Decision.BLOCK, "role:engineer"),
    (
        "ann",
        "select set_config('request.jwt.claims', '{}', false)",
        Decision.BLOCK,
        "role:engineer",
    ),
    ("bot", "set app.tenant = '7'", Decision.ALLOW, "role:reader"),
    # Syntax a 14/15 server reads as a call of whatever function has that name.
    ("bot", "select json_scalar(1)", Decision.BLOCK, "role:reader"),
    ("bot", "select json_object()", Decision.BLOCK, "role:reader"),
    ("bot", "select json_object('{a,1}')", Decision.ALLOW, "role:reader"),
    # COPY FROM STDIN's rows are never shown to a reviewer: not approvable.
    ("ann", "copy orders from stdin", Decision.ALLOW, "role:engineer"),
]


@pytest.mark.parametrize(("principal", "sql", "decision", "rule"), TABLE)
def test_decisions(config: Config, principal: str, sql: str, decision: Decision, rule: str) -> None:
    assert check(config, principal, sql) == (decision, rule)


def _bound(config: Config, principal: str, sql: str, *params: str | None) -> Decision:
    p = config.principal(principal)
    assert p is not None
    return Gate(config).check(Action(p, "shop", "postgres", "sql", sql, params=params)).decision


def test_copy_from_is_never_held_for_a_review(config: Config) -> None:
    reviewing = parse_config(
        CONFIG.replace(
            "engineer: {read: allow, write: allow,", "engineer: {read: allow, write: review,"
        ),
        Path("g.yaml"),
    )
    assert check(reviewing, "ann", "copy orders from stdin") == (
        Decision.BLOCK,
        "wardgate:copy-from-review",
    )
    assert check(reviewing, "ann", "copy orders to stdout")[0] is Decision.ALLOW
    assert check(reviewing, "ann", "insert into orders values (1)")[0] is Decision.REVIEW


def test_a_setting_named_by_a_parameter_is_judged_by_its_value(config: Config) -> None:
    sql = "select set_config($1, $2, false)"
    assert _bound(config, "bot", sql, "statement_timeout", "5s") is Decision.ALLOW
    assert _bound(config, "bot", sql, "search_path", "public, pg_catalog") is Decision.BLOCK
    assert _bound(config, "dora", sql, "standard_conforming_strings", "off") is Decision.BLOCK
    # Its current value (the only one a session through the gateway can have): a no-op.
    assert _bound(config, "bot", sql, "standard_conforming_strings", "on") is Decision.ALLOW
    assert _bound(config, "ann", sql, "session_replication_role", "replica") is Decision.BLOCK
    assert _bound(config, "dora", sql, "session_replication_role", "replica") is Decision.ALLOW
    # No value bound (a Parse judged on its own, `policy check`): the strictest reading.
    assert _bound(config, "dora", sql) is Decision.BLOCK
    p = config.principal("bot")
    assert p is not None
    later = Gate(config).check(Action(p, "shop", "postgres", "sql", sql), params_later=True)
    assert later.decision is Decision.ALLOW  # at Parse: judged again at Execute


def test_a_limit_bound_to_null_is_no_limit(tmp_path: Path) -> None:
    rail = "  - {name: bounded, match: {sql: [select]}, condition: {without_limit: true}, verdict: block}"
    config = parse_config(CONFIG.replace("guardrails:\n", f"guardrails:\n{rail}\n"), Path("g.yaml"))
    sql = "select * from orders limit $1"
    assert _bound(config, "bot", sql, "10") is Decision.ALLOW
    assert _bound(config, "bot", sql, None) is Decision.BLOCK
    assert _bound(config, "bot", "select * from orders limit all") is Decision.BLOCK
    assert _bound(config, "bot", "select * from orders limit 10") is Decision.ALLOW
    # The fingerprint cache never lends one LIMIT's verdict to another.
    assert _bound(config, "bot", "select * from orders limit null") is Decision.BLOCK


def test_unparsable_statement_follows_on_parse_error(config: Config) -> None:
    assert check(config, "ann", "selec 1", "strict") == (Decision.REVIEW, "unparsed-statement")


def test_unknown_connection_is_blocked(config: Config) -> None:
    assert check(config, "ann", "select 1", "nope")[0] is Decision.BLOCK


def test_block_reason_names_the_rule_and_the_statement_kind(config: Config) -> None:
    p = config.principal("bot")
    assert p is not None
    verdict = Gate(config).check(Action(p, "shop", "postgres", "sql", "insert into t values (1)"))
    assert "reader" in verdict.reason and "write" in verdict.reason and "insert" in verdict.reason


def test_cached_verdict_is_the_same_and_fast(config: Config) -> None:
    import time

    gate = Gate(config)
    p = config.principal("ann")
    assert p is not None
    action = Action(p, "shop", "postgres", "sql", "select * from orders where id = 42")
    first = gate.check(action)
    start = time.perf_counter()
    for i in range(1000):
        assert (
            gate.check(Action(p, "shop", "postgres", "sql", f"select * from orders where id = {i}"))
            == first
        )
    per_check = (time.perf_counter() - start) / 1000
    assert per_check < 0.001  # a generous bound: measured ~5 µs; the benchmark reports the figure


# -- the policy engine: guardrails on tables, columns, functions, who; conditions ------

POLICY = """
groups: {agents: {}, engineers: {}, dba: {}}
principals:
  bot: {kind: agent, groups: [agents], sponsor: ann}
  ann: {kind: user, groups: [engineers]}
  dora: {kind: user, groups: [dba]}
connections:
  shop:
    type: postgres
    upstream: {database: shop, user: app}
    roles: {agents: reader, engineers: engineer, dba: admin}
  lab:
    type: postgres
    upstream: {database: lab, user: app}
    roles: {agents: reader}
    mode: observe
roles:
  reader: {read: allow}
  engineer: {read: allow, write: allow, ddl: review}
  admin: {read: allow, write: allow, ddl: allow, admin: allow}
safe_functions: [report.totals, fmt_money]
guardrails:
  - {name: no-secrets-for-agents, match: {tables: ["*.secrets", "vault.*"], principal_kinds: [agent]}, verdict: block, message: "Agents never read secrets"}
  - {name: ssn-review, match: {tables: [public.customers], columns: [ssn]}, verdict: review}
  - {name: no-sleep, match: {functions: [pg_sleep*]}, verdict: block}
  - {name: orders-writes-reviewed, match: {tables_written: [orders]}, verdict: review}
  - {name: agents-need-limit, match: {principal_kinds: [agent], sql: [select]}, condition: {without_limit: true}, verdict: review}
  - {name: unbounded-changes, match: {}, condition: {without_where: true}, verdict: block}
  - {name: lab-only-for-ann, match: {connections: [lab], principals: [ann]}, verdict: block}
reviews: {approvers: [dba]}
"""


@pytest.fixture(scope="module")
def policy() -> Config:
    return parse_config(POLICY, Path("policy.yaml"))


POLICY_TABLE = [
    # reads with LIMIT are fine for agents; without, they need a review
    ("bot", "select id from orders limit 10", Decision.ALLOW, "role:reader"),
    ("bot", "select id from orders", Decision.REVIEW, "guardrail:agents-need-limit"),
    ("ann", "select id from orders", Decision.ALLOW, "role:engineer"),
    # tables: any schema for a bare name; a qualified rule matches the bare name too
    ("bot", "select * from secrets limit 1", Decision.BLOCK, "guardrail:no-secrets-for-agents"),
    ("bot", "select * from app.secrets limit 1", Decision.BLOCK, "guardrail:no-secrets-for-agents"),
    ("bot", "select * from vault.keys limit 1", Decision.BLOCK, "guardrail:no-secrets-for-agents"),
    (
        "bot",
        "select * from (select * from secrets) s limit 1",
        Decision.BLOCK,
        "guardrail:no-secrets-for-agents",
    ),
    ("ann", "select * from secrets", Decision.ALLOW, "role:engineer"),
    # statistics sample every table's values: a table guardrail covers them too
    (
        "bot",
        "select most_common_vals from pg_stats where tablename = 'secrets' limit 1",
        Decision.BLOCK,
        "guardrail:no-secrets-for-agents",
    ),
    (
        "bot",
        "select stxdmcv from pg_catalog.pg_statistic_ext_data limit 1",
        Decision.BLOCK,
        "guardrail:no-secrets-for-agents",
    ),
    # a CTE named like a table is not that table
    (
        "bot",
        "with secrets as (select 1 as a) select a from secrets limit 1",
        Decision.ALLOW,
        "role:reader",
    ),
    # columns: named, or behind *
    ("ann", "select ssn from customers", Decision.REVIEW, "guardrail:ssn-review"),
    ("ann", "select * from public.customers", Decision.REVIEW, "guardrail:ssn-review"),
    ("ann", "select name from customers", Decision.ALLOW, "role:engineer"),
    # functions: built-in read-only, listed safe, unknown (a write), guarded
    ("bot", "select lower(name), now() from orders limit 5", Decision.ALLOW, "role:reader"),
    # An aggregate's one row is computed from every row: a LIMIT on it bounds nothing.
    (
        "bot",
        "select count(*) from orders limit 5",
        Decision.REVIEW,
        "guardrail:agents-need-limit",
    ),
    ("bot", "select report.totals() limit 1", Decision.ALLOW, "role:reader"),
    ("bot", "select fmt_money(1)", Decision.ALLOW, "role:reader"),
    ("bot", "select my_func()", Decision.BLOCK, "role:reader"),
    ("bot", "select evil.now()", Decision.BLOCK, "role:reader"),
    ("ann", "select my_func()", Decision.ALLOW, "role:engineer"),
    ("ann", "select pg_sleep(1)", Decision.BLOCK, "guardrail:no-sleep"),
    # writes to a guarded table need a review; unbounded changes are blocked for all
    ("ann", "insert into orders values (1)", Decision.REVIEW, "guardrail:orders-writes-reviewed"),
    (
        "ann",
        "update orders set paid = true where id = 1",
        Decision.REVIEW,
        "guardrail:orders-writes-reviewed",
    ),
    ("ann", "update items set n = 1", Decision.BLOCK, "guardrail:unbounded-changes"),
    ("dora", "delete from items", Decision.BLOCK, "guardrail:unbounded-changes"),
    ("dora", "delete from items where id = 1", Decision.ALLOW, "role:admin"),
    # connections and principals
    ("ann", "select 1", Decision.BLOCK, "no-role"),
]


@pytest.mark.parametrize(("principal", "sql", "decision", "rule"), POLICY_TABLE)
def test_policy_decisions(
    policy: Config, principal: str, sql: str, decision: Decision, rule: str
) -> None:
    p = policy.principal(principal)
    assert p is not None
    connection = "lab" if (principal, sql) == ("ann", "select 1") else "shop"
    verdict = Gate(policy).check(Action(p, connection, "postgres", "sql", sql))
    assert (verdict.decision, verdict.rule) == (decision, rule), verdict.reason


def test_every_rule_that_decides_is_named(policy: Config) -> None:
    bot = policy.principal("bot")
    assert bot is not None
    verdict = Gate(policy).check(Action(bot, "shop", "postgres", "sql", "delete from secrets"))
    assert verdict.decision is Decision.BLOCK
    assert set(verdict.rules) == {
        "guardrail:no-secrets-for-agents",
        "guardrail:unbounded-changes",
        "role:reader",
    }
    assert verdict.rule == verdict.rules[0] and verdict.rule.startswith("guardrail:")


def test_unknown_function_is_named_in_the_reason(policy: Config) -> None:
    bot = policy.principal("bot")
    assert bot is not None
    verdict = Gate(policy).check(Action(bot, "shop", "postgres", "sql", "select my_func()"))
    assert "unknown_function: my_func" in verdict.reason


def test_observe_mode_records_the_verdict_but_lets_it_through(policy: Config) -> None:
    bot = policy.principal("bot")
    assert bot is not None
    verdict = Gate(policy).check(Action(bot, "lab", "postgres", "sql", "drop table t"))
    assert verdict.decision is Decision.BLOCK and not verdict.enforced and verdict.lets_through
    ok = Gate(policy).check(Action(bot, "shop", "postgres", "sql", "drop table t"))
    assert ok.enforced and not ok.lets_through


def test_read_only_sessions(policy: Config) -> None:
    gate = Gate(policy)
    assert gate.read_only_session(frozenset({"agents"}), "shop")
    assert not gate.read_only_session(frozenset({"agents", "engineers"}), "shop")
    assert not gate.read_only_session(frozenset({"engineers"}), "shop")  # ddl: review
    assert not gate.read_only_session(frozenset({"agents"}), "lab")  # observe mode


def test_who_may_change_code(policy: Config) -> None:
    # The second layer trusts columns the database masked only for principals who
    # cannot replace the functions computing them (relay_state._database_masks).
    gate = Gate(policy)
    assert not gate.may_change_code(frozenset({"agents"}), "shop")  # read only
    assert gate.may_change_code(frozenset({"engineers"}), "shop")  # ddl: review
    assert gate.may_change_code(frozenset({"agents", "dba"}), "shop")
    assert gate.may_change_code(frozenset({"agents"}), "lab")  # observe mode
    assert gate.may_change_code(frozenset({"agents"}), "nowhere")


def test_sql_execute_is_judged_by_what_it_resolves_to(policy: Config) -> None:
    bot = policy.principal("bot")
    assert bot is not None
    gate = Gate(policy)
    plain = Action(bot, "shop", "postgres", "sql", "execute p(1)")
    assert gate.check(plain).decision is Decision.BLOCK
    reading = Action(
        bot, "shop", "postgres", "sql", "execute p(1)",
        resolved="prepare p as select id from orders where id = $1 limit 1",
    )  # fmt: skip
    assert gate.check(reading).decision is Decision.ALLOW


def test_a_qualified_safe_function_covers_a_bare_call_only_where_no_other_schema_has_it() -> None:
    # safe_functions: [report.totals]. A bare totals() may resolve to any schema of the
    # session's search_path: safe only when the catalogue shows report alone has one.
    from wardgate.gate import CatalogFacts

    config = parse_config(CONFIG + "safe_functions: [report.totals]\n", Path("gate.yaml"))
    p = config.principal("bot")
    assert p is not None
    facts = CatalogFacts()

    def decision(sql: str) -> Decision:
        return Gate(config, facts).check(Action(p, "shop", "postgres", "sql", sql)).decision

    assert decision("select totals()") is Decision.BLOCK  # the catalogue was not read
    facts.set_routines("shop", {"totals": frozenset({"report"})})
    assert decision("select totals()") is Decision.ALLOW
    facts.set_routines("shop", {"totals": frozenset({"report", "evil"})})
    assert decision("select totals()") is Decision.BLOCK
    assert decision("select report.totals()") is Decision.ALLOW
    assert decision('select report."Totals"()') is Decision.BLOCK  # another routine
    # No user schema holds one: the bare call resolves to a built-in of that name (one
    # the classifier does not know), which the entry for report.totals does not cover.
    facts.set_routines("shop", {})
    assert decision("select totals()") is Decision.BLOCK
