"""An in-process double of a Kubernetes API server, for the gateway's tests.

No registry reachable here ships a kube-apiserver binary (docs/kubernetes.md says what
was looked for), so this double stands in for one. What it serves is shaped after the
official documents of kubernetes/kubernetes: the discovery documents are trimmed from
api/discovery/api__v1.json, apis__apps__v1.json and apis__rbac.authorization.k8s.io__v1.json
(resource names, kinds, verbs, short names as published there); objects, lists,
``Status`` errors, ``Table`` (meta.k8s.io/v1, as kubectl asks for with ``as=Table``) and
watch events (one JSON object per line) follow the shapes the API server documents.
It is a double: no admission, no defaulting, no strategic merge (patches merge as JSON
merge patch), no real server-side apply field management. It serves HTTPS with its own
CA and answers only the one bearer token it was given, so a test proves the gateway
pinned the CA and sent the cluster credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import fcntl
import ipaddress
import json
import os
import pty
import re
import struct
import termios
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

ALL = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _res(
    name: str, kind: str, namespaced: bool, verbs: list[str], short: list[str] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "kind": kind, "namespaced": namespaced, "verbs": verbs}
    out["singularName"] = "" if "/" in name else kind.lower()
    if short:
        out["shortNames"] = short
    return out


# Trimmed from api/discovery/*.json of kubernetes/kubernetes (see the module docstring).
CORE_V1 = [
    _res("configmaps", "ConfigMap", True, ALL, ["cm"]),
    _res("namespaces", "Namespace", False, [v for v in ALL if v != "deletecollection"], ["ns"]),
    _res("pods", "Pod", True, ALL, ["po"]),
    _res("pods/exec", "PodExecOptions", True, ["create", "get"]),
    _res("pods/ephemeralcontainers", "Pod", True, ["get", "patch", "update"]),
    _res("pods/log", "Pod", True, ["get"]),
    _res("secrets", "Secret", True, ALL),
    _res("services", "Service", True, ALL, ["svc"]),
]
GROUPS = {
    "apps": {"v1": [_res("deployments", "Deployment", True, ALL, ["deploy"])]},
    "networking.k8s.io": {"v1": [_res("ingresses", "Ingress", True, ALL, ["ing"])]},
    "rbac.authorization.k8s.io": {
        "v1": [_res("clusterrolebindings", "ClusterRoleBinding", False, ALL)]
    },
}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Cluster:
    """The double's state: objects by (group, resource, namespace, name)."""

    token: str
    objects: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    version: int = 1
    watchers: list[tuple[tuple[str, str, str], asyncio.Queue[dict[str, Any]]]] = field(
        default_factory=list
    )
    # method, path?query, Authorization, Accept of every request received
    requests: list[tuple[str, str, str, str]] = field(default_factory=list)
    # exec: every pod's "container" is this folder, where the command runs as a real
    # local process; every argv run there, with its tty flag
    exec_dir: Path | None = None
    execs: list[tuple[tuple[str, ...], bool]] = field(default_factory=list)
    # port-forward: every pod's ports are these loopback ports; each port reached
    forwards: list[int] = field(default_factory=list)

    def put(
        self, group: str, resource: str, obj: dict[str, Any], event: str = "ADDED"
    ) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        key = (group, resource, meta.get("namespace", ""), meta["name"])
        self.objects[key] = obj
        self._notify(group, resource, meta.get("namespace", ""), event, obj)
        return obj

    def _notify(self, group: str, resource: str, ns: str, event: str, obj: dict[str, Any]) -> None:
        for (g, r, n), queue in self.watchers:
            if (g, r) == (group, resource) and n in ("", ns):
                queue.put_nowait({"type": event, "object": copy.deepcopy(obj)})


def _kind(group: str, resource: str) -> tuple[str, str, bool] | None:
    table = CORE_V1 if not group else GROUPS.get(group, {}).get("v1", [])
    for r in table:
        if r["name"] == resource:
            api_version = f"{group}/v1" if group else "v1"
            return r["kind"], api_version, r["namespaced"]
    return None


