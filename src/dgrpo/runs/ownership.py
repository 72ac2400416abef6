"""Who owns a fine-tune: its claim, and the lease of the one segment training it now.

A fine-tune is claimed once, at its start, by creating `runs/<id>/claim.json` with an atomic create-if-absent
(`ArtifactStore.create_json`): of two starts with one run id, exactly one wins. Each segment (one KFP run) then
takes `runs/<id>/lease.json` the same way and gives it back when it ends, so two segments of one fine-tune never
train at once. A lease left by a segment that died without its exit task is broken when its holder is known to be
over (its KFP run finished, or the local driver process is gone: `dgrpo.runtime`), with a record of who broke it
and why under `runs/<id>/lease-breaks/`; otherwise an operator releases it by its holder id (`dgrpo unlock`). A
dead holder that wakes is refused at its next round or commit.
"""

import uuid

from dgrpo.runs import keys
from dgrpo.runs.record import create, put, read, read_all
from dgrpo.runs.records import Claim, Lease, LeaseBreak
from dgrpo.store import ArtifactStore


class OwnershipError(RuntimeError):
    """A fine-tune is owned by someone else (its run id, or its lease); the message says by whom and what to do."""


def read_claim(store: ArtifactStore, run_id: str) -> Claim | None:
    return read(store, keys.claim_key(run_id), Claim)


def claim_run(store: ArtifactStore, run_id: str, *, recipe_sha256: str, config_sha256: str, base: dict | None = None,
              resumed_from: str = "", adopted: bool | None = None, replaces: str | None = None) -> Claim:
    """Claim fine-tune `run_id` (atomically); OwnershipError when it is already claimed."""
    claim = Claim(run_id=run_id, claim=uuid.uuid4().hex, claimed_at=keys.now(), recipe_sha256=recipe_sha256,
                  config_sha256=config_sha256, base=base, resumed_from=resumed_from, adopted=adopted,
                  replaces=replaces)
    if not create(store, keys.claim_key(run_id), claim):
        other = read_claim(store, run_id)
        raise OwnershipError(f"run id {run_id!r} is taken in {store.uri} (claimed at "
                             f"{other.claimed_at if other else '?'}): resume it with --resume {run_id}, or choose "
                             "another run id")
    return claim


def read_lease(store: ArtifactStore, run_id: str) -> Lease | None:
    return read(store, keys.lease_key(run_id), Lease)


def acquire_lease(store: ArtifactStore, run_id: str, *, segment: int, kfp_run_id: str, start_round: int) -> Lease:
    """Take the fine-tune's lease for one segment; OwnershipError naming the holder when another segment has it."""
    lease = Lease(holder=uuid.uuid4().hex, acquired_at=keys.now(), segment=segment, kfp_run_id=kfp_run_id,
                  start_round=start_round)
    if not create(store, keys.lease_key(run_id), lease):
        held = read_lease(store, run_id)
        raise OwnershipError(lease_held_message(store, run_id, held) if held is not None else
                             f"fine-tune {run_id!r}: another segment took the lease and gave it back meanwhile")
    return lease


def lease_held_message(store: ArtifactStore, run_id: str, lease: Lease) -> str:
    return (f"fine-tune {run_id!r} is being trained by segment {lease.segment} (KFP run {lease.kfp_run_id or '-'}, "
            f"lease {lease.holder} taken at {lease.acquired_at}); two segments never train at once. If that run is "
            f"dead, release its lease: dgrpo unlock {run_id} --holder {lease.holder} --store {store.uri}")


def check_lease(store: ArtifactStore, run_id: str, holder: str) -> None:
    """OwnershipError unless `holder` still holds the fine-tune's lease (it may have been released as stale)."""
    lease = read_lease(store, run_id)
    if lease is None or lease.holder != holder:
        who = "nobody" if lease is None else f"lease {lease.holder} (segment {lease.segment})"
        raise OwnershipError(f"fine-tune {run_id!r}: this segment's lease {holder} is no longer held (now: {who}); "
                             "it was released as stale, so this segment stops without writing")


def release_lease(store: ArtifactStore, run_id: str, holder: str) -> bool:
    """Give back the lease if `holder` holds it; True when released. Never removes another holder's lease."""
    lease = read_lease(store, run_id)
    if lease is None or lease.holder != holder:
        return False
    store.delete(keys.lease_key(run_id))
    return True


def break_lease(store: ArtifactStore, run_id: str, holder: str, *, by: str, reason: str) -> LeaseBreak | None:
    """Release `holder`'s lease on behalf of someone else, keeping a record of who broke it and why; the record,
    or None when `holder` no longer holds the lease."""
    lease = read_lease(store, run_id)
    if lease is None or lease.holder != holder:
        return None
    record = LeaseBreak(lease=lease.to_json(), by=by, reason=reason, at=keys.now())
    put(store, keys.lease_break_key(run_id, holder), record)
    release_lease(store, run_id, holder)
    return record


def lease_breaks(store: ArtifactStore, run_id: str) -> list[LeaseBreak]:
    return read_all(store, keys.lease_breaks_prefix(run_id), LeaseBreak)
