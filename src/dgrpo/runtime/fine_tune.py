"""Starting, resuming and inspecting a fine-tune (a chain of segments), apart from any engine.

`start` is what `dgrpo run`, `dgrpo submit` and `dgrpo schedule` do before the first segment: store the config by
reference, claim the run id (a fresh fine-tune) or check the one being resumed, and write the chain record the
segments and the continuation read. `status` gathers what `dgrpo status` prints.
"""

import contextlib
import difflib
import json
import os
import socket
import time

from dgrpo.config import RunConfig
from dgrpo.runs import keys
from dgrpo.runs.archive import copy_record, known_runs
from dgrpo.runs.commits import ResumeError, has_commits, last_commit, trained_state
from dgrpo.runs.evaluations import read_best
from dgrpo.runs.keys import after_round, chain_key, claim_key, driver_key, lease_key, now, shown, validate_run_id
from dgrpo.runs.ownership import break_lease, claim_run, lease_breaks, read_claim, read_lease, release_lease
from dgrpo.runs.record import ref_dict
from dgrpo.runs.records import ChainRecord, Claim, DriverRecord, Lease, LeaseBreak, StopRecord
from dgrpo.runs.segments import (
    lift_stop,
    read_chain,
    read_driver,
    read_segment,
    read_status,
    read_stop,
    segment_count,
    segments,
    write_chain,
    write_driver,
    write_stop,
)
from dgrpo.runtime import chain, kfp_rest, report
from dgrpo.runtime import segment as seg
from dgrpo.stages.shared.run_config import load_config, put_config
from dgrpo.store import ArtifactStore

LEGACY_MATCHING = ("model", "lora", "seed")
"""Fields a fine-tune recorded before claims existed is checked on (its commits hold them, not its recipe)."""


