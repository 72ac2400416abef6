"""Content-addressed artifact store: the references stages pass and the primitives every backend implements.

Objects are immutable and named by their sha256, so an artifact reference pins its bytes and a read verifies
them. Each object has a lineage record beside it. The store is an abstract seam: `dgrpo.store.local.LocalStore`
writes to a directory with atomic temp-and-rename writes; `dgrpo.store.s3.S3Store` implements the same
primitives on S3.
"""

import hashlib
import json
import logging
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("dgrpo.store")
OBJECT_KEY = re.compile(r"objects/[0-9a-f]{2}/([0-9a-f]{64})(?:\.[A-Za-z0-9_-]+)?")
"""The key of a content-addressed object: objects/<sha256[:2]>/<sha256><suffix>."""


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

    def _holds(self, key: str, sha256: str, size: int) -> bool:
        """Whether `key` holds exactly the object of hash `sha256` and `size` bytes (False when absent).
        Backends override it to compare the size before reading the bytes."""
        try:
            return sha256_bytes(self._read(key)) == sha256
        except FileNotFoundError:
            return False

    def key_of(self, ref: ArtifactRef) -> str:
        """The key of `ref`'s object in this store, taken from the object's name (`objects/<sha[:2]>/<sha><suffix>`)
        rather than from where the store was when the reference was written: a local store moved or mounted at
        another path, or a bucket copied under another prefix, still resolves the references its commits hold."""
        base = self.uri.rstrip("/") + "/"
        at = ref.uri.rfind("/objects/")
        key = ref.uri[len(base):] if ref.uri.startswith(base) else ref.uri[at + 1:] if at >= 0 else ""
        match = OBJECT_KEY.fullmatch(key)
        if match is None or match.group(1) != ref.sha256 or not key.startswith(f"objects/{ref.sha256[:2]}/"):
            raise StoreError(f"{ref.kind} artifact {ref.uri}: not an object of a dgrpo store (expected "
                             f".../objects/{ref.sha256[:2]}/{ref.sha256}[.suffix])")
        return key

    def put(self, data: bytes, kind: str, suffix: str = "") -> ArtifactRef:
        """Store `data` under its content hash. An object already at that key is trusted only once its bytes check
        out; a truncated or altered copy (a disk error, a tool that wrote in place, tampering) is rewritten, so an
        identical rerun heals the store instead of failing on the same corrupt object every time."""
        sha = sha256_bytes(data)
        key = f"objects/{sha[:2]}/{sha}{suffix}"
        if not self._holds(key, sha, len(data)):
            if self._exists(key):
                log.warning("%s: stored object %s did not match its content hash; rewritten", self.uri, key)
            self._write(key, data)
        return ArtifactRef(kind=kind, uri=f"{self.uri.rstrip('/')}/{key}", sha256=sha, size=len(data))

    def get(self, ref: ArtifactRef) -> bytes:
        try:
            data = self._read(self.key_of(ref))
        except FileNotFoundError as exc:
            raise StoreError(f"{ref.kind} artifact {ref.uri}: not found in {self.uri}") from exc
        actual = sha256_bytes(data)
        if actual != ref.sha256:
            raise StoreError(f"{ref.kind} artifact {ref.uri}: content hash {actual} does not match {ref.sha256}")
        return data

    def check_object(self, ref: ArtifactRef) -> str | None:
        """What is wrong with `ref`'s object in this store (missing, wrong size when the reference records one,
        wrong hash), or None if it is intact; for `dgrpo verify` and `dgrpo lineage`."""
        try:
            key = self.key_of(ref)
            data = self._read(key)
        except FileNotFoundError:
            return f"{ref.kind} artifact {ref.sha256[:12]}: missing ({ref.uri})"
        except StoreError as exc:
            return str(exc)
        actual = sha256_bytes(data)
        if actual != ref.sha256:
            return (f"{ref.kind} artifact {ref.sha256[:12]}: corrupt, {len(data)} bytes with content hash "
                    f"{actual[:12]}, expected {ref.sha256} ({key})")
        if ref.size and len(data) != ref.size:
            return f"{ref.kind} artifact {ref.sha256[:12]}: {len(data)} bytes, its reference says {ref.size}"
        return None

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

    def flush(self) -> None:
        """Make every write so far visible to other processes (before handing them the store or a reference).
        A store that writes synchronously has nothing to do; `dgrpo.store.resident.ResidentStore` drains its queue."""
        return None
