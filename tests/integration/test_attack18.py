"""Issue 18 attacked as a hostile agent: the real kubectl through a real wardgate to the
API server double (tests/integration/k8s_double.py), whose exec runs the argv as a real
local process in a temporary folder standing for the container, and whose port-forward
connects each SPDY data stream to the loopback port its ``port`` header names.
Every finding is proved by the double's state: the files its "container" holds, the
argvs it ran, the ports it reached."""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.integration.conftest import require_tool
from tests.integration.test_kubernetes import (
    KubeGateway,
    PodPort,
    _exec_socket,
    double_with_container,
    forward_line,
    start_kube_gateway,
)

SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.service-account-token-of-the-pod"  # what exec must not leak
DB_PASSWORD = "db-password-from-a-mounted-secret"


def _config(url: str, ca: Path, forward: int) -> str:
    return f"""
groups: {{agents: {{}}, engineers: {{}}, admins: {{}}}}
principals:
  agent: {{kind: agent, groups: [agents], sponsor: dev}}
  dev: {{kind: user, groups: [engineers]}}
  root: {{kind: user, groups: [admins]}}
connections:
  cluster:
    type: kubernetes
    upstream: {{url: "{url}", ca: "{ca}", token: env:IT_KUBE_TOKEN}}
    roles: {{agents: k8s-agent, engineers: k8s-sre, admins: k8s-admin}}
    reviews: {{wait: 0s, max_wait: 30s}}
roles:
  k8s-agent: {{read: allow, write: review, admin: block}}
  k8s-sre: {{read: allow, write: allow, admin: review, forwarding: allow, forwarding_ports: [{forward}]}}
  k8s-admin: {{read: allow, write: allow, admin: allow, shell: allow, forwarding: allow}}
reviews: {{approvers: [admins]}}
"""


@pytest.fixture(scope="module")
def ports() -> Iterator[tuple[PodPort, PodPort]]:
    """Two pod ports: the first in the engineer role's forwarding_ports, the other not."""
    pair = (PodPort(), PodPort())
    yield pair
    for port in pair:
        port.close()


@pytest.fixture(scope="module")
def kgw(
    tmp_path_factory: pytest.TempPathFactory, ports: tuple[PodPort, PodPort]
) -> Iterator[KubeGateway]:
    kubectl = require_tool("kubectl")
    tmp = tmp_path_factory.mktemp("attack18")
    double = double_with_container(tmp)
    cluster = double.cluster
    assert cluster.exec_dir is not None
    (cluster.exec_dir / "motd").write_text("hello\n")
    # The container's working directory is / in many images: this relative path is
    # then the pod's service-account token.
    token = cluster.exec_dir / "var/run/secrets/kubernetes.io/serviceaccount/token"
    token.parent.mkdir(parents=True)
    token.write_text(SA_TOKEN)
    mounted = cluster.exec_dir / "etc/app/creds/password"  # where the pod mounts a Secret
    mounted.parent.mkdir(parents=True)
    mounted.write_text(DB_PASSWORD)
    cluster.put("", "pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default"},
        "spec": {
            "volumes": [{"name": "creds", "secret": {"secretName": "db"}}],
            "containers": [
                {"name": "c", "image": "nginx",
                 "volumeMounts": [{"name": "creds", "mountPath": "/etc/app/creds"}]},
                {"name": "sidecar", "image": "x"},
            ],
        },
        "status": {"phase": "Running"},
    })  # fmt: skip
    gw, port = start_kube_gateway(tmp / "gw", double, _config(double.url, double.ca, ports[0].port))
    kgw = KubeGateway(gw, double, kubectl, port)
    try:
        yield kgw
    finally:
        kgw.gw.stop()
        double.stop()


def _ran(kgw: KubeGateway, *argv: str) -> bool:
    return any(got == argv for got, _ in kgw.double.cluster.execs)


def _exec(
    kgw: KubeGateway, principal: str, argv: tuple[str, ...], query: str = "", stdin: bytes = b""
) -> tuple[int | None, bytes]:
    """An exec over WebSocket as kubectl opens it, without kubectl's seconds of start-up
    (the real kubectl is used once per finding): its exit status and stdout+stderr."""
    from wardgate.kubernetes.channels import CLOSE, ERROR, STDIN, exit_status, frame, parse_frame

    words = "&".join("command=" + quote(a, safe="") for a in argv)
    target = f"/pods/web-1/exec?{words}&stdout=true&stderr=true{query}"

    async def session() -> tuple[int | None, bytes]:
        sock = await _exec_socket(kgw, kgw.gw.token(principal), target)
        if stdin:
            await sock.send(frame(STDIN, stdin))
            await sock.send(frame(CLOSE, bytes([STDIN])))
        out, code = b"", None
        while (message := await sock.recv()) is not None:
            got = parse_frame(message)
            if got.channel == ERROR:
                code = exit_status(got.data)
            else:
                out += got.data
        await sock.close()
        return code, out

    return asyncio.run(session())


