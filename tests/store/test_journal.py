"""The audit journal (audit.journal) and the recorder's use of it, on real files: what a
crash leaves is exactly what the store may not have, the checkpoint follows the store,
rotation keeps open intents and drops the rest, a torn tail is ignored."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import zlib
from pathlib import Path

import pytest
from tests.store.test_recorder import _action, _start

from wardgate.audit import journal as journal_mod
from wardgate.audit.journal import Intent, Journal, Outcome
from wardgate.audit.recorder import Recorder
from wardgate.audit.records import ActionRecord, Record, SessionEnd
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


def test_an_outcome_is_in_the_journal_at_once_and_until_then_its_intent_stands(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j")
    j.open()
    first, second = _action("s1", 1), _action("s1", 2)
    j.append(Intent(_interrupted(first)))
    # A crash now: no outcome yet, so the intent is what the store gets.
    assert journal_mod.pending(tmp_path / "j") == [_interrupted(first)]
    j.append_outcome(first)
    j.append(Intent(_interrupted(second)))
    assert journal_mod.pending(tmp_path / "j") == [first, _interrupted(second)]
    j.append_outcome(second)
    assert journal_mod.pending(tmp_path / "j") == [first, second]
    j.close()


def test_the_recorder_journals_an_outcome_when_it_is_submitted(
    tmp_path: Path, store: Store
) -> None:
    async def scenario() -> None:
        j = Journal(tmp_path / "j")
        j.open()
        recorder = Recorder(store, journal=j, linger=1.0)  # the store gets it in 1 s
        await recorder.start()
        record = _action("s1", 1)
        recorder.intend(_interrupted(record))
        recorder.submit(record)
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
        assert j._syncer is not None and j._syncer.args[-3] == "0.005"
        j.append(_action("s1", 1))
        assert j._syncer.poll() is None  # running
    finally:
        j.close()
    assert j._syncer.returncode is not None


def _wal_only(directory: Path) -> list[Record]:
    """What replay finds with the stages gone (a power loss that took their pages)."""
    for stage in directory.glob("*.stage"):
        stage.unlink()
    return journal_mod.pending(directory)


def test_the_sync_process_copies_the_stage_into_the_file_it_syncs(tmp_path: Path) -> None:
    """The worker writes into the mapped stage; what the sync process reports synced
    is in the `.wal` file itself, so a power loss that takes the stage loses nothing
    before `Journal.synced`."""
    j = Journal(tmp_path / "j", sync_process=True)
    j.open()
    records = [_action("s1", seq) for seq in range(1, 101)]
    try:
        for record in records:
            j.append(record)
        deadline = time.monotonic() + 10
        while j.synced < j.end and time.monotonic() < deadline:
            time.sleep(0.005)
        assert j.synced >= j.end
        assert journal_mod.pending(tmp_path / "j") == records  # the stage: all of it
        assert _wal_only(tmp_path / "j") == records  # and the synced file alone too
    finally:
        j.close()


def test_replay_takes_whichever_of_a_file_and_its_stage_holds_more(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    j = Journal(directory)
    j.open()
    first, second = _action("s1", 1), _action("s1", 2)
    j.append(first)
    deadline = time.monotonic() + 10
    while j.synced < j.end and time.monotonic() < deadline:
        time.sleep(0.005)
    # The stage ahead of its file (a crash before the next sync): the stage wins.
    wal, stage = next(directory.glob("*.wal")), next(directory.glob("*.stage"))
    j.append(second)
    synced_wal = wal.read_bytes()
    assert journal_mod.pending(directory) == [first, second]
    # The file ahead of its stage (a power loss took the stage's last page): the file.
    head = journal_mod._HEAD.size
    frames = stage.read_bytes()
    stage.write_bytes(frames[:head] + bytes(len(frames) - head))
    wal.write_bytes(synced_wal)
    assert journal_mod.pending(directory) == [first]
    j.close()


def test_a_dead_workers_sync_process_copies_and_syncs_what_it_wrote_last(
    tmp_path: Path,
) -> None:
    """kill -9 of the worker right after it wrote: its sync process, orphaned, copies
    the last entries into the file and syncs them before it exits, so a power loss
    after that loses nothing either."""
    import subprocess
    import sys

    directory = tmp_path / "j"
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from tests.store.test_recorder import _action\n"
        "from wardgate.audit.journal import Journal\n"
        "j = Journal(Path(sys.argv[1]), sync_process=True, sync_interval=0.2)\n"
        "j.open()\n"
        "print(j._syncer.pid, flush=True)\n"
        "for seq in range(1, 51):\n"
        "    j.append(_action('s1', seq))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(directory)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    syncer = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{syncer}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not Path(f"/proc/{syncer}").exists(), "the orphaned sync process did not exit"
    found = _wal_only(directory)
    assert len(found) == 50
    assert [(r.session_id, r.seq) for r in found if isinstance(r, ActionRecord)] == [
        ("s1", seq) for seq in range(1, 51)
    ]


def test_a_killed_sync_process_is_started_again(tmp_path: Path) -> None:
    """Without its sync process nothing reaches the synced file: the journal starts a
    new one (the recorder asks after every store commit) and syncing goes on."""
    import os
    import signal

    j = Journal(tmp_path / "j", sync_process=True)
    j.open()
    try:
        first = j._syncer
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        j._syncer_started -= journal_mod._SYNCER_RESTART  # no waiting for the backoff
        j.watch_syncer()
        assert j._syncer is not first and j._syncer is not None
        assert j._syncer.poll() is None
        for seq in range(1, 11):
            j.append(_action("s1", seq))
        deadline = time.monotonic() + 10
        while j.synced < j.end and time.monotonic() < deadline:
            time.sleep(0.005)
        assert j.synced >= j.end
    finally:
        j.close()


def test_a_full_disk_at_rotation_keeps_the_current_file_and_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next file cannot be made (ENOSPC): the current one stays current, is not
    taken for an older one (drop_obsolete used to delete it, with records the store
    did not have), writing goes on into it, and a later rotation works."""
    import errno

    directory = tmp_path / "j"
    j = Journal(directory, rotate_bytes=4096)
    j.open()
    records = [_action("s1", seq) for seq in range(1, 31)]
    for record in records:
        j.append(record)
    assert j.full
    fill = journal_mod._zero_fill

    def no_space(fd: int, start: int, end: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_mod, "_zero_fill", no_space)
    with pytest.raises(OSError):
        j.rotate([])
    assert not j.full  # not tried again at once
    j.set_checkpoint(journal_mod._HEAD.size)  # what the recorder does next
    j.drop_obsolete()
    assert sorted(p.suffix for p in directory.iterdir() if p.name != "checkpoint") == [
        ".stage",
        ".wal",
    ]  # no half-made next file left either
    more = _action("s1", 31)
    j.append(more)
    assert not j.spilled
    assert journal_mod.pending(directory) == [*records, more]
    monkeypatch.setattr(journal_mod, "_zero_fill", fill)
    j._rotate_after = 0.0
    assert j.full
    j.rotate([])
    j.append(_action("s1", 32))
    assert [r.seq for r in journal_mod.pending(directory)] == list(range(1, 33))  # type: ignore[union-attr]
    j.close()


