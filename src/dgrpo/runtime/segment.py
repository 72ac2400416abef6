"""One segment of a fine-tune: the steps every engine runs around the stages, all reading the store.

A segment is one KFP run (or one pass of the local driver): `open_segment` takes the fine-tune's lease and
plans up to `pipeline.rounds_per_run` rounds from the last commit; `begin_round` starts each round only if it is
still the fine-tune's next uncommitted round and the lease is still held (kfp.local runs later loop iterations
after a failed one; Argo does not, and both then behave the same); `finish_segment`, the KFP run's exit task,
records the outcome, decides with `dgrpo.runtime.chain.decide`, gives the lease back and submits the next segment
when there is one. Evaluations and their review (best adapter, guard rails) are in `dgrpo.runtime.review`.
"""

import datetime
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from dgrpo.config import ConfigError
from dgrpo.contracts import ContractError
from dgrpo.registry import RegistryError
from dgrpo.runtime import chain
from dgrpo.stages.shared.commits import ref_dict, ref_of, trained_state
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.ownership import (
    OwnershipError,
    acquire_lease,
    check_lease,
    now,
    read_claim,
    read_json,
    release_lease,
    run_key,
    validate_run_id,
)
from dgrpo.stages.shared.run_config import load_config
from dgrpo.store import ArtifactRef, ArtifactStore

SUCCESS_STATES = ("SUCCEEDED", "COMPLETE", "CACHED")
"""Final states of a KFP run's tasks that count as success (kfp.local says SUCCEEDED, the cluster COMPLETE)."""


