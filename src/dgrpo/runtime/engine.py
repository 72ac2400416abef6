"""The in-process engine: a fine-tune's segments as plain sequences of stage calls in this process.

Faster than kfp.local (no process per task) and used by the experiment. It runs the chain exactly as the KFP
pipeline does, through the same segment steps (`dgrpo.runtime.segment`), the fused task's training
(`dgrpo.runtime.fused`) and the same decision function (`dgrpo.runtime.chain.decide`), so its artifacts equal
the pipeline's bit for bit, staged or fused (tested).
"""

import uuid
from collections.abc import Callable

from dgrpo.config import ConfigError, RunConfig
from dgrpo.runs.commits import trained_state
from dgrpo.runtime import fine_tune
from dgrpo.runtime import segment as seg
from dgrpo.runtime.fused import train_segment
from dgrpo.runtime.termination import Terminated
from dgrpo.stages.shared.context import StageContext
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
        if isinstance(exc, Terminated):  # this process is being stopped: the segment is recorded, no next one
            raise exc
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
    """One segment in this process: open it, train it as the fused task does (`dgrpo.runtime.fused`), then its
    exit step."""
    kfp_run_id = f"inprocess-{uuid.uuid4().hex[:12]}"
    failure: BaseException | None = None
    try:
        state, base_due = seg.open_segment(store, run_id, config_sha256, kfp_run_id)
    except Exception as exc:  # like a failed open_segment task: recorded for the exit step
        failure = exc
        seg.record_error(store, run_id, "open_segment", exc)
    else:
        try:
            train_segment(store, state, base_due)  # records its own failure
        except Exception as exc:
            failure = exc
    end = seg.finish_segment(store, run_id, config_sha256, kfp_run_id, "FAILED" if failure else "SUCCEEDED")
    return end, failure


def check_inprocess(config: RunConfig) -> None:
    """A team's container component runs only as a KFP task: an in-process run of a config that swaps one in
    would silently train with our stage instead."""
    swaps = config.pipeline.swaps()
    if swaps:
        name = next(iter(swaps))
        raise ConfigError(f"config field 'pipeline.stages.{name}': a container component runs only in the KFP "
                          "pipeline (--engine kfp, pipeline.execution staged); the in-process engine cannot run it")


def run_inprocess(ctx: StageContext, resume_from: str = "") -> dict[str, ArtifactRef]:
    """Start (or resume, or branch) the fine-tune `ctx.run_id` and run its segments until the chain ends; returns
    the last committed adapter and optimizer state."""
    check_inprocess(ctx.config)
    record = fine_tune.start(ctx.store, ctx.config, ctx.run_id, resume_from)
    run_chain(lambda: segment_inprocess(ctx.store, ctx.run_id, record.config_sha256))
    state = trained_state(ctx.store, ctx.run_id)
    return {k: v for k, v in (("adapter", state.adapter), ("optimizer_state", state.optimizer_state))
            if v is not None}


__all__ = ["ChainFailed", "check_inprocess", "run_chain", "run_inprocess", "segment_inprocess"]
