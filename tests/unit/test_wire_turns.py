"""A relaying side that read a large chunk lets the other connections of the process
have their turn before it reads again (wire._Side._take_turns): under uvloop, libuv
otherwise reads a busy socket up to 32 times in a row. Real sockets, uvloop's loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

from wardgate.postgres.wire import TURN_BYTES, UpstreamSide

uvloop = pytest.importorskip("uvloop")


class Chunks:
    """A relay that notes which connection delivered what, in order, and whether that
    connection was still reading at the first moment the loop could run anything else."""

    def __init__(self, order: list[tuple[str, int]], name: str) -> None:
        self.order, self.name = order, name
        self.side: UpstreamSide | None = None
        self.reading_next: list[tuple[int, bool]] = []

    def on_upstream_data(self, data: bytes) -> None:
        self.order.append((self.name, len(data)))
        side = self.side
        assert side is not None
        # Runs before the side's own resume (scheduled after this callback returns).
        asyncio.get_running_loop().call_soon(
            lambda: self.reading_next.append((len(data), side.transport.is_reading()))
        )

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


async def _side(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, relay: Chunks
) -> UpstreamSide:
    def made() -> UpstreamSide:
        side = UpstreamSide(1 << 20)
        side.relay = relay  # type: ignore[assignment]
        relay.side = side
        return side

    _, side = await loop.connect_accepted_socket(made, sock)
    return side


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(10_000):  # about 10 s
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("timed out")


def test_a_large_read_pauses_the_side_until_the_next_turn() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        order: list[tuple[str, int]] = []
        ours, theirs = socket.socketpair()
        relay = Chunks(order, "big")
        side = await _side(loop, ours, relay)
        theirs.setblocking(False)
        await loop.sock_sendall(theirs, b"x" * (4 * TURN_BYTES))
        await _until(lambda: sum(n for _, n in order) >= 4 * TURN_BYTES)
        await loop.sock_sendall(theirs, b"y")  # a small read does not pause
        await _until(lambda: sum(n for _, n in order) >= 4 * TURN_BYTES + 1)
        await asyncio.sleep(0)
        assert relay.reading_next, order
        assert all(reading == (size < TURN_BYTES) for size, reading in relay.reading_next), (
            relay.reading_next
        )
        assert any(size >= TURN_BYTES for size, _ in relay.reading_next)
        assert side.transport.is_reading()  # and it reads again on the next turn
        side.close()
        theirs.close()

    uvloop.run(main())


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        theirs = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
    return ours, theirs


def test_a_streaming_connection_does_not_starve_another() -> None:
    """While one socket has megabytes waiting, a byte on another connection is read
    after at most a few of its chunks, not after all of them."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        order: list[tuple[str, int]] = []
        big_ours, big_theirs = _tcp_pair()
        small_ours, small_theirs = _tcp_pair()
        big_ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        big_theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
        payload = b"x" * (8 << 20)
        big_theirs.setblocking(False)
        sent = 0
        for _ in range(200):  # fill the kernel's buffers before anything reads
            try:
                sent += big_theirs.send(payload[sent:])
            except BlockingIOError:
                await asyncio.sleep(0.001)
            if sent == len(payload):
                break
        small_theirs.sendall(b"!")
        await asyncio.sleep(0.01)
        big = await _side(loop, big_ours, Chunks(order, "big"))
        small = await _side(loop, small_ours, Chunks(order, "small"))
        await _until(lambda: ("small", 1) in order)
        before = order.index(("small", 1))
        big_bytes = sum(n for name, n in order[:before] if name == "big")
        assert sent >= 2 << 20, f"only {sent} bytes were queued; the test needs more"
        assert big_bytes <= 4 * 256 * 1024, (big_bytes, sent)
        for side in (big, small):
            side.close()
        big_theirs.close()
        small_theirs.close()

    uvloop.run(main())
