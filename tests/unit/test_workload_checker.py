"""The nemesis workload's judge (tests/harness/workload.py) on reads whose verdict is known:
it accepts what the contract allows (an acknowledged page, a torn unacknowledged write, a
hole where nothing was acknowledged, a read racing a write) and catches each way of breaking
it (a lost acknowledged page, a stale page, zeros over acknowledged data, bytes no one wrote,
a file shorter than its acknowledged length). Then the whole workload on a local directory:
clean afterwards, and one flipped byte is found."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.harness.workload import (
    PAGE_BYTES,
    ZERO_PAGE,
    FileRecord,
    RemoteWorkload,
    Workload,
    Write,
    judge,
    page_bytes,
)

SEED = 42
PATH = "row/data-x-0-0"


def record(*writes: Write) -> FileRecord:
    r = FileRecord(PATH, created=0.0)
    for w in writes:
        r.writes.append(w)
        for i in range(w.count):
            r.pages.setdefault(w.first + i, []).append(w)
    return r


def write(generation: int, first: int, count: int, invoke: float, acked_at: float | None) -> Write:
    return Write("x", PATH, generation, first, count, invoke, acked_at)


def pages(*gens: int | None) -> bytes:
    return b"".join(ZERO_PAGE if g is None else page_bytes(SEED, PATH, g, p) for p, g in enumerate(gens))


def test_an_acknowledged_file_read_whole_is_right() -> None:
    r = record(write(1, 0, 2, 1.0, 2.0), write(2, 2, 1, 3.0, 4.0))
    assert judge(r, pages(1, 1, 2), SEED, as_of=5.0, done=6.0) == []


def test_a_torn_unacknowledged_overwrite_may_show_old_and_new_pages() -> None:
    r = record(write(1, 0, 3, 1.0, 2.0), write(2, 0, 3, 3.0, None))
    assert judge(r, pages(2, 1, 2), SEED, as_of=5.0, done=6.0) == []


def test_a_never_acknowledged_append_may_read_as_zeros() -> None:
    r = record(write(1, 0, 1, 1.0, 2.0), write(2, 1, 2, 3.0, None))
    assert judge(r, pages(1, None, 2), SEED, as_of=5.0, done=6.0) == []


def test_a_read_may_miss_a_write_acknowledged_after_it_opened() -> None:
    r = record(write(1, 0, 1, 1.0, 2.0), write(2, 0, 1, 3.0, 4.5))
    assert judge(r, pages(1), SEED, as_of=4.0, done=5.0) == []


def test_a_lost_acknowledged_page_is_caught() -> None:
    r = record(write(1, 0, 2, 1.0, 2.0))
    assert "size" in judge(r, pages(1), SEED, as_of=5.0, done=6.0)[0]


def test_a_stale_page_is_caught() -> None:
    r = record(write(1, 0, 1, 1.0, 2.0), write(2, 0, 1, 3.0, 4.0))
    problems = judge(r, pages(1), SEED, as_of=5.0, done=6.0)
    assert problems and "stale, generation 1 but generation 2" in problems[0]


def test_zeros_over_acknowledged_data_are_caught() -> None:
    r = record(write(1, 0, 2, 1.0, 2.0))
    problems = judge(r, pages(1, None), SEED, as_of=5.0, done=6.0)
    assert problems and "zeros" in problems[0]


def test_bytes_no_one_wrote_are_caught_also_in_unacknowledged_pages() -> None:
    r = record(write(1, 0, 1, 1.0, None))
    data = bytearray(pages(1))
    data[100] ^= 1
    problems = judge(r, bytes(data), SEED, as_of=5.0, done=6.0)
    assert problems and "bytes no one wrote" in problems[0]


def test_a_write_invoked_after_the_read_ended_cannot_explain_it() -> None:
    r = record(write(1, 0, 1, 1.0, 2.0), write(2, 0, 1, 7.0, 8.0))
    problems = judge(r, pages(2), SEED, as_of=5.0, done=6.0)
    assert problems and "bytes no one wrote" in problems[0]


def test_the_workload_on_a_local_directory_checks_clean_and_finds_one_flipped_byte(tmp_path: Path) -> None:
    mounts = {"a": tmp_path / "a", "b": tmp_path / "b"}
    mounts["a"].mkdir()
    mounts["b"].symlink_to(mounts["a"])   # two "mounts" of one file system
    work = Workload(SEED, mounts, "row", pause_s=0.0).start()
    deadline = time.monotonic() + 5
    while (work.acked() < 30 or work.meta_ops < 30) and time.monotonic() < deadline:
        time.sleep(0.01)
    work.stop()
    assert work.acked() >= 30 and work.meta_ops >= 30, work.summary()
    assert not work.errors and not work.wrong, work.summary()
    assert work.reads_checked > 0
    assert work.check_data("b", mounts["b"]) == []
    assert work.check_meta(mounts["b"]).ok is True
    victim = next(r for r in work.files.values() if any(w.acked_at for w in r.writes))
    with open(mounts["a"] / victim.path, "r+b") as fp:
        fp.seek(PAGE_BYTES // 2)
        byte = fp.read(1)
        fp.seek(PAGE_BYTES // 2)
        fp.write(bytes([byte[0] ^ 0x10]))
    problems = work.check_data("b", mounts["b"], [victim.path])
    assert len(problems) == 1 and "page 0" in problems[0].detail


def test_a_lost_create_fails_the_metadata_check(tmp_path: Path) -> None:
    mounts = {"a": tmp_path / "a"}
    mounts["a"].mkdir()
    work = Workload(SEED, mounts, "row", pause_s=0.0, readers=False).start()
    deadline = time.monotonic() + 5
    while work.meta_ops < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    work.stop()
    assert work.check_meta().ok is True
    survivors = sorted((mounts["a"] / "row" / "meta-a").iterdir())
    assert survivors, "the metadata worker left nothing to lose"
    survivors[0].rmdir() if survivors[0].is_dir() else survivors[0].unlink()
    result = work.check_meta(mounts["a"])
    assert result.ok is False, result.explain()


def test_the_workload_in_a_process_of_its_own_answers_like_the_one_in_this_process(tmp_path: Path) -> None:
    mounts = {"a": tmp_path / "a", "b": tmp_path / "b"}
    mounts["a"].mkdir()
    mounts["b"].symlink_to(mounts["a"])
    with RemoteWorkload(SEED, mounts, "row", pause_s=0.0) as work:
        assert work.pid is not None and work.pid != os.getpid()
        deadline = time.monotonic() + 10
        while (work.acked() < 20 or work.meta_acked() < 20) and time.monotonic() < deadline:
            time.sleep(0.05)
        work.stop()
        assert work.acked(client="a") + work.acked(client="b") == work.acked() >= 20
        assert not work.errors and not work.wrong and not work.expected_errors
        assert work.check_data("b", mounts["b"]) == []
        assert work.check_meta(mounts["a"]).ok is True
        assert len(work.writes) >= 20 and all(p.startswith("row/data-") for p in work.files)
        work.save(tmp_path / "history.json")
        pid = work.pid
    assert (tmp_path / "history.json").stat().st_size > 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