def _missing(store: ArtifactStore, run_id: str, option: str) -> ResumeError:
    close = difflib.get_close_matches(run_id, known_runs(store), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `dgrpo status` lists a fine-tune's state"
    return ResumeError(f"{option} {run_id!r}: no fine-tune of that id in {store.uri}{hint} (a fresh fine-tune "
                       "takes --run-id instead)")


def _check_recipe(store: ArtifactStore, config: RunConfig, run_id: str, option: str) -> Claim | None:
    """The claim of `run_id`, after checking `config` trains its recipe (fields that differ are named); None for
    a fine-tune from before claims."""
    claim = read_claim(store, run_id)
    if claim is None:
        commit = last_commit(store, run_id)
        if commit is None:
            raise _missing(store, run_id, option)
        cfg = config.to_dict()  # a fine-tune from before claims: its commits record these fields
        for key in LEGACY_MATCHING:
            if key in commit.extra and commit.extra[key] != cfg[key]:
                raise ResumeError(f"{option} {run_id!r}: config field '{key}' differs from the fine-tune's "
                                  f"({cfg[key]!r} here, {commit.extra[key]!r} there)")
        return None
    if claim.recipe_sha256 != config.recipe_sha256():
        differing = config.recipe_differences(load_config(store, claim.config_sha256))
        raise ResumeError(f"{option} {run_id!r}: the recipe differs from the fine-tune's in "
                          f"{', '.join(differing) or 'its hash'}; a resumed fine-tune keeps its recipe (change "
                          "rounds, pipeline or kubernetes freely, or start a new run id)")
    return claim


def start(store: ArtifactStore, config: RunConfig, run_id: str, resume_from: str = "", mode: str = "local",
          kfp: dict | None = None, holder_state: kfp_rest.RunStateLookup | None = None) -> ChainRecord:
    """Store the config, claim or check the fine-tune, write its chain record; returns the chain record.

    Without `resume_from` the run id must be new; `resume_from == run_id` continues that fine-tune after its last
    commit (a guard-rail stop is lifted: the rules are checked again at the next evaluation); another
    `resume_from` branches a new fine-tune from that one's last commit. A resume first breaks a lease whose holder
    is over: a local driver that died, or (with `holder_state`, the KFP API's view) a finished KFP run.

    A fine-tune that failed before committing a round (`failed_start`: a config error found at run time, a broken
    plug-in) keeps no recipe: rerunning its run id, or resuming it with a fixed config, sets its records aside
    (`set_aside`) and claims the run id anew, so a scheduled fine-tune with a fixed id need not change it."""
    validate_run_id(run_id, "run id")
    failed = failed_start(store, run_id)
    if resume_from == run_id and failed is not None and failed.recipe_sha256 != config.recipe_sha256():
        resume_from = failed.resumed_from or ""  # resumed with the fix: started again, from where it was
    if resume_from == run_id:
        claim = _check_recipe(store, config, run_id, "--resume")
        if mode == "local":
            release_if_driver_died(store, run_id)
        elif holder_state is not None:
            seg.break_finished_holder(store, run_id, by=f"dgrpo {'schedule' if mode == 'schedule' else 'submit'} "
                                      f"--resume {run_id}", lookup=holder_state)
        config_ref = put_config(store, config)  # after the checks: a refused run writes nothing
        if claim is None:  # a fine-tune from before claims: adopted
            claim_run(store, run_id, recipe_sha256=config.recipe_sha256(), config_sha256=config_ref.sha256,
                      adopted=True)
        lift_stop(store, run_id)
    else:
        base = None
        if resume_from:
            validate_run_id(resume_from, "--resume")
            _check_recipe(store, config, resume_from, "--resume")
            commit = last_commit(store, resume_from)
            if commit is None:
                raise ResumeError(f"--resume {resume_from!r}: no committed round under runs/{resume_from}/commits in "
                                  f"{store.uri} to branch from")
            base = {"run_id": resume_from, "round": commit.round, "adapter": ref_dict(commit.adapter),
                    "optimizer_state": ref_dict(commit.optimizer_state)}
        elif has_commits(store, run_id):
            raise ResumeError(f"run {run_id} already has committed rounds in {store.uri}: resume it "
                              f"(--resume {run_id}) or choose another run id")
        config_ref = put_config(store, config)
        if failed is not None:
            set_aside(store, run_id, failed)
        claim_run(store, run_id, recipe_sha256=config.recipe_sha256(), config_sha256=config_ref.sha256, base=base,
                  resumed_from=resume_from, replaces=failed.claim if failed is not None else None)
    record = ChainRecord(run_id=run_id, config_sha256=config_ref.sha256, recipe_sha256=config.recipe_sha256(),
                         rounds=config.rounds, rounds_per_run=config.pipeline.rounds_per_run, mode=mode, kfp=kfp,
                         updated_at=now())
    write_chain(store, record)
    if mode == "local":
        write_driver(store, run_id, DriverRecord(host=socket.gethostname(), pid=os.getpid(), started_at=now()))
    return record


def failed_start(store: ArtifactStore, run_id: str) -> Claim | None:
    """The claim of fine-tune `run_id` if it failed before committing a round, else None: no commit, no lease, and
    its chain ended failed (its last segment's decision), or an error was recorded before any segment opened. A
    replacement interrupted half-way (`set_aside`) counts too."""
    claim = read_claim(store, run_id)
    if claim is None or has_commits(store, run_id) or read_lease(store, run_id) is not None:
        return None
    if store.list(keys.failed_start_prefix(run_id, claim.claim)):
        return claim
    status_record = read_status(store, run_id)
    state = status_record.state if status_record is not None else None
    if segment_count(store, run_id):
        return claim if state == "failed" else None  # "running" after a failed segment: a retry follows
    return claim if seg.errors(store, run_id) and state in (None, "failed") else None


def set_aside(store: ArtifactStore, run_id: str, claim: Claim) -> str:
    """Move the records of a failed start (`failed_start`) under runs/<id>/failed-starts/<claim id>/, where they
    stay for audit but no segment reads them, the claim last; returns that prefix. Derived files (reports) go."""
    prefix = keys.failed_start_prefix(run_id, claim.claim)
    found = [k for k in store.list(keys.run_key(run_id, ""))
             if not k.startswith(keys.failed_start_prefix(run_id, ""))]
    for key in sorted(found, key=lambda k: k == claim_key(run_id)):
        if key.endswith(".json"):
            with contextlib.suppress(ValueError, UnicodeDecodeError):  # an unreadable record is not kept
                copy_record(store, key, f"{prefix}/{key.removeprefix(keys.run_key(run_id, ''))}")
        store.delete(key)
    return prefix


def release_if_driver_died(store: ArtifactStore, run_id: str) -> bool:
    """End the segment of a local driver that died (kill -9, a full disk, a lost store) without its exit step, and
    release its lease, so `--resume` continues; True when it did.

    On the machine that ran the driver, a driver process that no longer exists is dead for sure. Leases of cluster
    segments, of a driver on another machine, or taken before that driver started, are left to `dgrpo unlock`."""
    lease, driver = read_lease(store, run_id), read_driver(store, run_id)
    if lease is None or driver is None or driver.host != socket.gethostname() or _alive(driver.pid):
        return False
    if lease.acquired_at < driver.started_at:
        return False
    if break_lease(store, run_id, lease.holder, by=f"dgrpo run --resume {run_id} on {socket.gethostname()}",
                   reason=f"its local driver (pid {driver.pid}) is no longer running") is None:
        return False  # released meanwhile
    segment = read_segment(store, run_id, lease.segment)
    if segment is not None and segment.holder == lease.holder and segment.config_sha256:
        seg.finish_segment(store, run_id, segment.config_sha256, segment.kfp_run_id, "FAILED")
    return True


def _alive(pid: object) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):  # another user's process, or no pid recorded: assume alive
        return True
    return True


