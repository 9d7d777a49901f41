"""Shared test helpers. Integration tests need a real PostgreSQL on 127.0.0.1:5432
(user postgres, trust). When WARDGATE_REQUIRE_INTEGRATION is set (scripts/test sets it
under CI), a missing server fails the run instead of skipping."""

from __future__ import annotations

import os
import subprocess

import pytest

PG_HOST = os.environ.get("WARDGATE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("WARDGATE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("WARDGATE_TEST_PG_USER", "postgres")


def integration_required() -> bool:
    return os.environ.get("WARDGATE_REQUIRE_INTEGRATION", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip locally, fail under CI: integration tests never silently skip there."""
    if integration_required():
        pytest.fail(f"integration prerequisite missing: {reason}")
    pytest.skip(reason)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM a helper process (gateway, sshd, OIDC provider), SIGKILL it if it has not
    exited after ``grace`` seconds, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


_TIMES = os.environ.get("WARDGATE_TEST_TIMES")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """With WARDGATE_TEST_TIMES=FILE, each test phase's duration is appended to FILE as
    it ends (``--durations`` prints only after the whole run): finds what makes a run
    slow while it runs. Under pytest-xdist each worker writes its own tests' lines (the
    controller, which sees every report again, writes none)."""
    if _TIMES and getattr(report, "node", None) is None:
        with open(_TIMES, "a", encoding="utf-8") as out:
            out.write(f"{report.duration:.2f}\t{report.when}\t{report.outcome}\t{report.nodeid}\n")
