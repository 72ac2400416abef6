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
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.update import run_update
from dgrpo.store import ArtifactRef


@dataclass(frozen=True)
class PlannedTask:
    stage: str
    """rollout, reward, cluster, update or evaluate."""
    round: int
    """Training round for the four training stages; completed rounds (0 = base model) for evaluate."""


def training_plan(config: RunConfig) -> Iterator[PlannedTask]:
    """Evaluate the base model, then per round rollout -> reward -> cluster -> update, evaluating on schedule."""
    eval_after = set(config.eval_rounds())
    if 0 in eval_after:
        yield PlannedTask("evaluate", 0)
    for r in range(config.rounds):
        for stage in ("rollout", "reward", "cluster", "update"):
            yield PlannedTask(stage, r)
        if r + 1 in eval_after:
            yield PlannedTask("evaluate", r + 1)


def run_inprocess(ctx: StageContext) -> dict[str, ArtifactRef]:
    """Run the whole plan in this process; returns the final adapter and optimizer state."""
    state: dict[str, ArtifactRef | None] = {"adapter": None, "optimizer_state": None}
    for task in training_plan(ctx.config):
        if task.stage == "evaluate":
            run_evaluate(ctx, task.round, state["adapter"])
        elif task.stage == "rollout":
            state["rollouts"] = run_rollout(ctx, task.round, state["adapter"]).outputs["rollouts"]
        elif task.stage == "reward":
            state["rewards"] = run_reward(ctx, task.round, state["rollouts"]).outputs["rewards"]
        elif task.stage == "cluster":
            state["scores"] = run_cluster(ctx, task.round, state["rollouts"], state["rewards"]).outputs["scores"]
        else:
            out = run_update(ctx, task.round, state["rollouts"], state["scores"], state["adapter"],
                             state["optimizer_state"]).outputs
            state["adapter"], state["optimizer_state"] = out["adapter"], out["optimizer_state"]
    return {k: v for k, v in state.items() if k in ("adapter", "optimizer_state") and v is not None}
