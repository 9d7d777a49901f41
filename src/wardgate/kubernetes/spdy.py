"""What a port-forward tunnel asks for, read from the client's side of it: kubectl
(1.31 and later) tunnels a SPDY/3 session inside the WebSocket
(``SPDY/3.1+portforward.k8s.io``) and opens, per forwarded connection, an ``error``
and a ``data`` stream whose SYN_STREAM headers name the pod's ``port``; the kubelet
connects the data stream to that port, whatever the request's ``ports=`` said. The
gateway reads each SYN_STREAM the client sends (inflating its header block with
SPDY/3's zlib dictionary; the bytes it relays are not changed) so that a stream to a
port no one judged never reaches the API server.

Fails closed: what it cannot read is a TunnelError and ends the tunnel: a frame of
another SPDY version, a header block that does not inflate or parse, a HEADERS frame
(it could add headers to an open stream), a control frame larger than MAX_CONTROL.

Frames (SPDY/3): a control frame is ``1 | version(15) | type(16) | flags(8) |
length(24) | payload``; a data frame ``0 | stream id(31) | flags(8) | length(24) |
data``. Pure: bytes in, values out.
"""

from __future__ import annotations

import struct
import zlib

SYN_STREAM, HEADERS = 1, 8
MAX_CONTROL = 64 * 1024
MAX_HEADERS = 64 * 1024  # one inflated header block
# SPDY/3's header compression dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1); zlib
# checks it by its Adler-32 (tests/unit/test_kube_spdy.py compares it with kubectl's).
DICTIONARY = (
    b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put"
    b"\x00\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eacc"
    b"ept-charset\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00"
    b"\x00\x0daccept-ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthori"
    b"zation\x00\x00\x00\x0dcache-control\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent"
    b"-base\x00\x00\x00\x10content-encoding\x00\x00\x00\x10content-language\x00\x00\x00"
    b"\x0econtent-length\x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00"
    b"\x00\x00\x0dcontent-range\x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00"
    b"\x00\x04etag\x00\x00\x00\x06expect\x00\x00\x00\x07expires\x00\x00\x00\x04from\x00"
    b"\x00\x00\x04host\x00\x00\x00\x08if-match\x00\x00\x00\x11if-modified-since\x00\x00"
    b"\x00\x0dif-none-match\x00\x00\x00\x08if-range\x00\x00\x00\x13if-unmodified-since\x00"
    b"\x00\x00\x0dlast-modified\x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00"
    b"\x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorizat"
    b"ion\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after\x00\x00"
    b"\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\x00\x00\x00\x11transfer-enco"
    b"ding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\x00\x00\x00\x04vary\x00\x00"
    b"\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\x00\x00\x00\x06me"
    b"thod\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00\x07v"
    b"ersion\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00\x00"
    b"\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin1001012012022052063003"
    b"02303304305306307402405406407408409410411412413414415416417502504505203 Non-Authorit"
    b"ative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized4"
    b"03 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Una"
    b"vailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu"
    b", Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,"
    b"application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,s"
    b"dchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


class TunnelError(ValueError):
    """Something in the tunnel the gateway cannot read: the tunnel ends."""


class SpdyReader:
    """The client's half of a SPDY/3 session, fed as it comes: the headers of every
    stream it opens."""

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._buffer = b""
        self._skip = 0  # bytes of a data frame still to pass

    def feed(self, data: bytes) -> list[tuple[int, dict[str, list[str]]]]:
        """(stream id, headers) of each SYN_STREAM completed by ``data``; a header's
        values are every value given under its name (any case), NUL-separated ones
        split, in order."""
        opened: list[tuple[int, dict[str, list[str]]]] = []
        while data:
            if self._skip:
                taken = min(self._skip, len(data))
                self._skip -= taken
                data = data[taken:]
                continue
            self._buffer += data
            data = b""
            while len(self._buffer) >= 8:
                (first,) = struct.unpack(">I", self._buffer[:4])
                length = int.from_bytes(self._buffer[5:8], "big")
                if not first & 0x80000000:  # a data frame: its payload passes unread
                    rest = self._buffer[8:]
                    self._buffer = b""
                    self._skip = length
                    data = rest
                    break
                if (first >> 16) & 0x7FFF != 3:
                    raise TunnelError(f"a SPDY frame of version {(first >> 16) & 0x7FFF}")
                if length > MAX_CONTROL:
                    raise TunnelError("a SPDY control frame larger than the gateway reads")
                if len(self._buffer) < 8 + length:
                    break
                kind = first & 0xFFFF
                payload, self._buffer = self._buffer[8 : 8 + length], self._buffer[8 + length :]
                if kind == HEADERS:
                    raise TunnelError("a SPDY HEADERS frame (headers added to an open stream)")
                if kind == SYN_STREAM:
                    if len(payload) < 10:
                        raise TunnelError("a SPDY SYN_STREAM too short")
                    stream = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
                    opened.append((stream, self._headers(payload[10:])))
        return opened

    def _headers(self, block: bytes) -> dict[str, list[str]]:
        try:
            raw = self._inflate.decompress(block, MAX_HEADERS)
            if self._inflate.unconsumed_tail:
                raise TunnelError("a SPDY header block larger than the gateway reads")
            (count,) = struct.unpack(">I", raw[:4])
            at, out = 4, dict[str, list[str]]()
            for _ in range(count):
                name, at = _string(raw, at)
                value, at = _string(raw, at)
                out.setdefault(name.lower(), []).extend(value.split("\0"))
        except (zlib.error, struct.error, UnicodeDecodeError, IndexError) as exc:
            raise TunnelError(f"a SPDY header block that cannot be read: {exc}") from None
        if at != len(raw):
            raise TunnelError("a SPDY header block with bytes after its headers")
        return out


def _string(raw: bytes, at: int) -> tuple[str, int]:
    (n,) = struct.unpack(">I", raw[at : at + 4])
    if at + 4 + n > len(raw):
        raise IndexError("a header runs past its block")
    return raw[at + 4 : at + 4 + n].decode(), at + 4 + n
