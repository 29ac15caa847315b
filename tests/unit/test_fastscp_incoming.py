"""IncomingFile with a staging buffer: the instance is collected in memory and written
in one O_DIRECT write at seal(); too big, it spills to a plain write; a file system
that refuses O_DIRECT (tmpfs) gets the plain write. The file is the same every way."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pacsinfra.pacs.fastscp.incoming import PREAMBLE, IncomingFile, Staging

META = b"\x02\x00\x00\x00UL\x04\x00\x00\x00\x00\x00"


def _fill(inc: IncomingFile, data: bytes, step: int) -> None:
    for pos in range(0, len(data), step):
        inc.write(memoryview(data)[pos:pos + step])


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 300_000])
def test_staged_instance_is_written_whole_at_seal(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    staging = Staging(1 << 20)
    inc = IncomingFile(tmp_path, META, staging=staging)
    _fill(inc, data, 10_000)
    assert inc.staged and not inc.path.exists()  # nothing on disk before seal
    assert inc.sha256() == hashlib.sha256(data).hexdigest()  # hashed as it came
    with inc.mapped() as view:
        assert bytes(view) == data
    inc.seal()
    assert inc.path.read_bytes() == PREAMBLE + META + data  # exact size, no padding
    inc.discard()
    assert not inc.path.exists()


def test_an_instance_bigger_than_the_buffer_spills_to_a_plain_write(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    inc = IncomingFile(tmp_path, META, staging=Staging(64 << 10))
    _fill(inc, data, 30_000)
    assert not inc.staged
    with inc.mapped() as view:
        assert bytes(view) == data
    inc.seal()
    assert inc.path.read_bytes() == PREAMBLE + META + data
    inc.keep()
    inc.discard()
    assert inc.path.exists()


def test_reused_buffer_leaves_nothing_of_the_previous_instance(tmp_path: Path) -> None:
    staging = Staging(1 << 20)
    first = IncomingFile(tmp_path, META, staging=staging)
    _fill(first, b"\xff" * 100_000, 4096)
    first.seal()
    second = IncomingFile(tmp_path, META, staging=staging)
    _fill(second, b"\x01" * 10, 10)
    second.seal()
    assert second.path.read_bytes() == PREAMBLE + META + b"\x01" * 10


def test_a_refused_o_direct_write_falls_back(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that refuses O_DIRECT answers EINVAL (some FUSE ones, older
    tmpfs): the same bytes go in with a plain write (fault injected here, since this
    machine's file systems all take O_DIRECT)."""
    import errno

    refused: list[int] = []

    def pwrite(fd: int, data: object, offset: int) -> int:
        refused.append(fd)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "pwrite", pwrite)
    data = os.urandom(50_000)
    inc = IncomingFile(tmp_path, META, staging=Staging(1 << 20))
    _fill(inc, data, 8192)
    inc.seal()
    assert refused, "the O_DIRECT write was tried first"
    assert inc.path.read_bytes() == PREAMBLE + META + data


def test_a_full_disk_is_an_error_not_a_fallback(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def pwrite(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", pwrite)
    inc = IncomingFile(tmp_path, META, staging=Staging(1 << 20))
    _fill(inc, b"x" * 10_000, 4096)
    with pytest.raises(OSError) as err:
        inc.seal()
    assert err.value.errno == errno.ENOSPC


def test_created_at_its_final_name_or_refused_when_one_exists(tmp_path: Path) -> None:
    data = os.urandom(70_000)
    inc = IncomingFile(tmp_path / "incoming", META, staging=Staging(1 << 20))
    _fill(inc, data, 16_384)
    final = tmp_path / "study" / "x.dcm"
    final.parent.mkdir()
    assert inc.create_at(final)
    inc.seal()
    inc.keep()
    inc.discard()
    assert final.read_bytes() == PREAMBLE + META + data
    assert not (tmp_path / "incoming").exists()  # no temp file was ever made

    again = IncomingFile(tmp_path, META, staging=Staging(1 << 20))
    _fill(again, data, 16_384)
    assert not again.create_at(final)  # exists: the caller renames a sealed temp file
    again.seal()
    assert again.path != final and again.path.read_bytes() == final.read_bytes()
    again.discard()
    assert not again.path.exists() and final.exists()


def test_a_failed_write_at_the_final_name_leaves_no_file(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def pwrite(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    inc = IncomingFile(tmp_path, META, staging=Staging(1 << 20))
    _fill(inc, b"y" * 5000, 1000)
    final = tmp_path / "y.dcm"
    assert inc.create_at(final)
    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(OSError):
        inc.seal()
    inc.discard()  # not kept: the partial file goes
    assert not final.exists()


def test_staging_pool_bounds_the_memory_of_instances_in_flight(tmp_path: Path) -> None:
    """At most total // size buffers are lent; a borrower that finds none streams to its
    file; a buffer comes back when its instance spills or is done with."""
    from pacsinfra.pacs.fastscp.incoming import StagingPool

    pool = StagingPool(1 << 16, 2 << 16)
    meta = b"\x02\x00\x10\x00UI\x02\x001\x00"
    files = [IncomingFile(tmp_path, meta, staging=pool.acquire(), release=pool.release)
             for _ in range(3)]
    assert [f.staged for f in files] == [True, True, False] and pool.in_use == 2
    files[0].write(memoryview(b"x" * (1 << 17)))  # outgrows its buffer: spills, gives it back
    assert not files[0].staged and pool.in_use == 1
    files[1].discard()
    assert pool.in_use == 0
    again = pool.acquire()
    assert again is not None and pool.acquire() is not None and pool.acquire() is None
    files[0].seal()
    assert files[0].path.read_bytes().endswith(b"x" * (1 << 17))
    for f in (files[0], files[2]):
        f.discard()