def _status(code: int, reason: str, message: str) -> JSONResponse:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip
    return JSONResponse(body, code)


def _table(items: list[dict[str, Any]], include: str) -> dict[str, Any]:
    rows = []
    for obj in items:
        meta = obj["metadata"]
        if include == "Object":
            row_obj = obj
        else:
            row_obj = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
            }
        rows.append({"cells": [meta["name"], meta.get("creationTimestamp")], "object": row_obj})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": "1"},
        "columnDefinitions": [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "description": "Name",
                "priority": 0,
            },
            {
                "name": "Created At",
                "type": "date",
                "format": "",
                "description": "Created",
                "priority": 0,
            },
        ],
        "rows": rows,
    }


def _merge(base: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(base.get(k), v)
    return out


class _GoYamlLoader(yaml.SafeLoader):
    """YAML as sigs.k8s.io/yaml (goyaml.v2) reads a request body: YAML 1.1 booleans,
    ``y``/``Y``/``n``/``N`` among them (PyYAML reads those as strings)."""

    bool_values = {**yaml.SafeLoader.bool_values, "y": True, "n": False}


_GoYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN")
)


def _decode(body: bytes, content_type: str) -> Any:
    """A request body as the API server decodes it: JSON, or YAML when the content type
    says so (kubectl sends JSON even as apply-patch+yaml)."""
    try:
        return json.loads(body)
    except ValueError:
        if "yaml" not in content_type:
            raise
    return yaml.load(body, Loader=_GoYamlLoader)  # noqa: S506 (a safe loader)


