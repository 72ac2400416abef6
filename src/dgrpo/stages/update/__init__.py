"""Update stage: one round of Flow-GRPO on the round's trajectories, carrying LoRA and optimizer state.

`train` holds the round's optimizer steps and `parallel` runs them in several processes (torchrun); AdamW's state
and the EMA travel between rounds through `dgrpo.stages.shared.training_state`.
"""

from dgrpo.runs.commits import commit_round
from dgrpo.stages.shared.context import StageContext, StageResult, emit_event
from dgrpo.stages.update.parallel import launch
from dgrpo.stages.update.train import UpdateInputs, group_conditioning, train_round
from dgrpo.store import ArtifactRef


def run_update(ctx: StageContext, round_index: int, rollouts: ArtifactRef | list[ArtifactRef], scores: ArtifactRef,
               adapter: ArtifactRef | None = None, optimizer_state: ArtifactRef | None = None) -> StageResult:
    """One GRPO round, then the round's commit; `rollouts` may be the round's shards, merged in shard order.

    With train.num_processes > 1 the round trains in that many data-parallel processes (torchrun), which
    write the artifacts; this process then commits the round as it does after a single-process round.
    """
    inputs = UpdateInputs(round_index, rollouts, scores, adapter, optimizer_state)
    result = launch(ctx, inputs) if ctx.config.train.num_processes > 1 else train_round(ctx, inputs)
    return commit_update(ctx, inputs, result)


def commit_update(ctx: StageContext, inputs: UpdateInputs, result: StageResult) -> StageResult:
    """Commit the round the main process trained (its adapter and optimizer state) and record its event."""
    commit_round(ctx.store, ctx.run_id, round_index=inputs.round_index, adapter=result.outputs["adapter"],
                 optimizer_state=result.outputs["optimizer_state"], parent=inputs.adapter, lease=ctx.lease,
                 recipe_sha256=ctx.config.recipe_sha256())
    emit_event(ctx, "update", inputs.round_index, result)
    return result


__all__ = ["UpdateInputs", "commit_update", "group_conditioning", "run_update", "train_round"]