def test_a_read_only_exec_cannot_read_the_service_account_token(kgw: KubeGateway) -> None:
    """``cat`` is a read, but of the pod's credential: class admin (kind secret_read),
    which the agent's role blocks, through any spelling and any container (-c)."""
    assert _exec(kgw, "agent", ("cat", "motd")) == (0, b"hello\n")
    path = "var/run/secrets/kubernetes.io/serviceaccount/token"
    got = kgw.kubectl("agent", "exec", "web-1", "-c", "sidecar", "--", "cat", path)
    assert got.returncode == 126 and "admin" in got.stderr, (got.returncode, got.stderr)
    assert SA_TOKEN not in got.stdout + got.stderr and not _ran(kgw, "cat", path)
    # root may: the file is there, and the double runs the command in that folder
    assert _exec(kgw, "root", ("cat", path)) == (0, SA_TOKEN.encode())
    for argv in (
        ("od", "-c", "/run/secrets/kubernetes.io/serviceaccount/token"),
        ("sh", "-c", "cd var/run/secrets/*/serviceaccount && base64 token"),
        ("env",),
        ("cat", "/proc/1/environ"),
    ):
        code, out = _exec(kgw, "agent", argv, "&container=sidecar")
        assert code == 126 and b"admin" in out, (argv, code, out)
        assert not _ran(kgw, *argv), argv
    # a Secret the pod mounts under an unremarkable name: the gateway reads the pod spec
    assert _exec(kgw, "root", ("cat", "etc/app/creds/password")) == (0, DB_PASSWORD.encode())
    code, out = _exec(kgw, "agent", ("cat", "etc/app/creds/password"))
    assert code == 126 and DB_PASSWORD.encode() not in out, out
    assert _exec(kgw, "agent", ("cat", "motd")) == (0, b"hello\n")  # still a read
    # the engineer's role holds it for a review (admin: review), nothing runs meanwhile
    code, out = _exec(kgw, "dev", ("cat", "/proc/1/environ"))
    assert code == 77 and b"approval pending" in out, out


def test_a_script_read_from_stdin_by_another_name_needs_shell(kgw: KubeGateway) -> None:
    """``sh /proc/self/fd/0`` (or ``python3 /dev/stdin``) with ``-i`` runs what the
    client pipes in, commands no one judges: a shell, not a write of a script file."""
    container = kgw.double.cluster.exec_dir
    assert container is not None
    got = kgw.kubectl(
        "dev", "exec", "-i", "web-1", "--", "sh", "/proc/self/fd/0", stdin="touch by-fd0\n"
    )
    assert got.returncode == 126 and "shell" in got.stderr, got.stderr
    for argv in (("sh", "//dev//stdin"), ("python3", "/dev/stdin")):
        code, out = _exec(kgw, "dev", argv, "&stdin=true", b"touch by-fd0\n")
        assert code == 126 and b"shell" in out, (argv, code, out)
        assert not _ran(kgw, *argv)
    assert not (container / "by-fd0").exists() and not _ran(kgw, "sh", "/proc/self/fd/0")
    # what it would do: a shell: allow role runs it, the commands piped in included
    code, out = _exec(kgw, "root", ("sh", "/proc/self/fd/0"), "&stdin=true", b"touch by-root\n")
    assert code == 0, out
    assert (container / "by-root").exists()


def test_port_forward_reaches_only_the_ports_a_role_allows(
    kgw: KubeGateway, ports: tuple[PodPort, PodPort]
) -> None:
    """The port is named in the tunnel's SPDY stream headers (kubectl sends no ports=):
    the gateway reads them and judges each port against forwarding_ports."""
    allowed, other = ports
    assert forward_line(kgw, "dev", allowed.port, b"fine\n") == b"FINE\n"
    assert allowed.received == [b"fine\n"]
    assert forward_line(kgw, "dev", other.port, b"sneaky\n") == b""
    assert other.received == [] and other.port not in kgw.double.cluster.forwards
    deadline = time.monotonic() + 10  # recorded by the recorder process, soon
    while not (
        rows := kgw.store_rows(
            "select payload from audit_events where type = 'action' and payload like ?",
            f"%ports={other.port}%",
        )
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    refused = json.loads(rows[0][0])
    assert refused["status"] == "blocked" and "forwarding_ports" in refused["error"], refused


def _syn_stream(deflate: Any, stream: int, headers: dict[str, str]) -> bytes:
    block = struct.pack(">I", len(headers)) + b"".join(
        struct.pack(">I", len(k)) + k.encode() + struct.pack(">I", len(v)) + v.encode()
        for k, v in headers.items()
    )
    compressed = deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    payload = struct.pack(">II", stream, 0) + b"\0\0" + compressed
    return struct.pack(">HHB", 0x8003, 1, 0) + len(payload).to_bytes(3, "big") + payload


def test_a_tunnel_cannot_open_another_port_than_its_request_named(
    kgw: KubeGateway, ports: tuple[PodPort, PodPort]
) -> None:
    """The handshake says ports=<allowed>, the SPDY stream inside asks for another
    port: the gateway judges that one too and closes the tunnel before it reaches the
    API server."""
    from wardgate.kubernetes.exec import UpstreamSocket
    from wardgate.kubernetes.spdy import DICTIONARY

    allowed, other = ports
    before = list(kgw.double.cluster.forwards)

    async def tunnel() -> list[bytes]:
        sock = await UpstreamSocket.open(
            f"https://127.0.0.1:{kgw.port}/k8s/cluster",
            ssl.create_default_context(cafile=str(kgw.gateway_ca)),
            f"Bearer {kgw.gw.token('dev')}",
            f"/api/v1/namespaces/default/pods/web-1/portforward?ports={allowed.port}",
            ["SPDY/3.1+portforward.k8s.io"],
            10,
        )
        deflate = zlib.compressobj(zdict=DICTIONARY)
        headers = {"streamtype": "data", "port": str(other.port), "requestid": "0"}
        await sock.send(_syn_stream(deflate, 1, {**headers, "streamtype": "error"}))
        await sock.send(_syn_stream(deflate, 3, headers))
        got = []
        while (message := await sock.recv()) is not None:
            got.append(message)
        await sock.close()
        return got

    asyncio.run(tunnel())  # ends: the gateway closed it
    assert kgw.double.cluster.forwards == before and other.received == []