def make_app(cluster: Cluster) -> Starlette:
    async def handle(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        target = request.url.path + ("?" + request.url.query if request.url.query else "")
        cluster.requests.append((request.method, target, auth, request.headers.get("accept", "")))
        if auth != f"Bearer {cluster.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        path = request.url.path
        if path == "/version":
            return JSONResponse(
                {
                    "major": "1",
                    "minor": "32",
                    "gitVersion": "v1.32.0-wardgate-double",
                    "platform": "linux/amd64",
                }
            )
        if path == "/api":
            return JSONResponse(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}
                    ],
                }
            )
        if path == "/apis":
            groups = [
                {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}}
                for g in GROUPS
            ]  # fmt: skip
            return JSONResponse({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if path == "/api/v1":
            return JSONResponse(
                {"kind": "APIResourceList", "groupVersion": "v1", "resources": CORE_V1}
            )
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) == 3 and parts[1] in GROUPS and parts[2] == "v1":
            return JSONResponse(
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": f"{parts[1]}/v1",
                    "resources": GROUPS[parts[1]]["v1"],
                }
            )
        if parts[0] == "api" and len(parts) >= 3:
            group, rest = "", parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, rest = parts[1], parts[3:]
        else:
            return _status(404, "NotFound", "the server could not find the requested resource")
        ns = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        resource, name = rest[0], rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        known = _kind(group, resource)
        if known is None or sub not in ("", "log", "ephemeralcontainers"):
            return _status(404, "NotFound", "the server could not find the requested resource")
        kind, api_version, _ = known
        q = request.query_params
        dry = q.get("dryRun") == "All"
        key = (group, resource, ns, name)
        accept = request.headers.get("accept", "")
        body = await request.body()
        if request.method == "GET" and sub == "log":
            if key not in cluster.objects:
                return _status(404, "NotFound", f'pods "{name}" not found')
            return Response(b"started\nlogin by jane.doe@example.com ok\n", media_type="text/plain")
        if request.method == "GET" and name:  # pods/ephemeralcontainers: the Pod
            obj = cluster.objects.get(key)
            if obj is None:
                return _status(404, "NotFound", f'{resource} "{name}" not found')
            if "as=Table" in accept:
                return JSONResponse(_table([obj], q.get("includeObject", "Metadata")))
            return JSONResponse(obj)
        if request.method == "GET":
            items = [
                o
                for (g, r, n, _), o in sorted(cluster.objects.items())
                if (g, r) == (group, resource) and (not ns or n == ns)
            ]
            if q.get("watch") not in (None, "0", "false"):
                return _watch(cluster, group, resource, ns, items, q, accept)
            if "as=Table" in accept:
                return JSONResponse(_table(items, q.get("includeObject", "Metadata")))
            return JSONResponse(
                {
                    "kind": f"{kind}List",
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(cluster.version)},
                    "items": items,
                }
            )
        if request.method == "POST":
            obj = _decode(body, request.headers.get("content-type", ""))
            obj.setdefault("metadata", {})
            if ns:
                obj["metadata"]["namespace"] = ns
            okey = (group, resource, ns, obj["metadata"].get("name", ""))
            if okey in cluster.objects:
                return _status(409, "AlreadyExists", f'{resource} "{okey[3]}" already exists')
            obj.setdefault("kind", kind)
            obj.setdefault("apiVersion", api_version)
            if dry:
                return JSONResponse(obj, 201)
            return JSONResponse(cluster.put(group, resource, obj), 201)
        if request.method in ("PUT", "PATCH"):
            old = cluster.objects.get(key)
            ctype = request.headers.get("content-type", "")
            patch = _decode(body, ctype)
            if old is None and "apply-patch" not in ctype:
                return _status(404, "NotFound", f'{resource} "{name}" not found')
            new = (
                patch
                if request.method == "PUT"
                else _merge(old or {"metadata": {"name": name, "namespace": ns}}, patch)
            )
            new.setdefault("metadata", {})["name"] = name
            if ns:
                new["metadata"]["namespace"] = ns
            if dry:
                return JSONResponse(new)
            return JSONResponse(
                cluster.put(group, resource, new, "MODIFIED" if old else "ADDED"),
                200 if old else 201,
            )
        if request.method == "DELETE" and name:
            old = cluster.objects.get(key)
            if old is None:
                return _status(404, "NotFound", f'{resource} "{name}" not found')
            if not dry:
                del cluster.objects[key]
                cluster._notify(group, resource, ns, "DELETED", old)
            return JSONResponse(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": name, "kind": resource},
                }
            )
        return _status(405, "MethodNotAllowed", "not supported by the double")

    async def exec_socket(ws: WebSocket) -> None:
        await _exec(cluster, ws)

    async def attach_socket(ws: WebSocket) -> None:
        await _exec(cluster, ws, attach=("/bin/sh",))

    async def forward_socket(ws: WebSocket) -> None:
        await _portforward(cluster, ws)

    return Starlette(
        routes=[
            WebSocketRoute("/api/v1/namespaces/{ns}/pods/{name}/exec", exec_socket),
            WebSocketRoute("/api/v1/namespaces/{ns}/pods/{name}/portforward", forward_socket),
            WebSocketRoute("/api/v1/namespaces/{ns}/pods/{name}/attach", attach_socket),
            Route(
                "/{path:path}", handle, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
            ),
        ]
    )


