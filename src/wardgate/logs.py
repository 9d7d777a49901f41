"""How every wardgate process logs: `wardgate serve`, its workers and the recorder's
writer process."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging() -> None:
    level = os.environ.get("WARDGATE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    # Alembic announces each of its plugins at INFO on every start; only its
    # migration lines ("Running upgrade ...") tell an operator something.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
