"""``wardgate policy``: the policy as code — ask it, test it, replay traffic through it,
and hand it to the running gateway.

Every command judges with the gateway's own `Gate`, built from the file named, so what
they report is what ``wardgate serve`` does with that file. Exit codes: 0 for an answer
(whatever the verdict), 1 when a test fails or a reload is refused, 2 for usage, config,
cases-file and store errors.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from wardgate.actions import Action, Decision, StatementInfo, Verdict
from wardgate.config import Config, ConfigError, load_config, parse_duration
from wardgate.identity.principals import Principal

if TYPE_CHECKING:
    from wardgate.gate import Gate
    from wardgate.store.db import Store

# Made before the helpers are imported from cli.main, which registers it: under
# `python -m wardgate.cli.main` that import runs cli.main a second time, while this
# module is still half-loaded, and it must already find `policy_app` here.
policy_app = typer.Typer(
    help="Policy as code: check a statement, run test cases, replay recorded traffic, reload.",
    no_args_is_help=True,
)

from wardgate.cli.main import (  # noqa: E402
    DEFAULT_CONFIG,
    ConfigPath,
    JsonFlag,
    _config,
    _expected_errors,
    _fail,
    _print_json,
    _when,
)

_SQL_WIDTH = 72
_DEFAULT_REPLAY_LIMIT = 10_000
# Rules the gateway applies by itself, whatever the policy says, to actions whose
# recorded text is only a description (a fast-path FunctionCall): replaying that text
# would judge the description, so such actions keep their recorded verdict.
_GATEWAY_RULES = frozenset({"function-call-protocol"})


def _short(sql: str, width: int = _SQL_WIDTH) -> str:
    one_line = " ".join(sql.split())
    return one_line if len(one_line) <= width else one_line[: width - 3] + "..."


def _known(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none defined"


def _principal_or_fail(cfg: Config, config_path: str, name: str) -> Principal:
    principal = cfg.principal(name)
    if principal is None:
        _fail(f"unknown principal {name!r} (principals in {config_path}: {_known(cfg.principals)})")
    return principal


def _connection_or_fail(cfg: Config, config_path: str, name: str) -> str:
    if name not in cfg.connections:
        _fail(
            f"unknown connection {name!r} (connections in {config_path}: {_known(cfg.connections)})"
        )
    return name


def _sql_action(cfg: Config, principal: Principal, connection: str, sql: str) -> Action:
    """The action a statement (on an ssh connection a command line, on a kubernetes one a
    request line such as ``DELETE /api/v1/namespaces/prod``) would be."""
    conn = cfg.connections.get(connection)
    protocol = conn.type if conn is not None else "postgres"
    kind = {"ssh": "shell", "kubernetes": "kubernetes"}.get(protocol, "sql")
    return Action(principal, connection, protocol, kind, sql)


def _rules(verdict: Verdict) -> tuple[str, ...]:
    return verdict.rules or (verdict.rule,)


def _by(verdict: Verdict) -> str:
    return f"{verdict.decision.value} by {', '.join(_rules(verdict))}"


def _statement_json(stmt: StatementInfo) -> dict[str, Any]:
    return {
        "class": stmt.klass,
        "kinds": list(stmt.kinds),
        "text": stmt.text,
        "error": stmt.error,
        "tables_read": list(stmt.tables_read),
        "tables_written": list(stmt.tables_written),
        "functions": list(stmt.functions),
        "columns": list(stmt.columns),
    }


def _verdict_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "decision": verdict.decision.value,
        "rule": verdict.rule,
        "rules": list(_rules(verdict)),
        "reason": verdict.reason,
        "enforced": verdict.enforced,
    }


# -- check ----------------------------------------------------------------------------


@policy_app.command("check")
def policy_check(
    sql: Annotated[str, typer.Argument(help="The statement(s), as the client would send them.")],
    connection: Annotated[str, typer.Option("--connection", help="A connection in the config.")],
    principal: Annotated[str, typer.Option("--principal", help="A principal in the config.")],
    as_json: JsonFlag = False,
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """What the gateway would decide for PRINCIPAL sending SQL on CONNECTION, and why.

    Exits 0 whatever the verdict; 2 when the config, principal or connection is wrong."""
    from wardgate.gate import Gate
    from wardgate.policy.sql import classify

    with _expected_errors():
        cfg = _config(config)
        who = _principal_or_fail(cfg, config, principal)
        _connection_or_fail(cfg, config, connection)
        verdict = Gate(cfg).check(_sql_action(cfg, who, connection, sql))
    # Verdicts decided before classification (an empty statement) carry no statements.
    statements = verdict.statements or classify(sql)
    if as_json:
        _print_json(
            {
                "connection": connection,
                "principal": principal,
                "sql": sql,
                **_verdict_json(verdict),
                "statements": [_statement_json(s) for s in statements],
            }
        )
        return
    rules = _rules(verdict)
    typer.echo(f"verdict    {verdict.decision.value}")
    typer.echo(f"{'rules' if len(rules) > 1 else 'rule':<10} {', '.join(rules)}")
    typer.echo(f"reason     {verdict.reason}")
    if not verdict.enforced:
        typer.echo(f"mode       observe: {connection!r} only records this verdict; it would run")
    for n, stmt in enumerate(statements, 1):
        typer.echo(f"statement {n}: {stmt.klass} ({', '.join(stmt.kinds) or '-'})")
        if len(statements) > 1:
            typer.echo(f"  text       {_short(stmt.text)}")
        if stmt.error:
            typer.echo(f"  error      {stmt.error}")
        typer.echo(f"  reads      {', '.join(stmt.tables_read) or '-'}")
        typer.echo(f"  writes     {', '.join(stmt.tables_written) or '-'}")
        typer.echo(f"  functions  {', '.join(stmt.functions) or '-'}")
        if stmt.columns:
            typer.echo(f"  columns    {', '.join(stmt.columns)}")


# -- test -----------------------------------------------------------------------------

_CASE_KEYS = ("name", "connection", "principal", "sql", "expect", "rule")
_REQUIRED_KEYS = ("connection", "principal", "sql", "expect")
_DECISIONS = tuple(d.value for d in Decision)


@dataclass(frozen=True, slots=True)
class _Case:
    number: int
    where: str  # "cases.yaml:12", for messages
    name: str
    connection: str
    principal: str
    sql: str
    expect: Decision
    rule: str | None

    @property
    def label(self) -> str:
        return f"case {self.number}" + (f" {self.name!r}" if self.name else "")


def _yaml_or_fail(path: Path, what: str) -> tuple[Any, yaml.Node | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        _fail(f"{path}: cannot read the {what}: {exc.strerror}")
    try:
        return yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        _fail(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}")


def _check_case(
    entry: dict[Any, Any], key_lines: dict[str, int], cfg: Config, config_path: str
) -> list[tuple[str | None, str]]:
    """Problems of one entry, each with the key it is about (None: the whole entry)."""
    problems: list[tuple[str | None, str]] = []

    def problem(key: str | None, message: str) -> None:
        problems.append((key if key in key_lines else None, message))

    for key in entry:
        if key not in _CASE_KEYS:
            problem(str(key), f"unknown key {key!r} (a case has: {', '.join(_CASE_KEYS)})")
    missing = [k for k in _REQUIRED_KEYS if entry.get(k) is None]
    if missing:
        problem(None, f"missing {', '.join(missing)}")
    for key in ("connection", "principal", "sql", "rule"):
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            problem(key, f"{key} must be a string, got {value!r}")
    expect = entry.get("expect")
    if expect is not None and expect not in _DECISIONS:
        problem("expect", f"expect must be one of {', '.join(_DECISIONS)}, got {expect!r}")
    connection, principal = entry.get("connection"), entry.get("principal")
    if isinstance(connection, str) and connection not in cfg.connections:
        known = _known(cfg.connections)
        problem("connection", f"unknown connection {connection!r} (in {config_path}: {known})")
    if isinstance(principal, str) and principal not in cfg.principals:
        known = _known(cfg.principals)
        problem("principal", f"unknown principal {principal!r} (in {config_path}: {known})")
    return problems


def _load_cases(path: Path, cfg: Config, config_path: str) -> list[_Case]:
    data, node = _yaml_or_fail(path, "cases file")
    shape = "a YAML list of cases, each {connection, principal, sql, expect: allow|block|review}"
    if not isinstance(data, list) or not isinstance(node, yaml.SequenceNode):
        _fail(f"{path}: expected {shape}")
    if not data:
        _fail(f"{path}: no cases; expected {shape}")
    problems: list[str] = []
    cases: list[_Case] = []
    for number, (entry, entry_node) in enumerate(zip(data, node.value, strict=True), 1):
        where = f"{path}:{entry_node.start_mark.line + 1}"
        if not isinstance(entry, dict) or not isinstance(entry_node, yaml.MappingNode):
            problems.append(f"{where}: case {number}: expected a mapping, not {entry!r}")
            continue
        key_lines = {str(k.value): k.start_mark.line + 1 for k, _ in entry_node.value}
        found = _check_case(entry, key_lines, cfg, config_path)
        for key, msg in found:
            line_where = f"{path}:{key_lines[key]}" if key is not None else where
            problems.append(f"{line_where}: case {number}: {msg}")
        if found:
            continue
        cases.append(
            _Case(
                number=number,
                where=where,
                name=str(entry.get("name") or ""),
                connection=entry["connection"],
                principal=entry["principal"],
                sql=entry["sql"],
                expect=Decision(entry["expect"]),
                rule=entry.get("rule"),
            )
        )
    if problems:
        raise ConfigError([*problems, f"{path}: fix the cases above; no case was run"])
    return cases


def _case_failure(case: _Case, verdict: Verdict) -> str | None:
    """Why the case fails, or None when it passes."""
    rules = _rules(verdict)
    if verdict.decision is case.expect and (case.rule is None or case.rule in rules):
        return None
    expected = case.expect.value + (f" by {case.rule}" if case.rule else "")
    return (
        f"{case.where}: FAIL {case.label}: {case.principal} on {case.connection}: "
        f"{_short(case.sql, 60)}: expected {expected}, got {_by(verdict)} ({verdict.reason})"
    )


@policy_app.command("test")
def policy_test(
    cases_file: Annotated[
        Path,
        typer.Argument(help="YAML list of {connection, principal, sql, expect[, name, rule]}."),
    ],
    config: ConfigPath = DEFAULT_CONFIG,
) -> None:
    """Run test cases against the policy: one line per failing case, then a summary.

    Exits 1 when a case fails, 2 when the cases file or the config is malformed."""
    from wardgate.gate import Gate

    with _expected_errors():
        cfg = _config(config)
        cases = _load_cases(cases_file, cfg, config)
    gate = Gate(cfg)
    failed = 0
    for case in cases:
        who = cfg.principal(case.principal)
        assert who is not None  # checked when loading
        failure = _case_failure(case, gate.check(_sql_action(cfg, who, case.connection, case.sql)))
        if failure is not None:
            failed += 1
            typer.echo(failure)
    typer.echo(f"{len(cases) - failed} passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


# -- replay ---------------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*$")


def _since_timestamp(value: str) -> float:
    if _RELATIVE.match(value):
        return time.time() - parse_duration(value)
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        _fail(
            f"--since {value!r}: expected a duration back from now (30m, 24h, 7d) "
            "or a date and time (2024-05-01 or 2024-05-01T09:30, local time unless it has an offset)"
        )
    return (when if when.tzinfo is not None else when.astimezone()).timestamp()


def _open_store_for_reading(url: str) -> Store:
    """The store as it is: replay reads the audit log, so it neither creates nor migrates."""
    from wardgate.store.db import Store, StoreError, normalize_url

    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise StoreError(
                f"no store at {database or url!r}: give the gateway's store with --store URL "
                "or WARDGATE_STORE, or the config it runs with (-c)"
            )
    return Store(url)


@dataclass(frozen=True, slots=True)
class _Replayed:
    event: dict[str, Any]
    old: dict[str, Any]
    new: Verdict
    change: str  # "blocked" | "allowed" | ""


def _old_lets_through(event: dict[str, Any]) -> bool:
    old = event.get("verdict") or {}
    if old.get("decision") == Decision.ALLOW.value:
        return True
    if "enforced" in old:  # False: a connection in `mode: observe`, the action ran
        return old["enforced"] is False
    return event.get("status") != "blocked"  # recorded before observe mode existed


def _judge_again(gate: Gate, cfg: Config, config_path: str, event: dict[str, Any]) -> Verdict:
    name, connection = str(event.get("principal", "")), str(event.get("connection", ""))
    principal = cfg.principal(name)
    if principal is None:
        return Verdict(
            Decision.BLOCK,
            "unknown-principal",
            f"principal {name!r} is not in {config_path}: it could no longer log in",
        )
    conn = cfg.connections.get(connection)
    if conn is None:
        return Verdict(
            Decision.BLOCK,
            "unknown-connection",
            f"connection {connection!r} is not in {config_path}: nobody could reach it",
        )
    params = tuple(None if p is None else str(p) for p in event.get("params") or ())
    resolved = event.get("resolved")
    action = Action(
        principal,
        connection,
        conn.type,
        str(event.get("kind") or "sql"),
        str(event.get("text") or ""),
        params,
        session_id=str(event.get("session_id", "")),
        resolved=resolved if isinstance(resolved, str) else None,
    )
    return gate.check(action)


def _replay_one(gate: Gate, cfg: Config, config_path: str, event: dict[str, Any]) -> _Replayed:
    old = event.get("verdict") or {}
    if old.get("rule") in _GATEWAY_RULES:
        same = Verdict(Decision.BLOCK, str(old["rule"]), str(old.get("reason", "")))
        return _Replayed(event, old, same, "")
    new = _judge_again(gate, cfg, config_path, event)
    # Compared by outcome, whether the action reaches the target: an observed block ran,
    # so replaying the recorded file itself changes nothing.
    was, now = _old_lets_through(event), new.lets_through
    if str(old.get("rule", "")).startswith("review:") and new.decision is Decision.REVIEW:
        was = now  # it ran after a human's approval, and would need one again: no change
    change = "blocked" if was and not now else "allowed" if now and not was else ""
    return _Replayed(event, old, new, change)


def _old_by(old: dict[str, Any], event: dict[str, Any]) -> str:
    rules = old.get("rules") or [old.get("rule", "?")]
    text = f"{old.get('decision', '?')} by {', '.join(map(str, rules))}"
    if old.get("decision") != Decision.ALLOW.value and _old_lets_through(event):
        text += " (observed)"
    return text


def _replay_line(r: _Replayed) -> str:
    e = r.event
    new = _by(r.new) + ("" if r.new.enforced else " (observe mode)")
    return (
        f"  {_when(e.get('ts'))}  {e.get('principal')} on {e.get('connection')}  "
        f"{_old_by(r.old, e)} -> {new}  {_short(str(e.get('text', '')), 60)}\n"
        f"      {r.new.reason}"
    )


def _replay_json(r: _Replayed) -> dict[str, Any]:
    e = r.event
    return {
        "id": e.get("id"),
        "ts": e.get("ts"),
        "session_id": e.get("session_id"),
        "principal": e.get("principal"),
        "connection": e.get("connection"),
        "text": e.get("text"),
        "old": {k: r.old.get(k) for k in ("decision", "rule", "rules", "reason", "enforced")}
        | {"let_through": _old_lets_through(e)},
        "new": _verdict_json(r.new) | {"let_through": r.new.lets_through},
    }


@policy_app.command("replay")
def policy_replay(
    config: ConfigPath = DEFAULT_CONFIG,
    store: Annotated[
        str | None,
        typer.Option(
            "--store", help="The store to read (default: $WARDGATE_STORE, else the config's)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only actions since: a duration (24h, 7d) or a date/time."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="At most this many actions, the newest.")
    ] = _DEFAULT_REPLAY_LIMIT,
    as_json: JsonFlag = False,
) -> None:
    """Judge recorded actions again with CONFIG's policy and report what would change."""
    from sqlalchemy.exc import SQLAlchemyError

    from wardgate.audit.query import list_actions
    from wardgate.gate import Gate
    from wardgate.store.db import StoreError, describe_error

    with _expected_errors():
        cfg = _config(config)
        since_ts = _since_timestamp(since) if since is not None else None
        db = _open_store_for_reading(store or cfg.store_url)
        try:
            events = list_actions(db, since=since_ts, limit=limit)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot read the audit log from {db.display_url}: {describe_error(exc)}"
            ) from None
        finally:
            db.dispose()
    gate = Gate(cfg)
    # Statements and command lines only: MCP tool calls, SFTP operations and the like
    # carry nothing for the gate to judge again.
    events = [e for e in events if (e.get("kind") or "sql") in ("sql", "shell")]
    results = [_replay_one(gate, cfg, config, e) for e in events]
    blocked = [r for r in results if r.change == "blocked"]
    allowed = [r for r in results if r.change == "allowed"]
    unchanged = len(results) - len(blocked) - len(allowed)
    summary = (
        f"checked {len(results)} actions: {len(blocked)} newly blocked, "
        f"{len(allowed)} newly allowed, {unchanged} unchanged"
    )
    if as_json:
        _print_json(
            {
                "checked": len(results),
                "limit_reached": len(results) >= limit,
                "newly_blocked": [_replay_json(r) for r in blocked],
                "newly_allowed": [_replay_json(r) for r in allowed],
                "unchanged": unchanged,
            }
        )
        return
    for title, group in (("newly blocked", blocked), ("newly allowed", allowed)):
        if group:
            typer.echo(f"{title} ({len(group)}):")
            for r in group:
                typer.echo(_replay_line(r))
    if len(results) >= limit:
        typer.echo(f"(only the newest {limit} actions; use --limit or --since for more or fewer)")
    typer.echo(summary)


