"""How every wardgate process logs: `wardgate serve`, its workers and the recorder's
writer process. ``log.format: json`` (or WARDGATE_LOG_FORMAT=json, which `serve` sets for
the processes it starts) writes one JSON object a line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

FORMAT_ENV = "WARDGATE_LOG_FORMAT"
_TEXT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class JsonFormatter(logging.Formatter):
    """One object a line: ts, level, logger, pid, message, the event's own fields
    (``extra={"fields": {...}}``: principal, connection, rule ...) and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(fmt: str | None = None) -> None:
    """``fmt``: "text" or "json"; None takes WARDGATE_LOG_FORMAT (default text). Called
    again once the configuration is read, it replaces the handler."""
    fmt = fmt or os.environ.get(FORMAT_ENV, "text")
    level = os.environ.get("WARDGATE_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    logging.basicConfig(level=getattr(logging, level, logging.INFO), handlers=[handler], force=True)
    # Alembic announces each of its plugins at INFO on every start; only its
    # migration lines ("Running upgrade ...") tell an operator something.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
