"""``kubectl port-forward`` through the gateway. kubectl (1.31 and later) tunnels the
port-forward SPDY session inside a WebSocket (``SPDY/3.1+portforward.k8s.io``); the
gateway judges the handshake (class ``forwarding``: the role's ``forwarding: allow``),
opens its own WebSocket to the API server with the cluster credential, and relays the
tunnel's bytes both ways unread, as the SSH gateway relays a forwarded port: which
ports of the pod are reached is inside the SPDY streams, and is not judged. Recorded
with the bytes relayed each way.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import Receive, Send
from wsproto.utilities import RemoteProtocolError

from wardgate.kubernetes.channels import ChannelError
from wardgate.kubernetes.exec import (
    Unopened,
    UpstreamSocket,
    deny,
    open_upstream,
    upstream_messages,
)
from wardgate.kubernetes.status import status_body

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

    async def client_to_upstream() -> None:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            data = message.get("bytes")
            if data:
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
        gateway.record(
            judged,
            "error" if error else "ok",
            command=f"forwarded {sent[0]} bytes in, {sent[1]} bytes out",
            error=error,
        )


async def _close(upstream: UpstreamSocket) -> None:
    with contextlib.suppress(Exception):
        await upstream.close()


async def _deny(send: Send, code: int, message: str) -> None:
    await deny(send, Response(status_body(code, message), code))
