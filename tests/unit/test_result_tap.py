"""ResultTap (on the event loop) and response_payload (in the recorder): rows cut
anywhere by the relay's chunks come out whole, within budgets, and the digest covers
every byte whatever was recorded."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from wardgate.audit.responses import decoded, response_payload
from wardgate.postgres.result_tap import ResultTap, SessionResults


def _row(*values: bytes | None) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return b"D" + struct.pack("!I", len(body) + 4) + body


STREAM = b"".join(
    [
        _row(b"1", "é".encode(), None),
        _row(b"2", b"\xff\xfe", b""),
        b"d" + struct.pack("!I", 4 + 6) + b"a\tb\tc\n",
    ]
)


def _feed(tap: ResultTap, data: bytes, size: int) -> None:
    for i in range(0, len(data), size):
        tap.feed(memoryview(data)[i : i + size])


def _result(tap: ResultTap) -> dict[str, Any]:
    result: dict[str, Any] = decoded(response_payload(tap.summary()))
    return result


def test_rows_come_out_whole_whatever_the_chunking() -> None:
    for size in (1, 2, 3, 7, 16, len(STREAM)):
        tap = ResultTap(SessionResults(100, 65536, 1 << 20), "utf-8")
        _feed(tap, STREAM, size)
        summary = _result(tap)
        assert summary["rows"] == [["1", "é", None], ["2", "\\xfffe", ""], ["a\tb\tc\n"]]
        assert summary["complete"] is True
        assert decoded(summary) == summary  # decoding twice changes nothing
        assert summary["sha256"] == hashlib.sha256(STREAM).hexdigest()
        assert summary["stream_bytes"] == len(STREAM)


def test_budgets_stop_the_rows_and_are_shared_by_a_session() -> None:
    budget = SessionResults(2, 65536, 1 << 20)
    tap = ResultTap(budget, "utf-8")
    _feed(tap, STREAM, 5)
    assert _result(tap)["recorded_rows"] == 2 and _result(tap)["complete"] is False
    assert _result(tap)["sha256"] == hashlib.sha256(STREAM).hexdigest()
    session = SessionResults(100, 65536, 25)  # room for the first row (22 bytes)
    first = ResultTap(session, "utf-8")
    first.feed(STREAM)
    assert _result(first)["recorded_rows"] == 1 and session.session_left == 0
    later = ResultTap(session, "utf-8")
    later.feed(STREAM)
    assert _result(later)["rows"] == [] and _result(later)["complete"] is False
    off = ResultTap(SessionResults(0, 0, 0), "utf-8")
    off.feed(STREAM)
    assert _result(off)["rows"] == [] and _result(off)["stream_bytes"] == len(STREAM)


def test_text_responses_share_the_budgets_and_keep_a_digest_of_everything() -> None:
    """SSH exec output and MCP tool results go through the same tap as SQL rows."""
    import hashlib

    from wardgate.audit.responses import ResponseTap, SessionResults, response_payload

    budget = SessionResults(rows=100, bytes_=10, session_bytes=16)
    first = ResponseTap(budget, "utf-8", kind="text")
    for piece in (b"hello ", b"w\xc3\xb6rld\n", b"more"):
        first.feed(piece)
    stored = response_payload(first.summary())
    whole = b"hello w\xc3\xb6rld\nmore"
    assert stored["format"] == "text/1" and stored["complete"] is False
    assert stored["recorded_bytes"] == 10 and stored["stream_bytes"] == len(whole)
    assert stored["text"] == "hello w\xf6r"  # the first 10 bytes, decoded
    assert stored["sha256"] == hashlib.sha256(whole).hexdigest()
    second = ResponseTap(budget, "utf-8", kind="text")  # 6 bytes of the session left
    second.feed(b"0123456789")
    assert response_payload(second.summary())["text"] == "012345"
    third = ResponseTap(budget, "utf-8", kind="text")
    third.feed(b"x")
    assert response_payload(third.summary())["recorded_bytes"] == 0