# -- reload ---------------------------------------------------------------------------


def _gateway_pid(cfg: Config, config_path: str) -> int:
    """The pid of the `wardgate serve` running CONFIG, or an error saying why there is none."""
    from wardgate.serve import pidfile

    path = pidfile(cfg)
    start = f"start it with `wardgate serve -c {config_path}`"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        _fail(f"no gateway is running for {config_path}: no pidfile at {path} ({start})")
    if not text.isdigit() or int(text) <= 1:
        _fail(f"{path} does not hold a process id ({text[:20]!r}); remove it and {start}")
    pid = int(text)
    stale = f"remove the stale {path} and {start}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        _fail(f"no gateway is running for {config_path}: pid {pid} from {path} has exited; {stale}")
    except PermissionError:
        _fail(f"pid {pid} (from {path}) belongs to another user: run this as the gateway's user")
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b"wardgate"  # no /proc here: trust the pidfile
    if b"wardgate" not in cmdline:
        # The gateway died without removing its pidfile and the pid now belongs to
        # something else: SIGHUP would likely kill it.
        _fail(f"pid {pid} from {path} is not a wardgate process; no signal sent; {stale}")
    return pid


@policy_app.command("reload")
def policy_reload(config: ConfigPath = DEFAULT_CONFIG) -> None:
    """Validate CONFIG, then make the running `wardgate serve` load it (SIGHUP).

    Open sessions use the new policy from their next statement. Exits 1 without
    signalling when CONFIG is invalid (the gateway keeps its policy), 2 when no gateway runs."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        for line in exc.problems:
            typer.echo(line, err=True)
        typer.echo(
            f"not reloaded: the gateway keeps its current policy; fix {config} "
            "and run `wardgate policy reload` again",
            err=True,
        )
        raise typer.Exit(1) from None
    with _expected_errors():
        pid = _gateway_pid(cfg, config)
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            _fail(f"the gateway (pid {pid}) exited just now; start it with `wardgate serve`")
    typer.echo(
        f"sent SIGHUP to wardgate (pid {pid}): it reloads {config} now; open sessions use "
        "the new policy from their next statement (the gateway log says 'config reloaded')"
    )
