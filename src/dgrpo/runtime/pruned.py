"""Records of the objects `dgrpo gc` deleted, so `verify` and `lineage` tell a pruned object from a lost one.

Each gc pass that deletes anything first writes one record (`dgrpo.runs.archive.write_pruned`), listing every
object it is about to delete (sha256, kind, size, round, key). The record is written before the first delete, so a
gc killed half-way leaves objects that are either still there or listed; rerunning gc deletes the rest. Lineage
records are never deleted: a pruned object's chain still reads, its bytes are gone. An entry has no `uri`, so
`verify` does not take it for a reference the run needs.
"""

from dataclasses import dataclass

from dgrpo.runs.archive import pruned_keys, read_raw, write_pruned
from dgrpo.runs.keys import now
from dgrpo.runs.records import Pruned
from dgrpo.store import ArtifactStore, StoreError


@dataclass(frozen=True)
class PrunedObject:
    """One deleted object, as its gc record lists it."""

    sha256: str
    kind: str
    size: int
    round: int
    key: str
    run_id: str
    pruned_at: str

    def describe(self) -> str:
        return f"pruned (by gc at {self.pruned_at})"


def write_record(store: ArtifactStore, run_id: str, objects: list[dict], policy: dict) -> str:
    """Record `objects` (dicts of sha256, kind, size, round, key) as pruned by one gc pass of `run_id`; its key."""
    key = write_pruned(store, Pruned(run_id=run_id, pruned_at=now(), by="dgrpo gc", policy=policy, objects=objects))
    store.flush()
    return key


def pruned_index(store: ArtifactStore) -> dict[str, PrunedObject]:
    """Every object any gc pass of any run in the store recorded as pruned, by sha256 (the latest pass wins).
    Content-addressed objects are shared between runs, so one run's verify must see another run's gc."""
    out: dict[str, PrunedObject] = {}
    for key in pruned_keys(store):
        try:
            record = Pruned.from_json(read_raw(store, key))
            for obj in record.pruned:
                out[obj.sha256] = PrunedObject(obj.sha256, obj.kind, int(obj.size), int(obj.round), obj.key,
                                               record.run_id, record.pruned_at)
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise StoreError(f"gc record {key} in {store.uri}: corrupt, not a list of pruned objects ({exc})") from exc
    return out
