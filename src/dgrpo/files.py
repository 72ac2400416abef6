"""Atomic file writes: the one home of the temp-file, fsync, rename idiom.

A reader (another stage, a person opening a report, `make images`' consumers) sees the old file or the new one,
never part of one, and a kill or a full disk leaves no partial file behind. `LocalStore` stages its objects
here too, so a store object, an exported table, a report and a checkpoint are written the same way.
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def file_mode() -> int:
    """The mode a new file gets from this process's umask (0o644 under the usual 022).

    `tempfile.mkstemp`, which the atomic writes use, creates files 0600 whatever the umask: nobody chose that for
    the store (git log -S mkstemp), and it makes a shared or NFS store unreadable to another UID, such as the
    stage images' user 10001. Linux reports the umask in /proc/self/status; elsewhere it is read by setting it and
    putting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def staged_file(path: Path, data: bytes) -> Iterator[Path]:
    """`data` complete and synced in a temp file beside `path` (mode `file_mode()`), for the caller to move into
    place: `os.replace` to overwrite, `os.link` to refuse an existing name. The temp file is gone afterwards
    whatever happens; its name ends in `.tmp`, which store listings skip."""
    tmp = None
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())  # mkstemp's 0600 would shut out every other user of a share
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        yield tmp
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically, creating its directory; an OSError names `path` (not the temp file,
    which a person never sees), so the one-line error of the command line says which file failed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with staged_file(path, data) as tmp:
            os.replace(tmp, path)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """`atomic_write_bytes` of `text` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))
