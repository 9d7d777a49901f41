"""The differential oracle in CI: command lines from a grammar of bash constructs that
the classifier judges ``read`` run in a throwaway sandbox under strace; none may write
or run a program off the read allow-list (tests/integration/shell_oracle.py).
bench/shell_oracle.py runs the full count (docs/ssh.md)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

from tests.conftest import missing
from tests.integration.shell_oracle import (
    command_lines,
    judged_read,
    run_in_sandbox,
    sandbox_available,
)

# A bounded sample in CI (the sandbox run takes ~20 ms a line); the bench runs 10,000+.
EXAMPLES = 150 if os.environ.get("CI") else 400

ISSUE_15 = [
    "hash -p /bin/sh ls; ls -c 'id > /tmp/oracle-x'",
    "hash -p /usr/bin/rm ls; ls -rf /srv/app",
    "ls ~$(uname -a > /tmp/oracle-x)",
    "printf -v PS4 '$(whoami > /tmp/oracle-x)'; set -x; true",
]


@pytest.fixture(scope="module")
def sandbox() -> None:
    reason = sandbox_available()
    if reason is not None:
        missing(reason)


def test_generated_reads_neither_write_nor_run_other_programs(sandbox: None) -> None:
    reads: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(command_lines())
    def collect(line: str) -> None:
        if judged_read(line) and line not in reads:
            reads.append(line)

    collect()
    assert len(reads) >= EXAMPLES // 10, "the grammar should give reads"
    failures = [o for o in run_in_sandbox(reads) if o.violations]
    print(f"{len(reads)} generated lines judged read ran in the sandbox")
    assert not failures, "\n".join(f"{o.command!r}: {o.violations}" for o in failures[:10])


def test_the_oracle_sees_what_the_issue_examples_do(sandbox: None) -> None:
    # Judged non-read, so never run by the oracle; run here on purpose, they show that
    # the sandbox sees such writes (the oracle is not vacuous).
    assert not any(judged_read(line) for line in ISSUE_15)
    outcomes = run_in_sandbox(ISSUE_15)
    for outcome in outcomes:
        assert outcome.violations, outcome
    assert any("/tmp/oracle-x" in v for v in outcomes[0].violations)
    assert any("executed /usr/bin/rm" in v for v in outcomes[1].violations)
    assert any("unlinkat" in v or "rmdir" in v for v in outcomes[1].violations)
