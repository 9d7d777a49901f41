"""Running wardgate the way platform teams do: probes, Prometheus metrics scraped and
parsed, SIGTERM draining with real clients, and a two-replica fleet on one PostgreSQL
store approving across replicas. Real gateway processes, real psycopg, real PostgreSQL."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    Gateway,
    free_port,
    make_gateway,
    scratch_database,
)
from tests.integration.test_reviews import (  # noqa: F401  (_close_apis: its fixture)
    Api,
    _close_apis,
    _wait_for_pending,
    pending_error,
    qty,
    review_config,
)


def config_with(database: str, limits: str = "", top: str = "") -> str:
    text = review_config(database)
    if limits:
        text = text.replace(
            "max_message_bytes: 4194304}", f"max_message_bytes: 4194304, {limits}}}"
        )
    return text + top


@pytest.fixture
def store_db() -> Iterator[str]:
    """A PostgreSQL database for a gateway store, dropped afterwards."""
    with scratch_database("wardgate_store_") as name:
        yield name


def get(gw: Gateway, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{gw.api_port}{path}", timeout=10)


def scrape(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed by prometheus_client's own parser: (sample name, labels) -> value."""
    r = get(gw, "/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


class Relay:
    """A TCP relay to PostgreSQL that the test can cut: the store going away."""

    def __init__(self, target_port: int = 5432) -> None:
        self.port = free_port()
        self.target = target_port
        self.open = True
        self.pairs: list[socket.socket] = []  # connected now
        self.every: list[socket.socket] = []  # closed at the end
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.pairs += [client, upstream]
            self.every += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.open = False
        for s in self.pairs:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.pairs.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()
        for s in self.every:
            s.close()


def wait_until(check: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_probes_follow_the_store(it_database: str, store_db: str, tmp_path: Path) -> None:
    relay = Relay()
    store = f"postgresql://postgres@127.0.0.1:{relay.port}/{store_db}"
    gw = make_gateway(tmp_path / "gw", config_with(it_database), store=store)
    try:
        gw.start()
        health = get(gw, "/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        ready = get(gw, "/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ok"

        relay.cut()
        down = wait_until(
            lambda: (r := get(gw, "/readyz")).status_code == 503 and r, what="/readyz 503"
        )
        problems = down.json()["problems"]
        assert any("store is not reachable" in p for p in problems), problems
        assert "postgres@" not in down.text  # never a credential or URL user
        assert get(gw, "/healthz").status_code == 200  # alive all the same

        relay.open = True
        wait_until(lambda: get(gw, "/readyz").status_code == 200, what="/readyz back to 200")
    finally:
        gw.stop()
        relay.close()


def test_metrics_add_up_across_workers(it_database: str, tmp_path: Path, table: str) -> None:
    metrics_parent = tmp_path / "metrics"
    gw = make_gateway(tmp_path / "gw", config_with(it_database, top="workers: 2\n"))
    gw.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_parent)
    sessions = 16
    try:
        gw.start()
        dsn = gw.dsn("dev")
        for _ in range(sessions):  # SO_REUSEPORT spreads them over both workers
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("select 1")
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"drop table {table}")
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            pending_error(conn, f"UPDATE {table} SET qty = 3 WHERE id = 2")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(gw.dsn().replace(gw.token("dev"), "wg_not_a_token")).close()

        def counted() -> Any:
            # Actions are tallied by each worker and published after its recorder's next
            # batch (metrics.flush), a moment after the sessions themselves are counted.
            m = scrape(gw)
            done = (
                total(m, "wardgate_sessions_total") >= sessions + 2
                and total(m, "wardgate_actions_total", verdict="allow", status="ok") >= sessions
                and total(m, "wardgate_actions_total", verdict="review") >= 1
            )
            return m if done else None

        m = wait_until(counted, what="sessions counted")
        assert total(m, "wardgate_sessions_total", protocol="postgres") == sessions + 2
        assert total(m, "wardgate_actions_total", verdict="allow", status="ok") >= sessions
        assert total(m, "wardgate_actions_total", verdict="block", status="blocked") == 1
        assert total(m, "wardgate_actions_total", verdict="review") == 1
        assert total(m, "wardgate_login_failures_total") == 1
        assert total(m, "wardgate_gate_decision_seconds_count", protocol="postgres") >= sessions + 2
        # the sessions, and the review's impact preview (a rolled-back run) dials too
        assert total(m, "wardgate_upstream_connect_seconds_count", outcome="ok") >= sessions + 2
        assert total(m, "wardgate_reviews", status="pending") == 1
        assert total(m, "wardgate_review_events_total", event="requested") == 1
        assert ("wardgate_recorder_queue_depth", ()) in m
        assert ("wardgate_recorder_lag_seconds", ()) in m
        wait_until(lambda: total(scrape(gw), "wardgate_sessions_open") == 0, what="sessions closed")
        # One registry for the gateway: both workers counted sessions (a worker's counter
        # file appears with its first count), and the scrape added them up.
        assert gw.proc is not None
        children = Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()
        workers = [
            pid
            for pid in children
            if b"wardgate.audit.writer" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(workers) == 2, children
        (run_dir,) = metrics_parent.iterdir()
        assert all((run_dir / f"counter_{pid}.db").exists() for pid in workers), list(
            run_dir.iterdir()
        )
    finally:
        gw.stop()
    assert list(metrics_parent.iterdir()) == []  # the per-run directory went with the run


def test_sigterm_drains_open_sessions(it_database: str, tmp_path: Path, table: str) -> None:
    gw = make_gateway(tmp_path / "gw", config_with(it_database, limits="drain_timeout: 20s"))
    try:
        gw.start()
        assert gw.proc is not None
        busy = psycopg.connect(gw.dsn("dev"))  # a transaction open across the SIGTERM
        busy.execute(f"UPDATE {table} SET qty = 7 WHERE id = 3")
        idle = psycopg.connect(gw.dsn("dev"), autocommit=True)
        idle.execute("select 1")
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)

        ready = wait_until(
            lambda: (r := get(gw, "/readyz")).status_code == 503 and r, what="draining"
        )
        assert "draining: the gateway is shutting down" in ready.json()["problems"]
        with pytest.raises(psycopg.OperationalError):  # no new clients
            psycopg.connect(gw.dsn("dev"), connect_timeout=3).close()
        with pytest.raises(psycopg.OperationalError) as ended:  # idle: ended at once
            idle.execute("select 1")
        assert "shutting down" in str(ended.value)

        # The busy session finishes its work: the transaction commits on the target.
        busy.execute(f"UPDATE {table} SET qty = qty + 1 WHERE id = 3")
        busy.commit()
        assert qty(it_database, table, 3) == 8
        assert gw.proc.wait(15) == 0
        assert time.monotonic() - started < 15  # well before the grace period ran out
        busy.close()
        idle.close()
    finally:
        gw.stop()
    # Every session and action of the drain is in the audit log, and the chain is whole.
    gw.start()
    try:
        listed = json.loads(gw.cli("sessions", "list", "--principal", "dev", "--json").stdout)
        assert len(listed) == 2 and all(s["ended_at"] for s in listed), listed
        # select 1; begin, update, update, commit
        assert sorted(s["action_count"] for s in listed) == [1, 4]
        gw.cli("audit", "verify")
    finally:
        gw.stop()


def test_fleet_drain_keeps_a_waiting_review_for_another_replica(
    it_database: str, store_db: str, tmp_path: Path, table: str
) -> None:
    """Two replicas on one PostgreSQL store. A's agent statement waits for review when A
    is told to stop: after the grace period its client is told to retry, the review
    stays pending, a human approves it through B, and the agent's retry on B runs once."""
    store = f"postgresql://postgres@127.0.0.1:5432/{store_db}"
    config = config_with(it_database, limits="drain_timeout: 2s")
    a = make_gateway(tmp_path / "a", config, store=store)
    b = make_gateway(tmp_path / "b", config, store=store)
    key = base64.b64encode(os.urandom(32)).decode()
    a.env["WARDGATE_MASTER_KEY"] = b.env["WARDGATE_MASTER_KEY"] = key
    sql = f"UPDATE {table} SET qty = 42 WHERE id = 5"
    try:
        a.start()
        b.start()
        b.tokens = a.tokens
        errors: list[psycopg.Error] = []

        def agent_on_a() -> None:
            dsn = a.dsn("agent", options="-c%20wardgate.review_wait%3D30")
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(sql)
            except psycopg.Error as exc:
                errors.append(exc)

        waiting = threading.Thread(target=agent_on_a)
        waiting.start()
        review = _wait_for_pending(Api(b, "reviewer"), "agent")
        assert a.proc is not None
        a.proc.send_signal(signal.SIGTERM)
        waiting.join(15)
        assert not waiting.is_alive()
        (error,) = errors
        assert isinstance(error, psycopg.OperationalError)
        assert "shutting down" in str(error) and "stays pending" in str(error)
        assert a.proc.wait(15) == 0
        assert qty(it_database, table, 5) == 0  # nothing ran

        api_b = Api(b, "reviewer")
        assert api_b.get(f"/reviews/{review['id']}")["status"] == "pending"
        assert get(b, "/readyz").status_code == 200
        api_b.post(f"/reviews/{review['id']}/approve")
        with psycopg.connect(b.dsn("agent"), autocommit=True) as conn:
            conn.execute(sql)
        assert qty(it_database, table, 5) == 42
        assert api_b.get(f"/reviews/{review['id']}")["status"] == "executed"
    finally:
        a.stop()
        b.stop()


def test_json_log_has_one_object_a_line_with_the_events(it_database: str, tmp_path: Path) -> None:
    """`log.format: json`: every line of the gateway's log is one JSON object; sign-ins,
    blocked statements and reviews filed and decided are there at INFO with principal,
    connection and rule."""
    from tests.integration.test_reviews import cli_as

    gw = make_gateway(tmp_path / "gw", review_config(it_database) + "log: {format: json}\n")
    gw.start()
    try:
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("drop table if exists nothing_here")
            review_id = pending_error(conn, "update no_such_json_table set x = 1 where id = 1")
        cli_as(gw, "reviewer", "reviews", "deny", review_id, "--reason", "no")
        time.sleep(1.0)
    finally:
        gw.stop()
    lines = [line for line in gw.log.splitlines() if line.strip()]
    assert lines
    entries = [json.loads(line) for line in lines]  # every line parses
    assert all({"ts", "level", "logger", "message"} <= e.keys() for e in entries)
    by_event = {e.get("event"): e for e in entries if e.get("event")}
    signed = by_event["session.opened"]
    assert signed["level"] == "INFO" and signed["principal"] == "agent"
    assert signed["connection"] == "it" and signed["protocol"] == "postgres"
    blocked = by_event["action.blocked"]
    assert (blocked["principal"], blocked["connection"], blocked["rule"]) == (
        "agent",
        "it",
        "guardrail:no-drop",
    )
    filed = by_event["review.requested"]
    assert filed["review"] == review_id and filed["principal"] == "agent"
    assert filed["rule"] == "role:proposer" and filed["connection"] == "it"
    assert by_event["review.denied"]["status"] == "denied"
    assert not [e for e in entries if e["level"] in ("ERROR", "CRITICAL")]
