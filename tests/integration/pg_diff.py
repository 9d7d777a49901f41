"""The rig of the differential suite (issue 14): a fresh database whose every write and
DDL lands in a log the agents cannot touch, a gateway in front of it with a read-only
principal and a principal whose writes need a review, and a raw-wire client.

The upstream role is a dedicated non-superuser with DML on every table, CREATE in
`public` and the right to SET the superuser-only settings the issue names (PG15's
GRANT SET ON PARAMETER): the server would run whatever reaches it, so only the gateway
stands between an agent and a write. The log is a table in schema `audit`, owned by
the superuser and filled by SECURITY DEFINER functions: a statement-level trigger on
every table (it fires for 0 rows too, and for TRUNCATE) and event triggers on
`ddl_command_end` and `sql_drop`, all ENABLE ALWAYS so `session_replication_role`
cannot silence them. `snapshot` adds what triggers cannot see (large objects,
sequences, per-role settings, trigger states, prepared transactions).
"""

from __future__ import annotations

import re
import socket
import struct
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.integration.conftest import PG_HOST, PG_PORT, Gateway, admin_conn, make_gateway

TABLES = ("public.stock", "public.big_rows", "archive.stock", "public.events")

SETUP = """
create schema audit;
create table audit.write_log (
    id bigserial primary key, kind text not null, object text not null, query text,
    who text default session_user);
revoke all on schema audit from public;

create function audit.log_write() returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp as $$
begin
    insert into audit.write_log (kind, object, query)
    values (tg_op, tg_table_schema || '.' || tg_table_name, current_query());
    return null;
end $$;
create function audit.log_ddl() returns event_trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp as $$
begin
    insert into audit.write_log (kind, object, query) values ('DDL', tg_tag, current_query());
end $$;
create function audit.log_drop() returns event_trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp as $$
begin
    insert into audit.write_log (kind, object, query)
    select 'DROP', object_identity, current_query() from pg_event_trigger_dropped_objects();
end $$;

create schema archive;
create schema appfuncs;
create table public.stock (id int primary key, qty int not null default 0, note text,
                           flag bool not null default false);
insert into public.stock (id) select generate_series(1, 10);
create table public.big_rows (id int);
insert into public.big_rows select generate_series(1, 50);
create table archive.stock (id int primary key, qty int not null default 0);
insert into archive.stock (id) select generate_series(1, 10);
create sequence public.ticket_seq;
create table public.events (id int primary key, d date not null, qty int not null default 0);
insert into public.events values (1, '2026-01-02'), (2, '2026-02-01');

-- Names PostgreSQL 15 reads as ordinary function calls (17's grammar: special syntax).
create function public.json_scalar(int) returns int language sql volatile as
    $$ update public.stock set qty = qty + 1 where id = 10; select 1 $$;
create function public.json_value(text, text) returns text language sql volatile as
    $$ update public.stock set qty = qty + 1 where id = 10; select $1 $$;
create function public.json_serialize(text) returns text language sql volatile as
    $$ update public.stock set qty = qty + 1 where id = 10; select $1 $$;
create function public.json_object(text, text, text, text) returns text language sql
    volatile as $$ update public.stock set qty = qty + 1 where id = 10; select $1 $$;
-- A lower() that writes, found first when search_path puts appfuncs before pg_catalog.
create function appfuncs.lower(text) returns text language sql volatile as
    $$ update public.stock set qty = -1 where id = 9; select $1 $$;
create function public.bump(int) returns int language sql volatile as
    $$ update public.stock set qty = qty + 1 where id = $1; select $1 $$;
create procedure public.bump_proc(int) language sql as
    $$ update public.stock set qty = qty + 1 where id = $1 $$;
"""


_SUSET = "session_replication_role, log_statement, track_activities"


def _grants(role: str) -> str:
    return f"""
create event trigger wgd_ddl on ddl_command_end execute function audit.log_ddl();
create event trigger wgd_drop on sql_drop execute function audit.log_drop();
alter event trigger wgd_ddl enable always;
alter event trigger wgd_drop enable always;
grant usage on schema archive, appfuncs to "{role}";
grant usage, create on schema public to "{role}";
grant select, insert, update, delete, truncate on all tables in schema public, archive
    to "{role}";
grant usage, select, update on all sequences in schema public to "{role}";
grant set on parameter {_SUSET} to "{role}";
grant create on database "{{db}}" to "{role}";
"""


def _triggers() -> str:
    return "\n".join(
        f"create trigger wgd_log after insert or update or delete or truncate on {t} "
        f"for each statement execute function audit.log_write();\n"
        f"alter table {t} enable always trigger wgd_log;"
        for t in TABLES
    )


