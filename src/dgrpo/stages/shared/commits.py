"""Committed rounds: the fine-tune's state in the store, from which every segment (KFP run) continues.

The update stage commits each round after its adapter and optimizer state are stored: one JSON record per round,
`runs/<run_id>/commits/r<round>.json`, created with an atomic create-if-absent. A commit extends its own chain: the
previous record must be round - 1 of the same fine-tune and hold the adapter this round trained from (or, for the
first round, the fine-tune's claimed starting point), and the committing segment must still hold the lease. So two
writers can never interleave their rounds, and a retried update that had already committed finds its own record.
Every seed derives from (config.seed, round), so the round counter is the whole RNG state: a fine-tune continued
from its last commit samples exactly what an uninterrupted one would.
"""

import datetime
import json
from dataclasses import dataclass

from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.ownership import OwnershipError, check_lease, read_claim, run_key
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


def ref_dict(ref: ArtifactRef | None) -> dict | None:
    return None if ref is None else json.loads(ref.to_json())


def ref_of(data: dict | None) -> ArtifactRef | None:
    return None if data is None else ArtifactRef(**data)


def commit_key(run_id: str, round_index: int) -> str:
    return run_key(run_id, f"commits/r{round_index:06d}.json")


def last_commit(store: ArtifactStore, run_id: str) -> dict | None:
    keys = store.list(run_key(run_id, "commits"))
    return store.get_json(keys[-1]) if keys else None


def trained_state(store: ArtifactStore, run_id: str) -> TrainedState:
    """After the last commit, else the claimed starting point (a fine-tune branched from another), else round 0."""
    last = last_commit(store, run_id)
    if last is not None:
        return TrainedState(last["round"] + 1, ref_of(last["adapter"]), ref_of(last["optimizer_state"]))
    base = (read_claim(store, run_id) or {}).get("base")
    if base:
        return TrainedState(base["round"] + 1, ref_of(base["adapter"]), ref_of(base["optimizer_state"]))
    return TrainedState(0)


def commit_round(ctx: StageContext, round_index: int, adapter: ArtifactRef, optimizer_state: ArtifactRef,
                 parent: ArtifactRef | None) -> None:
    """Commit `round_index`, trained from adapter `parent`, if it extends the fine-tune's chain; CommitError if it
    does not, OwnershipError if the segment's lease was taken away."""
    if ctx.lease:
        check_lease(ctx.store, ctx.run_id, ctx.lease)
    state = trained_state(ctx.store, ctx.run_id)
    key = commit_key(ctx.run_id, round_index)
    existing = ctx.store.get_json(key) if ctx.store.exists(key) else None
    if existing is not None:  # a retried update whose first attempt committed: the same bytes, or a second writer
        if existing["adapter"]["sha256"] == adapter.sha256 and existing["parent"] == _sha(parent):
            return
        raise CommitError(f"run {ctx.run_id}: round {round_index} is already committed with adapter "
                          f"{existing['adapter']['sha256'][:12]}, not {adapter.sha256[:12]}: another writer trains "
                          "this fine-tune")
    if state.next_round != round_index or _sha(state.adapter) != _sha(parent):
        raise CommitError(f"run {ctx.run_id}: round {round_index} (trained from adapter {_sha(parent) or 'none'}) "
                          f"does not extend the fine-tune's chain, whose next round is {state.next_round} from adapter "
                          f"{_sha(state.adapter) or 'none'}")
    record = {"run_id": ctx.run_id, "round": round_index, "adapter": ref_dict(adapter),
              "optimizer_state": ref_dict(optimizer_state), "parent": _sha(parent),
              "recipe_sha256": ctx.config.recipe_sha256(), "lease": ctx.lease,
              "committed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    if not ctx.store.create_json(key, record):
        raise OwnershipError(f"run {ctx.run_id}: round {round_index} was committed by another writer meanwhile")


def _sha(ref: ArtifactRef | None) -> str | None:
    return None if ref is None else ref.sha256
