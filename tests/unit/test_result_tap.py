"""ResultTap: rows cut anywhere by the relay's chunks come out whole, within budgets,
and the digest covers every byte whatever was recorded."""

from __future__ import annotations

import hashlib
import struct

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


def test_rows_come_out_whole_whatever_the_chunking() -> None:
    for size in (1, 2, 3, 7, 16, len(STREAM)):
        tap = ResultTap(SessionResults(100, 65536, 1 << 20), "utf-8")
        _feed(tap, STREAM, size)
        summary = tap.summary()
        assert summary["rows"] == [["1", "é", None], ["2", "\\xfffe", ""], ["a\tb\tc\n"]]
        assert summary["complete"] is True
        assert summary["sha256"] == hashlib.sha256(STREAM).hexdigest()
        assert summary["stream_bytes"] == len(STREAM)


def test_budgets_stop_the_rows_and_are_shared_by_a_session() -> None:
    budget = SessionResults(2, 65536, 1 << 20)
    tap = ResultTap(budget, "utf-8")
    _feed(tap, STREAM, 5)
    assert tap.summary()["recorded_rows"] == 2 and tap.summary()["complete"] is False
    assert tap.summary()["sha256"] == hashlib.sha256(STREAM).hexdigest()
    session = SessionResults(100, 65536, 20)  # room for the first row (17 bytes)
    first = ResultTap(session, "utf-8")
    first.feed(STREAM)
    assert first.summary()["recorded_rows"] == 1 and session.session_left == 3
    later = ResultTap(session, "utf-8")
    later.feed(STREAM)
    assert later.summary()["rows"] == [] and later.summary()["complete"] is False
    off = ResultTap(SessionResults(0, 0, 0), "utf-8")
    off.feed(STREAM)
    assert off.summary()["rows"] == [] and off.summary()["stream_bytes"] == len(STREAM)
