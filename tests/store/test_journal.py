"""The audit journal (audit.journal) and the recorder's use of it, on real files: what a
crash leaves is exactly what the store may not have, the checkpoint follows the store,
rotation keeps open intents and drops the rest, a torn tail is ignored."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import zlib
from pathlib import Path

from tests.store.test_recorder import _action, _start

from wardgate.audit import journal as journal_mod
from wardgate.audit.journal import Intent, Journal, Outcome
from wardgate.audit.recorder import Recorder
from wardgate.audit.records import ActionRecord, SessionEnd
from wardgate.store.db import Store


def _interrupted(record: ActionRecord) -> ActionRecord:
    return dataclasses.replace(record, status="interrupted")


def test_pending_is_records_after_the_checkpoint_and_unanswered_intents(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j")
    j.open()
    j.append(_start("s1"))
    done, lost = _action("s1", 1), _action("s1", 2)
    j.append(Intent(_interrupted(done)))
    j.append(Intent(_interrupted(lost)))
    j.append(done)
    j.flush()
    # A "crash": nothing closed. Everything is pending, and the unanswered intent too.
    got = journal_mod.pending(tmp_path / "j")
    assert [type(r).__name__ for r in got] == ["SessionRecord", "ActionRecord", "ActionRecord"]
    assert got[1] == done and got[2] == _interrupted(lost)
    # The store has everything up to the end: nothing is pending.
    j.set_checkpoint(j.end)
    assert journal_mod.pending(tmp_path / "j") == []
    j.close()


def test_a_torn_tail_is_ignored(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j")
    j.open()
    record = _action("s1", 1)
    j.append(record)
    j.flush()
    j.close()
    wal = next((tmp_path / "j").glob("*.wal"))
    whole = wal.read_bytes()
    wal.write_bytes(whole + whole[: len(whole) // 2])  # half a frame: a power loss
    assert journal_mod.pending(tmp_path / "j") == [record]


def test_recorder_moves_the_checkpoint_and_rotation_keeps_open_intents(
    tmp_path: Path, store: Store
) -> None:
    async def run() -> None:
        j = Journal(tmp_path / "j", rotate_bytes=4096)
        j.open()
        rec = Recorder(store, batch=50, linger=0, journal=j)
        await rec.start()
        rec.submit(_start("s1"))
        long_running = _action("s1", 0)
        rec.intend(_interrupted(long_running))  # never answered before the "crash"
        for seq in range(1, 200):
            rec.intend(_interrupted(_action("s1", seq)))
            rec.submit(_action("s1", seq))
        await asyncio.wait_for(rec.flush(), 30)
        await asyncio.sleep(0)
        # Rotation happened (4 KiB files) and old files went; the open intent survived.
        files = list((tmp_path / "j").glob("*.wal"))
        assert 1 <= len(files) <= 2, files
        assert journal_mod.pending(tmp_path / "j") == [_interrupted(long_running)]
        rec.submit(long_running)
        rec.submit(SessionEnd("s1", 0.0))
        await asyncio.wait_for(rec.flush(), 30)
        assert journal_mod.pending(tmp_path / "j") == []
        await rec.close()
        j.close()

    asyncio.run(run())


def test_an_outcome_completes_its_intent_and_shared_objects_resolve(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", rotate_bytes=2048)
    j.open()
    records = [_action("s1", seq) for seq in range(1, 30)]
    for record in records:  # principals and verdicts are written once per file
        j.append(Intent(_interrupted(record)))
        j.append(Outcome.of(record))
        if j.full:
            j.rotate([])
    j.flush()
    assert len(list((tmp_path / "j").glob("*.wal"))) > 1
    assert journal_mod.pending(tmp_path / "j") == records
    j.close()


def test_a_held_outcome_goes_with_the_next_write_and_until_then_its_intent_stands(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j")
    j.open()
    first, second = _action("s1", 1), _action("s1", 2)
    j.append(Intent(_interrupted(first)))
    j.append_outcome(first, hold=True)
    assert j.held
    # A crash now: the outcome was never written, so the intent is what the store gets.
    assert journal_mod.pending(tmp_path / "j") == [_interrupted(first)]
    j.append(Intent(_interrupted(second)))  # one write: the held outcome, then this intent
    assert not j.held
    assert journal_mod.pending(tmp_path / "j") == [first, _interrupted(second)]
    j.append_outcome(second, hold=True)
    j.write_held()  # the recorder's timer (2 ms)
    assert journal_mod.pending(tmp_path / "j") == [first, second]
    j.close()


def test_the_recorder_writes_held_outcomes_within_moments(tmp_path: Path, store: Store) -> None:
    async def scenario() -> None:
        j = Journal(tmp_path / "j")
        j.open()
        recorder = Recorder(store, journal=j, linger=1.0)  # the store gets it in 1 s
        await recorder.start()
        record = _action("s1", 1)
        recorder.intend(_interrupted(record))
        recorder.submit(record)
        assert j.held  # not yet: the next intent could carry it
        await asyncio.sleep(0.05)
        assert not j.held
        assert journal_mod.pending(tmp_path / "j") == [record]
        await recorder.close()
        j.close()

    asyncio.run(scenario())


def test_the_sync_process_follows_the_journal_and_ends_with_it(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", sync_process=True)
    j.open()
    record = _action("s1", 1)
    j.append(record)
    j.flush()
    syncer = j._syncer
    assert syncer is not None and syncer.poll() is None
    j.close()
    assert syncer.returncode is not None
    assert journal_mod.pending(tmp_path / "j") == [record]


def test_a_file_grows_for_a_record_larger_than_its_allocation(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", rotate_bytes=4096)
    j.open()
    small = _action("s1", 1)
    big = dataclasses.replace(
        _action("s1", 2), action=dataclasses.replace(small.action, text="x" * 2_000_000)
    )
    unanswered = _interrupted(_action("s1", 3))
    j.append(small)
    j.append(big)
    j.append(Intent(unanswered))
    assert not j.spilled
    # No close: what a crash leaves. The records are in the file, in order.
    assert journal_mod.pending(tmp_path / "j") == [small, big, unanswered]
    j.close()
    # A clean close trims the allocation to what was written.
    wal = next((tmp_path / "j").glob("*.wal"))
    assert wal.stat().st_size < 2_100_000


def test_a_file_of_the_earlier_format_is_replayed(tmp_path: Path) -> None:
    """Before the journal was mapped, files had no head: frames from byte 0, written
    with write(2). A gateway upgraded after a crash still replays them."""
    import pickle

    directory = tmp_path / "j"
    directory.mkdir()
    record = _action("s1", 1)
    body = pickle.dumps(record)
    frame = journal_mod._HEADER.pack(len(body), zlib.crc32(body)) + body
    (directory / f"{0:016x}.wal").write_bytes(frame)
    assert journal_mod.pending(directory) == [record]
    # The mapped format (head "WGJRNL02" and a byte count) has the same frames after it.
    head = journal_mod._HEAD.pack(b"WGJRNL02", journal_mod._HEAD.size + len(frame))
    (directory / f"{0:016x}.wal").write_bytes(head + frame + bytes(4096))
    assert journal_mod.pending(directory) == [record]


def test_the_sync_process_syncs_what_was_written_and_follows_rotations(
    tmp_path: Path,
) -> None:
    """The worker moves the written position in the page it shares with its sync
    process only after a whole frame is in the file; the sync process syncs up to it
    and says so (`Journal.synced`), in the current file after a rotation too."""
    j = Journal(tmp_path / "j", sync_process=True, rotate_bytes=64 * 1024)
    j.open()
    try:
        for round_ in range(3):
            for n in range(200):
                j.append(_action("s1", 1000 * round_ + n))
            end = j.end
            deadline = time.monotonic() + 10
            while j.synced < end and time.monotonic() < deadline:
                time.sleep(0.005)
            assert j.synced >= end, (round_, j.synced, end)
            j.rotate([])
            j.drop_obsolete()
        assert j._syncer is not None and j._syncer.poll() is None
    finally:
        j.close()


def test_the_sync_interval_reaches_the_sync_process(tmp_path: Path) -> None:
    """`audit.journal_sync_ms` becomes the sync process's interval; it syncs and exits
    with the journal."""
    from wardgate.config import AuditConfig

    assert AuditConfig().journal_sync_ms == 1.0
    j = Journal(tmp_path / "j", sync_process=True, sync_interval=0.005)
    j.open()
    try:
        assert j._syncer is not None and j._syncer.args[-2] == "0.005"
        j.append(_action("s1", 1))
        assert j._syncer.poll() is None  # running
    finally:
        j.close()
    assert j._syncer.returncode is not None
