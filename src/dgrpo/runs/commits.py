"""Committed rounds: the fine-tune's state in the store, from which every segment (KFP run) continues.

The update stage commits each round after its adapter and optimizer state are stored: one record per round,
`runs/<run_id>/commits/r<round>.json`, created with an atomic create-if-absent. A commit extends its own chain: the
previous record must be round - 1 of the same fine-tune and hold the adapter this round trained from (or, for the
first round, the fine-tune's claimed starting point), and the committing segment must still hold the lease. So two
writers can never interleave their rounds, and a retried update that had already committed finds its own record.
Every seed derives from (config.seed, round), so the round counter is the whole RNG state: a fine-tune continued
from its last commit samples exactly what an uninterrupted one would.
"""

from dataclasses import dataclass

from dgrpo.runs import keys
from dgrpo.runs.keys import shown
from dgrpo.runs.ownership import OwnershipError, check_lease, read_claim
from dgrpo.runs.record import create, read
from dgrpo.runs.records import Commit
from dgrpo.store import ArtifactRef, ArtifactStore


class ResumeError(RuntimeError):
    """A run cannot start or continue as asked; the message names the run and the field."""


class CommitError(RuntimeError):
    """A round's commit does not extend its fine-tune's chain; the message names the round and both adapters."""


@dataclass(frozen=True)
class TrainedState:
    """Where a fine-tune stands: the next round to train and the state carried into it."""

    next_round: int
    adapter: ArtifactRef | None = None
    optimizer_state: ArtifactRef | None = None


def read_commit(store: ArtifactStore, run_id: str, round_index: int) -> Commit | None:
    return read(store, keys.commit_key(run_id, round_index), Commit)


def has_commits(store: ArtifactStore, run_id: str) -> bool:
    return bool(store.list(keys.commits_prefix(run_id)))


def last_commit(store: ArtifactStore, run_id: str) -> Commit | None:
    found = store.list(keys.commits_prefix(run_id))
    return Commit.from_json(store.get_json(found[-1])) if found else None


def trained_state(store: ArtifactStore, run_id: str) -> TrainedState:
    """After the last commit, else the claimed starting point (a fine-tune branched from another), else round 0."""
    last = last_commit(store, run_id)
    if last is not None:
        return TrainedState(last.round + 1, last.adapter, last.optimizer_state)
    claim = read_claim(store, run_id)
    base = claim.base_commit if claim is not None else None
    if base is not None:
        return TrainedState(base.round + 1, base.adapter, base.optimizer_state)
    return TrainedState(0)


def commit_round(store: ArtifactStore, run_id: str, *, round_index: int, adapter: ArtifactRef,
                 optimizer_state: ArtifactRef, parent: ArtifactRef | None, lease: str | None,
                 recipe_sha256: str) -> None:
    """Commit `round_index`, trained from adapter `parent`, if it extends the fine-tune's chain; CommitError if it
    does not, OwnershipError if the segment's lease (`lease`, its holder id; None outside a segment) was taken
    away."""
    if lease:
        check_lease(store, run_id, lease)
    state = trained_state(store, run_id)
    existing = read_commit(store, run_id, round_index)
    if existing is not None:  # a retried update whose first attempt committed: the same bytes, or a second writer
        if existing.adapter.sha256 == adapter.sha256 and existing.parent == _sha(parent):
            return
        raise CommitError(f"run {run_id}: round {shown(round_index)} is already committed with adapter "
                          f"{existing.adapter.sha256[:12]}, not {adapter.sha256[:12]}: another writer trains "
                          "this fine-tune")
    if state.next_round != round_index or _sha(state.adapter) != _sha(parent):
        raise CommitError(f"run {run_id}: round {shown(round_index)} (trained from adapter {_sha(parent) or 'none'}) "
                          f"does not extend the fine-tune's chain, whose next round is {state.next_round} from adapter "
                          f"{_sha(state.adapter) or 'none'}")
    record = Commit(run_id=run_id, round=round_index, adapter=adapter, optimizer_state=optimizer_state,
                    parent=_sha(parent), recipe_sha256=recipe_sha256, lease=lease, committed_at=keys.now())
    if not create(store, keys.commit_key(run_id, round_index), record):
        raise OwnershipError(f"run {run_id}: round {shown(round_index)} was committed by another writer meanwhile")


def _sha(ref: ArtifactRef | None) -> str | None:
    return None if ref is None else ref.sha256
