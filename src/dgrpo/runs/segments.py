"""The records of a chain of segments: the chain record, each segment's, the status, the stop, errors, the driver.

`dgrpo.runtime.segment` decides what a segment does; this module only reads and writes what it records.
"""

from dgrpo.runs import keys
from dgrpo.runs.record import create, put, read, read_all
from dgrpo.runs.records import ChainRecord, DriverRecord, ErrorRecord, SegmentRecord, StatusRecord, StopRecord
from dgrpo.store import ArtifactStore


def read_chain(store: ArtifactStore, run_id: str) -> ChainRecord | None:
    return read(store, keys.chain_key(run_id), ChainRecord)


def write_chain(store: ArtifactStore, record: ChainRecord) -> None:
    put(store, keys.chain_key(record.run_id), record)


def read_segment(store: ArtifactStore, run_id: str, n: int) -> SegmentRecord | None:
    return read(store, keys.segment_key(run_id, n), SegmentRecord)


def segments(store: ArtifactStore, run_id: str) -> list[SegmentRecord]:
    return read_all(store, keys.segments_prefix(run_id), SegmentRecord)


def segment_count(store: ArtifactStore, run_id: str) -> int:
    return len(store.list(keys.segments_prefix(run_id)))


def last_segment(store: ArtifactStore, run_id: str) -> SegmentRecord | None:
    found = store.list(keys.segments_prefix(run_id))
    return SegmentRecord.from_json(store.get_json(found[-1])) if found else None


def create_segment(store: ArtifactStore, run_id: str, record: SegmentRecord) -> bool:
    """Record a new segment unless another writer recorded segment `record.segment` first."""
    return create(store, keys.segment_key(run_id, record.segment), record)


def write_segment(store: ArtifactStore, run_id: str, record: SegmentRecord) -> None:
    put(store, keys.segment_key(run_id, record.segment), record)


def read_status(store: ArtifactStore, run_id: str) -> StatusRecord | None:
    return read(store, keys.status_key(run_id), StatusRecord)


def write_status(store: ArtifactStore, run_id: str, record: StatusRecord) -> None:
    put(store, keys.status_key(run_id), record)


def read_stop(store: ArtifactStore, run_id: str) -> StopRecord | None:
    return read(store, keys.stop_key(run_id), StopRecord)


def is_stopped(store: ArtifactStore, run_id: str) -> bool:
    return store.exists(keys.stop_key(run_id))


def write_stop(store: ArtifactStore, run_id: str, record: StopRecord) -> None:
    put(store, keys.stop_key(run_id), record)


def create_stop(store: ArtifactStore, run_id: str, record: StopRecord) -> bool:
    """Record a stop unless one exists (an earlier stop keeps its reason)."""
    return create(store, keys.stop_key(run_id), record)


def lift_stop(store: ArtifactStore, run_id: str) -> None:
    store.delete(keys.stop_key(run_id))


def write_error(store: ArtifactStore, run_id: str, record: ErrorRecord) -> None:
    put(store, keys.error_key(run_id), record)


def errors(store: ArtifactStore, run_id: str) -> list[ErrorRecord]:
    return read_all(store, keys.errors_prefix(run_id), ErrorRecord)


def read_driver(store: ArtifactStore, run_id: str) -> DriverRecord | None:
    return read(store, keys.driver_key(run_id), DriverRecord)


def write_driver(store: ArtifactStore, run_id: str, record: DriverRecord) -> None:
    put(store, keys.driver_key(run_id), record)
