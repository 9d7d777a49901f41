"""A real wardgate process in front of the real PostgreSQL, driven by real clients."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER, missing, stop_process

ROOT = Path(__file__).resolve().parents[2]
WARDGATE = str(Path(sys.executable).with_name("wardgate"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def admin_conn(dbname: str = "postgres") -> psycopg.Connection[Any]:
    """A direct connection to the real server (not through wardgate)."""
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=True)


@pytest.fixture(scope="session")
def pg_server() -> None:
    try:
        with admin_conn() as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as exc:
        missing(f"no PostgreSQL server at {PG_HOST}:{PG_PORT}: {exc}")


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new database named ``prefix`` + a random suffix; dropped afterwards, its
    sessions (a gateway's pool, a test's own) ended first."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    with admin_conn() as conn:
        conn.execute(f'create database "{name}"')
    yield name
    with admin_conn() as conn:
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (name,)
        )
        conn.execute(f'drop database if exists "{name}"')


@pytest.fixture(scope="session")
def it_database(pg_server: None) -> Iterator[str]:
    """A fresh database for this test run, dropped at the end."""
    with scratch_database("wardgate_it_") as name:
        yield name


@pytest.fixture
def table(it_database: str) -> Iterator[str]:
    """A fresh table ``stock_<random>`` (id 1..10, qty 0) in the test database, dropped
    afterwards: for writes that reviews hold and release."""
    name = f"stock_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as conn:
        conn.execute(f"create table {name} (id int primary key, qty int)")
        conn.execute(f"insert into {name} select g, 0 from generate_series(1, 10) g")
    yield name
    with admin_conn(it_database) as conn:
        conn.execute(f"drop table if exists {name}")


def base_config(database: str, extra_connections: str = "") -> str:
    return (
        textwrap.dedent(
            f"""\
        groups: {{agents: {{}}, engineers: {{}}, approvers: {{}}}}
        principals:
          agent: {{kind: agent, groups: [agents], sponsor: dev}}
          dev: {{kind: user, groups: [engineers]}}
          reviewer: {{kind: user, groups: [engineers, approvers]}}
          outsider: {{kind: user, groups: []}}
        connections:
          it:
            type: postgres
            upstream: {{host: {PG_HOST}, port: {PG_PORT}, database: {database}, user: {PG_USER}, tls: disable}}
            roles: {{agents: reader, engineers: engineer}}
          down:
            type: postgres
            upstream: {{host: 127.0.0.1, port: {free_port()}, database: x, user: nobody, tls: disable}}
            roles: {{agents: reader, engineers: engineer}}
        """
        )
        + textwrap.indent(textwrap.dedent(extra_connections), "  ")
        + textwrap.dedent(
            """\
        roles:
          reader: {read: allow, write: block, ddl: block, admin: block}
          engineer: {read: allow, write: allow, ddl: allow, admin: block}
        guardrails:
          - {name: no-drop, match: {sql: [drop, truncate]}, verdict: block, message: "Destructive DDL is blocked"}
          - {name: delete-needs-where, match: {sql: [delete_without_where, update_without_where]}, verdict: block}
        limits: {login_failures: 5, login_window: 60s, max_message_bytes: 4194304}
        """
        )
    )


# Runs `wardgate` commands one after another, each with the environment it is given
# (and none of its own WARDGATE_* variables), for as long as the test session lasts.
# In a process of its own: the command swaps sys.stdout and os.environ while it runs,
# which tests' threads (a client in a thread of its own) must never see.
_CLI_LOOP = """
import json, os, sys
from typer.testing import CliRunner
from wardgate.cli.main import app
runner = CliRunner()
for line in sys.stdin:
    request = json.loads(line)
    env = {k: None for k in os.environ if k.startswith("WARDGATE_")}
    env.update(request["env"])
    result = runner.invoke(app, request["args"], env=env)
    output = result.output if result.exception is None or result.exit_code == 0 else (
        f"{result.output}\\n{result.exception!r}")
    print(json.dumps([result.exit_code, output]), flush=True)
