"""The gateway's reading of a port-forward tunnel's SPDY/3 streams (kubernetes/spdy.py):
the headers of every stream the client opens, whatever the message boundaries, and
nothing it cannot read let through."""

from __future__ import annotations

import shutil
import struct
import zlib

import pytest

from wardgate.kubernetes.spdy import DICTIONARY, SpdyReader, TunnelError


def _block(deflate: zlib._Compress, headers: list[tuple[str, str]]) -> bytes:
    raw = struct.pack(">I", len(headers)) + b"".join(
        struct.pack(">I", len(k)) + k.encode() + struct.pack(">I", len(v)) + v.encode()
        for k, v in headers
    )
    return deflate.compress(raw) + deflate.flush(zlib.Z_SYNC_FLUSH)


def _control(kind: int, payload: bytes, version: int = 3) -> bytes:
    return (
        struct.pack(">HHB", 0x8000 | version, kind, 0) + len(payload).to_bytes(3, "big") + payload
    )


def _syn(deflate: zlib._Compress, stream: int, headers: list[tuple[str, str]]) -> bytes:
    return _control(1, struct.pack(">II", stream, 0) + b"\0\0" + _block(deflate, headers))


def _data(stream: int, data: bytes) -> bytes:
    return struct.pack(">IB", stream, 0) + len(data).to_bytes(3, "big") + data


def test_the_dictionary_is_kubectls() -> None:
    from tests.integration.k8s_spdy import spdy_dictionary

    if shutil.which("kubectl") is None:
        pytest.skip("no kubectl here")
    assert spdy_dictionary() == DICTIONARY


def test_streams_are_read_whatever_the_message_boundaries() -> None:
    deflate = zlib.compressobj(zdict=DICTIONARY)
    # a data frame whose payload looks like a SYN_STREAM: passed unread
    fake = _syn(zlib.compressobj(zdict=DICTIONARY), 9, [("port", "22")])
    wire = (
        _syn(deflate, 1, [("streamtype", "error"), ("port", "8080"), ("requestid", "0")])
        + _control(6, b"\0\0\0\1")  # PING
        + _data(1, fake)
        + _syn(deflate, 3, [("Port", "80\x0090"), ("port", "81")])
    )
    for size in (1, 7, len(wire)):
        reader = SpdyReader()
        got = []
        for at in range(0, len(wire), size):
            got.extend(reader.feed(wire[at : at + size]))
        assert got == [
            (1, {"streamtype": ["error"], "port": ["8080"], "requestid": ["0"]}),
            (3, {"port": ["80", "90", "81"]}),
        ]


@pytest.mark.parametrize(
    "frame",
    [
        _control(8, struct.pack(">I", 1) + b"x"),  # HEADERS: headers added to a stream
        _control(1, b"\0" * 12, version=2),
        _control(1, struct.pack(">II", 1, 0) + b"\0\0" + b"not zlib"),
        _control(1, b"\0\0\0\1"),  # too short
        struct.pack(">HHB", 0x8003, 1, 0) + (1 << 20).to_bytes(3, "big"),  # too large
    ],
)
def test_what_cannot_be_read_ends_the_tunnel(frame: bytes) -> None:
    with pytest.raises(TunnelError):
        SpdyReader().feed(frame)


@pytest.mark.parametrize(
    "headers",
    [{}, {"port": ["80", "90"]}, {"port": ["0"]}, {"port": ["65536"]}, {"port": ["+80"]},
     {"port": ["８０"]}],
)  # fmt: skip
def test_a_stream_opens_exactly_one_port_the_kubelet_would_read(
    headers: dict[str, list[str]],
) -> None:
    from wardgate.kubernetes.forward import _port_of
    from wardgate.policy.kubernetes import RequestInfoError

    with pytest.raises((TunnelError, RequestInfoError)):
        _port_of(headers)
    assert _port_of({"port": ["08080"]}) == 8080  # strconv.ParseUint reads it so
