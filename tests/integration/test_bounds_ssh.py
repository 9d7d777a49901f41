"""Memory stays bounded on the SSH listener: a client piping a gigabyte into a command
that does not read its input, a command writing a gigabyte to a client that does not
read, and junk before authentication. The side that pushes is paused (SSH's channel
window stops moving) or refused, and the gateway's resident memory stays within a fixed
margin."""

from __future__ import annotations

import asyncio
import select
import socket

from tests.integration.test_bounds import PUSH_LIMIT, RSS_MARGIN, _rss
from tests.integration.test_ssh import SshGateway, sgw, ssh_target

__all__ = ["sgw", "ssh_target"]  # module fixtures, used by name

CHUNK = 1024 * 1024


def _grew(sgw: SshGateway, before: int) -> int:
    assert sgw.gw.proc is not None
    return _rss(sgw.gw.proc.pid) - before


def _rss_now(sgw: SshGateway) -> int:
    assert sgw.gw.proc is not None
    return _rss(sgw.gw.proc.pid)


def test_stdin_to_a_command_that_does_not_read_is_paused(sgw: SshGateway) -> None:
    async def push() -> tuple[int, int, bool]:
        async with sgw.connect("dev", "web1") as conn:
            proc = await conn.create_process(
                "sleep 20", encoding=None, stderr=asyncio.subprocess.DEVNULL
            )
            before = _rss_now(sgw)
            junk = b"\x00" * CHUNK
            pushed, paused = 0, False
            while pushed < PUSH_LIMIT:
                proc.stdin.write(junk)
                try:
                    await asyncio.wait_for(proc.stdin.drain(), 3.0)
                except TimeoutError:
                    paused = True  # the window stopped moving: paused, not buffered
                    break
                pushed += CHUNK
            grew = _grew(sgw, before)
            proc.close()
            return pushed, grew, paused

    pushed, grew, paused = asyncio.run(push())
    print(f"bounds: pushed {pushed >> 20} MB, the gateway grew by {grew >> 20} MB")
    assert paused, f"the gateway took {pushed >> 20} MB the command never read, unpaused"
    assert grew < RSS_MARGIN, f"grew by {grew >> 20} MB after {pushed >> 20} MB"
    assert "Traceback" not in sgw.gw.log
    _control_command_works(sgw)


def test_output_to_a_client_that_does_not_read_is_paused(sgw: SshGateway) -> None:
    async def stall() -> int:
        async with sgw.connect("dev", "web1") as conn:
            proc = await conn.create_process(f"head -c {PUSH_LIMIT} /dev/zero", encoding=None)
            before = _rss_now(sgw)
            await asyncio.sleep(6.0)  # the client reads nothing meanwhile
            grew = _grew(sgw, before)
            proc.close()
            return grew

    grew = asyncio.run(stall())
    print(f"bounds: the gateway grew by {grew >> 20} MB in 6 s")
    assert grew < RSS_MARGIN, f"grew by {grew >> 20} MB while the client read nothing"
    assert "Traceback" not in sgw.gw.log
    _control_command_works(sgw)


def _push_raw(port: int, first: bytes) -> tuple[int, bytes]:
    """Send `first`, then junk, until the gateway closes or stops reading."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    pushed = 0
    received = bytearray()
    junk = b"\xff" * CHUNK
    with sock:
        try:
            sock.sendall(first)
            while pushed < PUSH_LIMIT:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                pushed += sock.send(junk)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass
    return pushed, bytes(received)


def test_junk_before_authentication_is_refused(sgw: SshGateway) -> None:
    before = _rss_now(sgw)
    for first in (b"", b"SSH-2.0-junk\r\n", b"SSH-2.0-junk\r\n\x7f\xff\xff\xff"):
        pushed, _ = _push_raw(sgw.port, first)
        print(f"bounds: after {first!r} pushed {pushed >> 10} KB before the gateway closed")
        assert pushed < PUSH_LIMIT, f"after {first!r} the gateway took a gigabyte"
    grew = _grew(sgw, before)
    print(f"bounds: the gateway grew by {grew >> 20} MB after three junk pushes")
    assert grew < RSS_MARGIN, f"grew by {grew >> 20} MB"
    assert "Traceback" not in sgw.gw.log
    _control_command_works(sgw)


def _control_command_works(sgw: SshGateway) -> None:
    result = sgw.ssh("dev", "web1", "echo still-here")
    assert result.returncode == 0 and result.stdout == "still-here\n", result
