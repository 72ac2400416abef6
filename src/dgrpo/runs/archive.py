"""Reading a run's records whole, as JSON, for the passes that walk all of them (verify, gc) or move them
(a failed start set aside), and the records of what gc deleted."""

from typing import Any

from dgrpo.runs import keys
from dgrpo.runs.record import put
from dgrpo.runs.records import Pruned
from dgrpo.store import ArtifactStore


def run_record_keys(store: ArtifactStore, run_id: str) -> list[str]:
    """Every JSON record of `run_id` (not its reports' text)."""
    return [k for k in store.list(keys.run_key(run_id, "")) if k.endswith(".json")]


def read_raw(store: ArtifactStore, key: str) -> Any:
    """The JSON at record key `key` as stored (ValueError when it is not JSON)."""
    return store.get_json(key)


def copy_record(store: ArtifactStore, key: str, to: str) -> None:
    """Copy the JSON record at `key` to `to` (ValueError when it is not JSON)."""
    store.put_json(to, store.get_json(key))


def write_pruned(store: ArtifactStore, record: Pruned) -> str:
    """Record one gc pass of `record.run_id`; its key."""
    key = keys.pruned_key(record.run_id, record.pruned_at)
    put(store, key, record)
    return key


def pruned_keys(store: ArtifactStore) -> list[str]:
    """The keys of every gc record of every run in the store, oldest first per run."""
    return sorted(k for k in store.list(keys.RUNS) if "/pruned/" in k and k.endswith(".json"))


def known_runs(store: ArtifactStore) -> list[str]:
    """The run ids with records in the store."""
    return sorted({keys.run_id_of(k) for k in store.list(keys.RUNS) if k.count("/") >= 2})
