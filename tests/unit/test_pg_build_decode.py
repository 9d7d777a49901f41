"""Builders checked against literal bytes and against decode.py / the frontend decoder."""

from __future__ import annotations

import hashlib
import struct

import pytest

from wardgate.postgres.codec import build, decode
from wardgate.postgres.codec import messages as m
from wardgate.postgres.codec.errors import ProtocolError
from wardgate.postgres.codec.frontend import FrontendDecoder


def split(raw: bytes) -> tuple[bytes, bytes]:
    """Check the framing of one typed message and return (type, body)."""
    (length,) = struct.unpack_from("!i", raw, 1)
    assert length == len(raw) - 1
    return raw[:1], raw[5:]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (build.auth_ok(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
        (build.auth_cleartext_password(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
        (build.auth_md5_password(b"abcd"), b"R\x00\x00\x00\x0c\x00\x00\x00\x05abcd"),
        (
            build.auth_sasl(["SCRAM-SHA-256"]),
            b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00",
        ),
        (build.auth_sasl_continue(b"r=x"), b"R\x00\x00\x00\x0b\x00\x00\x00\x0br=x"),
        (build.auth_sasl_final(b"v=x"), b"R\x00\x00\x00\x0b\x00\x00\x00\x0cv=x"),
        (build.parameter_status("a", "b"), b"S\x00\x00\x00\x08a\x00b\x00"),
        (build.backend_key_data(1, b"\0\0\0\x02"), b"K\x00\x00\x00\x0c\x00\x00\x00\x01\0\0\0\x02"),
        (build.ready_for_query(b"I"), b"Z\x00\x00\x00\x05I"),
        (
            build.error_response("42501", "no"),
            b"E\x00\x00\x00\x1eSERROR\x00VERROR\x00C42501\x00Mno\x00\x00",
        ),
        (build.ssl_accept(), b"S"),
        (build.ssl_refuse(), b"N"),
        (build.ssl_request(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
        (build.sync(), b"S\x00\x00\x00\x04"),
        (build.terminate(), b"X\x00\x00\x00\x04"),
        (build.query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00"),
        (
            build.sasl_initial_response("M", b"xy"),
            b"p\x00\x00\x00\x0cM\x00\x00\x00\x00\x02xy",
        ),
        (build.password_message(b"pw"), b"p\x00\x00\x00\x07pw\x00"),
        (build.bind("", ""), b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00"),
        (
            # The gateway's own text Bind: one format code 0, 'ab' and NULL, results in text.
            build.bind("", "", ["ab", None], param_formats=(0,)),
            b"B\x00\x00\x00\x18\x00\x00\x00\x01\x00\x00\x00\x02"
            b"\x00\x00\x00\x02ab\xff\xff\xff\xff\x00\x00",
        ),
        (
            build.bind("p", "s", [b"\x00\x07"], (1,), (1, 0)),
            b"B\x00\x00\x00\x1ap\x00s\x00\x00\x01\x00\x01\x00\x01"
            b"\x00\x00\x00\x02\x00\x07\x00\x02\x00\x01\x00\x00",
        ),
        (build.describe("P", ""), b"D\x00\x00\x00\x06P\x00"),
        (build.describe("S", "st"), b"D\x00\x00\x00\x08Sst\x00"),
        (build.execute(""), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
        (build.execute("c", 50), b"E\x00\x00\x00\x0ac\x00\x00\x00\x00\x32"),
        (build.copy_fail("no"), b"f\x00\x00\x00\x07no\x00"),
        (
            build.parse("", "SELECT $1", (25,)),
            b"P\x00\x00\x00\x15\x00SELECT $1\x00\x00\x01\x00\x00\x00\x19",
        ),
    ],
)
def test_literal_bytes(raw: bytes, expected: bytes) -> None:
    assert raw == expected


def test_auth_round_trips() -> None:
    cases = [
        (build.auth_ok(), 0, b""),
        (build.auth_cleartext_password(), 3, b""),
        (build.auth_md5_password(b"\x01\x02\x03\x04"), 5, b"\x01\x02\x03\x04"),
        (build.auth_sasl_continue(b"r=abc,s=def,i=4096"), 11, b"r=abc,s=def,i=4096"),
        (build.auth_sasl_final(b"v=xyz"), 12, b"v=xyz"),
    ]
    for raw, code, data in cases:
        kind, body = split(raw)
        assert kind == b"R"
        assert decode.parse_auth_request(body) == decode.AuthRequest(code, data)
    kind, body = split(build.auth_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
    request = decode.parse_auth_request(memoryview(body))
    assert request.code == 10
    assert decode.parse_sasl_mechanisms(request.data) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]


@pytest.mark.parametrize(
    "body",
    [b"", b"\0\0\0", b"\0\0\0\x05abc", b"\0\0\0\x00x", b"\0\0\0\x03\0"],
)
def test_bad_auth_requests(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode.parse_auth_request(body)


@pytest.mark.parametrize("data", [b"", b"SCRAM-SHA-256\0", b"A\0\0trailing", b"\xff\0\0"])
def test_bad_sasl_mechanism_lists(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode.parse_sasl_mechanisms(data)


def test_error_response_round_trip() -> None:
    raw = build.error_response(
        "28P01", "password authentication failed", detail="d", hint="try again"
    )
    kind, body = split(raw)
    assert kind == b"E"
    fields = decode.parse_error_fields(body)
    assert fields == decode.ErrorFields(
        severity="ERROR",
        sqlstate="28P01",
        message="password authentication failed",
        detail="d",
        hint="try again",
        fields={
            "S": "ERROR",
            "V": "ERROR",
            "C": "28P01",
            "M": "password authentication failed",
            "D": "d",
            "H": "try again",
        },
    )
    kind, body = split(build.notice_response("01000", "careful ✓", severity="WARNING"))
    assert kind == b"N"
    notice = decode.parse_error_fields(body)
    assert (notice.severity, notice.sqlstate, notice.message) == ("WARNING", "01000", "careful ✓")
    assert notice.detail is None and notice.hint is None


def test_error_fields_prefer_unlocalized_severity() -> None:
    body = b"SFEHLER\0VERROR\0C42P01\0Mrelation does not exist\0P15\0\0"
    fields = decode.parse_error_fields(body)
    assert fields.severity == "ERROR"
    assert fields.fields["P"] == "15"
    old_server = decode.parse_error_fields(b"SFATAL\0C57P01\0Mbye\0\0")
    assert old_server.severity == "FATAL"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"SERROR\0C42000\0Mx\0",  # no terminator
        b"SERROR\0C42000\0Mx\0\0junk",
        b"SERROR\0Mx\0\0",  # no code
        b"SERROR\0C42000\0\0",  # no message
        b"C42000\0Mx\0\0",  # no severity
    ],
)
def test_bad_error_responses(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode.parse_error_fields(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"SELECT 5\0", ("SELECT", 5)),
        (b"INSERT 0 3\0", ("INSERT", 3)),
        (b"UPDATE 0\0", ("UPDATE", 0)),
        (b"DELETE 12\0", ("DELETE", 12)),
        (b"MERGE 2\0", ("MERGE", 2)),
        (b"FETCH 100\0", ("FETCH", 100)),
        (b"COPY 7\0", ("COPY", 7)),
        (b"BEGIN\0", ("BEGIN", None)),
        (b"CREATE TABLE\0", ("CREATE TABLE", None)),
        (b"DROP TABLE\0", ("DROP TABLE", None)),
        (b"SELECT \xd9\xa3\0", ("SELECT \u0663", None)),  # Arabic-Indic digit is not a count
        (b"\0", ("", None)),
    ],
)
def test_command_tags(body: bytes, expected: tuple[str, int | None]) -> None:
    assert decode.parse_command_tag(body) == expected


@pytest.mark.parametrize("body", [b"SELECT 1", b"SELECT 1\0\0"])
def test_bad_command_tags(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode.parse_command_tag(body)


def test_parameter_status_and_key_data_round_trip() -> None:
    _, body = split(build.parameter_status("server_version", "17.2"))
    assert decode.parse_parameter_status(body) == ("server_version", "17.2")
    _, body = split(build.backend_key_data(4242, b"\x00\x01\x02\x03"))
    assert decode.parse_backend_key_data(body) == (4242, b"\x00\x01\x02\x03")
    _, body = split(build.backend_key_data(-1, b"s" * 32))  # protocol 3.2 long key
    assert decode.parse_backend_key_data(body) == (-1, b"s" * 32)
    for bad in (b"\0\0\0\x01", b"\0\0\0\x01abc", b"\0\0\0\x01" + b"x" * 257):
        with pytest.raises(ProtocolError):
            decode.parse_backend_key_data(bad)
    for bad in (b"a\0", b"a\0b", b"a\0b\0c"):
        with pytest.raises(ProtocolError):
            decode.parse_parameter_status(bad)


def test_ready_for_query() -> None:
    for status in (b"I", b"T", b"E"):
        _, body = split(build.ready_for_query(status))
        assert decode.parse_ready_for_query(body) == status
    for bad in (b"", b"X", b"II"):
        with pytest.raises(ProtocolError):
            decode.parse_ready_for_query(bad)


def test_md5_password() -> None:
    # md5("postgres" + "postgres") is the well-known stored hash for postgres/postgres.
    salt = b"\x01\x02\x03\x04"
    expected = "md5" + hashlib.md5(b"3175bce1d3201d16594cebf9d7eb3f9d" + salt).hexdigest()
    assert build.md5_password("postgres", "postgres", salt) == expected


def test_builders_refuse_bad_values() -> None:
    with pytest.raises(ValueError):
        build.query("a\0b")
    with pytest.raises(ValueError):
        build.auth_md5_password(b"123")
    with pytest.raises(ValueError):
        build.ready_for_query(b"X")
    with pytest.raises(ValueError):
        build.error_response("123", "short code")
    with pytest.raises(ValueError):
        build.password_message("a\0")


def test_startup_message_builder() -> None:
    raw = build.startup_message({"user": "u", "database": "d"})
    assert raw == b"\x00\x00\x00\x1b\x00\x03\x00\x00user\0u\0database\0d\0\0"


def test_error_text_in_another_encoding_is_kept_not_fatal() -> None:
    """A LATIN1 session's server messages are not UTF-8; they are recorded, not refused."""
    fields = decode.parse_error_fields(b"SERROR\0C42000\0Mcaf\xe9\0\0")
    assert fields.message == "caf\ufffd"


def _frontend(raw: bytes) -> m.FrontendMessage:
    """Decode one typed frontend message as the gateway's client side would."""
    decoder = FrontendDecoder()
    decoder.end_startup()
    decoder.feed(raw)
    decoded = decoder.next_message()
    assert decoded is not None and decoded[1] == raw and decoder.buffered == 0
    return decoded[0]


def test_frontend_builders_round_trip() -> None:
    raw = build.bind("", "", ["42", None, "café ✓", ""], param_formats=(0,))
    assert _frontend(raw) == m.Bind("", "", (0,), (b"42", None, "café ✓".encode(), b""), ())
    raw = build.bind("portal", "stmt", [b"\x00\x01", "x"], (1, 0), (1,))
    assert _frontend(raw) == m.Bind("portal", "stmt", (1, 0), (b"\x00\x01", b"x"), (1,))
    assert _frontend(build.describe("P", "")) == m.Describe("P", "")
    assert _frontend(build.describe("S", "s1")) == m.Describe("S", "s1")
    assert _frontend(build.execute("")) == m.Execute("", 0)
    assert _frontend(build.execute("c", 0x7FFFFFFF)) == m.Execute("c", 0x7FFFFFFF)
    reason = "wardgate: COPY FROM STDIN is not supported here"
    assert _frontend(build.copy_fail(reason)) == m.CopyFail(reason)
    assert _frontend(build.parse("s", "SELECT 1", (23,))) == m.Parse("s", "SELECT 1", (23,))
    many = [str(i) for i in range(0xFFFF)]
    bound = _frontend(build.bind("", "", many))
    assert isinstance(bound, m.Bind) and len(bound.params) == 0xFFFF


def test_frontend_builders_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="65535 parameters"):
        build.bind("", "", ["x"] * 0x10000)
    with pytest.raises(ValueError):
        build.bind("", "", ["a", "b", "c"], param_formats=(0, 1))
    with pytest.raises(ValueError):
        build.bind("", "", ["a"], param_formats=(2,))
    with pytest.raises(ValueError):
        build.bind("", "", [], result_formats=(-1,))
    with pytest.raises(ValueError):
        build.bind("a\0", "")
    with pytest.raises(ValueError):  # UnicodeEncodeError: a lone surrogate has no UTF-8
        build.bind("", "", ["\ud800"])
    with pytest.raises(ValueError):
        build.describe("X", "")
    with pytest.raises(ValueError):
        build.execute("", -1)
    with pytest.raises(ValueError):
        build.execute("", 0x80000000)
    with pytest.raises(ValueError):
        build.copy_fail("a\0b")


def data_row(values: list[bytes | None]) -> bytes:
    return struct.pack("!h", len(values)) + b"".join(
        b"\xff\xff\xff\xff" if v is None else struct.pack("!i", len(v)) + v for v in values
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\x00\x00", ()),
        (b"\x00\x01\xff\xff\xff\xff", (None,)),
        (b"\x00\x01\x00\x00\x00\x00", (b"",)),
        (
            b"\x00\x03\x00\x00\x00\x011\xff\xff\xff\xff\x00\x00\x00\x03\xe2\x9c\x93",
            (b"1", None, "✓".encode()),
        ),
        (b"\x00\x01\x00\x00\x00\x01\xe9", (b"\xe9",)),  # not UTF-8: bytes are kept as is
    ],
)
def test_data_rows(body: bytes, expected: tuple[bytes | None, ...]) -> None:
    assert decode.parse_data_row(body) == expected
    assert decode.parse_data_row(memoryview(body)) == expected


def test_data_row_round_trip() -> None:
    values: list[bytes | None] = [b"a", None, b"", b"\x00" * 300, None, "ü".encode()]
    assert decode.parse_data_row(data_row(values)) == tuple(values)


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no column count
        b"\x00",  # half a column count
        b"\xff\xff",  # negative column count
        b"\x80\x00" + b"\xff" * 8,
        b"\x00\x01",  # a column without its length
        b"\x00\x01\x00\x00",  # half a length
        b"\x00\x02\xff\xff\xff\xff",  # fewer values than counted
        b"\x7f\xff\x00\x00\x00\x00",  # a huge count on a short body
        b"\x00\x01\xff\xff\xff\xfe",  # length -2
        b"\x00\x01\x80\x00\x00\x00",  # most negative length
        b"\x00\x01\x00\x00\x00\x05abc",  # length past the end
        b"\x00\x01\x7f\xff\xff\xffabc",
        b"\x00\x01\x00\x00\x00\x01ab",  # trailing byte
        b"\x00\x00\x00",  # trailing byte after no columns
    ],
)
def test_bad_data_rows(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode.parse_data_row(body)
