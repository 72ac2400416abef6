"""One segment of a fine-tune: the steps every engine runs around the stages, all reading the store.

A segment is one KFP run (or one pass of the local driver): `open_segment` takes the fine-tune's lease and
plans up to `pipeline.rounds_per_run` rounds from the last commit; `begin_round` starts each round only if it is
still the fine-tune's next uncommitted round and the lease is still held (kfp.local runs later loop iterations
after a failed one; Argo does not, and both then behave the same); `finish_segment`, the KFP run's exit task,
records the outcome, decides with `dgrpo.runtime.chain.decide`, gives the lease back and submits the next segment
when there is one. The outcome is read from the store (rounds committed, errors recorded), never from KFP's final
state; a lease whose holder's KFP run finished without its exit task is broken by the next segment
(`break_finished_holder`). Evaluations and their review (best adapter, guard rails) are in `dgrpo.runtime.review`.
"""

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from dgrpo.config import ConfigError, RunConfig
from dgrpo.contracts import ContractError
from dgrpo.contracts.stages import ROUND_STAGES, stage_spec
from dgrpo.registry import RegistryError, last_line, plugin_of
from dgrpo.runs.commits import has_commits, trained_state
from dgrpo.runs.evaluations import has_evaluation, has_event
from dgrpo.runs.keys import eval_key, now, run_key, shown, validate_run_id
from dgrpo.runs.ownership import (
    OwnershipError,
    acquire_lease,
    break_lease,
    check_lease,
    read_claim,
    read_lease,
    release_lease,
)
from dgrpo.runs.record import ref_dict, ref_of
from dgrpo.runs.records import ChainRecord, ErrorRecord, LeaseBreak, SegmentRecord, StatusRecord, StopRecord
from dgrpo.runs.segments import (
    create_segment,
    create_stop,
    errors,
    read_chain,
    read_segment,
    read_stop,
    segment_count,
    segments,
    write_error,
    write_segment,
    write_status,
)
from dgrpo.runtime import chain, kfp_rest, notify, tracking
from dgrpo.runtime.redaction import redact_secrets
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.run_config import load_config
from dgrpo.store import ArtifactRef, ArtifactStore

ENDED_WELL_HINT = ("SUCCEEDED", "COMPLETE", "CACHED")
"""Final states that suggest success; only a hint. On a cluster the exit task's `PipelineTaskFinalStatus.state` is
the exit-handler DAG's MLMD state, which becomes COMPLETE only when a launcher recounts the DAG's children: after
the round loop's skipped `dsl.If` branch nothing does, so a successful segment ends RUNNING, as does one whose pod
was OOM-killed (backend/src/v2/metadata/client.go, KFP 2.17)."""
log = logging.getLogger(__name__)


DETERMINISTIC_ERRORS = (TypeError, LookupError, ValueError, AttributeError, ArithmeticError, NotImplementedError)
"""What code raises on inputs it cannot handle (a KeyError, an IndexError, a ValueError: a plug-in's bug, a prompt
the model cannot encode): the seeded stages give it the same inputs on a retry, so it fails the same way. I/O,
memory, the GPU and the network fail with OSError, RuntimeError and the like, which a retry may get past."""