def is_permanent(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, is one that a retry from the same commit repeats: bad data
    or config, a missing plug-in, non-finite values (the seeded stages reproduce them). A segment failing with one
    is not retried (`chain.decide`)."""
    from dgrpo.stages.update.finite import NonFiniteError  # torch: imported only once something failed

    while exc is not None:
        if isinstance(exc, ContractError | ConfigError | RegistryError | NonFiniteError):
            return True
        exc = exc.__cause__
    return False


class ChainStopped(RuntimeError):
    """A guard rail fired: the segment stops before its next round."""


class RoundOrderError(RuntimeError):
    """A round is not the fine-tune's next uncommitted round (an earlier round of the segment failed)."""


@dataclass(frozen=True)
class RoundState:
    """What the tasks of a segment pass each other as a small artifact: whose fine-tune, which round, from which
    state. A segment's is its first round's; `rounds` lists the segment's rounds."""

    run_id: str
    config_sha256: str
    segment: int
    holder: str
    round: int
    adapter: ArtifactRef | None = None
    optimizer_state: ArtifactRef | None = None
    rounds: tuple[int, ...] = ()
    evaluate: bool = False
    """Evaluate after this round (eval.every, and after the fine-tune's last round)."""

    def to_json(self) -> str:
        return json.dumps({"run_id": self.run_id, "config_sha256": self.config_sha256, "segment": self.segment,
                           "holder": self.holder, "round": self.round, "adapter": ref_dict(self.adapter),
                           "optimizer_state": ref_dict(self.optimizer_state), "rounds": list(self.rounds),
                           "evaluate": self.evaluate})

    @classmethod
    def from_json(cls, text: str, source: str = "round state") -> "RoundState":
        try:
            d = json.loads(text)
            return cls(d["run_id"], d["config_sha256"], int(d["segment"]), d["holder"], int(d["round"]),
                       ref_of(d["adapter"]), ref_of(d["optimizer_state"]), tuple(d["rounds"]), bool(d["evaluate"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: not a dgrpo round state ({exc})") from exc


def segment_key(run_id: str, n: int) -> str:
    return run_key(run_id, f"segments/s{n:04d}.json")


def stop_key(run_id: str) -> str:
    return run_key(run_id, "stop.json")


def context(store: ArtifactStore, state: RoundState) -> StageContext:
    """The stage context of a task of `state`'s segment: its config from the store, the lease to commit under."""
    return StageContext(load_config(store, state.config_sha256), store, state.run_id, lease=state.holder)


def record_error(store: ArtifactStore, run_id: str, task: str, exc: BaseException, segment: int | None = None,
                 round_index: int | None = None) -> None:
    """Keep a failed task's error in the store: a cluster's exit task is not told why a task failed."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    store.put_json(run_key(run_id, f"errors/{stamp}-{uuid.uuid4().hex[:8]}.json"),
                   {"task": task, "segment": segment, "round": round_index, "error": f"{type(exc).__name__}: {exc}",
                    "permanent": is_permanent(exc), "at": now()})


def errors(store: ArtifactStore, run_id: str) -> list[dict]:
    return [store.get_json(k) for k in store.list(run_key(run_id, "errors"))]


def root_error(errs: list[dict]) -> dict | None:
    """The error that ended a segment: the last one, but not a later round's refusal to run after it."""
    causes = [e for e in errs if not e["error"].startswith(RoundOrderError.__name__)]
    return (causes or errs or [None])[-1]


def open_segment(store: ArtifactStore, run_id: str, config_sha256: str, kfp_run_id: str = ""
                 ) -> tuple[RoundState, bool]:
    """Take the lease and plan the segment: up to rounds_per_run rounds from the last commit. Also says whether
    the base model is still to be evaluated. A fine-tune that is complete or stopped gets an empty segment and
    takes no lease (a recurring run then ends at once)."""
    validate_run_id(run_id, "pipeline parameter 'run_id'")
    config = load_config(store, config_sha256)
    claim = read_claim(store, run_id)
    if claim is None:
        raise OwnershipError(f"fine-tune {run_id!r} was never started in {store.uri} (no claim): start it with "
                             "`dgrpo run` or `dgrpo submit`, which claim the run id")
    if claim.get("recipe_sha256") != config.recipe_sha256():
        raise OwnershipError(f"fine-tune {run_id!r} trains recipe {claim.get('recipe_sha256', '?')[:12]}, this run's "
                             f"config has recipe {config.recipe_sha256()[:12]}: resume it with its own recipe")
    held = read_json(store, run_key(run_id, "lease.json"))
    if kfp_run_id and held and held.get("kfp_run_id") == kfp_run_id:  # a retry of this task: its own segment
        record = read_json(store, segment_key(run_id, held["segment"]))
        if record is not None:
            start = trained_state(store, run_id)
            return (RoundState(run_id, config_sha256, record["segment"], held["holder"], record["start_round"],
                               start.adapter, start.optimizer_state, tuple(record["rounds"])),
                    record["start_round"] == 0 and not store.exists(eval_key(run_id, 0)))
    start = trained_state(store, run_id)
    if start.next_round >= config.rounds or store.exists(stop_key(run_id)):
        return RoundState(run_id, config_sha256, 0, "", start.next_round, start.adapter, start.optimizer_state), False
    n = len(store.list(run_key(run_id, "segments"))) + 1
    lease = acquire_lease(store, run_id, {"segment": n, "kfp_run_id": kfp_run_id, "start_round": start.next_round})
    start = trained_state(store, run_id)  # read again under the lease: a segment may have finished meanwhile
    rounds = tuple(range(start.next_round, min(start.next_round + config.pipeline.rounds_per_run, config.rounds)))
    record = {"segment": n, "kfp_run_id": kfp_run_id, "holder": lease["holder"], "start_round": start.next_round,
              "rounds": list(rounds), "config_sha256": config_sha256, "started_at": now(), "state": "running"}
    if not store.create_json(segment_key(run_id, n), record):
        release_lease(store, run_id, lease["holder"])
        raise OwnershipError(f"fine-tune {run_id!r}: segment {n} was recorded by another writer")
    base_due = start.next_round == 0 and 0 in config.eval_rounds() and not store.exists(eval_key(run_id, 0))
    return RoundState(run_id, config_sha256, n, lease["holder"], start.next_round, start.adapter,
                      start.optimizer_state, rounds), base_due


def begin_round(store: ArtifactStore, segment: RoundState, round_index: int) -> RoundState:
    """The state round `round_index` trains from, if it is the fine-tune's next round and the segment may train."""
    check_lease(store, segment.run_id, segment.holder)
    stop = read_json(store, stop_key(segment.run_id))
    if stop is not None:
        raise ChainStopped(f"fine-tune {segment.run_id!r} stopped before round {round_index}: "
                           f"{chain.stop_label(stop)}: {stop['message']}")
    state = trained_state(store, segment.run_id)
    if state.next_round != round_index:
        raise RoundOrderError(f"fine-tune {segment.run_id!r}: round {round_index} is not the next uncommitted round "
                              f"({state.next_round}); an earlier round of this segment failed, so it does not run")
    config = load_config(store, segment.config_sha256)
    return RoundState(segment.run_id, segment.config_sha256, segment.segment, segment.holder, round_index,
                      state.adapter, state.optimizer_state, (round_index,), round_index + 1 in config.eval_rounds())


def eval_key(run_id: str, completed: int) -> str:
    return run_key(run_id, f"eval/r{completed:04d}.json")


def own_segment(store: ArtifactStore, run_id: str, kfp_run_id: str) -> dict | None:
    """The segment record opened by KFP run `kfp_run_id` (None: the run opened none)."""
    for key in reversed(store.list(run_key(run_id, "segments"))):
        record = store.get_json(key)
        if record.get("kfp_run_id") == kfp_run_id:
            return record
    return None


def _failures_in_a_row(store: ArtifactStore, run_id: str, n: int, failed: bool, progress: int) -> int:
    if not failed:
        return 0
    count = 1
    if progress > 0:
        return count
    for m in range(n - 1, 0, -1):
        earlier = read_json(store, segment_key(run_id, m)) or {}
        if earlier.get("state") != "failed" or earlier.get("progress", 0) > 0:
            break
        count += 1
    return count


Submitter = Callable[[dict, RoundState], str]
"""Submits the next segment of a chain record (`runs/<id>/chain.json`); returns its KFP run id."""


@dataclass
class SegmentEnd:
    decision: chain.Decision | None
    """None when the run never opened a segment: another segment holds the fine-tune, or it was over."""
    error: str = ""
    segment: int = 0
    next_kfp_run_id: str = ""
    status: dict = field(default_factory=dict)


def finish_segment(store: ArtifactStore, run_id: str, config_sha256: str, kfp_run_id: str, final_state: str,
                   submit: Submitter | None = None) -> SegmentEnd:
    """The exit task: record how the segment ended, decide what follows, release the lease, submit the next."""
    validate_run_id(run_id, "pipeline parameter 'run_id'")
    config = load_config(store, config_sha256)
    record = own_segment(store, run_id, kfp_run_id)
    done = trained_state(store, run_id).next_round
    if record is None:
        errs = [e for e in errors(store, run_id) if e.get("segment") is None]
        return SegmentEnd(None, errs[-1]["error"] if errs and final_state not in SUCCESS_STATES else "")
    n = record["segment"]
    progress = done - record["start_round"]
    failed = final_state not in SUCCESS_STATES or (progress == 0 and done < config.rounds)  # or it would loop
    cause = root_error([e for e in errors(store, run_id) if e.get("segment") == n])
    error = cause["error"] if cause else (f"the run ended {final_state} having committed {progress} rounds"
                                          if failed else "")
    decision = chain.decide(rounds_total=config.rounds, rounds_done=done, progress=progress, succeeded=not failed,
                            failures_in_a_row=_failures_in_a_row(store, run_id, n, failed, progress),
                            max_retries=config.pipeline.max_retries, stop=read_json(store, stop_key(run_id)),
                            error=error, permanent=bool(failed and cause and cause.get("permanent")))
    record |= {"state": "failed" if failed else "succeeded", "finished_at": now(), "progress": progress,
               "error": error, "decision": {"action": decision.action, "reason": decision.reason}}
    store.put_json(segment_key(run_id, n), record)
    status = {"state": decision.state, "action": decision.action, "reason": decision.reason, "segment": n,
              "rounds_done": done, "rounds_total": config.rounds, "at": now()}
    store.put_json(run_key(run_id, "status.json"), status)
    release_lease(store, run_id, record["holder"])
    end = SegmentEnd(decision, error, n, status=status)
    chain_record = read_json(store, run_key(run_id, "chain.json")) or {}
    if decision.submits and submit is not None and chain_record.get("mode") == "kfp" \
            and not record.get("next_kfp_run_id"):  # a retried exit task does not submit twice
        state = RoundState(run_id, config_sha256, n + 1, "", done)
        try:
            end.next_kfp_run_id = submit(chain_record, state)
        except Exception as exc:
            status |= {"state": "failed", "reason": f"{decision.reason}; submitting the next segment failed: {exc}"}
            store.put_json(run_key(run_id, "status.json"), status)
            raise
        store.put_json(segment_key(run_id, n), record | {"next_kfp_run_id": end.next_kfp_run_id})
    return end


