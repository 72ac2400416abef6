"""Content-addressed artifact store.

Objects are immutable and named by their sha256, so an artifact reference pins its bytes and a read verifies
them. Each object has a lineage record beside it. The store is an abstract seam: `LocalStore` writes to a
directory with atomic temp-and-rename writes; `dgrpo.s3store.S3Store` implements the same four primitives on S3.
"""

import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class StoreError(RuntimeError):
    """An artifact cannot be read or written; the message names the artifact."""


@dataclass(frozen=True)
class ArtifactRef:
    """A pointer to one immutable artifact: what passes between pipeline stages."""

    kind: str
    uri: str
    sha256: str
    size: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "artifact reference") -> "ArtifactRef":
        try:
            data = json.loads(text)
            return cls(kind=data["kind"], uri=data["uri"], sha256=data["sha256"], size=int(data["size"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{source}: not a dgrpo artifact reference ({exc})") from exc


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ArtifactStore(ABC):
    """Objects under `objects/`, lineage under `lineage/`, run records under `runs/`."""

    uri: str

    @abstractmethod
    def _write(self, key: str, data: bytes) -> None:
        """Write `data` at `key` atomically: readers see all of it or nothing."""

    @abstractmethod
    def _read(self, key: str) -> bytes:
        """Read the object at `key`; raise FileNotFoundError when absent."""

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _list(self, prefix: str) -> list[str]:
        """Keys under `prefix`, sorted."""

    def _key_of(self, uri: str) -> str:
        base = self.uri.rstrip("/") + "/"
        if not uri.startswith(base):
            raise StoreError(f"artifact {uri} is not in store {self.uri}")
        return uri[len(base):]

    def put(self, data: bytes, kind: str, suffix: str = "") -> ArtifactRef:
        sha = sha256_bytes(data)
        key = f"objects/{sha[:2]}/{sha}{suffix}"
        if not self._exists(key):
            self._write(key, data)
        return ArtifactRef(kind=kind, uri=f"{self.uri.rstrip('/')}/{key}", sha256=sha, size=len(data))

    def get(self, ref: ArtifactRef) -> bytes:
        try:
            data = self._read(self._key_of(ref.uri))
        except FileNotFoundError as exc:
            raise StoreError(f"{ref.kind} artifact {ref.uri}: not found") from exc
        actual = sha256_bytes(data)
        if actual != ref.sha256:
            raise StoreError(f"{ref.kind} artifact {ref.uri}: content hash {actual} does not match {ref.sha256}")
        return data

    def put_json(self, key: str, obj: Any) -> None:
        self._write(key, json.dumps(obj, indent=2, sort_keys=True).encode())

    def put_text(self, key: str, text: str) -> None:
        self._write(key, text.encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self._read(key))

    def list(self, prefix: str) -> list[str]:
        return self._list(prefix)

    def exists(self, key: str) -> bool:
        return self._exists(key)


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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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
        return self._path(self._key_of(ref.uri))


def open_store(uri: str) -> ArtifactStore:
    """Open the store at `uri`: a directory path, a file:// URI, or s3://bucket/prefix (see `dgrpo.s3store`)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.path if parsed.scheme else uri)
    if parsed.scheme == "s3":
        from dgrpo.s3store import S3Store

        return S3Store(uri)
    raise StoreError(f"store URI {uri!r}: unsupported scheme '{parsed.scheme}' "
                     "(supported: a local path, file://, s3://)")
