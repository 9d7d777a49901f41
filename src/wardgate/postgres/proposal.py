"""Running an approved proposal: its statements in one transaction, all or nothing.

The statements run on a session of the gateway's own, with the credential the gateway
holds: ``BEGIN``, each statement as its own simple Query (so each has its own result),
then ``COMMIT``; the first error rolls everything back and names the statement. A
statement that would end or split the transaction itself is refused before anything
runs, as is an entry holding more (or less) than one statement.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from wardgate.policy.sql import classify
from wardgate.postgres.internal import (
    HasCredentials,
    InternalQueryFailed,
    InternalSession,
    internal_session,
)

# Past the server's own statement_timeout, how long the gateway still waits for it.
_GRACE = 2.0


def _failure(
    index: int | None, sqlstate: str, message: str, done: list[dict[str, Any]] | None = None
) -> tuple[bool, dict[str, Any]]:
    return False, {
        "ok": False,
        "statements": done or [],
        "error": {"index": index, "sqlstate": sqlstate, "message": message},
        "committed": False,
    }


def proposal_refusal(statements: list[str]) -> tuple[int | None, str, str] | None:
    """Why these statements cannot run as one proposal: (index, SQLSTATE, message), or
    None. Pure, so a proposal can be checked when it is made as well as when it runs."""
    if not statements:
        return None, "42601", "the proposal holds no statements"
    for i, text in enumerate(statements):
        infos = classify(text)
        if len(infos) != 1:
            what = "is empty" if not infos else f"holds {len(infos)} statements"
            return (
                i,
                "42601",
                f"statement {i + 1} {what}; give each statement its own entry",
            )
        info = infos[0]
        if "parse_error" in info.kinds:
            return i, "42601", f"statement {i + 1} could not be read: {info.error}"
        if "transaction" in info.kinds:
            return (
                i,
                "25001",
                f"statement {i + 1} controls the transaction (BEGIN, COMMIT, ROLLBACK, "
                "SAVEPOINT...); a proposal already runs as one transaction, so leave it out",
            )
        if "parser_setting" in info.kinds:
            return (
                i,
                "0A000",
                f"statement {i + 1} changes how the server reads SQL "
                "(standard_conforming_strings); it is never run by the gateway",
            )
        if "copy_from" in info.kinds:
            return (
                i,
                "0A000",
                f"statement {i + 1} is COPY FROM STDIN, which needs data a proposal cannot carry",
            )
    return None


async def run_proposal(
    services: HasCredentials,
    connection: str,
    statements: list[str],
    *,
    timeout: float = 60.0,  # noqa: ASYNC109 - also the server's statement_timeout
) -> tuple[bool, dict[str, Any]]:
    """Run ``statements`` in one transaction on ``connection`` and commit them, or nothing.

    Returns (ok, {"ok", "statements": [{"index", "command", "rows"}...], "error":
    {"index", "sqlstate", "message"} or None, "committed"}). ``index`` counts from 0;
    an error at COMMIT (a deferred constraint) has index None. ``timeout`` bounds the
    whole run, each statement's statement_timeout included; when it runs out the
    statement is cancelled and nothing is committed. SQLSTATE 08007 means the
    connection was lost during COMMIT: whether it committed is unknown.
    """
    refusal = proposal_refusal(statements)
    if refusal is not None:
        return _failure(*refusal)
    if not (timeout > 0 and math.isfinite(timeout)):
        return _failure(None, "22023", "the proposal needs a positive, finite time limit")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    done: list[dict[str, Any]] = []
    try:
        async with internal_session(
            services,
            connection,
            application_name="wardgate-proposal",
            timeout=timeout + _GRACE,
            max_rows=0,
        ) as session:
            timeout_ms = max(1, round(timeout * 1000))
            begun = await session.simple(
                f"BEGIN; SET LOCAL statement_timeout = {timeout_ms}; "
                f"SET LOCAL idle_in_transaction_session_timeout = {timeout_ms}"
            )
            for result in begun:
                if result.error is not None:
                    return _failure(None, result.error.sqlstate, result.error.message)
            for i, text in enumerate(statements):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return _failure(i, "57014", _timed_out(timeout), done)
                try:
                    results = await session.simple(text, timeout=remaining + _GRACE)
                except InternalQueryFailed as exc:
                    # The session is given up: the server rolls back what it held.
                    reason = (
                        _timed_out(timeout)
                        if exc.sqlstate == "57014"
                        else f"{exc.reason}; nothing was committed"
                    )
                    return _failure(i, exc.sqlstate, f"statement {i + 1}: {reason}", done)
                failed = next((r.error for r in results if r.error is not None), None)
                if failed is not None:
                    await _rollback(session)
                    return _failure(
                        i,
                        failed.sqlstate,
                        f"statement {i + 1} failed: {failed.message}; nothing was committed",
                        done,
                    )
                if session.status != b"T":
                    # Refused above; if it happens anyway, what ran so far may be committed.
                    return _failure(
                        i,
                        "25000",
                        f"statement {i + 1} ended the transaction; what ran before it "
                        "may have been committed",
                        done,
                    )
                last = results[-1] if results else None
                done.append(
                    {
                        "index": i,
                        "command": last.command if last else "",
                        "rows": last.count if last else None,
                    }
                )
            return await _commit(session, done)
    except InternalQueryFailed as exc:
        return _failure(None, exc.sqlstate, f"{exc.reason}; nothing was committed", done)


async def _commit(
    session: InternalSession, done: list[dict[str, Any]]
) -> tuple[bool, dict[str, Any]]:
    try:
        # Bounded by the session's limit, not what is left of the proposal's: once COMMIT
        # is sent, giving up early would only make the outcome unknown.
        results = await session.simple("COMMIT")
    except InternalQueryFailed as exc:
        return _failure(
            None,
            "08007",
            f"the answer to COMMIT was lost ({exc.reason}); whether the proposal was "
            "committed is unknown: check the data before running it again",
            done,
        )
    error = next((r.error for r in results if r.error is not None), None)
    if error is not None:
        return _failure(
            None, error.sqlstate, f"COMMIT failed: {error.message}; nothing was committed", done
        )
    if not results or results[-1].command != "COMMIT":
        return _failure(None, "40000", "the transaction was rolled back at COMMIT", done)
    return True, {"ok": True, "statements": done, "error": None, "committed": True}


async def _rollback(session: InternalSession) -> None:
    try:
        await session.simple("ROLLBACK")
    except InternalQueryFailed:
        pass  # closing the session rolls back as well


def _timed_out(timeout: float) -> str:
    return f"the proposal ran past its {timeout:g} s limit; nothing was committed"