def segment_parameters(store: ArtifactStore, record: ChainRecord) -> dict[str, str]:
    """The run parameters of every segment of a chain: ids and hashes, never the config itself."""
    return {"store_uri": store.uri, "run_id": record.run_id, "config_sha256": record.config_sha256,
            "recipe_sha256": record.recipe_sha256}


def chain_kfp(store: ArtifactStore, run_id: str) -> dict:
    """How the chain reaches KFP (endpoint, namespace, experiment, pipeline), {} for a chain not on KFP."""
    record = read_chain(store, run_id)
    return dict((record.kfp if record is not None else None) or {})


def _holder_check(chain_record: ChainRecord | None, lease: Lease | None, lookup: kfp_rest.RunStateLookup | None
                  ) -> tuple[str, str]:
    """The KFP state of the lease holder's run ("" when not asked) and why it could not be asked ("")."""
    if lease is None or not lease.kfp_run_id:
        return "", ""
    try:
        lookup = lookup or kfp_rest.run_state_lookup(chain_record, attempts=1)
        return (lookup(lease.kfp_run_id) if lookup else ""), ""
    except (kfp_rest.KfpApiError, ValueError) as exc:
        return "", str(exc)


def status(store: ArtifactStore, run_id: str, lookup: kfp_rest.RunStateLookup | None = None) -> dict:
    """Rounds done, the current segment, the last error, a guard-rail stop and the best adapter, across segments.

    A lease whose holder's KFP run has finished (`lookup`; by default the chain's KFP API, $KF_PIPELINES_ENDPOINT
    first) makes the state "stalled": the next resume or scheduled run breaks it."""
    validate_run_id(run_id, "run id")
    claim = read_claim(store, run_id)
    if claim is None and not has_commits(store, run_id):
        raise _missing(store, run_id, "fine-tune")
    chain_record = read_chain(store, run_id)
    found = segments(store, run_id)
    lease = read_lease(store, run_id)
    recorded = read_status(store, run_id)
    state = "running" if lease else (recorded.state if recorded else "not started")
    reason = recorded.reason if recorded else ""
    holder_state, holder_unknown = _holder_check(chain_record, lease, lookup)
    if lease is not None and holder_state in kfp_rest.FINISHED_STATES:
        state, reason = "stalled", (f"lease held by finished run {lease.kfp_run_id} ({holder_state}); `dgrpo "
                                    f"submit --resume {run_id}` or the next scheduled run breaks it and goes on")
    breaks, stop = lease_breaks(store, run_id), read_stop(store, run_id)
    root = seg.root_error(seg.errors(store, run_id))
    return {"run_id": run_id, "store": store.uri, "state": state, "reason": reason, "holder_state": holder_state,
            "holder_unknown": holder_unknown, "last_lease_break": breaks[-1].to_json() if breaks else None,
            "rounds_done": trained_state(store, run_id).next_round,
            "rounds_total": chain_record.rounds if chain_record else None,
            "rounds_per_run": chain_record.rounds_per_run if chain_record else None,
            "mode": chain_record.mode if chain_record else None,
            "recipe_sha256": claim.recipe_sha256 if claim else None,
            "claimed_at": claim.claimed_at if claim else None,
            "current_segment": found[-1].to_json() if found else None, "segments": len(found),
            "lease": lease.to_json() if lease else None, "last_error": root.to_json() if root else None,
            "stop": stop.to_json() if stop else None, "best": _best(store, run_id),
            "final_adapter": _located(store, ref_dict(trained_state(store, run_id).adapter))}


