"""``kubectl exec`` and ``kubectl attach`` through the gateway, over WebSocket
(``v5.channel.k8s.io``, or v4): the handshake is judged like any request (the command
by the shell engine, policy/kubernetes/sessions.py), then the gateway opens its own
WebSocket to the API server with the cluster credential and relays channel messages.

A refused session is still accepted, so kubectl does not fall back to SPDY (which the
gateway does not relay) and shows why: the message on stderr (stdout for a terminal)
and exit status 126 (blocked) or 77 (approval pending), as the SSH gateway answers.
Port-forward and anything else asking for a WebSocket are refused at the handshake;
kubectl then tries SPDY and gets the same judgement as a Status.

stdout and stderr of a command (no terminal) of a masked principal go through the
masking engine line by line, as SSH command output does; a terminal session (``-t``,
attach) is relayed as is and recorded as asciicast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
)
from wsproto.events import Message as WSMessage
from wsproto.events import Request as WSRequest
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from wardgate.audit.asciicast import Cast
from wardgate.audit.records import AUDIT_UNAVAILABLE
from wardgate.kubernetes.channels import (
    CHANNEL_PROTOCOLS,
    ERROR,
    EXIT_BLOCKED,
    EXIT_PENDING,
    EXIT_UNREACHABLE,
    RESIZE,
    STDERR,
    STDOUT,
    ChannelError,
    exit_frame,
    exit_status,
    failure_frame,
    frame,
    parse_frame,
    resize_of,
)
from wardgate.kubernetes.status import status_body
from wardgate.masking.stream import LineMasker
from wardgate.policy.kubernetes import RequestInfoError, resolve
from wardgate.policy.kubernetes.sessions import StreamRequest, stream_request

if TYPE_CHECKING:
    from wardgate.kubernetes.proxy import Judged, KubernetesGateway

log = logging.getLogger("wardgate.kubernetes")

CHUNK = 64 * 1024
MAX_MESSAGE = 4 * 1024 * 1024  # one channel message from the API server
MAX_REJECTION = 64 * 1024  # the body of a refused upstream handshake, read for its Status


class UpstreamRejected(Exception):
    """The API server answered the WebSocket handshake with an HTTP status."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


