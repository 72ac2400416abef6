"""dgrpo.files: the one atomic write that the store, exports, reports and checkpoints share."""

import errno
import os
import stat
import types

import pytest

import dgrpo.files as files
from dgrpo.files import atomic_write_bytes, atomic_write_text, file_mode


def test_a_write_creates_its_directory_has_the_umask_mode_and_leaves_no_temp_file(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "b" / "report.html", "<p>é</p>")
    assert path.read_bytes() == "<p>é</p>".encode()
    assert stat.S_IMODE(path.stat().st_mode) == file_mode()
    assert os.listdir(path.parent) == ["report.html"]


def test_a_failed_write_keeps_the_old_file_removes_the_temp_file_and_names_the_path(tmp_path, monkeypatch):
    path = atomic_write_bytes(tmp_path / "table.parquet", b"old")

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    shim = types.ModuleType("os")
    shim.__dict__.update(os.__dict__)
    shim.fsync = fsync
    monkeypatch.setattr(files, "os", shim)
    with pytest.raises(OSError, match="No space left on device") as failed:
        atomic_write_bytes(path, b"new")
    assert failed.value.filename == str(path) and failed.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["table.parquet"]


def test_a_parent_that_is_a_file_is_an_error_naming_the_path(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(FileExistsError) as failed:
        atomic_write_text(tmp_path / "out" / "images.json", "{}")
    assert failed.value.filename == str(tmp_path / "out" / "images.json")