def _located(store: ArtifactStore, ref: dict | None) -> dict | None:
    """`ref` with the URI of its object in `store` now (a copied store's records name where it was written)."""
    return ref and ref | {"uri": report.located_uri(store, ref)}


def _best(store: ArtifactStore, run_id: str) -> dict | None:
    best = read_best(store, run_id)
    return best and best.to_json() | {"adapter": _located(store, ref_dict(best.adapter))}


def format_status(st: dict) -> str:
    total = st["rounds_total"] if st["rounds_total"] is not None else "?"
    sep = ": " if st["state"] == "stalled" else " - "
    lines = [f"fine-tune {st['run_id']} ({st['store']}): {st['state']}" + (f"{sep}{st['reason']}" if st["reason"]
                                                                           else ""),
             f"  rounds done: {st['rounds_done']}/{total}   segments: {st['segments']} of up to "
             f"{st['rounds_per_run'] or '?'} rounds   recipe {str(st['recipe_sha256'])[:12]}"]
    cur = st["current_segment"]
    if cur:
        rounds = cur["rounds"]
        span = f"rounds {shown(rounds[0])}-{shown(rounds[-1])}" if rounds else "no rounds"
        lines.append(f"  segment {cur['segment']}: {span}, {cur['state']}, KFP run {cur.get('kfp_run_id') or '-'}, "
                     f"started {cur['started_at']}" + (f", finished {cur['finished_at']}" if cur.get("finished_at")
                                                       else ""))
    if st["lease"]:
        lines.append(f"  lease: {st['lease']['holder']} (segment {st['lease'].get('segment')}, KFP run "
                     f"{st['lease'].get('kfp_run_id') or '-'}" + (f" {st['holder_state']}" if st["holder_state"]
                                                                  else "")
                     + f", taken {st['lease']['acquired_at']}); if its run is dead: dgrpo unlock {st['run_id']} "
                       f"--holder {st['lease']['holder']} --store {st['store']}")
        if st["holder_unknown"]:
            lines.append(f"    its KFP run could not be checked: {st['holder_unknown']}")
    if st["last_lease_break"]:
        brk = st["last_lease_break"]
        lines.append(f"  last lease break ({brk['at']}): {brk['by']} broke lease {brk['lease'].get('holder')}: "
                     f"{brk['reason']}")
    if st["stop"]:
        stop = st["stop"]
        lines.append(f"  {chain.stop_label(stop['rule'])} {after_round(stop['round'])}: {stop['message']}")
        lines.append(f"    numbers: {json.dumps(stop['values'], sort_keys=True)}")
    if st["last_error"]:
        err = st["last_error"]
        where = f", round {shown(err['round'])}" if err.get("round") is not None else ""
        lines.append(f"  last error ({err['at']}, segment {err.get('segment') or '-'}, task {err['task']}{where}): "
                     f"{err['error']}")
    if st["best"]:
        best = st["best"]
        where = best["adapter"]["uri"] if best.get("adapter") else "the base model"
        when = after_round(best["round"]) if best["round"] else "of the base model"
        lines.append(f"  best so far: {best['metric']} {best['value']:.4g} {when} ({where})")
    if st["final_adapter"]:
        lines.append(f"  last committed adapter: {st['final_adapter']['uri']}")
    return "\n".join(lines)


