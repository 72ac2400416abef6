"""The fused process's store (dgrpo.store.resident): writes behind a FIFO queue, its own objects read from memory."""

import threading

import pytest
from support import small_config

from dgrpo.runtime import fine_tune, fused
from dgrpo.runtime import segment as seg
from dgrpo.store import LocalStore, ResidentStore, StoreError


class Recording(LocalStore):
    """A local store that logs what reaches it and can hold its writes until released."""

    def __init__(self, root, fail_on: str = ""):
        super().__init__(root)
        self.log: list[tuple[str, str]] = []
        self.release = threading.Event()
        self.release.set()
        self.fail_on = fail_on

    def _write(self, key, data):
        self.release.wait(timeout=30)
        if self.fail_on and key.endswith(self.fail_on):
            raise OSError(28, "No space left on device")
        self.log.append(("write", key))
        super()._write(key, data)

    def _create(self, key, data):
        self.log.append(("create", key))
        return super()._create(key, data)

    def _read(self, key):
        self.log.append(("read", key))
        return super()._read(key)


def test_writes_return_at_once_and_read_back_before_they_land(tmp_path):
    inner = Recording(tmp_path / "store")
    inner.release.clear()  # the writer blocks on its first write
    store = ResidentStore(inner)
    ref = store.put(b"rollouts" * 1000, kind="rollouts", suffix=".parquet")
    store.put_json("runs/ft/events/r0000-rollout.json", {"round": 0})
    assert store.get(ref) == b"rollouts" * 1000
    assert store.get_json("runs/ft/events/r0000-rollout.json") == {"round": 0}
    assert store.exists(store.key_of(ref)) and store.list("runs/ft/events") == ["runs/ft/events/r0000-rollout.json"]
    assert not (inner.root / store.key_of(ref)).exists()  # nothing has landed yet
    assert not [k for op, k in inner.log if op == "read"]  # every read above came from memory
    inner.release.set()
    store.flush()
    assert inner.get(ref) == b"rollouts" * 1000 and inner.get_json("runs/ft/events/r0000-rollout.json") == {"round": 0}
    assert [k for op, k in inner.log if op == "write"] == [store.key_of(ref), "runs/ft/events/r0000-rollout.json"]
    store.close()


def test_a_create_lands_after_every_write_before_it(tmp_path):
    """A commit (create-if-absent) names the objects before it: they are in the store when it is."""
    inner = Recording(tmp_path / "store")
    store = ResidentStore(inner)
    refs = [store.put(bytes([i]) * 100, kind="adapter", suffix=".safetensors") for i in range(3)]
    assert store.create_json("runs/ft/commits/r000000.json", {"adapter": refs[-1].sha256})
    writes = [(op, k) for op, k in inner.log if op in ("write", "create")]
    assert writes == [("write", store.key_of(r)) for r in refs] + [("create", "runs/ft/commits/r000000.json")]
    store.close()


def test_a_failed_background_write_stops_the_writer_and_fails_the_next_call(tmp_path):
    """The store keeps a prefix of the writes: nothing after the failed one lands, and the error names the key."""
    inner = Recording(tmp_path / "store", fail_on="second.json")
    store = ResidentStore(inner)
    store.put_json("runs/ft/first.json", 1)
    store.put_json("runs/ft/second.json", 2)
    store.put_json("runs/ft/third.json", 3)
    with pytest.raises(StoreError, match=r"writing .*runs/ft/second.json in the background: .*No space left"):
        store.flush()
    with pytest.raises(StoreError, match="second.json"):
        store.put_json("runs/ft/fourth.json", 4)
    assert inner.list("runs/ft") == ["runs/ft/first.json"]
    store.close(raise_failure=False)
    with pytest.raises(StoreError, match="second.json"):
        store.close()


def test_memory_is_bounded_and_objects_past_it_are_read_from_the_store(tmp_path):
    inner = Recording(tmp_path / "store")
    store = ResidentStore(inner, capacity_bytes=250)
    first, second, third = (store.put(bytes([i]) * 100, kind="t") for i in range(3))
    store.flush()
    inner.log.clear()
    assert store.get(third) == bytes([2]) * 100 and store.get(second) == bytes([1]) * 100
    assert not inner.log  # the two most recent fit in 250 bytes
    assert store.get(first) == bytes([0]) * 100
    assert inner.log == [("read", store.key_of(first))]
    store.close()


def test_a_corrupt_copy_in_the_store_is_rewritten(tmp_path):
    inner = LocalStore(tmp_path / "store")
    ref = inner.put(b"weights", kind="adapter")
    (inner.root / inner.key_of(ref)).write_bytes(b"weightz")
    store = ResidentStore(inner)
    assert store.put(b"weights", kind="adapter") == ref
    store.close()
    assert inner.get(ref) == b"weights"


@pytest.mark.parametrize("resident_gb, reads_rollouts", [(4.0, False), (0.0, True)])
def test_a_fused_segment_reads_its_rounds_tables_from_memory(tmp_path, resident_gb, reads_rollouts):
    """Reward, cluster and update read what rollout wrote in the same process: with the default memory none of the
    round's tables is read back from the store; with none kept (the control) they are."""
    config = small_config(**{"rounds": 2, "eval.every": 100, "pipeline.resident_gb": resident_gb})
    inner = Recording(tmp_path / "store")
    record = fine_tune.start(inner, config, "ft")
    state, base_due = seg.open_segment(inner, "ft", record.config_sha256, "k")
    inner.log.clear()
    fused.train_segment(inner, state, False)
    written = {k for op, k in inner.log if op == "write" and k.endswith(".parquet")}
    read = {k for op, k in inner.log if op == "read" and k.endswith(".parquet")}
    assert written and bool(read & written) is reads_rollouts
    assert seg.finish_segment(inner, "ft", record.config_sha256, "k", "SUCCEEDED").decision.action == "done"
