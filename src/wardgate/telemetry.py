"""OpenTelemetry traces of every action, when asked for and installed (``wardgate[otel]``).

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set; then each
recorded action becomes one span exported over OTLP/HTTP, built from the same record the
audit log gets (so every protocol is traced by one hook, at the recorder). The standard
``OTEL_*`` variables configure the exporter and the resource (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, headers, timeouts).

Which trace a span joins: the agent's, when its MCP call carried one (a W3C
``traceparent`` makes the span a child of the agent's span; a bare 32-hex trace id or any
other conversation id is used as, or hashed into, the trace id); otherwise one trace per
gateway session, so a session's actions line up together. Spans carry who, where,
verdict, rule and outcome, never the statement or command text or any value: those stay
in the audit log, where masking and access control apply.

wardgate runs the same without the extra: ``import opentelemetry`` happens only here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from typing import TYPE_CHECKING, Any

from wardgate import __version__

if TYPE_CHECKING:
    from wardgate.audit.records import ActionRecord
    from wardgate.metrics import RecordObserver

log = logging.getLogger("wardgate")

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_DB_SYSTEM = {"postgres": "postgresql", "mysql": "mysql"}


def tracing_requested() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def setup_tracing(observer: RecordObserver, instance: str) -> Any:
    """Start exporting action spans from this process; returns the tracer provider (call
    its ``shutdown()`` at exit to flush) or None when tracing is off or not installed."""
    if not tracing_requested():
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: no "
            "traces are exported (install wardgate[otel])"
        )
        return None
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", "wardgate"),
            "service.version": __version__,
            "service.instance.id": f"{os.uname().nodename}/{instance}/{os.getpid()}",
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    observer.on_action = ActionSpans(provider.get_tracer("wardgate", __version__))
    log.info("exporting action traces over OTLP/HTTP")
    return provider


def stop_tracing(provider: Any, timeout: float = 5.0) -> None:
    """Export the spans still buffered, waiting ``timeout`` seconds at most: a collector
    that is down must not hold the gateway's exit past its grace period."""
    done = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    done.start()
    done.join(timeout)
    if done.is_alive():
        log.warning("the OpenTelemetry collector did not take the last spans in %.0fs", timeout)


class ActionSpans:
    """Turns a finished action's record into one span with its real start and end."""

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer

    def __call__(self, record: ActionRecord) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        action, verdict = record.action, record.verdict
        start = int(record.started_at * 1e9)
        attributes: dict[str, Any] = {
            "wardgate.session.id": record.session_id,
            "wardgate.action.seq": record.seq,
            "wardgate.protocol": action.protocol,
            "wardgate.action.kind": action.kind,
            "wardgate.connection": action.connection,
            "wardgate.principal": action.principal.name,
            "wardgate.principal.kind": str(action.principal.kind),
            "wardgate.verdict": verdict.decision.value,
            "wardgate.rule": verdict.rule,
            "wardgate.status": record.status,
        }
        if record.rows is not None:
            attributes["wardgate.rows"] = record.rows
        if record.sqlstate:
            attributes["db.response.status_code"] = record.sqlstate
        if record.trace_id:
            attributes["wardgate.trace_id"] = record.trace_id[:200]
        if (system := _DB_SYSTEM.get(action.protocol)) is not None:
            attributes["db.system"] = system
        span = self._tracer.start_span(
            f"{action.protocol} {action.kind}",
            context=parent_context(record.trace_id, record.session_id),
            kind=SpanKind.SERVER,
            start_time=start,
            attributes=attributes,
        )
        if record.status in ("blocked", "error"):
            span.set_status(Status(StatusCode.ERROR, f"{record.status} ({verdict.rule})"))
        span.end(end_time=start + int(record.duration_ms * 1e6))


def parent_context(trace_ref: str | None, session_id: str) -> Any:
    """The remote parent a span is created under (see the module docstring)."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    flags = TraceFlags(TraceFlags.SAMPLED)
    ref = (trace_ref or "").strip().lower()
    if (m := _TRACEPARENT.match(ref)) and int(m[1], 16) and int(m[2], 16):
        trace_id, span_id = int(m[1], 16), int(m[2], 16)
        flags = TraceFlags(int(m[3], 16) & TraceFlags.SAMPLED)
    elif _TRACE_ID.match(ref) and int(ref, 16):
        trace_id, span_id = int(ref, 16), _derived(session_id, 8)
    else:
        trace_id, span_id = _derived(trace_ref or session_id, 16), _derived(session_id, 8)
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(parent))


def _derived(text: str, size: int) -> int:
    """A stable non-zero id of ``size`` bytes for ``text``."""
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:size], "big")
    return value or 1
