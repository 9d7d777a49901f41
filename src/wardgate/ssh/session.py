"""One SSH channel through the gateway: an exec request judged as a command, or an
interactive shell allowed per role and recorded.

Exit statuses the gateway itself gives: 126 blocked or denied (nothing ran), 77 an
approval is pending (nothing ran yet; run the same command again after approval),
255 the target could not be reached. Messages go to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from wardgate.actions import Action, Decision, Verdict
from wardgate.audit.asciicast import Cast
from wardgate.audit.records import (
    AUDIT_UNAVAILABLE,
    AUDIT_UNAVAILABLE_HINT,
    RecordingRecord,
    action_record,
    intended_record,
)
from wardgate.audit.responses import ResponseTap
from wardgate.config import parse_duration
from wardgate.masking.stream import LineMasker
from wardgate.reviews.settle import settle
from wardgate.ssh.upstream import TargetUnavailable
from wardgate.sshlib import asyncssh

if TYPE_CHECKING:
    from wardgate.ssh.server import GatewayConnection

log = logging.getLogger("wardgate.ssh")

EXIT_BLOCKED = 126
EXIT_PENDING = 77
EXIT_UNREACHABLE = 255
_CHUNK = 64 * 1024

Process = asyncssh.SSHServerProcess[bytes]


async def handle_process(process: Process) -> None:
    owner: GatewayConnection = process.get_extra_info("connection").get_owner()
    try:
        refusal = owner.refusal()
        if refusal is not None:
            _fail(process, refusal, EXIT_BLOCKED)
        elif process.subsystem:
            _fail(process, f"wardgate: subsystem {process.subsystem!r} is not offered", 1)
        elif process.command is None:
            await _shell(owner, process)
        else:
            await _exec(owner, process, process.command)
    except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
        log.info("session %s: channel ended: %s", owner.session_id, exc)
        process.exit(EXIT_UNREACHABLE)
    except Exception:
        log.exception("session %s: unexpected failure", owner.session_id)
        _fail(process, "wardgate: internal error; nothing more was run", 1)


def _fail(process: Process, message: str, status: int) -> None:
    process.stderr.write((message.rstrip("\n") + "\n").encode())
    process.exit(status)


async def _exec(owner: GatewayConnection, process: Process, command: str) -> None:
    services = owner.services
    principal = owner.current_principal()
    name = owner.connection_name
    action = Action(
        principal, name, "ssh", "shell", command,
        session_id=owner.session_id, client_addr=owner.client_addr,
    )  # fmt: skip
    verdict = services.gate.check(action, owner.granted())
    if (
        any("interactive" in s.kinds for s in verdict.statements)
        and verdict.decision != Decision.BLOCK
    ):
        # `ssh host -- bash` (or python, sudo -i...) reads commands from the client that
        # no one judges: that is a shell, and needs the role's shell permission too.
        shell = owner.feature("shell")
        if not shell.lets_through:
            verdict = Verdict(
                Decision.BLOCK,
                shell.rule,
                "the command starts an interactive program that would read further commands "
                f"unjudged; that needs a role with shell: allow ({shell.reason})",
                verdict.statements,
            )
    started, t0 = time.time(), time.perf_counter()
    seq = owner.next_seq()

    def record(verdict: Verdict, status: str, **extra: Any) -> None:
        services.recorder.submit(
            action_record(
                owner.session_id, seq, action, verdict, status, started=started, t0=t0, **extra
            )
        )

    settled = await settle(
        services.reviews,
        action,
        verdict,
        wait=_review_wait(owner, process),
        base_url=services.config.review_url,
        what="command",
    )
    if settled.refusal is not None:
        record(settled.verdict, "blocked", error=settled.refusal.message)
        status = EXIT_BLOCKED if settled.status in ("blocked", "denied") else EXIT_PENDING
        _fail(process, f"{settled.refusal.message}\n{settled.refusal.hint}", status)
        return
    verdict, review = settled.verdict, settled.review
    if services.recorder.unavailable:
        services.recorder.refused()  # counted, not queued (AUDIT_UNAVAILABLE_RULE)
        _fail(process, f"{AUDIT_UNAVAILABLE}\n{AUDIT_UNAVAILABLE_HINT}", EXIT_BLOCKED)
        return
    try:
        upstream = await owner.upstream()
    except TargetUnavailable as exc:
        message = f"wardgate: cannot reach connection {name!r}: {exc.reason}"
        record(verdict, "error", error=message)
        _fail(process, message, EXIT_UNREACHABLE)
        return
    masking = services.masking.for_session(principal, name)
    # Journalled before it runs (audit.journal): if the gateway dies while the command
    # runs, the store still gets its record, as interrupted.
    services.recorder.intend(
        intended_record(owner.session_id, seq, action, verdict, started=started)
    )
    budget = owner.response_budget()
    tap = ResponseTap(budget, "utf-8", kind="text") if budget is not None else None
    try:
        status = await _run(upstream, process, command, masking, tap)
    except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
        record(verdict, "error", error=f"the channel ended: {exc}")
        raise
    response = tap.summary() if tap is not None else None
    record(verdict, "ok" if status == 0 else "error", command=f"exit {status}", result=response)
    if review is not None and services.reviews is not None:
        result = {"status": "ok" if status == 0 else "error", "command": f"exit {status}"}
        services.tasks.spawn(
            asyncio.to_thread(services.reviews.service.record_action_result, review, result),
            name="review-result",
        )
    process.exit(status)


async def _run(
    upstream: asyncssh.SSHClientConnection,
    process: Process,
    command: str,
    masking: object,
    tap: ResponseTap | None,
) -> int:
    """Run ``command`` on the target with the client's streams; its exit status. The
    (masked) output, as the client saw it, goes through ``tap`` for the record."""
    term = process.get_terminal_type()
    width, height, _, _ = process.get_terminal_size()
    proc = await upstream.create_process(
        fixed_environment(command, term),
        encoding=None,
        term_type=term,
        term_size=(width, height) if term else None,
        env={},  # the client's environment never reaches the target
    )

    def keep(data: bytes) -> None:
        if tap is not None:
            tap.feed(data)  # stdout and stderr as the client saw them, masked

    stdin = asyncio.ensure_future(_pump_stdin(process, proc, None))
    await asyncio.gather(
        _pump_out(proc.stdout, process.stdout, masking, keep),
        _pump_out(proc.stderr, process.stderr, masking, keep),
    )
    completed = await proc.wait(check=False)
    stdin.cancel()
    status = completed.exit_status if completed.exit_status is not None else EXIT_UNREACHABLE
    return status


# What an exec'd command runs with on the target, whatever the client or the account's
# start-up files set: the PATH whose directories the classifier trusts, no BASH_ENV, ENV,
# PS4, PROMPT_COMMAND, IFS, LD_* ..., and pagers that cannot start a shell.
FIXED_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_FIXED_ENV = (
    f"PATH={FIXED_PATH}",
    'HOME="$HOME"',
    'USER="$USER"',
    'LOGNAME="$LOGNAME"',
    "LANG=C.UTF-8",
    "PAGER=cat",
    "SYSTEMD_PAGER=cat",
    "GIT_PAGER=cat",
    "LESSSECURE=1",
)
_TERM = re.compile(r"[A-Za-z0-9._+-]{1,64}")


def fixed_environment(command: str, term: str | None) -> str:
    """The text sent as the exec request: ``command`` run by bash (the shell the gate
    judged it as) under ``env -i`` with a fixed environment.

    The target's login shell only has to read one single-quoted string and ``"$HOME"``
    (any POSIX shell, zsh or fish does; csh does not take a newline inside quotes). An
    ``env`` request of the client's is never forwarded; ``env -i`` also drops whatever
    the account's sshd settings or start-up files exported (BASH_ENV, PS4, PATH ...).
    """
    env = list(_FIXED_ENV)
    if term and _TERM.fullmatch(term):
        env.append(f"TERM={term}")
    quoted = "'" + command.replace("'", "'\\''") + "'"
    return f"exec /usr/bin/env -i {' '.join(env)} /bin/bash -c {quoted}"


async def _pump_out(
    source: asyncssh.SSHReader[bytes],
    sink: asyncssh.SSHWriter[bytes],
    masking: object,
    keep: object,
) -> None:
    masker = LineMasker(masking.mask_text) if masking is not None else None  # type: ignore[attr-defined]
    while data := await source.read(_CHUNK):
        out = masker.feed(data) if masker is not None else data
        if out:
            keep(out)  # type: ignore[operator]
            sink.write(out)
            await sink.drain()  # a client that does not read pauses the target's output
    if masker is not None and (tail := masker.flush()):
        keep(tail)  # type: ignore[operator]
        sink.write(tail)


async def _pump_stdin(
    process: Process, proc: asyncssh.SSHClientProcess[bytes], cast: Cast | None
) -> None:
    """Client keystrokes or piped input to the target; size changes and signals too."""
    while True:
        try:
            data = await process.stdin.read(_CHUNK)
        except asyncssh.TerminalSizeChanged as change:
            proc.change_terminal_size(change.width, change.height)
            if cast is not None:
                cast.resize(time.time(), change.width, change.height)
            continue
        except asyncssh.SignalReceived as sig:
            proc.send_signal(sig.signal)
            continue
        except asyncssh.BreakReceived:
            continue
        if not data:
            proc.stdin.write_eof()
            return
        proc.stdin.write(data)
        await proc.stdin.drain()  # a target that does not read pauses the client's input


async def _shell(owner: GatewayConnection, process: Process) -> None:
    """An interactive shell: allowed or blocked per role, then observed and recorded
    (a live shell cannot be policed keystroke by keystroke; docs/ssh.md says so)."""
    services = owner.services
    principal = owner.current_principal()
    name = owner.connection_name
    verdict = owner.feature("shell")
    if not verdict.lets_through:
        owner.record_feature("<interactive shell>", verdict, "blocked")
        _fail(
            process,
            f"wardgate: interactive shells are not allowed for {principal.name!r} on "
            f"connection {name!r} ({verdict.reason}); run one command at a time instead: "
            f"ssh <gateway> -l {name} -- COMMAND",
            EXIT_BLOCKED,
        )
        return
    try:
        upstream = await owner.upstream()
    except TargetUnavailable as exc:
        _fail(
            process, f"wardgate: cannot reach connection {name!r}: {exc.reason}", EXIT_UNREACHABLE
        )
        return
    term = process.get_terminal_type()
    width, height, _, _ = process.get_terminal_size()
    started, t0 = time.time(), time.perf_counter()
    seq = owner.next_seq()
    cast = Cast(width, height, started, term or "")
    proc = await upstream.create_process(
        encoding=None, term_type=term, term_size=(width, height) if term else None
    )

    async def pump(source: asyncssh.SSHReader[bytes], sink: asyncssh.SSHWriter[bytes]) -> None:
        while data := await source.read(_CHUNK):
            cast.output(time.time(), data)
            sink.write(data)
            await sink.drain()

    stdin = asyncio.ensure_future(_pump_stdin(process, proc, cast))
    await asyncio.gather(pump(proc.stdout, process.stdout), pump(proc.stderr, process.stderr))
    completed = await proc.wait(check=False)
    stdin.cancel()
    status = completed.exit_status if completed.exit_status is not None else EXIT_UNREACHABLE
    services.recorder.submit(RecordingRecord(owner.session_id, seq, started, cast.text()))
    services.recorder.submit(
        action_record(
            owner.session_id,
            seq,
            Action(
                principal,
                name,
                "ssh",
                "ssh",
                "<interactive shell>",
                session_id=owner.session_id,
                client_addr=owner.client_addr,
            ),  # fmt: skip
            verdict,
            "ok",
            started=started,
            t0=t0,
            command=f"exit {status}",
        )
    )
    process.exit(status)


def _review_wait(owner: GatewayConnection, process: Process) -> float:
    """The connection's wait, or the client's ``WARDGATE_REVIEW_WAIT`` (``ssh -o
    SetEnv=WARDGATE_REVIEW_WAIT=0``), capped by the connection's ``max_wait``."""
    conn = owner.services.config.connections[owner.connection_name]
    asked = process.env.get("WARDGATE_REVIEW_WAIT")
    if asked is None:
        return conn.reviews.wait
    try:
        seconds = parse_duration(asked.decode() if isinstance(asked, bytes) else str(asked))
    except (ValueError, UnicodeDecodeError):
        return conn.reviews.wait
    return min(max(0.0, seconds), conn.reviews.max_wait)