def test_flush_of_a_closed_journal_raises_oserror_and_keeps_what_it_holds(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j")
    j.open()
    j.close()
    j._spill += b"frame"
    with pytest.raises(OSError):
        j.flush()
    assert j.spilled


def test_a_full_disk_refuses_new_statements_while_the_judged_ones_still_fit(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotations fail (ENOSPC): once the current file is past its rotation point the
    recorder turns unavailable (new statements are refused) while `_RESERVE` bytes are
    still free, so an intent of a statement judged before that never waits in memory
    only; with room again it recovers by itself."""
    import errno

    async def scenario() -> None:
        j = Journal(tmp_path / "j", rotate_bytes=4096)
        j.open()
        recorder = Recorder(store, journal=j, batch=10, linger=0)
        await recorder.start()
        fill = journal_mod._zero_fill

        def no_space(fd: int, start: int, end: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(journal_mod, "_zero_fill", no_space)
        seq = 0
        deadline = time.monotonic() + 10
        while not recorder.unavailable and time.monotonic() < deadline:
            seq += 1
            recorder.intend(_interrupted(_action("s1", seq)))
            recorder.submit(_action("s1", seq))
            await asyncio.sleep(0.001)
        assert recorder.unavailable
        assert not j.spilled  # refused with room to spare: nothing judged was held back
        assert "cannot grow" in (recorder.problem or "")
        monkeypatch.setattr(journal_mod, "_zero_fill", fill)
        j._rotate_after = 0.0
        for _ in range(200):  # the recorder retries every 0.5 s
            if not recorder.unavailable:
                break
            await asyncio.sleep(0.05)
        assert not recorder.unavailable
        await recorder.close()
        j.close()

    asyncio.run(scenario())
