"""The training loop as a plain sequence of stage calls: the in-process engine and the plan both engines share.

`training_plan` is the single description of which stage runs when; the Kubeflow pipeline factory unrolls the
same plan into tasks, so the two engines cannot drift apart.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from dgrpo.config import RunConfig
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.common import StageContext
from dgrpo.stages.evaluate import run_evaluate
from dgrpo.stages.resume import start_point
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.update import run_update
from dgrpo.store import ArtifactRef

SHARDED_STAGES = ("rollout", "reward")


@dataclass(frozen=True)
class PlannedTask:
    stage: str
    """rollout, reward, cluster, update or evaluate."""
    round: int
    """Training round for the four training stages; completed rounds (0 = base model) for evaluate.

    Counted from the run's start: a run resuming after round R adds R + 1 (`dgrpo.stages.resume`)."""
    shards: int = 1
    """Parallel tasks of the stage (prompt shards of rollout and reward)."""


def training_plan(config: RunConfig) -> Iterator[PlannedTask]:
    """Evaluate the base model, then per round rollout -> reward -> cluster -> update, evaluating on schedule."""
    eval_after = set(config.eval_rounds())
    if 0 in eval_after:
        yield PlannedTask("evaluate", 0)
    for r in range(config.rounds):
        for stage in ("rollout", "reward", "cluster", "update"):
            yield PlannedTask(stage, r, config.pipeline.shards if stage in SHARDED_STAGES else 1)
        if r + 1 in eval_after:
            yield PlannedTask("evaluate", r + 1)


def run_inprocess(ctx: StageContext, resume_from: str = "") -> dict[str, ArtifactRef]:
    """Run the whole plan in this process (after the last committed round of `resume_from`, if given); returns
    the final adapter and optimizer state."""
    start = start_point(ctx, resume_from)
    state: dict = {"adapter": start.adapter, "optimizer_state": start.optimizer_state}
    for task in training_plan(ctx.config):
        r = start.round + task.round
        if task.stage == "evaluate":
            run_evaluate(ctx, r, state["adapter"], state["optimizer_state"])
        elif task.stage == "rollout":
            state["rollouts"] = [run_rollout(ctx, r, state["adapter"], i, task.shards).outputs["rollouts"]
                                 for i in range(task.shards)]
        elif task.stage == "reward":
            state["rewards"] = [run_reward(ctx, r, ref).outputs["rewards"] for ref in state["rollouts"]]
        elif task.stage == "cluster":
            state["scores"] = run_cluster(ctx, r, state["rollouts"], state["rewards"]).outputs["scores"]
        else:
            out = run_update(ctx, r, state["rollouts"], state["scores"], state["adapter"],
                             state["optimizer_state"]).outputs
            state["adapter"], state["optimizer_state"] = out["adapter"], out["optimizer_state"]
    return {k: v for k, v in state.items() if k in ("adapter", "optimizer_state") and v is not None}