async def _portforward(cluster: Cluster, ws: WebSocket) -> None:
    """port-forward as kubectl 1.31+ speaks it: SPDY tunnelled in a WebSocket
    (tests/integration/k8s_spdy.py); each data stream is a TCP connection to
    127.0.0.1:<its port header>."""
    from tests.integration.k8s_spdy import SpdyServer, spdy_dictionary

    target = ws.url.path + ("?" + ws.url.query if ws.url.query else "")
    cluster.requests.append(("WEBSOCKET", target, ws.headers.get("authorization", ""), ""))
    if ws.headers.get("authorization", "") != f"Bearer {cluster.token}":
        await ws.send_denial_response(_status(401, "Unauthorized", "Unauthorized"))
        return
    protocol = "SPDY/3.1+portforward.k8s.io"
    if protocol not in ws.scope.get("subprotocols", []):
        await ws.send_denial_response(_status(400, "BadRequest", f"{protocol} only"))
        return
    await ws.accept(subprotocol=protocol)
    spdy = SpdyServer(spdy_dictionary())
    lock = asyncio.Lock()
    error_streams: dict[str, int] = {}
    writers: dict[int, asyncio.StreamWriter] = {}
    tasks: list[asyncio.Task[None]] = []

    async def out(data: bytes) -> None:
        async with lock:
            await ws.send_bytes(data)

    async def pump(stream: int, request: str, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(65536):
            await out(spdy.data(stream, chunk))
        await out(spdy.data(stream, b"", fin=True))
        if request in error_streams:
            await out(spdy.data(error_streams[request], b"", fin=True))

    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            for event in spdy.feed(message.get("bytes") or b""):
                if event.kind == "ping":
                    await out(spdy.ping(event.data))
                elif event.kind == "syn" and event.headers is not None:
                    await out(spdy.syn_reply(event.stream))
                    request = event.headers.get("requestid", "")
                    if event.headers.get("streamtype") == "error":
                        error_streams[request] = event.stream
                        continue
                    port = int(event.headers["port"])
                    cluster.forwards.append(port)
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writers[event.stream] = writer
                    tasks.append(asyncio.ensure_future(pump(event.stream, request, reader)))
                elif event.kind == "data" and event.stream in writers:
                    writers[event.stream].write(event.data)
                    if event.fin:
                        writers[event.stream].write_eof()
                elif event.kind == "rst" and event.stream in writers:
                    writers.pop(event.stream).close()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for writer in writers.values():
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _exec(cluster: Cluster, ws: WebSocket, attach: tuple[str, ...] = ()) -> None:
    """exec over WebSocket (v5.channel.k8s.io, as the kubelet streams it through the API
    server): channel byte first; 0 stdin, 1 stdout, 2 stderr, 3 the ending Status, 4
    resize, 255 close. The command runs as a real process in ``cluster.exec_dir``, on
    a pseudo-terminal when ``tty`` is asked. ``attach``: the container's main process
    (the double starts it at attach time: it has no long-running containers)."""
    target = ws.url.path + ("?" + ws.url.query if ws.url.query else "")
    cluster.requests.append(("WEBSOCKET", target, ws.headers.get("authorization", ""), ""))
    if ws.headers.get("authorization", "") != f"Bearer {cluster.token}":
        await ws.send_denial_response(_status(401, "Unauthorized", "Unauthorized"))
        return
    name, ns = ws.path_params["name"], ws.path_params["ns"]
    if ("", "pods", ns, name) not in cluster.objects:
        await ws.send_denial_response(_status(404, "NotFound", f'pods "{name}" not found'))
        return
    if "v5.channel.k8s.io" not in ws.scope.get("subprotocols", []):
        await ws.send_denial_response(_status(400, "BadRequest", "v5.channel.k8s.io only"))
        return
    q = ws.query_params
    argv = attach or tuple(q.getlist("command"))
    tty = q.get("tty") in ("true", "1")
    use_stdin = q.get("stdin") in ("true", "1")
    await ws.accept(subprotocol="v5.channel.k8s.io")
    cluster.execs.append((argv, tty))
    assert cluster.exec_dir is not None
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cluster.exec_dir), "TERM": "xterm"}
    master = stdin_write = -1
    try:
        if tty:
            master, slave = pty.openpty()
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=slave, stdout=slave, stderr=slave, cwd=cluster.exec_dir, env=env,
                start_new_session=True,
            )  # fmt: skip
            os.close(slave)
        else:
            # stdin is a pipe, as a container runtime gives it (asyncio's PIPE is a
            # socket, which /proc/self/fd/0 cannot open)
            if use_stdin:
                stdin_read, stdin_write = os.pipe()
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cluster.exec_dir, env=env,
                stdin=stdin_read if use_stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            if use_stdin:
                os.close(stdin_read)
    except OSError as exc:
        await ws.send_bytes(
            b"\x03" + json.dumps({"status": "Failure", "message": str(exc)}).encode()
        )
        await ws.close()
        return

    async def from_client() -> None:
        nonlocal stdin_write
        while True:
            message = await ws.receive()
            data = message.get("bytes")
            if message["type"] == "websocket.disconnect":
                return
            if not data:
                continue
            if data[0] == 0:
                if tty:
                    os.write(master, data[1:])
                elif stdin_write >= 0:
                    with contextlib.suppress(OSError):  # the process may be gone
                        await asyncio.to_thread(os.write, stdin_write, data[1:])
            elif data[0] == 255 and data[1:] == b"\x00" and stdin_write >= 0:
                os.close(stdin_write)
                stdin_write = -1
            elif data[0] == 4 and tty:
                size = json.loads(data[1:])
                fcntl.ioctl(
                    master, termios.TIOCSWINSZ,
                    struct.pack("HHHH", size["Height"], size["Width"], 0, 0),
                )  # fmt: skip

    async def pipe_out(reader: asyncio.StreamReader | None, channel: bytes) -> None:
        while reader is not None and (chunk := await reader.read(65536)):
            await ws.send_bytes(channel + chunk)

    async def pty_out() -> None:
        while True:
            try:
                chunk = await asyncio.to_thread(os.read, master, 65536)
            except OSError:  # EIO: the terminal's last process is gone
                return
            if not chunk:
                return
            await ws.send_bytes(b"\x01" + chunk)

    reader = asyncio.ensure_future(from_client())
    if tty:
        await pty_out()
    else:
        await asyncio.gather(pipe_out(proc.stdout, b"\x01"), pipe_out(proc.stderr, b"\x02"))
    code = await proc.wait()
    reader.cancel()
    with contextlib.suppress(BaseException):
        await reader
    if stdin_write >= 0:
        os.close(stdin_write)
    if master >= 0:
        os.close(master)
    if code == 0:
        status: dict[str, Any] = {"metadata": {}, "status": "Success"}
    else:
        status = {
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }  # fmt: skip
    await ws.send_bytes(b"\x03" + json.dumps(status).encode())
    await ws.close()