def request_stop(store: ArtifactStore, run_id: str, reason: str = "") -> StopRecord:
    """Stop the chain by hand: a stop record like a guard rail's (rule "manual"); the running segment ends before
    its next round and its exit task submits nothing. A resume lifts it."""
    validate_run_id(run_id, "run id")
    if read_claim(store, run_id) is None and not has_commits(store, run_id):
        raise _missing(store, run_id, "fine-tune")
    done = trained_state(store, run_id).next_round
    stop = StopRecord(rule="manual", round=done, message=reason or "stopped by hand (dgrpo stop)", values={},
                      at=now())
    write_stop(store, run_id, stop)
    return stop


def terminate_current(store: ArtifactStore, run_id: str, client: kfp_rest.KfpClient, wait_s: float = 60.0
                      ) -> tuple[str, LeaseBreak | None]:
    """`dgrpo stop --now`, after the stop record: terminate the KFP run of the segment holding the lease, wait up
    to `wait_s` for it to finish, then break its lease if its exit task did not run (Argo skips an exit hook whose
    pods stay pending past a terminated run's deadline). Returns the terminated run ("" when no segment held the
    lease) and the lease break (None when the exit task released it, or the run had not finished yet)."""
    lease = read_lease(store, run_id)
    if lease is None or not lease.kfp_run_id:
        return "", None
    kfp_run = lease.kfp_run_id
    client.terminate_run(kfp_run)
    deadline = time.monotonic() + wait_s
    while True:
        state = client.run_state(kfp_run)
        if state in kfp_rest.FINISHED_STATES or time.monotonic() >= deadline:
            break
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    broken = seg.break_finished_holder(store, run_id, by=f"dgrpo stop --now {run_id}", lookup=lambda _: state)
    return kfp_run, broken


def unlock(store: ArtifactStore, run_id: str, holder: str) -> bool:
    """Release a stale lease by its holder id (the one `dgrpo status` shows), never another one."""
    validate_run_id(run_id, "run id")
    return release_lease(store, run_id, holder)


def submit_with_kfp(store: ArtifactStore) -> seg.Submitter:
    """The cluster's continuation: the next segment as a new KFP run, through the v2beta1 REST API."""

    def submit(chain_record: ChainRecord, state: seg.RoundState) -> str:
        return kfp_rest.submit_next(store, chain_record, state.segment, segment_parameters(store, chain_record))
    return submit


def _terminated(store: ArtifactStore, run_id: str, kfp_run_id: str) -> str:
    """KFP run `kfp_run_id`'s API state if an operator terminated it (CANCELING, CANCELED), else ""."""
    lookup = kfp_rest.run_state_lookup(read_chain(store, run_id), attempts=2)
    if lookup is None or not kfp_run_id:
        return ""
    try:
        state = lookup(kfp_run_id)
    except kfp_rest.KfpApiError:  # only a hint: the store decides the rest
        return ""
    return state if state in kfp_rest.TERMINATED_STATES else ""


def finish_on_cluster(store: ArtifactStore, run_id: str, config_sha256: str, kfp_run_id: str,
                      final_state: str) -> str:
    """`segment.finish_segment` with the REST continuation; returns the fine-tune's report (markdown) for the KFP
    UI: its status, then the evaluations. A run an operator terminated is told by its own API state (CANCELING),
    which the exit handler's final status does not reliably carry."""
    final_state = _terminated(store, run_id, kfp_run_id) or final_state
    end = seg.finish_segment(store, run_id, config_sha256, kfp_run_id, final_state, submit_with_kfp(store))
    text = format_status(status(store, run_id))
    if end.next_kfp_run_id:
        text += f"\n  next segment: KFP run {end.next_kfp_run_id}"
    with contextlib.suppress(ValueError):  # no evaluation recorded yet
        built = report.build_report(store, run_id)
        report.save_report(store, run_id, built)
        text += "\n\n" + report.format_report(built)
    return text


__all__ = ["chain_key", "chain_kfp", "claim_key", "driver_key", "finish_on_cluster", "format_status", "known_runs",
           "lease_key", "release_if_driver_died", "request_stop", "segment_parameters", "start", "status",
           "submit_with_kfp", "terminate_current", "unlock"]
