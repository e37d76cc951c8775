"""Sequence numbers: never reused across crashes, restores and lost files."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from edge.sequence import SequenceAllocator, SequenceError, SkippedRange, write_atomically
from protocol import MAX_SEQ

NOW_MS = 1_800_000_000_000


def _golden(value: int) -> bytes:
    body = f"lienwatch-seq-v1 {value}"
    return f"{body} {zlib.crc32(body.encode()):08x}\n".encode()


def test_fresh_device_counts_from_one_and_reserves_a_block(tmp_path: Path) -> None:
    path = tmp_path / "sequence"
    seq = SequenceAllocator(path, block=4)
    assert seq.skipped is None
    assert [seq.next() for _ in range(5)] == [1, 2, 3, 4, 5]
    assert seq.reserved_high == 8
    assert path.read_bytes() == _golden(8)
    assert not seq.file_lost


def test_golden_file_format(tmp_path: Path) -> None:
    path = tmp_path / "sequence"
    SequenceAllocator(path, block=16).next()
    assert path.read_bytes() == b"lienwatch-seq-v1 16 " + f"{zlib.crc32(b'lienwatch-seq-v1 16'):08x}".encode() + b"\n"


def test_crash_after_reserving_skips_ahead_and_reports_the_gap(tmp_path: Path) -> None:
    path = tmp_path / "sequence"
    first = SequenceAllocator(path, block=16)
    assert [first.next() for _ in range(3)] == [1, 2, 3]
    # the process dies; batch 3 was committed to the outbox, nothing after it
    second = SequenceAllocator(path, committed_high=3, block=16)
    assert second.skipped == SkippedRange(4, 13)
    assert second.next() == 17


def test_clean_restart_at_a_block_boundary_has_no_gap(tmp_path: Path) -> None:
    path = tmp_path / "sequence"
    first = SequenceAllocator(path, block=2)
    assert [first.next() for _ in range(2)] == [1, 2]
    second = SequenceAllocator(path, committed_high=2, block=2)
    assert second.skipped is None
    assert second.next() == 3


def test_outbox_restored_from_an_old_backup_cannot_cause_reuse(tmp_path: Path) -> None:
    path = tmp_path / "sequence"
    first = SequenceAllocator(path, block=8)
    used = [first.next() for _ in range(20)]  # reserved up to 24
    assert used[-1] == 20
    restored = SequenceAllocator(path, committed_high=5, block=8)  # the backup knew only 1..5
    assert restored.next() == 25
    assert restored.skipped == SkippedRange(6, 19)


def test_sequence_file_restored_from_an_old_backup_is_overruled_by_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "sequence"
    path.write_bytes(_golden(16))
    seq = SequenceAllocator(path, committed_high=40, block=8)
    assert seq.skipped is None
    assert seq.next() == 41
    assert path.read_bytes() == _golden(48)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"lienwatch-seq-v1 16",  # truncated (no checksum)
        b"lienwatch-seq-v1 17 " + f"{zlib.crc32(b'lienwatch-seq-v1 16'):08x}".encode(),  # forged value
        b"\xff\xfe garbage",
        b"lienwatch-seq-v1 " + str(2**64).encode() + b" 00000000",
        b"x" * 10_000,  # oversized
    ],
)
def test_corrupt_file_is_moved_aside_and_the_clock_floor_is_used(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "sequence"
    path.write_bytes(content)
    seq = SequenceAllocator(path, committed_high=7, block=4, clock_ms=lambda: NOW_MS)
    assert seq.file_lost
    assert seq.next() == NOW_MS + 1
    assert seq.skipped == SkippedRange(8, NOW_MS - 7)
    assert [p.name.split("-")[0] for p in tmp_path.glob("sequence.corrupt-*")] == ["sequence.corrupt"]


def test_missing_file_with_used_numbers_uses_the_clock_floor(tmp_path: Path) -> None:
    seq = SequenceAllocator(tmp_path / "sequence", committed_high=3, clock_ms=lambda: NOW_MS)
    assert seq.file_lost
    assert seq.next() == NOW_MS + 1


def test_lost_file_with_an_insane_clock_refuses_to_guess(tmp_path: Path) -> None:
    with pytest.raises(SequenceError, match="before 2020"):
        SequenceAllocator(tmp_path / "sequence", committed_high=3, clock_ms=lambda: 0)


def test_exhausted_space_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SequenceError, match="exhausted"):
        SequenceAllocator(tmp_path / "sequence", committed_high=MAX_SEQ)
    seq = SequenceAllocator(tmp_path / "s2", committed_high=MAX_SEQ - 1)
    assert seq.next() == MAX_SEQ
    with pytest.raises(SequenceError, match="exhausted"):
        seq.next()


def test_bad_arguments_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SequenceError, match="block=0"):
        SequenceAllocator(tmp_path / "s", block=0)
    with pytest.raises(SequenceError, match="committed_high=-1"):
        SequenceAllocator(tmp_path / "s", committed_high=-1)
    with pytest.raises(SequenceError):
        SkippedRange(0, 1)


def test_unwritable_folder_is_a_sequence_error(tmp_path: Path) -> None:
    seq = SequenceAllocator(tmp_path / "missing-dir" / "sequence")
    with pytest.raises(SequenceError, match="cannot reserve"):
        seq.next()


def test_write_atomically_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_atomically(path, b"one")
    write_atomically(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    assert path.stat().st_mode & 0o777 == 0o600