def is_permanent(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, is one that a retry from the same commit repeats: bad data
    or config (also when found at run time: an error naming a config field, such as missing weights), a missing
    plug-in, non-finite values, a deterministic error (`DETERMINISTIC_ERRORS`; the seeded stages reproduce them).
    A segment failing with one is not retried (`chain.decide`)."""
    from dgrpo.stages.update.finite import NonFiniteError  # torch: imported only once something failed

    while exc is not None:
        if isinstance(exc, (ContractError, ConfigError, RegistryError, NonFiniteError, *DETERMINISTIC_ERRORS)):
            return True
        if "config field '" in str(exc):
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


def context(store: ArtifactStore, state: RoundState) -> StageContext:
    """The stage context of a task of `state`'s segment: its config from the store, the lease to commit under."""
    return StageContext(load_config(store, state.config_sha256), store, state.run_id, lease=state.holder)


def record_error(store: ArtifactStore, run_id: str, task: str, exc: BaseException, segment: int | None = None,
                 round_index: int | None = None) -> None:
    """Keep a failed task's error in the store: a cluster's exit task is not told why a task failed.

    A team plug-in's failure names the stage, the plug-in and its own last line (`dgrpo.registry.plugin_of`); a
    permanent error of a fine-tune that committed nothing says how to reuse its run id; no secret is stored
    (`dgrpo.runtime.redaction`)."""
    permanent = is_permanent(exc)
    found = plugin_of(exc)
    if found is None:
        text = f"{type(exc).__name__}: {exc}"
    else:
        plugin, own = found
        text = (f"PluginError: stage {task}" + (f" of round {shown(round_index)}" if round_index is not None else "")
                + f": the {plugin.kind} plug-in {plugin.path!r} (config field '{plugin.config_field}') failed: "
                + last_line(own))
    if permanent and not has_commits(store, run_id):
        text += (f" [nothing is committed: fix it, then run again with the same run id {run_id!r}, or resume it "
                 f"with the fix (--resume {run_id})]")
    write_error(store, run_id, ErrorRecord(task=task, segment=segment, round=round_index,
                                           error=redact_secrets(text), permanent=permanent, at=now()))


def root_error(errs: list[ErrorRecord]) -> ErrorRecord | None:
    """The error that ended a segment: the last one, but not a later round's refusal to run after it."""
    causes = [e for e in errs if not e.error.startswith(RoundOrderError.__name__)]
    return (causes or errs or [None])[-1]


def open_segment(store: ArtifactStore, run_id: str, config_sha256: str, kfp_run_id: str = ""
                 ) -> tuple[RoundState, bool]:
    """Take the lease and plan the segment: up to rounds_per_run rounds from the last commit. Also says whether
    the base model is still to be evaluated. A fine-tune that is complete or stopped gets an empty segment and
    takes no lease (a recurring run then ends at once). A lease whose holder's KFP run has finished is broken
    first; one held by a live run refuses this segment, except in a scheduled chain (or one with a watchdog
    schedule), whose run then ends with an empty segment: the segment in progress is all well."""
    validate_run_id(run_id, "pipeline parameter 'run_id'")
    config = load_config(store, config_sha256)
    claim = read_claim(store, run_id)
    if claim is None:
        raise OwnershipError(f"fine-tune {run_id!r} was never started in {store.uri} (no claim): start it with "
                             "`dgrpo run` or `dgrpo submit`, which claim the run id")
    if claim.recipe_sha256 != config.recipe_sha256():
        raise OwnershipError(f"fine-tune {run_id!r} trains recipe {claim.recipe_sha256[:12]}, this run's "
                             f"config has recipe {config.recipe_sha256()[:12]}: resume it with its own recipe")
    held = read_lease(store, run_id)
    if kfp_run_id and held and held.kfp_run_id == kfp_run_id:  # a retry of this task: its own segment
        record = read_segment(store, run_id, held.segment)
        if record is not None:
            start = trained_state(store, run_id)
            return (RoundState(run_id, config_sha256, record.segment, held.holder, record.start_round,
                               start.adapter, start.optimizer_state, tuple(record.rounds)),
                    record.start_round == 0 and not has_evaluation(store, run_id, 0))
    unchecked = ""
    if held is not None:
        try:
            break_finished_holder(store, run_id, by=f"segment of KFP run {kfp_run_id or '-'}")
        except kfp_rest.KfpApiError as exc:  # the holder cannot be checked: its lease stands
            unchecked = f" (its KFP run could not be checked: {exc})"
    start = trained_state(store, run_id)
    if start.next_round >= config.rounds or read_stop(store, run_id) is not None:
        return RoundState(run_id, config_sha256, 0, "", start.next_round, start.adapter, start.optimizer_state), False
    n = segment_count(store, run_id) + 1
    try:
        lease = acquire_lease(store, run_id, segment=n, kfp_run_id=kfp_run_id, start_round=start.next_round)
    except OwnershipError as exc:
        if not unchecked and _scheduled(store, run_id):
            log.info("fine-tune %s: %s; this scheduled run has nothing to do", run_id, exc)
            return RoundState(run_id, config_sha256, 0, "", start.next_round, start.adapter,
                              start.optimizer_state), False
        raise OwnershipError(f"{exc}{unchecked}") from None
    start = trained_state(store, run_id)  # read again under the lease: a segment may have finished meanwhile
    rounds = tuple(range(start.next_round, min(start.next_round + config.pipeline.rounds_per_run, config.rounds)))
    record = SegmentRecord(segment=n, kfp_run_id=kfp_run_id, holder=lease.holder, start_round=start.next_round,
                           rounds=list(rounds), config_sha256=config_sha256, started_at=now(), state="running")
    if not create_segment(store, run_id, record):
        release_lease(store, run_id, lease.holder)
        raise OwnershipError(f"fine-tune {run_id!r}: segment {n} was recorded by another writer")
    base_due = start.next_round == 0 and 0 in config.eval_rounds() and not has_evaluation(store, run_id, 0)
    return RoundState(run_id, config_sha256, n, lease.holder, start.next_round, start.adapter,
                      start.optimizer_state, rounds), base_due


def _scheduled(store: ArtifactStore, run_id: str) -> bool:
    """Whether recurring runs drive or watch the chain (`dgrpo schedule`)."""
    record = read_chain(store, run_id)
    return record is not None and record.scheduled


def begin_round(store: ArtifactStore, segment: RoundState, round_index: int) -> RoundState:
    """The state round `round_index` trains from, if it is the fine-tune's next round and the segment may train."""
    check_lease(store, segment.run_id, segment.holder)
    stop = read_stop(store, segment.run_id)
    if stop is not None:
        raise ChainStopped(f"fine-tune {segment.run_id!r} stopped before round {shown(round_index)}: "
                           f"{chain.stop_label(stop.rule)}: {stop.message}")
    state = trained_state(store, segment.run_id)
    if state.next_round != round_index:
        raise RoundOrderError(f"fine-tune {segment.run_id!r}: round {shown(round_index)} is not the next uncommitted "
                              f"round ({shown(state.next_round)}); an earlier round of this segment failed, so it does "
                              "not run")
    config = load_config(store, segment.config_sha256)
    return RoundState(segment.run_id, segment.config_sha256, segment.segment, segment.holder, round_index,
                      state.adapter, state.optimizer_state, (round_index,), round_index + 1 in config.eval_rounds())


def own_segment(store: ArtifactStore, run_id: str, kfp_run_id: str) -> SegmentRecord | None:
    """The segment record opened by KFP run `kfp_run_id` (None: the run opened none)."""
    return next((r for r in reversed(segments(store, run_id)) if r.kfp_run_id == kfp_run_id), None)


def _failures_in_a_row(store: ArtifactStore, run_id: str, n: int, failed: bool, progress: int) -> int:
    if not failed:
        return 0
    count = 1
    if progress > 0:
        return count
    for m in range(n - 1, 0, -1):
        earlier = read_segment(store, run_id, m)
        if earlier is None or earlier.state != "failed" or (earlier.progress or 0) > 0:
            break
        count += 1
    return count


Submitter = Callable[[ChainRecord, RoundState], str]
"""Submits the next segment of a chain record (`runs/<id>/chain.json`); returns its KFP run id."""


@dataclass
class SegmentEnd:
    decision: chain.Decision | None
    """None when the run never opened a segment: another segment holds the fine-tune, or it was over."""
    error: str = ""
    segment: int = 0
    next_kfp_run_id: str = ""
    status: StatusRecord | None = None


def outstanding_errors(errs: list[ErrorRecord], rounds_done: int) -> list[ErrorRecord]:
    """The errors of a segment that its later work did not get past: any evaluation's (its result is missing), any
    without a round, and a round's stage whose round is still uncommitted. A stage that failed and then succeeded
    on a retry of its task (set_retry) left an error behind a committed round: it does not count."""
    return [e for e in errs if e.task == "evaluate" or e.round is None or e.round >= rounds_done]


def record_termination(store: ArtifactStore, run_id: str, kfp_run_id: str, kfp_state: str, rounds_done: int) -> None:
    """A run an operator terminated is a stop, not a failure to retry: a stop record (unless one exists, e.g. the
    one `dgrpo stop --now` wrote first), lifted by a resume like any other."""
    create_stop(store, run_id, StopRecord(
        rule="terminated", round=rounds_done, values={"kfp_run_id": kfp_run_id, "kfp_state": kfp_state},
        message=f"KFP run {kfp_run_id or '-'} was terminated ({kfp_state})", at=now()))


def finish_segment(store: ArtifactStore, run_id: str, config_sha256: str, kfp_run_id: str, final_state: str,
                   submit: Submitter | None = None) -> SegmentEnd:
    """The exit task: record how the segment ended, decide what follows, release the lease, submit the next.

    The segment succeeded when its planned rounds are committed, their due evaluations recorded
    (`missing_evaluations`) and none of its tasks left an error it did not get past (`outstanding_errors`).
    `final_state`, KFP's, is logged and kept as a hint only (ENDED_WELL_HINT), except that a terminated run
    (CANCELING/CANCELED) is recorded as stopped. A retried exit task keeps the outcome its first try recorded and
    only submits what that try did not."""
    validate_run_id(run_id, "pipeline parameter 'run_id'")
    config = load_config(store, config_sha256)
    record = own_segment(store, run_id, kfp_run_id)
    done = trained_state(store, run_id).next_round
    log.info("fine-tune %s: KFP run %s ended %s (a hint: the outcome is read from the store)", run_id,
             kfp_run_id or "-", final_state)
    if final_state in kfp_rest.TERMINATED_STATES:
        record_termination(store, run_id, kfp_run_id, final_state, done)
    if record is None:
        errs = [e for e in errors(store, run_id) if e.segment is None]
        return SegmentEnd(None, errs[-1].error if errs and final_state not in ENDED_WELL_HINT else "")
    n = record.segment
    if record.finished_at:  # a retry of this exit task: its first try's outcome stands
        ended = record.ended
        decision = chain.Decision(ended.action, ended.reason)
        error, done = record.error or "", record.start_round + (record.progress or 0)
    else:
        decision, error = _decide(store, run_id, config, record, done, final_state)
        record.state, record.finished_at = ("failed" if error else "succeeded"), now()
        record.progress, record.error, record.kfp_final_state = done - record.start_round, error, final_state
        record.decision = {"action": decision.action, "reason": decision.reason}
        write_segment(store, run_id, record)
    status = StatusRecord(state=decision.state, action=decision.action, reason=decision.reason, segment=n,
                          rounds_done=done, rounds_total=config.rounds, at=now())
    if not record.next_kfp_run_id:  # else the next segment's status may be newer
        write_status(store, run_id, status)
    tracking.log_segment(store, run_id, config)  # MLflow, when tracking.mlflow.enabled; never raises
    release_lease(store, run_id, record.holder)
    end = SegmentEnd(decision, error, n, status=status)
    chain_record = read_chain(store, run_id)
    if decision.submits and submit is not None and chain_record is not None and chain_record.mode == "kfp" \
            and not record.next_kfp_run_id:  # a retried exit task does not submit twice
        state = RoundState(run_id, config_sha256, n + 1, "", done)
        try:
            end.next_kfp_run_id = submit(chain_record, state)
        except Exception as exc:
            status.state, status.reason = "failed", f"{decision.reason}; submitting the next segment failed: {exc}"
            write_status(store, run_id, status)
            notify.chain_ended(store, run_id, status)
            raise
        record.next_kfp_run_id = end.next_kfp_run_id
        write_segment(store, run_id, record)
    if not decision.submits:
        notify.chain_ended(store, run_id, status)  # done, stopped or failed for good: the webhook, when one is set
    return end


def _decide(store: ArtifactStore, run_id: str, config: RunConfig, record: SegmentRecord, done: int,
            final_state: str) -> tuple[chain.Decision, str]:
    """The decision after segment `record` and its error ("" when it succeeded), from the store."""
    n = record.segment
    progress = done - record.start_round
    planned_end = (record.rounds[-1] + 1) if record.rounds else record.start_round
    causes = outstanding_errors([e for e in errors(store, run_id) if e.segment == n], done)
    missing = missing_evaluations(store, run_id, config, record, done)
    failed = done < planned_end or bool(causes) or bool(missing) or (progress == 0 and done < config.rounds)
    cause = root_error(causes) if causes else None
    if not failed:
        error = ""
    elif cause:
        error = cause.error
    elif missing and done >= planned_end and progress > 0:
        name = eval_key(run_id, missing[0]).removeprefix(run_key(run_id, "")).removesuffix(".json")
        error = f"no evaluation record {name} (a killed pod records no error; KFP's final state: {final_state})"
    else:  # too few rounds; a "success" that trained nothing would loop
        error = (f"committed {progress} of its {len(record.rounds)} planned rounds (KFP's final state: "
                 f"{final_state})")
        if done < planned_end:
            error = swapped_stage_failure(store, run_id, config, done, error)
    in_a_row = _failures_in_a_row(store, run_id, n, failed, progress)
    decision = chain.decide(rounds_total=config.rounds, rounds_done=done, progress=progress, succeeded=not failed,
                            failures_in_a_row=in_a_row, max_retries=config.pipeline.max_retries,
                            stop=read_stop(store, run_id), error=error,
                            permanent=bool(failed and ((cause and cause.permanent)
                                                       or _team_crash_repeated(store, run_id, n, error, in_a_row))))
    return decision, error


def _team_crash_repeated(store: ArtifactStore, run_id: str, n: int, error: str, failures_in_a_row: int) -> bool:
    """Whether a swapped container stopped this segment exactly as it stopped the one before (same stage, component
    and round, nothing committed in between): a team's code that fails twice on the same inputs fails a third time,
    so the chain stops instead of spending the rest of pipeline.max_retries. A first crash is retried: it may have
    been the pod's (preemption, a node lost), which a team's container cannot tell us."""
    if failures_in_a_row < 2 or not error.startswith(SWAPPED_FAILURE):
        return False
    earlier = read_segment(store, run_id, n - 1)
    return earlier is not None and earlier.error == error


SWAPPED_FAILURE = "the swapped "
"""How `swapped_stage_failure`'s message starts."""


def swapped_stage_failure(store: ArtifactStore, run_id: str, config: RunConfig, round_index: int, error: str
                          ) -> str:
    """`error` with the team component that stopped round `round_index` named, when that is what happened: the
    round's first stage without its event is a swapped one. A team's container records nothing in the store; its
    own error is in its task's log, which the exit task cannot read, so the message says where to look (the
    client that watches the run copies its last line: `dgrpo_pipelines.swaps`). A sharded stage's events name their
    shard only when the run has several (`pipeline.shards` > 1), as the stages write them."""
    swaps = config.pipeline.swaps()
    for stage in ROUND_STAGES:
        shard = 0 if stage_spec(stage).sharded and config.pipeline.shards > 1 else None
        if has_event(store, run_id, round_index, stage, shard):
            continue
        custom = swaps.get(stage)
        if custom is None:
            return error
        what = f"component {custom.component}" if custom.component else f"image {custom.image}"
        return (f"{SWAPPED_FAILURE}{stage} stage ({what}, pipeline.stages.{stage}) failed in round "
                f"{shown(round_index)} before its output was imported: its own error is the end of its task's log "
                f"(the `{stage}` node's logs in the KFP UI; task logs locally); the segment {error}")
    return error


def missing_evaluations(store: ArtifactStore, run_id: str, config: RunConfig, record: SegmentRecord, done: int
                        ) -> list[int]:
    """Evaluations the segment was to write for its committed rounds (by completed-round count) that are absent:
    an evaluation pod killed (OOM, preemption) records no error."""
    due = [r + 1 for r in record.rounds if r < done and r + 1 in config.eval_rounds()]
    if record.start_round == 0 and 0 in config.eval_rounds():
        due.insert(0, 0)
    return [c for c in due if not has_evaluation(store, run_id, c)]


def break_finished_holder(store: ArtifactStore, run_id: str, by: str,
                          lookup: kfp_rest.RunStateLookup | None = None) -> LeaseBreak | None:
    """Break the lease of a segment whose KFP run finished without its exit task giving the lease back (a run
    terminated in the UI, an exit pod that never started, its retries spent): record that segment's end as its
    exit task would have, without submitting (the caller goes on), and who broke the lease and why. Returns the
    break record; None when no lease is held, its holder's run is not known to be over, or the chain is not on
    KFP. KfpApiError when the KFP API cannot say."""
    lease = read_lease(store, run_id)
    if lease is None or not lease.kfp_run_id:
        return None
    lookup = lookup or kfp_rest.run_state_lookup(read_chain(store, run_id))
    if lookup is None:
        return None
    kfp_state = lookup(lease.kfp_run_id)
    if kfp_state not in kfp_rest.FINISHED_STATES:
        return None
    broken = break_lease(store, run_id, lease.holder, by=by,
                         reason=f"its KFP run {lease.kfp_run_id} is {kfp_state} and its exit task did not "
                                "release the lease")
    if broken is None:  # released meanwhile
        return None
    record = read_segment(store, run_id, lease.segment)
    if record is not None and record.holder == lease.holder and not record.finished_at:
        with contextlib.suppress(FileNotFoundError):  # a config no longer in the store: the break stands alone
            finish_segment(store, run_id, record.config_sha256, lease.kfp_run_id, kfp_state)
    broken.extra["kfp_state"] = kfp_state
    return broken