class UpstreamSocket:
    """The gateway's WebSocket to the API server: wsproto (sans-IO) over a TLS stream
    whose CA is the connection's pinned one."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: WSConnection,
        subprotocol: str,
    ) -> None:
        self._reader, self._writer, self._conn = reader, writer, conn
        self.subprotocol = subprotocol
        self._messages: deque[bytes] = deque()
        self._partial = b""
        self._closed = False

    @classmethod
    async def open(
        cls,
        base_url: str,
        context: Any,
        auth: str,
        target: str,
        protocols: list[str],
        dial_timeout: float,
    ) -> UpstreamSocket:
        url = urlsplit(base_url)
        host = url.hostname or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if context is not None else None
            ),
            dial_timeout,
        )
        conn = WSConnection(ConnectionType.CLIENT)
        headers = [(b"authorization", auth.encode())] if auth else []
        writer.write(
            conn.send(
                WSRequest(
                    host=url.netloc,
                    target=url.path.rstrip("/") + target,
                    subprotocols=protocols,
                    extra_headers=headers,
                )
            )
        )
        status, body = 0, b""
        try:
            while True:
                data = await asyncio.wait_for(reader.read(CHUNK), dial_timeout)
                if not data:
                    raise ConnectionError("the API server closed the connection in the handshake")
                conn.receive_data(data)
                for event in conn.events():
                    if isinstance(event, AcceptConnection):
                        return cls(reader, writer, conn, event.subprotocol or protocols[0])
                    if isinstance(event, RejectConnection):
                        status = event.status_code
                        if not event.has_body:
                            raise UpstreamRejected(status, b"")
                    elif isinstance(event, RejectData):
                        body = (body + event.data)[:MAX_REJECTION]
                        if event.body_finished:
                            raise UpstreamRejected(status, body)
        except BaseException:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)
            raise

    async def recv(self) -> bytes | None:
        """The next binary message, or None once the API server closed."""
        # Frames may already wait in the codec (they came with the handshake's answer).
        self._take_events()
        while not self._messages and not self._closed:
            data = await self._reader.read(CHUNK)
            if not data:
                self._closed = True
                break
            self._conn.receive_data(data)
            self._take_events()
        return self._messages.popleft() if self._messages else None

    def _take_events(self) -> None:
        for event in self._conn.events():
            if isinstance(event, BytesMessage):
                self._partial += event.data
                if len(self._partial) > MAX_MESSAGE:
                    raise ChannelError("a channel message larger than the gateway accepts")
                if event.message_finished:
                    self._messages.append(self._partial)
                    self._partial = b""
            elif isinstance(event, Ping):
                self._writer.write(self._conn.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self._conn.state is ConnectionState.REMOTE_CLOSING:
                    self._writer.write(self._conn.send(event.response()))
                self._closed = True

    async def send(self, data: bytes) -> None:
        if self._conn.state is not ConnectionState.OPEN:
            return
        self._writer.write(self._conn.send(WSMessage(data=data)))
        await self._writer.drain()  # an API server that does not read pauses the client

    async def close(self) -> None:
        with contextlib.suppress(LocalProtocolError, OSError):
            if self._conn.state is ConnectionState.OPEN:
                self._writer.write(self._conn.send(CloseConnection(code=1000)))
                await asyncio.wait_for(self._writer.drain(), 5)
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._writer.wait_closed(), 5)


async def deny(send: Send, response: Response) -> None:
    """Refuse the handshake with an HTTP answer (a Status): kubectl then tries SPDY."""
    await send(
        {
            "type": "websocket.http.response.start",
            "status": response.status_code,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": bytes(response.body)})


async def _end(send: Send, message: str, code: int, tty: bool) -> None:
    """Accepted, then ended at once: ``message`` where the user sees it, exit ``code``."""
    text = message.rstrip("\n") + "\n"
    if tty:
        text = text.replace("\n", "\r\n")
    data = text.encode()
    await send({"type": "websocket.send", "bytes": frame(STDOUT if tty else STDERR, data)})
    await send({"type": "websocket.send", "bytes": exit_frame(code, message)})
    await send({"type": "websocket.close", "code": 1000})


def _stream_of(path: str, query: str) -> StreamRequest | None:
    try:
        return stream_request(resolve("GET", path, query), query)
    except RequestInfoError:
        return None


def _target(scope: Scope) -> tuple[str, str]:
    from wardgate.kubernetes.proxy import PREFIX

    raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    rest = raw[raw.find(PREFIX) + len(PREFIX) :] if PREFIX in raw else ""
    _, _, tail = rest.partition("/")
    return "/" + tail, scope.get("query_string", b"").decode("latin-1")


async def websocket_session(
    gateway: KubernetesGateway, scope: Scope, receive: Receive, send: Send
) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    offered = scope.get("subprotocols") or []
    protocols = [p for p in offered if p in CHANNEL_PROTOCOLS]

    async def no_body() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    path, query = _target(scope)
    stream = _stream_of(path, query)
    tty = stream is not None and stream.tty
    judged = await gateway.judge(Request({**scope, "type": "http", "method": "GET"}, no_body))
    from wardgate.kubernetes.forward import TUNNEL_PROTOCOLS, forward_tunnel
    from wardgate.kubernetes.proxy import Refusal

    if stream is not None and stream.kind == "portforward":
        tunnels = [p for p in offered if p in TUNNEL_PROTOCOLS]
        if isinstance(judged, Response):
            await deny(send, judged)  # kubectl tries SPDY next: the same refusal
        elif not tunnels:
            message = "wardgate: port-forward is relayed as SPDY/3.1+portforward.k8s.io only"
            gateway.record(judged, "not_executed", error=message)
            await deny(send, Response(status_body(501, message), 501))
        else:
            await forward_tunnel(gateway, judged, tunnels, path, query, send, receive)
        return
    if isinstance(judged, Response):
        if isinstance(judged, Refusal) and protocols and stream is not None:
            await send({"type": "websocket.accept", "subprotocol": protocols[0]})
            await _end(send, judged.message, EXIT_PENDING if judged.pending else EXIT_BLOCKED, tty)
        else:
            await deny(send, judged)
        return
    if stream is None or not protocols:
        message = (
            "wardgate: this stream is not offered through the gateway over WebSocket: exec "
            "and attach are (v5.channel.k8s.io). Nothing was run"
        )
        gateway.record(judged, "not_executed", error=message)
        await deny(send, Response(status_body(501, message), 501))
        return
    await _relay(gateway, judged, stream, protocols, path, query, send, receive)


async def _relay(
    gateway: KubernetesGateway,
    judged: Judged,
    stream: StreamRequest,
    protocols: list[str],
    path: str,
    query: str,
    send: Send,
    receive: Receive,
) -> None:
    services = gateway.services
    tty = stream.tty
    if services.recorder.unavailable:
        services.recorder.refused()  # nothing runs that cannot be recorded
        await send({"type": "websocket.accept", "subprotocol": protocols[0]})
        await _end(send, AUDIT_UNAVAILABLE, EXIT_BLOCKED, tty)
        return
    connection = judged.action.connection
    upstream = await open_upstream(gateway, judged, path, query, protocols)
    if isinstance(upstream, Unopened):
        await send({"type": "websocket.accept", "subprotocol": protocols[0]})
        if upstream.status is None:
            await _end(send, upstream.message, EXIT_UNREACHABLE, tty)
            return
        await send({"type": "websocket.send", "bytes": failure_frame(upstream.message)})
        await send({"type": "websocket.close", "code": 1000})
        return
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
    interactive = tty or stream.kind == "attach"
    cast = Cast(80, 24, judged.started) if interactive else None
    masking = services.masking.for_session(judged.action.principal, connection)
    maskers = (
        {STDOUT: LineMasker(masking.mask_text), STDERR: LineMasker(masking.mask_text)}
        if masking is not None and not tty
        else {}
    )

    async def client_to_upstream() -> None:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return  # websocket.disconnect
            data = message.get("bytes")
            if not data:
                continue  # the channel protocols are binary; text is not relayed
            try:
                got = parse_frame(data)
            except ChannelError:
                continue
            if got.channel == RESIZE and cast is not None and (size := resize_of(got.data)):
                cast.resize(time.time(), *size)
            if got.channel in (STDOUT, STDERR, ERROR):
                continue  # the client's to read, never to write
            await upstream.send(data)

    code: int | None = None
    error: str | None = None
    pump = asyncio.create_task(
        client_to_upstream(), name=f"kube-exec-in-{judged.action.session_id}"
    )
    try:
        async for data in upstream_messages(upstream, pump):
            try:
                got = parse_frame(data)
            except ChannelError:
                continue  # nothing unknown reaches the client
            out = data
            if got.channel in (STDOUT, STDERR):
                payload = got.data
                if got.channel in maskers:
                    payload = maskers[got.channel].feed(payload)
                if cast is not None:
                    cast.output(time.time(), payload)
                if not payload:
                    continue
                out = frame(got.channel, payload)
            elif got.channel == ERROR:
                for channel, masker in maskers.items():  # the last partial lines first
                    if tail := masker.flush():
                        await send({"type": "websocket.send", "bytes": frame(channel, tail)})
                code = exit_status(got.data)
            await send({"type": "websocket.send", "bytes": out})
    except (OSError, ChannelError, RemoteProtocolError) as exc:
        error = f"the stream ended: {type(exc).__name__}"
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump
        await upstream.close()
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": 1000})
        status = "error" if error or code != 0 else "ok"
        gateway.record(
            judged,
            status,
            command=f"exit {code}" if code is not None else "ended",
            error=error,
            recording=cast.text() if cast is not None else None,
        )


async def upstream_messages(
    upstream: UpstreamSocket, client_pump: asyncio.Task[None]
) -> AsyncIterator[bytes]:
    """The API server's messages until it closes, or the client has gone (its pump
    ended): then the session upstream ends too, as the API server would end it."""
    while not client_pump.done():
        recv = asyncio.ensure_future(upstream.recv())
        done, _ = await asyncio.wait({recv, client_pump}, return_when=asyncio.FIRST_COMPLETED)
        if recv not in done:
            recv.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await recv
            return
        data = recv.result()
        if data is None:
            return
        yield data


@dataclass(frozen=True, slots=True)
class Unopened:
    """Why the WebSocket to the API server was not opened (recorded already): its HTTP
    answer, or ``status`` None when it could not be reached."""

    status: int | None
    message: str


async def open_upstream(
    gateway: KubernetesGateway, judged: Judged, path: str, query: str, protocols: list[str]
) -> UpstreamSocket | Unopened:
    try:
        return await dial_upstream(gateway, judged, path, query, protocols)
    except UpstreamRejected as exc:
        message = rejection(exc)
        gateway.record(judged, "error", command=f"HTTP {exc.status}", error=message)
        return Unopened(exc.status, message)
    except (OSError, TimeoutError, RemoteProtocolError, LocalProtocolError) as exc:
        log.info("kubernetes %s: stream upstream: %s", judged.action.connection, exc)
        message = "wardgate: the cluster's API server could not be reached; nothing was run"
        gateway.record(judged, "error", error=message)
        return Unopened(None, message)


async def dial_upstream(
    gateway: KubernetesGateway, judged: Judged, path: str, query: str, protocols: list[str]
) -> UpstreamSocket:
    """The gateway's WebSocket to the API server for a judged request."""
    assert gateway.state.upstreams is not None
    config = gateway.services.config
    url, context, auth = gateway.state.upstreams.stream_target(config, judged.action.connection)
    return await UpstreamSocket.open(
        url,
        context,
        auth,
        path + (f"?{query}" if query else ""),
        protocols,
        config.limits.connect_timeout,
    )


def rejection(exc: UpstreamRejected) -> str:
    import json

    try:
        message = json.loads(exc.body).get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return f"the API server refused the session (HTTP {exc.status}): {message}"[:2000]