"""


class _CliProcess:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def run(self, args: list[str], env: dict[str, str]) -> tuple[int, str]:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                proc = self._proc = subprocess.Popen(
                    [sys.executable, "-c", _CLI_LOOP],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps({"args": args, "env": env}) + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
        if not answer:
            raise AssertionError(f"the wardgate command process ended during {args}")
        code, output = json.loads(answer)
        return int(code), str(output)

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()  # its loop ends
            proc.wait(30)
            proc.stdout.close()


_CLI = _CliProcess()
atexit.register(_CLI.close)


@dataclass
class Gateway:
    """A running `wardgate serve` process and what tests need to talk to it."""

    workdir: Path
    config_path: Path
    port: int
    api_port: int
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        return (self.workdir / "gateway.log").read_text(errors="replace")

    def cli(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [WARDGATE, *args, "-c", str(self.config_path)],
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"wardgate {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def token(self, principal: str) -> str:
        """A new token of ``principal`` (one per gateway), made by ``wardgate token
        create`` in the session's `_CLI` process: a test needs a few per gateway, and
        each new `wardgate` process costs about a second of CPU to start (tests of the
        command itself run it as a process: tests/cli)."""
        if principal not in self.tokens:
            args = ["token", "create", principal, "-c", str(self.config_path)]
            code, output = _CLI.run(args, self.env)
            if code != 0:
                raise AssertionError(
                    f"wardgate token create {principal} failed ({code}):\n{output}"
                )
            self.tokens[principal] = output.strip().splitlines()[-1]
        return self.tokens[principal]

    def dsn(self, principal: str = "dev", connection: str = "it", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"sslmode": "disable", **params}.items())
        return f"postgresql://{principal}:{self.token(principal)}@127.0.0.1:{self.port}/{connection}?{query}"

    def kwargs(self, principal: str = "dev", connection: str = "it") -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": principal,
            "password": self.token(principal),
            "dbname": connection,
        }

    def start(self) -> None:
        log = open(self.workdir / "gateway.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [WARDGATE, "serve", "-c", str(self.config_path)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        # Usually 1-3 s; a loaded 2-core machine has taken over 30 (imports, migrations).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"wardgate exited with {self.proc.returncode}:\n{self.log}")
            try:
                for port in (self.port, self.api_port):  # both listeners are up
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        pass
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"wardgate did not start listening:\n{self.log}")

    def reload(self, config_text: str | None = None, timeout: float = 20) -> None:
        """Write ``config_text`` (if given) as the gateway's file, send SIGHUP and wait
        until the log shows one more successful reload."""
        if config_text is not None:
            self.config_path.write_text(config_text)
        before = self.log.count("config reloaded")
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log.count("config reloaded") == before:
            assert time.monotonic() < deadline, self.log
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=15)
        self.proc = None


def make_gateway(tmp: Path, config_text: str, store: str | None = None) -> Gateway:
    tmp.mkdir(parents=True, exist_ok=True)
    config_path = tmp / "wardgate.yaml"
    config_path.write_text(config_text)
    port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "WARDGATE_STORE": store or f"sqlite:///{tmp / 'store.db'}",
        "WARDGATE_LISTEN_POSTGRES": f"127.0.0.1:{port}",
        "WARDGATE_LISTEN_API": f"127.0.0.1:{api_port}",
        "WARDGATE_LOG_LEVEL": "INFO",
    }
    env.pop("WARDGATE_MASTER_KEY", None)
    return Gateway(tmp, config_path, port, api_port, env)


@contextlib.contextmanager
def running_gateway(tmp: Path, config_text: str) -> Iterator[Gateway]:
    """A started gateway, stopped afterwards (fixtures; a module's shared one saves a few
    seconds per test)."""
    gw = make_gateway(tmp, config_text)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="session")
def gateway(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway for the whole run (tests that break things start their own)."""
    with running_gateway(tmp_path_factory.mktemp("gateway"), base_config(it_database)) as gw:
        yield gw


@pytest.fixture
def own_gateway(it_database: str, tmp_path: Path) -> Iterator[Gateway]:
    """A private gateway for tests that stop it, tamper with its store or exhaust limits."""
    with running_gateway(tmp_path / "gw", base_config(it_database)) as gw:
        yield gw


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed")
    assert path is not None
    return path


# Fixtures other modules share, registered here so that one Chromium and one OIDC
# provider serve every module (at the end: browser.py imports this module's names).
from tests.integration.browser import browser  # noqa: E402, F401
from tests.integration.oidc_mock import oidc_provider  # noqa: E402, F401
from tests.integration.pg_cluster import pg_cluster  # noqa: E402,F401  (session fixture: throwaway TLS cluster)
