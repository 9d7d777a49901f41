"""Hypothesis fuzzing: garbage in, only the codec's own error type out."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wardgate.identity.scram import (
    ScramAuthError,
    ScramClient,
    ScramServer,
    ScramVerifierSet,
    derive_keys,
)
from wardgate.postgres.codec import build, decode
from wardgate.postgres.codec.errors import ProtocolError
from wardgate.postgres.codec.frontend import MAX_STARTUP_PACKET_BYTES, FrontendDecoder

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_MESSAGE = 4096

FRONTEND_TYPES = b"QPBDECSHXdcfFp"


@st.composite
def framed_garbage(draw: st.DrawFn) -> bytes:
    """Plausible framing (known type, sane length) around random bodies, so the
    body parsers are reached instead of the header checks rejecting everything."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(FRONTEND_TYPES))
        body = draw(st.binary(max_size=64))
        out += bytes([kind]) + struct.pack("!i", len(body) + 4) + body
    return out


@st.composite
def startup_garbage(draw: st.DrawFn) -> bytes:
    code = draw(st.sampled_from([196608, 196610, 80877102, 80877103, 80877104, 1234]))
    body = draw(st.binary(max_size=64))
    return struct.pack("!ii", len(body) + 8, code) + body + draw(framed_garbage())


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos = [], 0
    for size in sizes:
        chunks.append(data[pos : pos + size])
        pos += size
    chunks.append(data[pos:])
    return chunks


def run(data: bytes, chunks: list[bytes], startup: bool) -> list[bytes]:
    """Feed chunks; return the raw messages decoded before any ProtocolError."""
    dec = FrontendDecoder(max_message_bytes=MAX_MESSAGE)
    if not startup:
        dec.end_startup()
    raws: list[bytes] = []
    try:
        for chunk in chunks:
            dec.feed(chunk)
            # The caller drains after each feed, so only one partial message
            # plus the latest chunk can ever be held.
            while (item := dec.next_message()) is not None:
                raws.append(item[1])
            limit = MAX_STARTUP_PACKET_BYTES if dec.in_startup else MAX_MESSAGE + 1
            assert dec.buffered <= max(limit, 5) + len(chunk)
    except ProtocolError:
        return raws
    # Nothing is lost or invented: decoded messages plus the rest are the input.
    assert b"".join(raws) == data[: len(data) - dec.buffered]
    return raws


garbage = st.one_of(st.binary(max_size=300), framed_garbage(), startup_garbage())


@FUZZ
@given(data=garbage, startup=st.booleans(), sizes=st.lists(st.integers(0, 40), max_size=20))
def test_decoder_only_raises_protocol_error(data: bytes, startup: bool, sizes: list[int]) -> None:
    whole = run(data, [data], startup)
    by_byte = run(data, [data[i : i + 1] for i in range(len(data))], startup)
    random_chunks = run(data, chunked(data, sizes), startup)
    # Framing does not depend on how the bytes were split.
    assert whole == by_byte == random_chunks


@FUZZ
@given(
    sql=st.text(max_size=50).filter(lambda s: "\0" not in s),
    name=st.text(max_size=10).filter(lambda s: "\0" not in s),
    types=st.lists(st.integers(0, 2**32 - 1), max_size=5),
    sizes=st.lists(st.integers(1, 9), max_size=30),
)
def test_valid_streams_survive_any_split(
    sql: str, name: str, types: list[int], sizes: list[int]
) -> None:
    stream = (
        build.startup_message({"user": name or "u"})
        + build.query(sql)
        + build.parse(name, sql, tuple(types))
        + build.sync()
    )
    raws = run(stream, chunked(stream, sizes), startup=True)
    assert len(raws) == 4 and b"".join(raws) == stream


def test_oversized_header_fails_before_the_body() -> None:
    dec = FrontendDecoder(max_message_bytes=MAX_MESSAGE)
    dec.end_startup()
    dec.feed(b"d" + struct.pack("!i", MAX_MESSAGE + 1))
    with pytest.raises(ProtocolError):
        dec.next_message()


DECODERS = [
    decode.parse_error_fields,
    decode.parse_auth_request,
    decode.parse_sasl_mechanisms,
    decode.parse_backend_key_data,
    decode.parse_parameter_status,
    decode.parse_command_tag,
    decode.parse_ready_for_query,
]


@FUZZ
@given(body=st.binary(max_size=100), which=st.sampled_from(DECODERS))
def test_body_decoders_only_raise_protocol_error(body: bytes, which: object) -> None:
    try:
        which(body)  # type: ignore[operator]
    except ProtocolError:
        pass


# A cheap iteration count keeps each example fast; the parsing is what is fuzzed.
SALT = b"fuzzsalt"
VERIFIERS = ScramVerifierSet(SALT, 1, (derive_keys("secret", SALT, 1, "k"),))


scram_first = st.one_of(
    st.binary(max_size=120),
    st.builds(
        lambda head, rest: head + rest,
        st.sampled_from([b"n,,", b"y,,", b"p=x,,", b"n,a=b,", b"n,,n=,r="]),
        st.binary(max_size=60),
    ),
)


@FUZZ
@given(first=scram_first, final=st.binary(max_size=120))
def test_scram_server_only_raises_scram_auth_error(first: bytes, final: bytes) -> None:
    server = ScramServer(VERIFIERS, nonce=b"srv")
    try:
        server.handle_client_first(first)
    except ScramAuthError:
        return
    try:
        server.handle_client_final(final)
    except ScramAuthError:
        return
    raise AssertionError("random client-final accepted")


@FUZZ
@given(nonce=st.text(max_size=20), extra=st.binary(max_size=60))
def test_scram_client_final_near_misses(nonce: str, extra: bytes) -> None:
    server = ScramServer(VERIFIERS, nonce=b"srv")
    server.handle_client_first(b"n,,n=,r=cli")
    final = b"c=biws,r=cli" + nonce.encode() + b",p=" + base64.b64encode(extra)
    try:
        server.handle_client_final(final)
    except ScramAuthError:
        return
    raise AssertionError("forged proof accepted")


@FUZZ
@given(first=st.binary(max_size=120), final=st.binary(max_size=80))
def test_scram_client_only_raises_scram_auth_error(first: bytes, final: bytes) -> None:
    client = ScramClient("secret", nonce=b"cli")
    try:
        client.handle_server_first(b"r=cli" + first)
    except ScramAuthError:
        return
    try:
        client.verify_server_final(final)
    except ScramAuthError:
        return
    raise AssertionError("random server-final accepted")
