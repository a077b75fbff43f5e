"""Writes are atomic: a failure mid-write (a full disk) leaves the previous file intact."""

import errno

import pytest

from methods import atomic


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.csv"
    atomic.write_text(path, "old")

    def fill_disk(tmp):
        tmp.write_text("half of the new con")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(atomic.WriteError, match=r"results.csv: No space left on device \(out of"):
        atomic.atomic_write(path, fill_disk)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_an_unwritable_place_is_a_write_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(atomic.WriteError, match="cannot write"):
        atomic.write_text(tmp_path / "file" / "sub" / "run.json", "{}")
