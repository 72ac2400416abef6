"""The store on a local or mounted file system: a directory with atomic temp-and-rename writes."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from dgrpo.files import staged_file
from dgrpo.store.base import ArtifactRef, ArtifactStore, StoreError, sha256_file

__all__ = ["LocalStore"]


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
        """`data` complete and synced in a temp file beside `key`'s path: (temp, path) (`dgrpo.files.staged_file`:
        a full disk or a kill leaves no partial object); OS errors name the key."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with staged_file(path, data) as tmp:
                yield tmp, path
        except FileExistsError:
            raise
        except OSError as exc:
            raise StoreError(f"writing {self.uri}/{key}: {exc.strerror or exc}") from exc

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
