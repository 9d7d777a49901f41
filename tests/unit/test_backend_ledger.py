"""The ledger of a worker's server backends (postgres/backends.py): what another worker
reads after this one died must be exactly the backends it still had open."""

from __future__ import annotations

from pathlib import Path

from wardgate.postgres import backends
from wardgate.postgres.backends import Backend, BackendLedger, read_ledger


def test_what_was_opened_and_not_closed_is_read_back(tmp_path: Path) -> None:
    ledger = BackendLedger(tmp_path / "backends" / "w1")
    ledger.open()
    closes = [ledger.opened(Backend("app", pid, 40000 + pid, b"\x01\x02")) for pid in (7, 8, 9)]
    closes[1]()
    closes[1]()  # twice: noted once
    assert read_ledger(ledger.path) == [
        Backend("app", 7, 40007, b"\x01\x02"),
        Backend("app", 9, 40009, b"\x01\x02"),
    ]
    assert ledger.path.stat().st_mode & 0o777 == 0o600  # the cancel keys are in it


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    ledger = BackendLedger(tmp_path / "w0")
    ledger.open()
    ledger.opened(Backend("app", 7, 1, b"k"))
    with ledger.path.open("ab") as f:
        f.write(b'["+","app",8,2,"6')
    assert read_ledger(ledger.path) == [Backend("app", 7, 1, b"k")]
    assert read_ledger(tmp_path / "missing") == []


def test_the_file_is_compacted_and_stays_true(tmp_path: Path) -> None:
    ledger = BackendLedger(tmp_path / "w0")
    ledger.open()
    kept = ledger.opened(Backend("app", 1, 1, b"k"))
    for pid in range(2, 3000):
        ledger.opened(Backend("app", pid, pid, b"k"))()
    # 5,999 changes; rewritten with the one live backend at 4,097 lines, then appended to.
    assert len(ledger.path.read_bytes().splitlines()) < 2000
    ledger.opened(Backend("other", 5, 5, b"k"))
    assert read_ledger(ledger.path) == [Backend("app", 1, 1, b"k"), Backend("other", 5, 5, b"k")]
    kept()
    assert read_ledger(ledger.path) == [Backend("other", 5, 5, b"k")]


def test_a_new_worker_starts_an_empty_ledger(tmp_path: Path) -> None:
    first = BackendLedger(tmp_path / "w0")
    first.open()
    first.opened(Backend("app", 1, 1, b"k"))
    first.close()
    second = BackendLedger(tmp_path / "w0")
    second.open()
    assert read_ledger(second.path) == []
    assert backends.ledger is None  # only a worker sets the process's own


def test_a_backend_is_told_apart_by_port_or_by_when_it_started() -> None:
    """`_still_there`: the server shows pid 7 at our port (ours, and pg_terminate_backend
    may end it), pid 8 at another port (a TCP forwarder between: ours when it started
    before ours logged in, by the server's clock set to ours), pid 9 at another port
    and started later (the pid given anew: not ours, and left alone)."""
    from wardgate.postgres.backends import _still_there

    ours = [Backend("app", pid, 40000 + pid, b"k", "127.0.0.1", 5432, 1000.0) for pid in (7, 8, 9)]
    # The server's clock is 50 s ahead of ours: now is 1100 here, 1150 there.
    rows = (
        ("7", "40007", "1049.0", "1150.0"),
        ("8", "55555", "1049.5", "1150.0"),
        ("9", "55556", "1090.0", "1150.0"),
    )
    left, exact = _still_there(ours, rows, 1100.0)
    assert [b.pid for b in left] == [7, 8] and [b.pid for b in exact] == [7]
    assert _still_there(ours, (), 1100.0) == ([], [])
