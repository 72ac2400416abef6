"""Who owns a fine-tune: its run id, its claim, and the lease of the one segment training it now.

A run id names a fine-tune's records (`runs/<run_id>/...` in the store, a folder of `dgrpo run`'s output) and
appears in KFP run parameters, so it has a character set that cannot leave its namespace. A fine-tune is claimed
once, at its start, by creating `runs/<id>/claim.json` with an atomic create-if-absent
(`ArtifactStore.create_json`): of two starts with one run id, exactly one wins. Each segment (one KFP run) then
takes `runs/<id>/lease.json` the same way and gives it back when it ends, so two segments of one fine-tune never
train at once. A lease left by a segment that died without its exit task is broken when its holder is known to be
over (its KFP run finished, or the local driver process is gone: `dgrpo.runtime`), with a record of who broke it
and why under `runs/<id>/lease-breaks/`; otherwise an operator releases it by its holder id (`dgrpo unlock`). A
dead holder that wakes is refused at its next round or commit.
"""

import datetime
import re
import uuid
from typing import Any

from dgrpo.store import ArtifactStore

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")
RUN_ID_RULE = ("1 to 100 letters, digits, '.', '_' or '-', starting and ending with a letter or digit, "
               "without '..'")


class OwnershipError(RuntimeError):
    """A fine-tune is owned by someone else (its run id, or its lease); the message says by whom and what to do."""


def validate_run_id(run_id: str, source: str = "run id") -> str:
    """`run_id` itself, or ValueError naming `source` (a CLI option, a pipeline parameter, a REST field)."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id) or ".." in run_id:
        raise ValueError(f"{source} {run_id!r}: a run id is {RUN_ID_RULE}")
    return run_id


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def run_key(run_id: str, name: str) -> str:
    return f"runs/{validate_run_id(run_id)}/{name}"


def claim_key(run_id: str) -> str:
    return run_key(run_id, "claim.json")


def lease_key(run_id: str) -> str:
    return run_key(run_id, "lease.json")


def read_json(store: ArtifactStore, key: str) -> Any | None:
    try:
        return store.get_json(key)
    except FileNotFoundError:
        return None


def read_claim(store: ArtifactStore, run_id: str) -> dict | None:
    return read_json(store, claim_key(run_id))


def claim_run(store: ArtifactStore, run_id: str, record: dict) -> dict:
    """Claim fine-tune `run_id` for `record` (atomically); OwnershipError when it is already claimed."""
    claim = {"run_id": run_id, "claim": uuid.uuid4().hex, "claimed_at": now(), **record}
    if not store.create_json(claim_key(run_id), claim):
        other = read_claim(store, run_id) or {}
        raise OwnershipError(f"run id {run_id!r} is taken in {store.uri} (claimed at {other.get('claimed_at', '?')}):"
                             f" resume it with --resume {run_id}, or choose another run id")
    return claim


def read_lease(store: ArtifactStore, run_id: str) -> dict | None:
    return read_json(store, lease_key(run_id))


def acquire_lease(store: ArtifactStore, run_id: str, record: dict) -> dict:
    """Take the fine-tune's lease for one segment; OwnershipError naming the holder when another segment has it."""
    lease = {"holder": uuid.uuid4().hex, "acquired_at": now(), **record}
    if not store.create_json(lease_key(run_id), lease):
        raise OwnershipError(lease_held_message(store, run_id, read_lease(store, run_id) or {}))
    return lease


def lease_held_message(store: ArtifactStore, run_id: str, lease: dict) -> str:
    return (f"fine-tune {run_id!r} is being trained by segment {lease.get('segment', '?')} (KFP run "
            f"{lease.get('kfp_run_id') or '-'}, lease {lease.get('holder', '?')} taken at "
            f"{lease.get('acquired_at', '?')}); two segments never train at once. If that run is dead, release its "
            f"lease: dgrpo unlock {run_id} --holder {lease.get('holder', '?')} --store {store.uri}")


def check_lease(store: ArtifactStore, run_id: str, holder: str) -> None:
    """OwnershipError unless `holder` still holds the fine-tune's lease (it may have been released as stale)."""
    lease = read_lease(store, run_id)
    if lease is None or lease.get("holder") != holder:
        who = "nobody" if lease is None else f"lease {lease.get('holder')} (segment {lease.get('segment', '?')})"
        raise OwnershipError(f"fine-tune {run_id!r}: this segment's lease {holder} is no longer held (now: {who}); "
                             "it was released as stale, so this segment stops without writing")


def release_lease(store: ArtifactStore, run_id: str, holder: str) -> bool:
    """Give back the lease if `holder` holds it; True when released. Never removes another holder's lease."""
    lease = read_lease(store, run_id)
    if lease is None or lease.get("holder") != holder:
        return False
    store.delete(lease_key(run_id))
    return True


def break_lease(store: ArtifactStore, run_id: str, holder: str, *, by: str, reason: str) -> dict | None:
    """Release `holder`'s lease on behalf of someone else, keeping a record of who broke it and why; the record,
    or None when `holder` no longer holds the lease."""
    lease = read_lease(store, run_id)
    if lease is None or lease.get("holder") != holder:
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    record = {"lease": lease, "by": by, "reason": reason, "at": now()}
    store.put_json(run_key(run_id, f"lease-breaks/{stamp}-{holder[:8]}.json"), record)
    release_lease(store, run_id, holder)
    return record


def lease_breaks(store: ArtifactStore, run_id: str) -> list[dict]:
    return [store.get_json(k) for k in store.list(run_key(run_id, "lease-breaks"))]
