"""The durable mark file and the break detection built on it (real files, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.store.recovery import BreakReason, file_state, find_break
from gateway.store.seq_mark import SLOT_SIZE, MarkFile, SeqMark, mark_path

HASH_A, HASH_B = "a" * 64, "b" * 64


def test_mark_path_is_outside_buffer_db_globs() -> None:
    assert mark_path(Path("/var/lib/sealgw/buffer.db")) == Path("/var/lib/sealgw/buffer.mark")


def test_newest_generation_wins_and_survives_reopen(tmp_path: Path) -> None:
    marks = MarkFile(tmp_path / "buffer.mark")
    assert marks.open() is None
    for seq in range(1, 6):
        marks.write(SeqMark("gw-1", seq, HASH_A, acked_seq=seq - 1, epoch=2))
    marks.close()
    again = MarkFile(tmp_path / "buffer.mark")
    mark = again.open()
    assert mark is not None
    assert (mark.committed_seq, mark.acked_seq, mark.epoch, mark.generation) == (5, 4, 2, 5)
    assert (tmp_path / "buffer.mark").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "buffer.mark").stat().st_size == 2 * SLOT_SIZE
    again.close()


def test_a_torn_slot_falls_back_to_the_other(tmp_path: Path) -> None:
    path = tmp_path / "buffer.mark"
    marks = MarkFile(path)
    marks.open()
    marks.write(SeqMark("gw-1", 7, HASH_A))
    marks.write(SeqMark("gw-1", 8, HASH_B))  # generation 2: slot 0
    marks.close()
    with path.open("r+b") as handle:
        handle.seek(40)
        handle.write(b"\xff" * 30)  # spoil slot 0 mid-record, as a torn write would
    mark = MarkFile(path).open()
    assert mark is not None and (mark.committed_seq, mark.committed_hash) == (7, HASH_A)


def test_garbage_file_reads_as_no_mark(tmp_path: Path) -> None:
    path = tmp_path / "buffer.mark"
    path.write_bytes(b"not a mark\n" * 100)
    assert MarkFile(path).open() is None


def test_file_state(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    assert file_state(path) is BreakReason.MISSING
    path.write_bytes(b"")
    assert file_state(path) is BreakReason.EMPTY
    path.write_bytes(b"SQLite format 3\x00")
    assert file_state(path) is BreakReason.ROLLBACK


@pytest.mark.parametrize(
    ("head", "broken"),
    [((10, HASH_A), False), ((12, "c" * 64), False), ((7, "d" * 64), True), ((10, HASH_B), True)],
)
def test_find_break(head: tuple[int, str], broken: bool) -> None:
    mark = SeqMark("gw-1", 10, HASH_A, acked_seq=9, epoch=1)
    found = find_break(head, mark, BreakReason.ROLLBACK)
    assert (found is not None) is broken
    if found is not None and head[0] == 7:
        data = found.epoch_data()
        assert data == {
            "epoch": 2,
            "reason": "rollback",
            "prev_seq": 10,
            "prev_hash": HASH_A,
            "lost_first_seq": 8,
            "lost_last_seq": 10,
            "lost_count": 3,
            "acked_seq": 9,
        }


def test_no_mark_or_an_empty_one_is_no_break() -> None:
    assert find_break((0, ""), None, BreakReason.MISSING) is None
    assert find_break((0, ""), SeqMark("gw-1", 0, ""), BreakReason.MISSING) is None
