"""The store on a local or mounted file system: a directory with atomic temp-and-rename writes."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dgrpo.store.base import ArtifactRef, ArtifactStore, StoreError, sha256_file


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


class LocalStore(ArtifactStore):
    """A directory on a local or mounted file system."""

    def __init__(self, root: str | Path, create: bool = True):
        """`create` False (a read-only command: status, report, lineage, verify): a missing directory is an error
        naming the path, not a new empty store that hides a mistyped --store."""
        self.root = Path(root).expanduser().resolve()
        if not create and not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise StoreError(f"store {self.root}: {what}; check the path (a read-only command creates no store)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StoreError(f"key {key!r} escapes store {self.uri}")
        return path

    @contextlib.contextmanager
    def _staged(self, key: str, data: bytes) -> Iterator[tuple[Path, Path]]:
        """`data` complete and synced in a temp file beside `key`'s path: (temp, path). The temp file is gone
        afterwards whatever happens, so a full disk or a kill leaves no partial object; OS errors name the key."""
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            tmp = Path(name)
            os.fchmod(fd, file_mode())  # mkstemp's 0600 would shut out every other user of a shared store
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            yield tmp, path
        except FileExistsError:
            raise
        except OSError as exc:
            raise StoreError(f"writing {self.uri}/{key}: {exc.strerror or exc}") from exc
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def _write(self, key: str, data: bytes) -> None:
        with self._staged(key, data) as (tmp, path):
            os.replace(tmp, path)

    def _create(self, key: str, data: bytes) -> bool:
        """The complete temp file hard-linked into place: link() fails if the name exists, so exactly one of any
        number of racing processes wins, and readers never see a partial file (unlike O_EXCL)."""
        try:
            with self._staged(key, data) as (tmp, path):
                os.link(tmp, path)
        except FileExistsError:
            return False
        return True

    def _holds(self, key: str, sha256: str, size: int) -> bool:
        path = self._path(key)
        try:
            return path.stat().st_size == size and sha256_file(path) == sha256
        except FileNotFoundError:
            return False

    def _delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def _exists(self, key: str) -> bool:
        return self._path(key).exists()

    def _list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file()
                      and not p.name.endswith(".tmp"))

    def local_path(self, ref: ArtifactRef) -> Path:
        """The file behind `ref`, for libraries that want a path (hash not re-checked)."""
        return self._path(self.key_of(ref))