@dataclass(frozen=True)
class Target:
    """The differential database and the role the gateway dials."""

    db: str
    role: str

    def conn(self) -> psycopg.Connection[Any]:
        return admin_conn(self.db)

    def log(self, after: int = 0) -> list[tuple[int, str, str, str]]:
        with self.conn() as c:
            return [
                (int(r[0]), str(r[1]), str(r[2]), str(r[3]))
                for r in c.execute(
                    "select id, kind, object, coalesce(query, '') from audit.write_log"
                    " where id > %s order by id",
                    (after,),
                )
            ]

    def last_id(self) -> int:
        with self.conn() as c:
            row = c.execute("select coalesce(max(id), 0) from audit.write_log").fetchone()
        assert row is not None
        return int(row[0])

    def snapshot(self) -> tuple[Any, ...]:
        """What a write could change besides the logged tables."""
        with self.conn() as c:
            row = c.execute(
                """select
                  (select count(*) from pg_largeobject_metadata),
                  (select string_agg(schemaname || '.' || sequencename || '='
                       || coalesce(last_value::text, '-'), ',' order by sequencename)
                     from pg_sequences where schemaname <> 'audit'),
                  (select count(*) from pg_db_role_setting s join pg_database d
                     on d.oid = s.setdatabase where d.datname = current_database()),
                  (select count(*) from pg_db_role_setting s join pg_roles r
                     on r.oid = s.setrole where r.rolname = %s),
                  (select string_agg(evtname || evtenabled::text, ',' order by evtname)
                     from pg_event_trigger),
                  (select string_agg(tgrelid::regclass::text || tgenabled::text, ','
                     order by tgrelid::regclass::text) from pg_trigger where tgname = 'wgd_log'),
                  (select count(*) from pg_prepared_xacts where database = current_database()),
                  (select md5(string_agg(id || ':' || qty || ':' || coalesce(note, '~')
                     || flag, ',' order by id)) from public.stock),
                  (select md5(string_agg(id || ':' || qty, ',' order by id)) from archive.stock),
                  (select count(*) from public.big_rows),
                  (select string_agg(id || ':' || qty, ',' order by id) from public.events)""",
                (self.role,),
            ).fetchone()
        assert row is not None
        return tuple(row)


def make_target(extra: str = "") -> Iterator[Target]:
    """A fresh target database; ``extra``: SQL its owner runs after the setup."""
    suffix = uuid.uuid4().hex[:8]
    target = Target(f"wardgate_diff_{suffix}", f"wgd_up_{suffix}")
    with admin_conn() as c:
        c.execute(f'create database "{target.db}"')
        c.execute(f'create role "{target.role}" login')
    with target.conn() as c:
        c.execute(SETUP)
        c.execute(_triggers())
        c.execute(_grants(target.role).replace("{db}", target.db))
        if extra:
            c.execute(extra)
        c.execute("truncate audit.write_log")  # the setup's own DDL: the log starts empty
    try:
        yield target
    finally:
        with admin_conn() as c:
            c.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s",
                (target.db,),
            )
            c.execute(f'drop database if exists "{target.db}"')
            c.execute(f'revoke set on parameter {_SUSET} from "{target.role}"')
            c.execute(f'drop role if exists "{target.role}"')


def diff_config(target: Target) -> str:
    return textwrap.dedent(
        f"""\
        groups: {{ro_agents: {{}}, rv_agents: {{}}, engineers: {{}}, approvers: {{}}}}
        principals:
          ro: {{kind: agent, groups: [ro_agents], sponsor: dev}}
          rv: {{kind: agent, groups: [rv_agents], sponsor: dev}}
          dev: {{kind: user, groups: [engineers]}}
          reviewer: {{kind: user, groups: [engineers, approvers]}}
        connections:
          diff:
            type: postgres
            upstream: {{host: {PG_HOST}, port: {PG_PORT}, database: {target.db}, user: {target.role}, tls: disable}}
            roles: {{ro_agents: reader, rv_agents: proposer, engineers: engineer}}
            reviews: {{wait: 0s, max_wait: 30s, preview: none}}
        roles:
          reader: {{read: allow, write: block, ddl: block, admin: block}}
          proposer: {{read: allow, write: review, ddl: block, admin: block}}
          engineer: {{read: allow, write: allow, ddl: allow, admin: block}}
        guardrails:
          - name: big-needs-limit
            match: {{tables: ["*.big_rows"]}}
            condition: {{without_limit: true}}
            verdict: block
            message: "big_rows is read with a LIMIT"
        reviews: {{approvers: [approvers], sponsor_may_approve: false}}
        limits: {{login_failures: 50, login_window: 60s}}
        """
    )


