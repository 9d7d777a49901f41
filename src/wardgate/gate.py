"""The one decision seam: every protocol turns traffic into Actions and asks `Gate.check`.

The gate is pure and fast: no I/O, verdicts cached per (connection, principal, text).
Roles grant classes of statements per group on a connection; guardrails add rules
for everyone on top. All matching rules apply and the most restrictive verdict wins
(block > review > allow), so there is no rule order to get wrong. An action that no
role grants is blocked.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from fnmatch import fnmatchcase
from threading import Lock

from wardgate.actions import Action, Decision, StatementInfo, Verdict
from wardgate.config import Config, ConnectionConfig, GuardrailConfig
from wardgate.ddl_board import DdlBoard
from wardgate.identity.principals import Principal, in_scope
from wardgate.metrics import note_decision
from wardgate.policy.functions import function_class
from wardgate.policy.kubernetes import ALL_NAMESPACES, classify_kubernetes
from wardgate.policy.kubernetes.sessions import port_in
from wardgate.policy.mask_rules import masks_output
from wardgate.policy.shell import classify_command
from wardgate.policy.shell.inert import EXPANSION
from wardgate.policy.shell.sensitive import sensitive_word, start_dirs
from wardgate.policy.sql import (
    MAX_CACHED_TEXT,
    classify_keyed,
    classify_with_params,
    needs_params,
)

_CACHE_SIZE = 16384
# Gate.check's ``own_changes``, for the judging it calls (CatalogFacts).
_OWN_CHANGES: ContextVar[bool] = ContextVar("wardgate_own_catalogue_changes", default=False)
_KIND_OF_CONNECTION = {"postgres": "sql", "ssh": "shell", "kubernetes": "kubernetes"}
_WHAT = {"sql": "statements", "shell": "commands", "kubernetes": "requests"}
_RANK = {"read": 0, "write": 1, "ddl": 2, "admin": 3, "unknown": 4}


class CatalogFacts:
    """What the gateway learned from its targets' catalogues that changes a verdict:
    per connection, the names of VOLATILE user routines that share a name with a
    built-in the classifier trusts as read-only (PostgreSQL picks such an overload for
    argument types the built-in does not take: ``lower(5)`` would run ``public.lower(int)``).
    Filled by postgres/catalog_watch.py; one per process, kept across reloads.

    Once the watch runs in this process (``watched``), a connection whose catalogue it
    has not read yet is judged as the worst case, every expression possibly running
    user code, not as one without any: a session that starts right after the gateway,
    or while the target's catalogue cannot be read, must not run ``(3).bump`` or a
    shadowing ``lower(5)`` as a read. ``wardgate policy check`` reads no catalogue and
    judges without these facts.

    DDL through the gateway changes the catalogue under the facts, and other sessions
    see the change when its transaction commits, which may be long after the statement
    ran (a function made in a transaction block). From the moment a session that ran DDL
    sends what may commit it (`committing`) until a look that began after the server
    answered (`settled`) has been read, the connection is judged as the worst case too
    (`changing`); the session that ran it is, until its transaction ends (Gate.check's
    ``own_changes``), since it sees what it made before anyone else."""

    def __init__(self) -> None:
        self._shadowed: dict[str, frozenset[str]] = {}
        self._user_code: dict[str, UserCode] = {}
        self._routines: dict[str, dict[str, frozenset[str]]] = {}
        self.epoch = 0  # changes whenever a fact does: part of every verdict's cache key
        self.watched = False  # the catalogue watch runs in this process (`watch`)
        # Per connection: batches in flight that may commit DDL; DDL commits (possible
        # ones) answered; and how many of those the last successful look had seen.
        self._committing: dict[str, int] = {}
        self._commits: dict[str, int] = {}
        self._read_commits: dict[str, int] = {}
        self._changing: set[str] = set()  # where one of the above says "worst case"
        # With several workers, the same of the others (ddl_board.py), for any of this
        # worker's connections: their counters as last seen, and per connection the
        # answered count the last successful look began with.
        self.board: DdlBoard | None = None
        self._others = (0, 0)
        self._read_others: dict[str, int] = {}
        self.on_others_commit: Callable[[], None] | None = None  # the watch: look again
        self._waiters: dict[str, list[Callable[[], None]]] = {}  # `when_settled`

    def watch(self) -> None:
        """The catalogue watch starts: connections it has not read are the worst case."""
        if not self.watched:
            self.watched = True
            self.epoch += 1

    def forget(self, connection: str) -> None:
        """``connection`` now reaches another target (a reload changed its upstream) or
        is gone: what was read of the old target's catalogue says nothing of the new
        one's, which is judged as unread until the watch reads it."""
        found = (
            self._shadowed.pop(connection, None),
            self._user_code.pop(connection, None),
            self._routines.pop(connection, None),
        )
        if any(f is not None for f in found):
            self.epoch += 1

    def shadowed(self, connection: str) -> frozenset[str]:
        return self._shadowed.get(connection, frozenset())

    def set_shadowed(self, connection: str, names: frozenset[str]) -> bool:
        """True when this changed what the gate knows."""
        if self._shadowed.get(connection, frozenset()) == names:
            return False
        self._shadowed[connection] = names
        self.epoch += 1
        return True

    def user_code(self, connection: str) -> UserCode:
        found = self._user_code.get(connection)
        if found is None:
            return _UNREAD if self.watched else _NO_USER_CODE
        if connection in self._changing:
            return _CHANGING
        return found

    def committing(self, connection: str) -> None:
        """A session that ran DDL sent what may commit it (a Query, a Sync): judged as
        the worst case until it is `settled` and read again."""
        self._committing[connection] = self._committing.get(connection, 0) + 1
        self._update_changing(connection)
        self._publish()

    def settled(self, connection: str, committed: bool) -> None:
        """The server answered one `committing` batch: ``committed`` when its
        transaction ended (or may have): the catalogue must be read again."""
        left = self._committing.get(connection, 0) - 1
        if left > 0:
            self._committing[connection] = left
        else:
            self._committing.pop(connection, None)
        if committed:
            self._commits[connection] = self._commits.get(connection, 0) + 1
        self._update_changing(connection)
        self._publish()

    def commits(self, connection: str) -> tuple[int, int]:
        """How many DDL commits (possible ones) were answered, on ``connection`` here
        and on any connection of the other workers: what a look that begins now will
        have seen (`set_user_code`'s ``seen``)."""
        self.look_at_board()
        return self._commits.get(connection, 0), self._others[1]

    def changing(self, connection: str) -> bool:
        """Whether ``connection`` is judged as the worst case because of DDL through the
        gateway, on this worker or another, not read since."""
        if self.board is not None:
            self.look_at_board()
        return connection in self._changing

    def when_settled(self, connection: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` once ``connection`` is no longer `changing`."""
        self._waiters.setdefault(connection, []).append(callback)

    def look_at_board(self) -> None:
        """Take in the other workers' DDL (ddl_board.py): any change of their counters
        makes every connection of this worker the worst case until read again."""
        board = self.board
        if board is None:
            return
        others = board.others()
        if others == self._others:
            return
        answered = others[1] != self._others[1]
        self._others = others
        for connection in {*self._user_code, *self._committing, *self._commits}:
            self._update_changing(connection)
        self.epoch += 1
        if answered and self.on_others_commit is not None:
            self.on_others_commit()

    def _publish(self) -> None:
        if self.board is not None:
            self.board.publish(sum(self._committing.values()), sum(self._commits.values()))

    def _update_changing(self, connection: str) -> None:
        changing = (
            bool(self._committing.get(connection))
            or self._commits.get(connection, 0) > self._read_commits.get(connection, 0)
            or self._others[0] > 0
            or self._others[1] > self._read_others.get(connection, 0)
        )
        if changing != (connection in self._changing):
            if changing:
                self._changing.add(connection)
            else:
                self._changing.discard(connection)
            self.epoch += 1
        if not changing and connection in self._waiters:
            for callback in self._waiters.pop(connection):
                callback()

    def has_read(self, connection: str) -> bool:
        """Whether the watch has read ``connection``'s catalogue at least once."""
        return connection in self._user_code

    def routine_schemas(self, connection: str, name: str) -> frozenset[str] | None:
        """The schemas (outside pg_catalog and information_schema) that hold a routine
        named ``name`` (compared in lower case) on ``connection``; None while the
        catalogue has not been read there."""
        found = self._routines.get(connection)
        return None if found is None else found.get(name.lower(), frozenset())

    def set_routines(self, connection: str, found: dict[str, frozenset[str]]) -> bool:
        """True when this changed what the gate knows."""
        if self._routines.get(connection) == found:
            return False
        self._routines[connection] = found
        self.epoch += 1
        return True

    def set_user_code(
        self, connection: str, found: UserCode, seen: tuple[int, int] | None = None
    ) -> bool:
        """True when this changed what the gate knows. ``seen``: `commits` when the look
        that found it began (None: all of them, for a caller that is no look)."""
        before = self._user_code.get(connection)
        self._user_code[connection] = found  # read, even when it found nothing
        here, others = self.commits(connection) if seen is None else seen
        if here > self._read_commits.get(connection, 0):
            self._read_commits[connection] = here
        if others > self._read_others.get(connection, 0):
            self._read_others[connection] = others
        self._update_changing(connection)
        if before == found:
            return False
        self.epoch += 1
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class UserCode:
    """Where PostgreSQL runs user functions on a connection without a call naming them.

    ``types``: types an explicit cast to which may run one (a user cast function or
    I/O function, a domain CHECK calling a user or VOLATILE function, and arrays,
    domains and composites of those), bare and schema-qualified, lower-cased.
    ``operators``: names of operators in a user schema or implemented by a user
    function. ``implicit``: why any expression may run one (an IMPLICIT or ASSIGNMENT
    user cast, a user comparison operator), or empty. ``attributes``: names of user
    functions one argument can call, which PostgreSQL also calls for a field selection
    (``(3).bump``, ``t.bump``), lower-cased. ``type_oids``: the types of ``types`` as
    (OID, "schema.name"): a Parse that declares a parameter of one coerces the bound
    value to it, as a cast would, with no name in the text. ``column_tables``: tables
    and views with a column of such a type (not a domain over a harmless one): an
    array or row column that COALESCE, UNION, a comparison or a write converts values
    to; or with a column whose default calls a user function (planning folds it).
    ``written_tables``: tables and views with a column of any such type, a domain over
    a harmless one included: a write coerces each value to the column's own type (its
    CHECK runs), and a parameter PostgreSQL types from that column (`INSERT ... VALUES
    ($1)`, `SET d = $1`) is converted to the domain when it is bound; a read that
    builds an array of that column (`ARRAY[x.d]`, `array_agg(d)`) has the domain's
    array type, to which a comparison converts its other side."""

    types: frozenset[str] = frozenset()
    operators: frozenset[str] = frozenset()
    implicit: str = ""
    attributes: frozenset[str] = frozenset()
    type_oids: frozenset[tuple[int, str]] = frozenset()
    column_tables: frozenset[str] = frozenset()
    written_tables: frozenset[str] = frozenset()
    # Why a write may run DDL through a trigger, a rule, a CHECK or a default (a trigger
    # function that runs EXECUTE, calls a user routine...: policy/routine_code.py), or
    # empty; and the tables (bare names, "*": any) a write to which may reach that
    # code, through partitions, cascading foreign keys, views and other code's writes.
    ddl_by_writes: str = ""
    ddl_write_tables: frozenset[str] = frozenset()
    # Views and tables whose reading runs user functions (a view's query, a row
    # security policy; bare and qualified names, lower-cased), with those functions.
    code_relations: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)

    def declared_types(self, oids: tuple[int, ...]) -> list[str]:
        """The names of those of ``oids`` (a Parse's parameter types) that may run a
        user function when a value is bound to them."""
        wanted = set(oids)
        return sorted(name for oid, name in self.type_oids if oid in wanted)


# In `UserCode.ddl_write_tables`: an event trigger may run DDL, which a write that
# makes or refreshes an object (SELECT INTO, REFRESH MATERIALIZED VIEW) runs.
OBJECT_WRITES = "!objects"
_NO_USER_CODE = UserCode()
_UNREAD = UserCode(
    implicit="the gateway has not read this connection's catalogue yet; retry in a moment"
)
_CHANGING = UserCode(
    implicit="a DDL statement that ran through the gateway may have changed this "
    "connection's catalogue (functions, casts, operators), and the gateway is reading it "
    "again; retry in a moment"
)
_CHANGED_HERE = UserCode(
    implicit="this session ran DDL in its open transaction, and what it made or changed "
    "is visible to it but not yet to the gateway; commit (or roll back) first, then run "
    "this statement"
)
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")
# Built-ins that read values as the column types of the row type their first argument
# has (`json_populate_record(t, '{"c": 3}')` with `t` a row of a table read): input
# functions and domain CHECKs of those columns run with no cast in the text.
_POPULATES = frozenset(
    {"json_populate_record", "json_populate_recordset", "jsonb_populate_record",
     "jsonb_populate_recordset"}
)  # fmt: skip
# First kinds of statements that evaluate no expression, hence call no cast or operator.
_NO_EXPRESSIONS = frozenset(
    {"transaction", "show", "discard", "listen", "unlisten", "deallocate", "close_cursor"}
)


class Gate:
    def __init__(self, config: Config, facts: CatalogFacts | None = None) -> None:
        self.config = config
        self.facts = facts if facts is not None else CatalogFacts()
        self._cache: OrderedDict[
            tuple[str, str, frozenset[str], frozenset[str], str, str, int], Verdict
        ] = OrderedDict()
        self._lock = Lock()
        self._safe_functions = frozenset(f.lower() for f in config.safe_functions)
        # Qualified entries by bare name: the schemas listed for it (`_listed_safe`).
        listed: dict[str, set[str]] = {}
        for entry in self._safe_functions:
            schema, _, bare = entry.rpartition(".")
            if schema:
                listed.setdefault(bare, set()).add(schema)
        self._safe_schemas = {bare: frozenset(schemas) for bare, schemas in listed.items()}
        self._safe_settings = frozenset(f.lower() for f in config.safe_settings)

    def check(
        self,
        action: Action,
        granted: frozenset[str] = frozenset(),
        *,
        params_later: bool = False,
        own_changes: bool = False,
    ) -> Verdict:
        """Judge ``action``. ``granted`` are roles the principal holds on the action's
        connection through an approved, unexpired access grant, on top of its groups'.
        ``params_later``: parameters are bound later (a Parse), where the action is judged
        again; a statement whose meaning depends on them is judged without them here.
        ``own_changes``: the session ran DDL in its open transaction, so the catalogue
        it sees is not the one the facts were read from (the worst case: CatalogFacts).
        Its time goes to the gate-decision metric, by protocol."""
        started = time.perf_counter()
        token = _OWN_CHANGES.set(True) if own_changes else None
        try:
            return self._check(action, granted, params_later)
        finally:
            if token is not None:
                _OWN_CHANGES.reset(token)
            note_decision(action.protocol, time.perf_counter() - started)

    def _check(self, action: Action, granted: frozenset[str], params_later: bool) -> Verdict:
        if action.kind == "sql":
            if self.facts.board is not None:
                self.facts.look_at_board()  # DDL through another worker
            # Where casts to some types run user code, `5::mood` must not share the
            # verdict of `5` (one fingerprint): judged by its text there.
            text_key, statements = classify_keyed(
                action.judged_text,
                by_fingerprint=not self.facts.user_code(action.connection).types,
            )
            if _OWN_CHANGES.get():
                text_key = "own:" + text_key  # judged on other facts: cached apart
            elif len(statements) > 1 and self.changes_catalogue(statements[:-1], action.connection):
                # The statements after DDL in one string are analysed once it has run:
                # on a catalogue the facts were not read from.
                token = _OWN_CHANGES.set(True)
                try:
                    return self._check(action, granted, params_later)
                finally:
                    _OWN_CHANGES.reset(token)
            if not params_later and needs_params(statements):
                # Its meaning depends on the values bound to it: judged for these values,
                # and never cached (the cache key has no parameters).
                statements = classify_with_params(action.judged_text, action.params)
                return self._decide(action, statements, granted)
        elif action.kind == "shell":
            text_key, statements = "c:" + action.judged_text, classify_command(action.judged_text)
        elif action.kind == "kubernetes":
            # The body decides as much as the path: its digest (binding) is in the key.
            body = action.params[0] if action.params else None
            context = dict(action.context)
            content_type = context.get("content-type", "")
            # exec: where the pod mounts Secrets (kubernetes/proxy.py), one path a line
            mounts = context.get("secret-mounts", "")
            text_key = f"k:{action.binding}:{content_type}:{mounts}:{action.judged_text}"
            statements = classify_kubernetes(
                action.judged_text, body, content_type, tuple(mounts.splitlines())
            )
        else:
            text_key, statements = action.judged_text, ()
        key = (
            action.connection,
            action.principal.name,
            action.principal.groups,
            granted,
            action.kind,
            text_key,
            self.facts.epoch,
        )
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        verdict = self._decide(action, statements, granted)
        if len(text_key) > MAX_CACHED_TEXT:
            return verdict  # keys are texts here (multi-statement, unparsable): keep it small
        with self._lock:
            self._cache[key] = verdict
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return verdict

    def feature(
        self,
        principal: Principal,
        connection: str,
        feature: str,
        granted: frozenset[str] = frozenset(),
    ) -> Verdict:
        """Whether a session feature that is not a statement — an interactive ``shell``,
        ``sftp`` or port ``forwarding`` on an SSH connection — is allowed: by the most
        permissive of the principal's roles there (own or granted)."""
        conn = self.config.connections.get(connection)
        if conn is None:
            return Verdict(
                Decision.BLOCK, "unknown-connection", f"connection {connection!r} is not configured"
            )
        roles = sorted(
            {conn.roles[g] for g in principal.groups if g in conn.roles}
            | {r for r in granted if r in self.config.roles}
        )
        for role in roles:
            if getattr(self.config.roles[role], feature) == "allow":
                return Verdict(
                    Decision.ALLOW,
                    f"role:{role}",
                    f"role {role!r} allows {feature} on {connection!r}",
                )
        verdict = Verdict(
            Decision.BLOCK,
            f"no-{feature}",
            f"no role of {principal.name!r} on connection {connection!r} allows {feature}"
            + (f" (roles: {', '.join(roles)})" if roles else ""),
        )
        if conn.mode == "observe":
            verdict = dataclasses.replace(verdict, enforced=False)
        return verdict

    def read_only_session(self, principal_groups: frozenset[str], connection: str) -> bool:
        """True when no role of these groups can ever let a non-read statement through
        (review included: an approved write must be able to run), on an enforcing
        connection: such sessions are opened read-only on the target as well."""
        return not self._may_pass(principal_groups, connection, ("write", "ddl", "admin"))

    def may_change_code(self, principal_groups: frozenset[str], connection: str) -> bool:
        """True unless every role of these groups blocks DDL and admin statements (DO
        blocks among them) on an enforcing connection: a principal who may run them
        may create or replace functions in the database, the masking ones included."""
        return self._may_pass(principal_groups, connection, ("ddl", "admin"))

    def _may_pass(
        self, principal_groups: frozenset[str], connection: str, classes: tuple[str, ...]
    ) -> bool:
        """Some statement of one of ``classes`` may run for these groups: a role of
        theirs does not block it (review included), or the connection does not enforce."""
        conn = self.config.connections.get(connection)
        if conn is None or conn.mode != "enforce":
            return True
        for group in principal_groups:
            role_name = conn.roles.get(group)
            if role_name is None:
                continue
            role = self.config.roles[role_name]
            if any(role.decision_for(k) != "block" for k in classes):
                return True
        return False

    # -- decisions --------------------------------------------------------------------

    def _decide(
        self, action: Action, statements: tuple[StatementInfo, ...], granted: frozenset[str]
    ) -> Verdict:
        conn = self.config.connections.get(action.connection)
        if conn is None:
            return Verdict(
                Decision.BLOCK,
                "unknown-connection",
                f"connection {action.connection!r} is not configured",
            )
        verdict = self._decide_on(conn, action, statements, granted)
        if conn.mode == "observe":
            verdict = dataclasses.replace(verdict, enforced=False)
        return verdict

    def _decide_on(
        self,
        conn: ConnectionConfig,
        action: Action,
        statements: tuple[StatementInfo, ...],
        granted: frozenset[str],
    ) -> Verdict:
        if _KIND_OF_CONNECTION.get(conn.type) != action.kind:
            return Verdict(
                Decision.BLOCK,
                "unsupported-action",
                f"{action.kind} actions are not allowed on connection {action.connection!r} "
                f"(a {conn.type} target)",
            )
        own = {conn.roles[g] for g in action.principal.groups if g in conn.roles}
        roles = sorted(own | {r for r in granted if r in self.config.roles})
        if not roles:
            return Verdict(
                Decision.BLOCK,
                "no-role",
                f"principal {action.principal.name!r} has no role on connection {action.connection!r}",
                statements,
                ("no-role",),
            )
        if not statements:
            return Verdict(Decision.ALLOW, "empty", "empty statement", statements, ("empty",))
        worst: Verdict | None = None
        for stmt in statements:
            verdict = self._decide_statement(stmt, roles, own, action, statements, conn)
            if worst is None or verdict.decision.severity > worst.decision.severity:
                worst = verdict
        assert worst is not None
        if worst.decision is not Decision.BLOCK and (
            action.kind == "shell" or any("command" in s.kinds for s in statements)
        ):
            # Blocked already (by a guardrail or the role): that rule says more.
            return self._sensitive_path(action, statements) or worst
        return worst

    def _decide_statement(
        self,
        stmt: StatementInfo,
        roles: list[str],
        own: set[str],
        action: Action,
        statements: tuple[StatementInfo, ...],
        conn: ConnectionConfig,
    ) -> Verdict:
        if action.kind == "shell" or (action.kind == "kubernetes" and "command" in stmt.kinds):
            # A shell command, or one `kubectl exec` runs: the shell engine's classes.
            detail = _CREDENTIAL_READ if "secret_read" in stmt.kinds else ""
            return self._decide_rules(
                stmt, stmt.klass, stmt.kinds, detail, roles, own, action, statements
            )
        if stmt.klass == "unknown":
            if action.kind == "kubernetes":
                return Verdict(
                    Decision(conn.on_parse_error),
                    "unparsed-request",
                    f"wardgate could not judge the request: {stmt.error}; such requests are "
                    "never allowed",
                    statements,
                    ("unparsed-request",),
                )
            decision = Decision(conn.on_parse_error)
            detail = f": {stmt.error}" if stmt.error else ""
            return Verdict(
                decision,
                "unparsed-statement",
                f"wardgate could not understand the statement{detail}; unknown statements are never allowed",
                statements,
                ("unparsed-statement",),
            )
        if "unreadable_encoding" in stmt.kinds:
            return Verdict(
                Decision.BLOCK,
                "wardgate:unreadable-encoding",
                "this client_encoding (or one chosen at run time) lets multibyte characters "
                "hide quotes and semicolons, so the gateway could not read later statements "
                "as the server does; it is never allowed. Use UTF8 or another "
                "ASCII-compatible encoding",
                statements,
                ("wardgate:unreadable-encoding",),
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
                ("wardgate:parser-setting",),
            )
        klass, kinds = stmt.klass, stmt.kinds
        unknown = self._unknown_functions(stmt, action.connection)
        if unknown:
            # Not a known read-only built-in and not listed in safe_functions: it may write.
            kinds = (*kinds, "unknown_function")
            if _RANK[klass] < _RANK["write"]:
                klass = "write"
        settings = [
            k[8:]
            for k in stmt.kinds
            if k.startswith("setting:") and k[8:] not in self._safe_settings
        ]
        if settings and "privileged_setting" not in kinds:
            # Not PostgreSQL's own setting (an extension's, or a custom variable that a
            # row-level security policy may read) and not listed in safe_settings.
            kinds = (*kinds, "privileged_setting")
            klass = "admin"
        detail = f": {', '.join(unknown)}" if unknown else ""
        # DDL that calls user code as it runs (validating a CHECK over the rows, a new
        # column's volatile DEFAULT, an expression index, CREATE TABLE AS) writes: named
        # calls, casts and operators, not the worst case of facts not read (`_UNREAD`,
        # `_CHANGING`, `_CHANGED_HERE`: "any expression"), which CREATE FUNCTION in a
        # migration's transaction would meet every time.
        writes = (klass == "ddl" or klass == "admin") and any(
            not u.startswith("any expression") for u in unknown
        )
        return self._decide_rules(
            stmt, klass, kinds, detail, roles, own, action, statements, also_writes=writes
        )

    def _decide_rules(
        self,
        stmt: StatementInfo,
        klass: str,
        kinds: tuple[str, ...],
        detail: str,
        roles: list[str],
        own: set[str],
        action: Action,
        statements: tuple[StatementInfo, ...],
        *,
        also_writes: bool = False,
    ) -> Verdict:
        """Roles, then guardrails, for one statement or command of class ``klass``;
        ``also_writes``: it is a write too (DDL that runs user code as it runs), and each
        role judges it by the stricter of its decisions for ``klass`` and for writes."""
        described = ", ".join(kinds)
        if action.kind == "kubernetes" and stmt.resources:
            where = f" in {stmt.namespaces[0]}" if stmt.namespaces else ""
            if stmt.namespaces == (ALL_NAMESPACES,):
                where = " in every namespace"
            described += f" on {stmt.resources[0]}{where}"
            if stmt.ports:
                described += f", port {', '.join(map(str, stmt.ports))}"
        described += detail
        all_kinds = {*kinds, klass}
        if klass == "unknown":
            # A command the shell parser cannot resolve may do anything: roles judge it
            # as a write, so it fails closed for every role without write.
            klass = "write"
        # Roles grant: the most permissive of the principal's roles for this class.
        best: tuple[Decision, str] | None = None
        for role_name in roles:
            role = self.config.roles[role_name]
            d = Decision(role.decision_for(klass))
            if also_writes:
                d = max(d, Decision(role.decision_for("write")), key=lambda x: x.severity)
            if klass == "forwarding" and role.forwarding_ports and stmt.ports:
                if not all(port_in(port, role.forwarding_ports) for port in stmt.ports):
                    d = Decision.BLOCK  # a port outside the role's forwarding_ports
            if best is None or d.severity < best[0].severity:
                best = (d, role_name)
        assert best is not None
        # A role held only through an access grant is named as such.
        source = "role" if best[1] in own else "grant"
        candidates = [
            (
                best[0],
                f"{source}:{best[1]}",
                f"{source} {best[1]!r} on connection {action.connection!r} gives {best[0].value} "
                f"for {klass} {_WHAT[action.kind]}"
                + (" that run user code, as for writes" if also_writes else "")
                + f" ({described})",
            )
        ]
        all_kinds.add(klass)
        # Guardrails restrict on top of roles, for everyone they match.
        for rail in self.config.guardrails:
            if _rail_matches(rail, stmt, all_kinds, action):
                reason = (
                    rail.message or f"guardrail {rail.name!r} matches this statement ({described})"
                )
                candidates.append((Decision(rail.verdict), f"guardrail:{rail.name}", reason))
        final = max(c[0].severity for c in candidates)
        deciding = [c for c in candidates if c[0].severity == final]
        if len(deciding) > 1:
            deciding = deciding[1:] + deciding[:1]  # name a guardrail before the role
        decision, rule, reason = deciding[0]
        if decision is Decision.REVIEW and "copy_from" in kinds:
            # The rows of COPY FROM STDIN follow the statement: a reviewer would approve
            # the statement without ever seeing what it loads.
            return Verdict(
                Decision.BLOCK,
                "wardgate:copy-from-review",
                f"{reason}; COPY ... FROM STDIN cannot be approved statement by statement "
                "because the reviewer would not see the rows it loads: propose the rows as "
                "INSERT statements (a proposal, wardgate proposals create or the MCP "
                "propose_change tool) or ask for an access grant",
                statements,
                ("wardgate:copy-from-review", *(c[1] for c in deciding)),
            )
        return Verdict(decision, rule, reason, statements, tuple(c[1] for c in deciding))

    def _sensitive_path(
        self, action: Action, statements: tuple[StatementInfo, ...]
    ) -> Verdict | None:
        """Block a command that may name a file of ``masking.paths`` for a principal whose
        output is masked: masking a stream cannot stop base64 or od -c of a key."""
        patterns = tuple(self.config.masking.paths)
        if not patterns or not masks_output(
            self.config.masking.rules, action.principal, action.connection
        ):
            return None
        dirs = start_dirs([(stmt.functions, stmt.words) for stmt in statements])
        for stmt in statements:
            found = sensitive_word(stmt.functions, stmt.columns, stmt.words, patterns, dirs)
            if found is not None:
                word, pattern = found
                shown = word.replace(EXPANSION, "$...")
                return Verdict(
                    Decision.BLOCK,
                    "wardgate:sensitive-path",
                    f"{shown!r} in {stmt.text!r} may name a sensitive file "
                    f"({pattern}, masking.paths); {action.principal.name!r} sees masked "
                    "output, and masking cannot stop a program from printing such a "
                    "file: name a file outside masking.paths (an expansion or a glob "
                    "that could reach one counts), or ask a human to read it",
                    statements,
                    ("wardgate:sensitive-path",),
                )
        return None

    def changes_catalogue(self, statements: Iterable[StatementInfo], connection: str) -> bool:
        """Whether any of ``statements`` may change what the catalogue watch reads: DDL
        and admin statements, and user code, which may run DDL itself (a routine that
        runs ``EXECUTE 'create function ...'``, a procedure that commits it: attack14m):
        a CALL, a call of a function the gate does not know as a read-only built-in or a
        listed safe one, and a cast, operator or field selection that runs a user
        function as the facts know them; and a write, on a connection whose database has
        a trigger or a rule that may run DDL (`UserCode.ddl_by_writes`). Not the worst
        case of facts not read ("any expression"): every statement would count, and
        each would reopen the window the facts wait for (docs/policy.md says what that
        leaves)."""
        for info in statements:  # a loop, not any(): once per statement, on the hot path
            if info.klass == "ddl" or info.klass == "admin" or "call" in info.kinds:
                return True
            if self._unknown_functions(info, connection, implicit=False):
                return True
            if info.klass == "write" and _reaches_ddl(info, self._catalogue_facts(connection)):
                return True
        return False

    def runs_user_code(self, statements: tuple[StatementInfo, ...], connection: str) -> bool:
        """Whether any of ``statements`` calls a function the gate does not know as a
        read-only built-in or a listed safe one (a user function, a cast, an operator or
        a conversion that runs one): PostgreSQL may run it before Execute (parse
        analysis of a cast, planning at Bind)."""
        return any(self._unknown_functions(s, connection) for s in statements)

    def _unknown_functions(
        self, stmt: StatementInfo, connection: str, *, implicit: bool = True
    ) -> list[str]:
        unknown = []
        shadowed = self.facts.shadowed(connection)
        for name in stmt.functions:
            schema, _, bare = name.rpartition(".")
            if (
                function_class(schema or None, bare) is not None
                and f"user_definable:{name}" not in stmt.kinds
                and (schema in ("pg_catalog", "information_schema") or bare not in shadowed)
            ):
                continue
            if self._listed_safe(name, connection):
                continue
            unknown.append(name)
        return unknown + self._user_code_run(stmt, connection, implicit=implicit)

    def _listed_safe(self, name: str, connection: str) -> bool:
        """``name`` (as called: ``schema.f`` or ``f``) is listed in safe_functions. A
        qualified entry covers a bare call only when the call cannot resolve to another
        schema's routine: PostgreSQL picks among every schema of the session's
        search_path (by argument types, not only by order), so no schema of the database
        but the listed ones may hold a routine of that name, as the catalogue watch last
        read it; before it was read, never (the stricter reading). When no schema but
        pg_catalog holds one, the call runs the built-in, which only an entry naming
        pg_catalog covers."""
        if name in self._safe_functions:
            return True
        schema, _, bare = name.rpartition(".")
        if schema:
            return False
        listed = self._safe_schemas.get(bare)
        if not listed:
            return False
        holders = self.facts.routine_schemas(connection, bare)
        if holders is None:
            return False
        return holders <= listed if holders else "pg_catalog" in listed

    def _catalogue_facts(self, connection: str) -> UserCode:
        """What the catalogue watch knows of a PostgreSQL connection's user code; a
        Kubernetes or SSH target has no catalogue, and its actions none of this."""
        conn = self.config.connections.get(connection)
        if conn is None or conn.type != "postgres":
            return _NO_USER_CODE
        if _OWN_CHANGES.get():
            return _CHANGED_HERE
        return self.facts.user_code(connection)

    def _code_read(
        self, stmt: StatementInfo, connection: str, code: Mapping[str, frozenset[str]]
    ) -> list[str]:
        """The relations ``stmt`` names whose reading runs a user function not listed in
        safe_functions (a view calling it, a row security policy), as the reasons."""
        found = []
        for table in (*stmt.tables_read, *stmt.tables_written):
            name = table.lower()
            fns = code.get(name) or code.get(name.rpartition(".")[2])
            unsafe = sorted(f for f in fns or () if not self._listed_safe(f, connection))
            if unsafe:
                found.append(f"{table} (reading it runs {', '.join(unsafe[:3])})")
        return found

    def _user_code_run(
        self, stmt: StatementInfo, connection: str, *, implicit: bool = True
    ) -> list[str]:
        """Casts and operators in ``stmt`` that may run a user function on this
        connection (postgres/catalog_watch.py): judged as calls of unknown functions.
        ``implicit``: with the worst case of facts not read ("any expression")."""
        found = self._catalogue_facts(connection)
        unknown = [
            f"cast to {t}"
            for t in stmt.types
            if t in found.types or t.rpartition(".")[2] in found.types
        ]
        for op in stmt.operators:
            schema, _, bare = op.rpartition(".")
            if (schema and schema not in _SYSTEM_SCHEMAS) or (
                not schema and bare in found.operators
            ):
                unknown.append(f"operator {op}")
        if found.column_tables or found.written_tables or (found.types and stmt.tables_read):
            unknown += _conversions_into_rows(stmt, found)
        if found.code_relations:
            unknown += self._code_read(stmt, connection, found.code_relations)
        unknown += [
            f"function {name} (selected as a field: x.{name} is {name}(x))"
            for name in stmt.attributes
            if name in found.attributes
        ]
        if implicit and found.implicit and stmt.kinds[:1] and stmt.kinds[0] not in _NO_EXPRESSIONS:
            unknown.append(f"any expression ({found.implicit})")
        return unknown


# Built-ins that make an array of their argument's own type, a domain kept, or that
# resolve two polymorphic arguments to one type: `array_position('{3}', d)` converts
# '{3}' to the domain's array type, `lag(d, 1, '3')` converts '3' to the domain. From
# PostgreSQL 15's pg_proc (two or more polymorphic arguments, or an array result of an
# element argument); the range and multirange ones need a range of the domain, which
# the catalogue watch flags as a type of its own.
_ARRAY_BUILDERS = frozenset(
    {
        "array_agg",
        "array_fill",
        "array_append",
        "array_prepend",
        "array_cat",
        "array_position",
        "array_positions",
        "array_remove",
        "array_replace",
        "width_bucket",
        "lag",
        "lead",
        "multirange",
        "percentile_disc",  # WITHIN GROUP (ORDER BY d) with an array of fractions
    }
)


def _reaches_ddl(stmt: StatementInfo, found: UserCode) -> bool:
    """Whether write ``stmt`` may reach a trigger, rule, CHECK or default that may run
    DDL (`UserCode.ddl_write_tables`); a write naming no table, as the worst case."""
    tables = found.ddl_write_tables
    if not tables:
        return False
    if "*" in tables or not stmt.tables_written:
        return True
    if OBJECT_WRITES in tables and stmt.kinds[:1] in (("select_into",), ("refresh",)):
        return True  # makes or refreshes an object: event triggers run
    return any(t.rpartition(".")[2].lower() in tables for t in stmt.tables_written)


def _conversions_into_rows(stmt: StatementInfo, found: UserCode) -> list[str]:
    """Values PostgreSQL may convert to a type of a table ``stmt`` reads, with no cast
    in the text: to its row type (a whole-row value in COALESCE, a comparison, a UNION;
    ``json_populate_record``), or to a column's array or row type."""

    def named(t: str, names: frozenset[str]) -> bool:
        return t.lower() in names or t.rpartition(".")[2].lower() in names

    columns = [
        t for t in (*stmt.tables_read, *stmt.tables_written) if named(t, found.column_tables)
    ] + [t for t in stmt.tables_written if named(t, found.written_tables)]
    if "array_value" in stmt.kinds or any(
        f.rpartition(".")[2] in _ARRAY_BUILDERS for f in stmt.functions
    ):
        # ARRAY[x.d], ARRAY(SELECT d ...), array_agg(d): an array of the domain itself
        # (not of its base type), to which `= '{3}'` converts its literal; and the
        # polymorphic built-ins that convert their other arguments to d's type.
        columns += [t for t in stmt.tables_read if named(t, found.written_tables)]
    if columns:
        return [
            f"a conversion to a column type of {columns[0]} (PostgreSQL converts values "
            "written to, compared with, coalesced or united with it, or computes its "
            "default, and that type's input or CHECK or the default runs a user function)"
        ]
    populates = [f for f in stmt.functions if f.rpartition(".")[2] in _POPULATES]
    if not populates and "whole_row" not in stmt.kinds:
        return []
    rows = [t for t in stmt.tables_read if named(t, found.types)]
    if not rows:
        return []
    how = populates[0] if populates else "a whole-row value"
    return [
        f"{how} (it reads values as the column types of a row of {rows[0]}, whose input "
        "or domain CHECK runs a user function)"
    ]


_CREDENTIAL_READ = (
    "; it may read a credential of the pod (its service-account token, a mounted Secret, "
    "the environment), which exec output cannot redact: read Secrets through the API "
    "(redacted), or ask a human"
)


def _rail_matches(
    rail: GuardrailConfig, stmt: StatementInfo, kinds: set[str], action: Action
) -> bool:
    m = rail.match
    if action.kind == "shell":
        return _shell_rail_matches(rail, stmt, kinds, action)
    if action.kind == "kubernetes":
        return _kube_rail_matches(rail, stmt, kinds, action)
    if m.commands or m.programs or m.paths:
        return False  # a rule about shell commands
    if m.kubernetes or m.resources or m.namespaces or m.verbs or m.ports:
        return False  # a rule about Kubernetes requests
    if m.sql and not kinds.intersection(m.sql):
        return False
    if not _in_rail_scope(rail, action):
        return False
    if (
        m.tables
        and not _any_table(stmt.tables_read + stmt.tables_written, m.tables)
        and not _reads_statistics(stmt.tables_read)
    ):
        return False
    if m.tables_written and not _any_table(stmt.tables_written, m.tables_written):
        return False
    if m.columns and not any(
        c == "*" or fnmatchcase(c, p.lower()) for c in stmt.columns for p in m.columns
    ):
        return False
    if m.functions and not any(
        fnmatchcase(f.lower(), p.lower()) or fnmatchcase(f.rpartition(".")[2].lower(), p.lower())
        for f in stmt.functions
        for p in m.functions
    ):
        return False
    cond = rail.condition
    if cond is not None:
        if cond.without_where is not None:
            unbounded = bool(kinds & {"update_without_where", "delete_without_where"})
            changes_rows = bool(kinds & {"update", "delete"})
            if cond.without_where != unbounded or not changes_rows:
                return False
        if cond.without_limit is not None and cond.without_limit != ("no_limit" in kinds):
            return False
    return True


def _shell_rail_matches(
    rail: GuardrailConfig, stmt: StatementInfo, kinds: set[str], action: Action
) -> bool:
    """A guardrail for a shell command: its SQL-only fields never match one."""
    m = rail.match
    if m.sql or m.tables or m.tables_written or m.columns or m.functions or rail.condition:
        return False
    if m.kubernetes or m.resources or m.namespaces or m.verbs or m.ports:
        return False
    return _command_fields_match(rail, stmt, kinds) and _in_rail_scope(rail, action)


def _command_fields_match(rail: GuardrailConfig, stmt: StatementInfo, kinds: set[str]) -> bool:
    """``commands``, ``programs`` and ``paths`` of a guardrail, on one shell command."""
    m = rail.match
    if m.commands and not kinds.intersection(m.commands):
        return False
    if m.programs and not any(
        fnmatchcase(p, pattern.lower()) for p in stmt.functions for pattern in m.programs
    ):
        return False
    return not m.paths or any(
        fnmatchcase(path, pattern) for path in stmt.tables_written for pattern in m.paths
    )


def _kube_rail_matches(
    rail: GuardrailConfig, stmt: StatementInfo, kinds: set[str], action: Action
) -> bool:
    """A guardrail for a Kubernetes request: SQL fields never match one, shell fields
    only a command ``kubectl exec`` runs (kind ``command``). ``resources`` globs read
    ``resource[.group][/subresource]``; a pattern without a group matches any group
    (``deployments`` matches ``deployments.apps``) and, as in RBAC, ``pods`` does not
    cover ``pods/exec``."""
    m = rail.match
    if m.sql or m.tables or m.tables_written or m.columns or m.functions or rail.condition:
        return False
    if (m.commands or m.programs or m.paths) and (
        "command" not in stmt.kinds or not _command_fields_match(rail, stmt, kinds)
    ):
        return False
    if m.kubernetes and not kinds.intersection(m.kubernetes):
        return False
    if m.verbs and not any(v in m.verbs for v in stmt.verbs):
        return False
    if m.resources and not any(
        _resource_matches(r, p) for r in stmt.resources for p in m.resources
    ):
        return False
    if m.namespaces and not any(
        n == ALL_NAMESPACES or fnmatchcase(n, p) for n in stmt.namespaces for p in m.namespaces
    ):
        return False
    if m.ports and not any(port_in(port, m.ports) for port in stmt.ports):
        return False
    return _in_rail_scope(rail, action)


def _resource_matches(key: str, pattern: str) -> bool:
    name, _, sub = key.partition("/")
    p_name, _, p_sub = pattern.lower().partition("/")
    if sub != "" and not p_sub:
        return False
    if p_sub and not fnmatchcase(sub, p_sub):
        return False
    if "." in p_name:
        return fnmatchcase(name, p_name)
    return fnmatchcase(name.partition(".")[0], p_name)


def _in_rail_scope(rail: GuardrailConfig, action: Action) -> bool:
    m = rail.match
    return in_scope(
        action.principal,
        action.connection,
        principals=m.principals,
        groups=m.groups,
        kinds=m.principal_kinds,
        connections=m.connections,
    )


# Statistics hold samples of every analysed table's values (most_common_vals,
# histogram_bounds, extended statistics' MCV lists); which table's rows a query reads
# from them is decided at run time. So reading one counts, for a table guardrail, as
# reading every table: a rule that keeps agents off public.secrets keeps them off
# pg_stats too.
_STATISTICS = frozenset(
    {"pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data"}
)


def _reads_statistics(names: tuple[str, ...]) -> bool:
    for name in names:
        schema, _, table = name.lower().rpartition(".")
        if table in _STATISTICS and schema in ("", "pg_catalog"):
            return True
    return False


def _any_table(names: tuple[str, ...], patterns: list[str]) -> bool:
    return any(_table_matches(n, p.lower()) for n in names for p in patterns)


def _table_matches(name: str, pattern: str) -> bool:
    """``schema.table`` globs; a pattern without a schema matches any schema.

    A table named without a schema resolves through search_path, which the gateway does
    not follow. A rule that names tables (``private.secrets``) therefore also catches a
    bare ``secrets``, whatever the schema; a rule that names only a schema (``vault.*``)
    catches bare names when its schema pattern matches ``public``, the default.
    """
    p_schema, _, p_table = pattern.rpartition(".")
    n_schema, _, n_table = name.rpartition(".")
    if not fnmatchcase(n_table, p_table):
        return False
    if not p_schema:
        return True
    if n_schema:
        return fnmatchcase(n_schema, p_schema)
    return not _has_glob(p_table) or fnmatchcase("public", p_schema)


def _has_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")
