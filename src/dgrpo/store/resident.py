"""A fused process's view of the store: its writes queued to one background writer, its objects kept in memory.

A fused segment (`dgrpo.runtime.fused`) writes every table, tensor file and record a staged run writes, but the
steps after a write run in the same process. So a write need not hold up the GPU: `ResidentStore` hashes the bytes
(the reference needs the hash), keeps them, and hands the write to a thread that drains a FIFO queue while the next
step computes. A later read of the object is served from memory (trusted: hashed here when written); a record
queued and not yet written reads back as queued.

What a crash can lose is what a synchronous writer killed earlier would have lost: the writer keeps the order of
the writes, and stops at its first failure, so the store holds a prefix of what the process wrote. Anything another
process acts on is written first: a create-if-absent (a commit, a lease) and a delete flush the queue, and so does
`flush()`, which the fused processes call before they exchange references and before handing the store to a
subprocess. A failed background write fails the next call, naming the key.
"""

import queue
import threading
from collections import OrderedDict

from dgrpo.store.base import ArtifactRef, ArtifactStore, StoreError, sha256_bytes

GiB = 1024**3


class ResidentStore(ArtifactStore):
    """`inner` behind a write-behind queue and an in-memory cache of the objects this process wrote or read.

    `capacity_bytes` bounds the cache (least recently used objects go first, once they are written); a round's
    rollouts with their trajectories should fit, so the steps after rollout read them from memory."""

    def __init__(self, inner: ArtifactStore, capacity_bytes: int = 4 * GiB):
        self.inner, self.uri, self.capacity_bytes = inner, inner.uri, capacity_bytes
        self._queue: queue.Queue = queue.Queue()
        self._pending: dict[str, bytes] = {}
        """The last bytes queued for each key not yet written."""
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._failure: StoreError | None = None
        self._writer = threading.Thread(target=self._drain, name="dgrpo-store-writer", daemon=True)
        self._writer.start()

    # the writer thread
    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            key, data, sha = item
            try:
                # after a failure nothing more is written: the store keeps a prefix of the writes
                if self._failure is None and (sha is None or not self.inner._holds(key, sha, len(data))):
                    self.inner._write(key, data)
            except Exception as exc:  # noqa: BLE001 - any failure is reported to the caller's next store call
                self._failure = StoreError(f"writing {self.uri}/{key} in the background: {exc}")
                self._failure.__cause__ = exc
            finally:
                with self._lock:
                    if self._pending.get(key) is data:
                        del self._pending[key]
                    self._trim()
                self._queue.task_done()
        self._queue.task_done()

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def flush(self) -> None:
        """Wait until every queued write is in `inner`; raise the first background failure."""
        self._queue.join()
        self._check()

    def close(self, *, raise_failure: bool = True) -> None:
        """Flush and stop the writer. `raise_failure` False: after another error, write what can be written and
        keep that error the one reported."""
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        if raise_failure:
            self._check()

    def _enqueue(self, key: str, data: bytes, sha: str | None) -> None:
        self._check()
        with self._lock:
            self._pending[key] = data
        self._queue.put((key, data, sha))

    def _remember(self, key: str, data: bytes) -> None:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return
            self._cache[key], self._cached_bytes = data, self._cached_bytes + len(data)
            self._trim()

    def _trim(self) -> None:
        """Drop the least recently used objects past the capacity (with the lock held); a queued object stays
        until it is written."""
        for key in list(self._cache):
            if self._cached_bytes <= self.capacity_bytes:
                return
            if key not in self._pending:
                self._cached_bytes -= len(self._cache.pop(key))

    def _cached(self, key: str) -> bytes | None:
        with self._lock:
            if key in self._pending:
                return self._pending[key]
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        return None

    # the store's interface
    def put(self, data: bytes, kind: str, suffix: str = "") -> ArtifactRef:
        """The object's reference at once; the bytes are written by the writer (rewritten where `inner` holds a
        corrupt copy, as `ArtifactStore.put` does)."""
        sha = sha256_bytes(data)
        key = f"objects/{sha[:2]}/{sha}{suffix}"
        if self._cached(key) is None:
            self._enqueue(key, data, sha)
            self._remember(key, data)
        else:
            self._check()
        return ArtifactRef(kind=kind, uri=f"{self.uri.rstrip('/')}/{key}", sha256=sha, size=len(data))

    def get(self, ref: ArtifactRef) -> bytes:
        data = self._cached(self.key_of(ref))
        if data is not None:  # hashed when this process wrote or first read it
            return data
        data = self.inner.get(ref)
        self._remember(self.key_of(ref), data)
        return data

    def _write(self, key: str, data: bytes) -> None:
        self._enqueue(key, data, None)

    def _read(self, key: str) -> bytes:
        data = self._cached(key)
        return self.inner._read(key) if data is None else data

    def _exists(self, key: str) -> bool:
        return self._cached(key) is not None or self.inner._exists(key)

    def _list(self, prefix: str) -> list[str]:
        under = prefix.rstrip("/") + "/"
        with self._lock:
            queued = {k for k in self._pending if k.startswith(under)}
        return sorted(set(self.inner._list(prefix)) | queued)

    def _create(self, key: str, data: bytes) -> bool:
        self.flush()  # what the record names is written before the record
        return self.inner._create(key, data)

    def _delete(self, key: str) -> None:
        self.flush()
        with self._lock:
            if key in self._cache:
                self._cached_bytes -= len(self._cache.pop(key))
        self.inner._delete(key)
