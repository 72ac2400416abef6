"""The records the stages leave per round: an event per finished stage (or shard), an evaluation per evaluated
round, and the best evaluation so far."""

from dgrpo.runs import keys
from dgrpo.runs.record import put, read, read_all
from dgrpo.runs.records import BestRecord, EvalRecord, Event
from dgrpo.store import ArtifactStore


def write_event(store: ArtifactStore, run_id: str, event: Event) -> None:
    put(store, keys.event_key(run_id, event.round, event.stage, event.shard), event)


def read_event(store: ArtifactStore, run_id: str, round_index: int, stage: str) -> Event | None:
    return read(store, keys.event_key(run_id, round_index, stage), Event)


def event_keys(store: ArtifactStore, run_id: str) -> list[str]:
    return store.list(keys.events_prefix(run_id))


def read_event_at(store: ArtifactStore, key: str) -> Event:
    """The event at `key`, one of `event_keys` (a poller reads only the keys it has not seen)."""
    return Event.from_json(store.get_json(key))


def events(store: ArtifactStore, run_id: str) -> list[Event]:
    return read_all(store, keys.events_prefix(run_id), Event)


def has_event(store: ArtifactStore, run_id: str, round_index: int, stage: str, shard: int | None = None) -> bool:
    return store.exists(keys.event_key(run_id, round_index, stage, shard))


def write_evaluation(store: ArtifactStore, run_id: str, record: EvalRecord) -> None:
    put(store, keys.eval_key(run_id, record.round), record)


def read_evaluation(store: ArtifactStore, run_id: str, completed: int) -> EvalRecord | None:
    return read(store, keys.eval_key(run_id, completed), EvalRecord)


def has_evaluation(store: ArtifactStore, run_id: str, completed: int) -> bool:
    return store.exists(keys.eval_key(run_id, completed))


def evaluations(store: ArtifactStore, run_id: str) -> list[EvalRecord]:
    return read_all(store, keys.evals_prefix(run_id), EvalRecord)


def read_best(store: ArtifactStore, run_id: str) -> BestRecord | None:
    return read(store, keys.best_key(run_id), BestRecord)


def write_best(store: ArtifactStore, run_id: str, record: BestRecord) -> None:
    put(store, keys.best_key(run_id), record)
