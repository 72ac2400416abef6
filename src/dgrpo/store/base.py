"""Content-addressed artifact store: the references stages pass and the primitives every backend implements.

Objects are immutable and named by their sha256, so an artifact reference pins its bytes and a read verifies
them. Each object has a lineage record beside it. The store is an abstract seam: `dgrpo.store.local.LocalStore`
writes to a directory with atomic temp-and-rename writes; `dgrpo.store.s3.S3Store` implements the same
primitives on S3.
"""

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


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

    @abstractmethod
    def _create(self, key: str, data: bytes) -> bool:
        """Write `data` at `key` only if nothing is there, atomically; True if this call created it."""

    @abstractmethod
    def _delete(self, key: str) -> None:
        """Remove the object at `key`; absent is not an error."""

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

    def create_json(self, key: str, obj: Any) -> bool:
        """Create the record at `key` unless one exists, atomically (create-if-absent): True for the one caller
        that created it, however many race. Put something unique in `obj` (a claim id): a retried request whose
        first attempt already succeeded finds the same bytes and still counts as created."""
        return self._create(key, json.dumps(obj, indent=2, sort_keys=True).encode())

    def delete(self, key: str) -> None:
        self._delete(key)

    def exists(self, key: str) -> bool:
        return self._exists(key)
