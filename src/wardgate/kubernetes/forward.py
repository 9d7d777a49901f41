"""``kubectl port-forward`` through the gateway. kubectl (1.31 and later) tunnels the
port-forward SPDY session inside a WebSocket (``SPDY/3.1+portforward.k8s.io``); the
gateway judges the handshake (class ``forwarding``: the role's ``forwarding: allow``),
opens its own WebSocket to the API server with the cluster credential, and relays the
tunnel's bytes both ways, as the SSH gateway relays a forwarded port.

The pod port each forwarded connection reaches is named in its SPDY streams' headers
(kubernetes/spdy.py), not in the request (kubectl sends no ``ports=``; the kubelet
ignores it for SPDY): the relay reads every stream the client opens, and a port not
judged yet (the handshake judged its ``ports=``, if any) is judged then, as the same
request with ``ports=<port>``: the role's ``forwarding_ports``, guardrails on
``ports``. Anything but allow, or a stream the gateway cannot read, ends the tunnel
before that stream reaches the API server. Recorded with the ports and the bytes
relayed each way; a refused port is recorded as its own blocked action.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import Receive, Send
from wsproto.utilities import RemoteProtocolError

from wardgate.actions import Decision
from wardgate.kubernetes.channels import ChannelError
from wardgate.kubernetes.exec import (
    Unopened,
    UpstreamSocket,
    deny,
    open_upstream,
    upstream_messages,
)
from wardgate.kubernetes.spdy import SpdyReader, TunnelError
from wardgate.kubernetes.status import status_body
from wardgate.policy.kubernetes import RequestInfoError, resolve
from wardgate.policy.kubernetes.sessions import parse_port, stream_request

if TYPE_CHECKING:
    from wardgate.kubernetes.proxy import Judged, KubernetesGateway

TUNNEL_PROTOCOLS = ("SPDY/3.1+portforward.k8s.io",)


async def forward_tunnel(
    gateway: KubernetesGateway,
    judged: Judged,
    protocols: list[str],
    path: str,
    query: str,
    send: Send,
    receive: Receive,
) -> None:
    services = gateway.services
    if services.recorder.unavailable:
        services.recorder.refused()
        await _deny(send, 503, "wardgate cannot record this action: the audit store is unavailable")
        return
    upstream = await open_upstream(gateway, judged, path, query, protocols)
    if isinstance(upstream, Unopened):
        code = upstream.status if upstream.status and 400 <= upstream.status < 600 else 502
        await _deny(send, 503 if upstream.status is None else code, upstream.message)
        return
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
    sent = [0, 0]  # client to cluster, cluster to client
    allowed = set(_query_ports(path, query))  # judged with the handshake
    reader = SpdyReader()
    refused: list[str] = []

    async def client_to_upstream() -> None:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            data = message.get("bytes")
            if not data:
                continue
            try:
                ports = [_port_of(headers) for _, headers in reader.feed(data)]
            except (TunnelError, RequestInfoError) as exc:
                refused.append(f"wardgate: the tunnel ended: {exc}")
                return
            for port in ports:
                if port not in allowed:
                    why = judge_port(gateway, judged, path, port)
                    if why is not None:
                        refused.append(why)
                        return  # the stream never reaches the API server
                    allowed.add(port)
            sent[0] += len(data)
            await upstream.send(data)

    error: str | None = None
    name = f"kube-forward-in-{judged.action.session_id}"
    pump = asyncio.create_task(client_to_upstream(), name=name)
    try:
        async for data in upstream_messages(upstream, pump):
            sent[1] += len(data)
            await send({"type": "websocket.send", "bytes": data})
    except (OSError, ChannelError, RemoteProtocolError) as exc:
        error = f"the tunnel ended: {type(exc).__name__}"
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump
        await _close(upstream)
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": 1000})
        error = error or (refused[0] if refused else None)
        ports = ",".join(map(str, sorted(allowed))) or "none"
        gateway.record(
            judged,
            "error" if error else "ok",
            command=f"forwarded ports {ports}: {sent[0]} bytes in, {sent[1]} bytes out",
            error=error,
        )


def _query_ports(path: str, query: str) -> tuple[int, ...]:
    try:
        stream = stream_request(resolve("GET", path, query), query)
    except RequestInfoError:
        return ()
    return stream.ports if stream is not None else ()


def _port_of(headers: dict[str, list[str]]) -> int:
    """The pod port a stream opens: its one ``port`` header, as the kubelet reads it."""
    values = headers.get("port", [])
    if len(values) != 1:
        raise TunnelError(f"a stream with {len(values)} port headers (one expected)")
    return parse_port(values[0])


def judge_port(gateway: KubernetesGateway, judged: Judged, path: str, port: int) -> str | None:
    """Judge a port a tunnel opens as the port-forward request with ``ports=<port>``;
    None when allowed, else why not (recorded as a blocked action). Only allow lets
    it through: a stream cannot wait for a review."""
    action = replace(judged.action, text=f"POST {path}?ports={port}")
    services = gateway.services
    granted = (
        services.reviews.granted(action.principal.name, action.connection)
        if services.reviews
        else frozenset()
    )
    started, t0 = time.time(), time.perf_counter()
    verdict = services.gate.check(action, granted)
    if verdict.decision is Decision.ALLOW or not verdict.enforced:
        return None
    message = (
        f"wardgate: port-forward to port {port} refused ({verdict.rule}: {verdict.reason}); "
        "the tunnel was closed before that connection reached the pod. A port a tunnel "
        "opens must be allowed outright (the role's forwarding_ports, guardrails on ports)"
    )
    gateway.record_action(action, verdict, started, t0, "blocked", error=message)
    return message


async def _close(upstream: UpstreamSocket) -> None:
    with contextlib.suppress(Exception):
        await upstream.close()


async def _deny(send: Send, code: int, message: str) -> None:
    await deny(send, Response(status_body(code, message), code))
