"""The store on a local or mounted file system: a directory with atomic temp-and-rename writes."""

import os
import tempfile
from pathlib import Path

from dgrpo.store.base import ArtifactRef, ArtifactStore, StoreError, sha256_file


class LocalStore(ArtifactStore):
    """A directory on a local or mounted file system."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StoreError(f"key {key!r} escapes store {self.uri}")
        return path

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise StoreError(f"writing {self.uri}/{key}: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)  # a full disk or a kill leaves no partial object, only this name gone
            if isinstance(exc, OSError):
                raise StoreError(f"writing {self.uri}/{key}: {exc.strerror or exc}") from exc
            raise

    def _create(self, key: str, data: bytes) -> bool:
        """A complete temp file hard-linked into place: link() fails if the name exists, so exactly one of any
        number of racing processes wins, and readers never see a partial file (unlike O_EXCL)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

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