def _watch(
    cluster: Cluster,
    group: str,
    resource: str,
    ns: str,
    items: list[dict[str, Any]],
    q: Any,
    accept: str,
) -> StreamingResponse:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    entry = ((group, resource, ns), queue)
    cluster.watchers.append(entry)
    timeout = float(q.get("timeoutSeconds") or 30)
    initial = [] if q.get("resourceVersion") not in (None, "", "0") else items
    as_table = "as=Table" in accept

    def shape(event: dict[str, Any]) -> dict[str, Any]:
        if as_table:
            return {
                "type": event["type"],
                "object": _table([event["object"]], q.get("includeObject", "Metadata")),
            }
        return event

    async def stream() -> AsyncIterator[bytes]:
        try:
            for obj in initial:
                yield json.dumps(shape({"type": "ADDED", "object": obj})).encode() + b"\n"
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                try:
                    event = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
                yield json.dumps(shape(event)).encode() + b"\n"
        finally:
            cluster.watchers.remove(entry)

    return StreamingResponse(stream(), media_type="application/json")


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver-double")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "apiserver.crt", folder / "apiserver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class RunningDouble:
    url: str
    ca: Path
    cluster: Cluster
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_double(folder: Path, port: int, token: str) -> RunningDouble:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(folder)
    cluster = Cluster(token)
    config = uvicorn.Config(
        make_app(cluster), host="127.0.0.1", port=port, log_level="warning",
        ssl_certfile=str(cert), ssl_keyfile=str(key), lifespan="off",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="k8s-double", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the API server double did not start"
    return RunningDouble(f"https://127.0.0.1:{port}", cert, cluster, server, thread)