def start_gateway(workdir: Path, target: Target, extra: str = "") -> Gateway:
    """A gateway in front of ``target`` (``extra``: YAML appended to the config)."""
    gw = make_gateway(workdir, diff_config(target) + extra)
    try:
        gw.start()
    except BaseException:
        gw.stop()  # a gateway that was slow to listen must not outlive the test
        raise
    return gw


# -- the raw wire ----------------------------------------------------------------------

REVIEW_ID = re.compile(r"review (r_[a-z0-9]+)")


@dataclass
class Reply:
    """What the gateway answered to one pipelined write, message by message."""

    messages: list[tuple[bytes, bytes]] = field(default_factory=list)

    def kinds(self) -> bytes:
        return b"".join(k for k, _ in self.messages)

    def errors(self) -> list[dict[str, str]]:
        found = []
        for kind, body in self.messages:
            if kind != b"E":
                continue
            fields: dict[str, str] = {}
            for part in body.split(b"\0"):
                if part:
                    fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
            found.append(fields)
        return found

    def codes(self) -> list[str]:
        return [e.get("C", "") for e in self.errors()]

    def text(self) -> str:
        return " | ".join(f"{e.get('C')} {e.get('M')}" for e in self.errors())

    def tags(self) -> list[str]:
        return [b[:-1].decode() for k, b in self.messages if k == b"C"]

    def rows(self) -> int:
        return sum(1 for k, _ in self.messages if k == b"D")

    def refused(self) -> bool:
        """Whether the gateway answered with its own refusal (a block or a review held)."""
        return any(e.get("M", "").startswith("wardgate:") for e in self.errors())

    def review_ids(self) -> list[str]:
        return [m.group(1) for e in self.errors() if (m := REVIEW_ID.search(e.get("M", "")))]


class Wire:
    """A session logged in by psycopg, then driven byte by byte: the test writes
    frontend messages itself, as many as it likes in one write."""

    def __init__(self, gw: Gateway, principal: str, connection: str = "diff") -> None:
        self.conn = psycopg.connect(gw.dsn(principal, connection), autocommit=True)
        self.sock = socket.fromfd(self.conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self._buf = b""

    def close(self) -> None:
        self.sock.close()
        self.conn.close()

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(messages))

    def read(self, ready: int) -> Reply:
        """Messages up to the `ready`-th ReadyForQuery."""
        reply = Reply()
        seen = 0
        while seen < ready:
            while len(self._buf) < 5 or len(self._buf) < 1 + _length(self._buf):
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"the gateway closed the session: {reply.text()}")
                self._buf += chunk
            size = 1 + _length(self._buf)
            kind, body = self._buf[:1], self._buf[5:size]
            self._buf = self._buf[size:]
            reply.messages.append((kind, body))
            if kind == b"Z":
                seen += 1
        return reply

    def run(self, *messages: bytes, ready: int) -> Reply:
        self.send(*messages)
        return self.read(ready)

    def show(self, setting: str) -> str:
        from wardgate.postgres.codec import build

        reply = self.run(build.query(f"show {setting}"), ready=1)
        data = next(b for k, b in reply.messages if k == b"D")
        (n,) = struct.unpack("!i", data[2:6])
        return data[6 : 6 + n].decode()


def lazy_wires(gw: Gateway) -> Iterator[dict[str, Wire]]:
    """A fixture body: a Wire per principal, opened on first use, closed afterwards."""
    opened: dict[str, Wire] = {}

    class _Lazy(dict[str, Wire]):
        def __missing__(self, principal: str) -> Wire:
            opened[principal] = self[principal] = Wire(gw, principal)
            return opened[principal]

    yield _Lazy()
    for w in opened.values():
        w.close()


def _length(buf: bytes) -> int:
    return int(struct.unpack("!i", buf[1:5])[0])


# -- policy check, the CLI -------------------------------------------------------------


def policy_check(gw: Gateway, principal: str, sql: str) -> str:
    """`wardgate policy check` (the real CLI): its decision for SQL."""
    import json

    out = gw.cli("policy", "check", sql, "--connection", "diff", "--principal", principal, "--json")
    return str(json.loads(out.stdout)["decision"])


def wire_decision(reply: Reply) -> str:
    """How the gateway answered on the wire: block, review or allow."""
    codes = reply.codes()
    if "55000" in codes and reply.review_ids():
        return "review"
    if any(e.get("M", "").startswith("wardgate:") for e in reply.errors()):
        return "block"
    return "allow"


def approve(gw: Gateway, review_id: str) -> None:
    from tests.integration.test_reviews import cli_as

    cli_as(gw, "reviewer", "reviews", "approve", review_id)
