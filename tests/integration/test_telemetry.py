"""OpenTelemetry traces (wardgate[otel]): a real gateway exports one span per action over
OTLP/HTTP to a collector on loopback, decoded with OpenTelemetry's own protobuf classes.
A session's actions share a trace; an MCP call's traceparent puts its action inside the
agent's trace; spans never carry the statement's text."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.integration.conftest import Gateway, free_port, make_gateway
from tests.integration.test_mcp import call, mcp_config


class _Collector(BaseHTTPRequestHandler):
    requests: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            _Collector.requests.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Collector)
    _Collector.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def spans() -> list[tuple[Any, Any, dict[str, Any]]]:
    """(resource attributes, span, span attributes) of everything received."""
    out = []
    for request in _Collector.requests:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attrs = {}
                    for a in span.attributes:
                        kind = a.value.WhichOneof("value")
                        attrs[a.key] = getattr(a.value, kind) if kind else None
                    out.append((resource, span, attrs))
    return out


@pytest.fixture
def traced_gw(it_database: str, tmp_path: Path, collector: str) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path / "gw", mcp_config(it_database))
    gw.env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector,
        OTEL_SERVICE_NAME="wardgate-test",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    gw.start()
    yield gw
    gw.stop()


def test_actions_become_spans(traced_gw: Gateway, table: str) -> None:
    with psycopg.connect(traced_gw.dsn("dev"), autocommit=True) as conn:
        conn.execute("select 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"drop table {table}")
    parent_trace, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    call(
        traced_gw, "agent",
        ("query", {"connection": "it", "sql": "select 42"}),
        meta={"traceparent": f"00-{parent_trace}-{parent_span}-01"},
    )  # fmt: skip
    call(
        traced_gw,
        "agent",
        ("query", {"connection": "it", "sql": "select 43"}),
        meta={"trace_id": "conv-7f3a"},
    )
    traced_gw.stop()  # the gateway flushes its spans on the way out

    found = spans()
    assert found, "no spans reached the collector"
    resource = found[0][0]
    assert resource["service.name"].string_value == "wardgate-test"
    assert resource["service.version"].string_value
    pg = [(s, a) for _, s, a in found if a["wardgate.protocol"] == "postgres"]
    assert [a["wardgate.verdict"] for _, a in pg] == ["allow", "block"]
    assert len({s.trace_id for s, _ in pg}) == 1  # one session, one trace
    allowed, blocked = (s for s, _ in pg)
    assert blocked.status.code == 2  # ERROR
    assert (
        pg[1][1]["wardgate.rule"] == "guardrail:no-drop"
        and pg[1][1]["wardgate.status"] == "blocked"
    )
    assert pg[0][1]["db.system"] == "postgresql" and pg[0][1]["wardgate.principal"] == "dev"
    assert allowed.end_time_unix_nano >= allowed.start_time_unix_nano > 0

    mcp = {a.get("wardgate.trace_id"): s for _, s, a in found if a["wardgate.protocol"] == "mcp"}
    inside = mcp[f"00-{parent_trace}-{parent_span}-01"]
    assert inside.trace_id.hex() == parent_trace and inside.parent_span_id.hex() == parent_span
    conversation = mcp["conv-7f3a"]
    assert conversation.trace_id.hex() != parent_trace and len(conversation.trace_id) == 16
    for _, span, attrs in found:  # who, where, verdict: never the statement itself
        assert not any(table in str(v) or "select" in str(v).lower() for v in attrs.values())
        assert "select" not in span.name.lower()


def test_no_endpoint_no_export(it_database: str, tmp_path: Path, collector: str) -> None:
    gw = make_gateway(tmp_path / "gw", mcp_config(it_database))
    gw.env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    gw.start()
    try:
        with psycopg.connect(gw.dsn("dev"), autocommit=True) as conn:
            conn.execute("select 1")
    finally:
        gw.stop()
    time.sleep(0.3)
    assert _Collector.requests == []
    assert "OTLP" not in gw.log
