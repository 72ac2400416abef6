"""The in-process engine: a fine-tune's segments as plain sequences of stage calls in this process.

Faster than kfp.local (no process per task) and used by the experiment. It runs the chain exactly as the KFP
pipeline does, through the same segment steps (`dgrpo.runtime.segment`) and the same decision function
(`dgrpo.runtime.chain.decide`), so its artifacts equal the pipeline's bit for bit (tested).
"""

import uuid
from collections.abc import Callable

from dgrpo.runtime import fine_tune, review
from dgrpo.runtime import segment as seg
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.shared.commits import trained_state
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.update import run_update
from dgrpo.store import ArtifactRef, ArtifactStore


class ChainFailed(RuntimeError):
    """The chain stopped because its segments kept failing; the message has the decision and the last error."""


SegmentRun = Callable[[], tuple[seg.SegmentEnd, BaseException | None]]


def run_chain(run_segment: SegmentRun) -> seg.SegmentEnd:
    """Run segments while the decision says another one follows; return the last segment's end.

    A run that could not open a segment (another segment holds the fine-tune) re-raises why; a chain that failed
    raises ChainFailed from the last segment's error."""
    while True:
        end, exc = run_segment()
        if end.decision is None:
            if exc is not None:
                raise exc
            return end
        if not end.decision.submits:
            if end.decision.action == "failed":
                raise ChainFailed(f"fine-tune stopped: {end.decision.reason}") from exc
            return end


def segment_inprocess(store: ArtifactStore, run_id: str, config_sha256: str) -> tuple[seg.SegmentEnd,
                                                                                      BaseException | None]:
    """One segment in this process: the pipeline's tasks in order, then its exit step."""
    kfp_run_id = f"inprocess-{uuid.uuid4().hex[:12]}"
    failure: BaseException | None = None
    now: dict = {"task": "open_segment", "segment": None, "round": None}  # where an error is recorded
    try:
        state, base_due = seg.open_segment(store, run_id, config_sha256, kfp_run_id)
        now["segment"] = state.segment or None
        ctx = seg.context(store, state)
        if base_due:
            now["task"] = "evaluate"
            review.evaluate(ctx, state, after_update=False)
        for r in state.rounds:
            now |= {"task": "begin_round", "round": r}
            rs = seg.begin_round(store, state, r)
            _train_round(ctx, rs, now)
            if rs.evaluate:
                now["task"] = "evaluate"
                done = trained_state(store, run_id)
                review.evaluate(ctx, rs, after_update=True, adapter=done.adapter, optimizer_state=done.optimizer_state)
    except Exception as exc:  # the segment fails; like a KFP task, the error is recorded for the exit step
        failure = exc
        seg.record_error(store, run_id, now["task"], exc, now["segment"], now["round"])
    end = seg.finish_segment(store, run_id, config_sha256, kfp_run_id, "FAILED" if failure else "SUCCEEDED")
    return end, failure


def _train_round(ctx: StageContext, state: seg.RoundState, now: dict) -> None:
    """One round: rollout and reward per shard, cluster, update (which commits the round)."""
    r, shards = state.round, ctx.config.pipeline.shards
    now["task"] = "rollout"
    rollouts = [run_rollout(ctx, r, state.adapter, i, shards).outputs["rollouts"] for i in range(shards)]
    now["task"] = "reward"
    rewards = [run_reward(ctx, r, ref).outputs["rewards"] for ref in rollouts]
    now["task"] = "cluster"
    scores = run_cluster(ctx, r, rollouts, rewards).outputs["scores"]
    now["task"] = "update"
    run_update(ctx, r, rollouts, scores, state.adapter, state.optimizer_state)


def run_inprocess(ctx: StageContext, resume_from: str = "") -> dict[str, ArtifactRef]:
    """Start (or resume, or branch) the fine-tune `ctx.run_id` and run its segments until the chain ends; returns
    the last committed adapter and optimizer state."""
    record = fine_tune.start(ctx.store, ctx.config, ctx.run_id, resume_from)
    run_chain(lambda: segment_inprocess(ctx.store, ctx.run_id, record["config_sha256"]))
    state = trained_state(ctx.store, ctx.run_id)
    return {k: v for k, v in (("adapter", state.adapter), ("optimizer_state", state.optimizer_state))
            if v is not None}


__all__ = ["ChainFailed", "run_chain", "run_inprocess", "segment_inprocess"]
