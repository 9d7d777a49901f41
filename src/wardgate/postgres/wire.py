"""asyncio transports for the two sides of a PostgreSQL session.

During startup a coroutine reads whole messages (`read`); once the session
relays, bytes go straight to the relay's callbacks with no coroutine per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol as TypingProtocol

from wardgate.postgres.codec import build
from wardgate.postgres.codec.backend import BackendMessage, BackendScanner
from wardgate.postgres.codec.frontend import FrontendDecoder
from wardgate.postgres.codec.messages import FrontendMessage


class ConnectionClosed(Exception):
    """The peer went away while we were waiting for it."""


class Relay(TypingProtocol):
    def on_client_data(self, data: bytes) -> None: ...
    def on_upstream_data(self, data: bytes) -> None: ...
    def on_client_closed(self) -> None: ...
    def on_upstream_closed(self) -> None: ...
    def client_write_paused(self, paused: bool) -> None: ...
    def upstream_write_paused(self, paused: bool) -> None: ...
    @property
    def idle(self) -> bool: ...


# A read at least this large probably left more in the socket: the side then stops
# reading until the event loop's next turn (`_take_turns`).
TURN_BYTES = 64 * 1024


class _Side(asyncio.Protocol):
    transport: asyncio.Transport

    def __init__(self) -> None:
        self.relay: Relay | None = None
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused_by: set[str] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def eof_received(self) -> bool | None:
        self.closed = True
        self._wake()
        return False

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        if self.closed:
            raise ConnectionClosed
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def pause_reading(self, reason: str) -> None:
        if not self._paused_by and not self.closed:
            self.transport.pause_reading()
        self._paused_by.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self._paused_by:
            self._paused_by.discard(reason)
            if not self._paused_by and not self.closed:
                self.transport.resume_reading()

    def _take_turns(self, size: int) -> None:
        """After relaying a large read: let every other connection of this process have
        its turn before this side reads again. libuv (uvloop) reads a socket up to 32
        times in one go while each read fills its 256 KB buffer, so a fast server's
        result could be relayed whole (8 MB) before a CancelRequest that arrived
        meanwhile was even read, or a client's batch before the server's error reached
        that client (issue 20: psycopg's test_copy_out_error_with_copy_not_finished,
        asyncpg's test_executemany_server_failure_during_writes)."""
        if size >= TURN_BYTES and not self.closed and "turn" not in self._paused_by:
            self.pause_reading("turn")
            asyncio.get_running_loop().call_soon(self.resume_reading, "turn")

    def write(self, data: bytes) -> None:
        # is_closing(): a transport can be closed without connection_lost reaching us
        # (a failed start_tls closes the raw one), and uvloop raises on writing to it.
        if not self.closed and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


# How long a client that is being refused may keep sending before its socket closes.
_LINGER = 2.0


class ClientSide(_Side):
    """The PostgreSQL client's connection to the gateway."""

    def __init__(
        self,
        on_connect: Callable[[ClientSide], None],
        max_message_bytes: int,
        startup_buffer_bytes: int = 0,
    ) -> None:
        super().__init__()
        self.decoder = FrontendDecoder(max_message_bytes)
        self._on_connect = on_connect
        self._discarding = False
        # Before the session exists nothing reads the client promptly (token checks and
        # the upstream dial take time), so what it sends is capped: past the cap reading
        # stops at once and `on_overflow` ends the startup. 0: no cap.
        self.startup_buffer_bytes = startup_buffer_bytes
        self.overflowed = False
        self.on_overflow: Callable[[], object] | None = None

    def end_with(self, data: bytes) -> None:
        """Send a last message (a FATAL error), then close without losing it.

        Closing a socket that still holds unread client bytes makes the kernel send a
        reset, and the client may then never read the error. So: half-close, read and
        drop whatever the client still sends, and close once it hangs up or after a
        short linger.
        """
        self.write(data)
        transport = self.transport
        if self.closed or transport.is_closing() or not transport.can_write_eof():
            self.close()  # TLS cannot half-close; its close_notify carries the data
            return
        transport.write_eof()
        self._discarding = True
        self._paused_by.clear()
        transport.resume_reading()
        asyncio.get_running_loop().call_later(_LINGER, transport.close)

    def close(self) -> None:
        if not self._discarding:  # a refused client is closed by end_with's timer
            super().close()

    def write(self, data: bytes) -> None:
        if not self._discarding:  # after end_with's last message nothing more is sent
            super().write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self.relay is not None:
            self.relay.on_client_data(data)
            self._take_turns(len(data))
            return
        self.decoder.feed(data)
        cap = self.startup_buffer_bytes
        if cap and not self.overflowed and self.decoder.buffered > cap:
            self.overflowed = True
            self.pause_reading("startup-cap")
            if self.on_overflow is not None:
                self.on_overflow()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.relay is not None:
            self.relay.on_client_closed()

    def pause_writing(self) -> None:
        if self.relay is not None:
            self.relay.client_write_paused(True)

    def resume_writing(self) -> None:
        if self.relay is not None:
            self.relay.client_write_paused(False)

    async def read(self) -> FrontendMessage:
        """The next whole client message (startup phase only). Raises ProtocolError, ConnectionClosed."""
        while True:
            item = self.decoder.next_message()
            if item is not None:
                return item[0]
            await self._wait()


class UpstreamSide(_Side):
    """The gateway's connection to the real PostgreSQL server."""

    def __init__(self, max_message_bytes: int) -> None:
        super().__init__()
        # During startup every message matters, so nothing is streamed as bulk.
        self.scanner = BackendScanner(max_message_bytes, bulk=frozenset())
        self._pending: list[BackendMessage] = []
        self._raw = bytearray()  # bytes before the scanner is used (the SSLRequest answer)
        self.raw_mode = False
        self.on_lost: Callable[[], None] | None = None  # once the connection is closed

    def data_received(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.on_upstream_data(data)
            self._take_turns(len(data))
            return
        if self.raw_mode:
            self._raw += data
        else:
            for item in self.scanner.feed(data):
                assert isinstance(item, BackendMessage)
                self._pending.append(item)
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.on_lost is not None:
            self.on_lost()
            self.on_lost = None
        if self.relay is not None:
            self.relay.on_upstream_closed()

    def pause_writing(self) -> None:
        if self.relay is not None:
            self.relay.upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.relay is not None:
            self.relay.upstream_write_paused(False)

    async def read(self) -> BackendMessage:
        while not self._pending:
            await self._wait()
        return self._pending.pop(0)

    async def read_raw_byte(self) -> int:
        self.raw_mode = True
        try:
            while not self._raw:
                await self._wait()
            if len(self._raw) > 1:
                # Bytes after the one-byte SSL answer, before the handshake: someone
                # is injecting plaintext into what should be a TLS stream.
                raise ConnectionClosed("unexpected data after the SSL answer")
            return self._raw.pop(0)
        finally:
            self.raw_mode = False

    async def terminate_when_done(self) -> None:
        """Send Terminate and close once the server has closed the connection: it reads
        the Terminate only after what it was sent before has run, and closing the socket
        first would not stop that. What it sends meanwhile is discarded; a relay's side
        leaves relay mode. Closed however the wait ends (a caller's timeout too)."""
        try:
            self.write(build.terminate())
            await self._until_closed()
        finally:
            if not self.closed:
                # Cut short (a shutdown): the server may still run what it was sent, so
                # its ledger entry stays, for the other workers or the next start to
                # end it (backends.py).
                self.on_lost = None
            self.close()

    async def _until_closed(self) -> None:
        self.relay = None
        self.raw_mode = True  # bytes, not messages: nothing is parsed
        for reason in list(self._paused_by):
            self.resume_reading(reason)  # a server blocked writing never reads the Terminate
        while not self.closed:
            self._raw.clear()
            try:
                await self._wait()
            except ConnectionClosed:
                return

    def start_relay(self, relay: Relay) -> list[BackendMessage]:
        """Switch to relay mode; returns messages already read but not consumed."""
        self.relay = relay
        leftover, self._pending = self._pending, []
        return leftover
