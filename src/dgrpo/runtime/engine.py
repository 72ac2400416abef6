"""The in-process engine: the training plan as a plain sequence of stage calls in this process.

Faster than kfp.local (no process per task) and used by the experiment; its artifacts equal the pipeline's bit for
bit (tested).
"""

from dgrpo.runtime.plan import training_plan
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.evaluate import run_evaluate
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.shared.commits import start_point
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.update import run_update
from dgrpo.store import ArtifactRef


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
