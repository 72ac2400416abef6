"""The Kubeflow training pipeline, unrolled over rounds at compile time from `dgrpo.runtime.plan.training_plan`.

A run begins with `resume` (round 0, or after the last committed round of `resume_from`). Per round, rollout and
reward fan out over prompt shards (dsl.ParallelFor) and cluster and update collect them (dsl.Collected). Stage
swaps from `config.pipeline.stages` replace our reward or cluster task by a team's component between two Parquet
adapters; `config.kubernetes` sets every task's pod.
"""

from pathlib import Path

from dgrpo_components.exchange import export_shards, export_table, import_rewards, import_scores
from dgrpo_components.stages import cluster, evaluate, resume, reward, rollout, update
from dgrpo_pipelines.kubernetes import configure, light
from dgrpo_pipelines.swaps import image_of, load_custom
from kfp import compiler, dsl

from dgrpo.config import RunConfig
from dgrpo.runtime.checks import check_plugins
from dgrpo.runtime.plan import training_plan


def build_pipeline(config: RunConfig):
    """A KFP pipeline for `config`: one task (or shard fan-out) per planned stage, artifacts wired round to round."""
    k8s = config.kubernetes
    swaps = {stage: load_custom(stage, custom) for stage, custom in config.pipeline.swaps().items()}

    def stage_task(task: dsl.PipelineTask, stage: str, name: str) -> dsl.PipelineTask:
        return configure(task, k8s.resolve(stage), k8s).set_display_name(name)

    def light_task(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
        return configure(task, light(k8s), k8s).set_display_name(name)

    def custom_task(stage: str, r: int, shard=0, shards: int = 1, **tables) -> dsl.PipelineTask:
        comp = swaps[stage]
        declared = set(comp.component_spec.inputs or {})
        params = {"round_index": r, "shard_index": shard, "shard_count": shards, "config_json": config.to_json()}
        args = tables | {k: v for k, v in params.items() if k in declared}
        return stage_task(comp(**args), stage, f"{stage} r{r} ({image_of(comp)})")

    @dsl.pipeline(name=config.name, description=f"dgrpo training, {config.rounds} rounds per run (config "
                                                f"{config.sha256()[:12]})")
    def training(store_uri: str, run_id: str, resume_from: str = "", config_json: str = config.to_json()):
        common = {"config_json": config_json, "store_uri": store_uri, "run_id": run_id}
        start = light_task(resume(**common, resume_from=resume_from), "resume point").outputs["start"]
        carried: dict = {}
        fan: dict = {}
        scores = None
        for task in training_plan(config):
            r = task.round
            kwargs = dict(common, round_index=r, start=start)
            if task.stage == "evaluate":
                stage_task(evaluate(**kwargs, **carried), "evaluate", f"evaluate after r{r}")
            elif task.stage == "rollout":
                with dsl.ParallelFor(list(range(task.shards)), parallelism=config.pipeline.parallelism) as shard:
                    ro = stage_task(rollout(**kwargs, shard_index=shard, shard_count=task.shards,
                                            **_only(carried, "adapter")), "rollout", f"rollout r{r}")
                    rollouts = ro.outputs["rollouts"]
                    if "reward" in swaps:
                        part = light_task(export_table(**common, contract="rollouts", part=rollouts),
                                          f"export rollouts r{r}").outputs["table"]
                        ext = custom_task("reward", r, shard, task.shards, rollouts=part)
                        rw = light_task(import_rewards(**kwargs, image=image_of(swaps["reward"]), rollouts=rollouts,
                                                       table=ext.outputs["rewards"]), f"import rewards r{r}")
                    else:
                        rw = stage_task(reward(**kwargs, rollouts=rollouts), "reward", f"reward r{r}")
                fan = {"rollouts": ro.outputs["rollouts"], "rewards": rw.outputs["rewards"]}
            elif task.stage == "reward":
                continue  # runs inside the rollout fan-out above, shard by shard
            elif task.stage == "cluster":
                shards = {k: dsl.Collected(v) for k, v in fan.items()}
                if "cluster" in swaps:
                    tables = {k: light_task(export_shards(**common, contract=k, parts=dsl.Collected(v)),
                                            f"export {k} r{r}").outputs["table"] for k, v in fan.items()}
                    ext = custom_task("cluster", r, **tables)
                    scores = light_task(import_scores(**kwargs, image=image_of(swaps["cluster"]), **shards,
                                                      table=ext.outputs["scores"]), f"import scores r{r}")
                else:
                    scores = stage_task(cluster(**kwargs, **shards), "cluster", f"cluster r{r}")
            else:
                up = stage_task(update(**kwargs, rollouts=dsl.Collected(fan["rollouts"]),
                                       scores=scores.outputs["scores"], **carried), "update", f"update r{r}")
                carried = {"adapter": up.outputs["new_adapter"],
                           "optimizer_state": up.outputs["new_optimizer_state"]}

    return training


def _only(carried: dict, *names: str) -> dict:
    return {k: v for k, v in carried.items() if k in names}


def compile_pipeline(config: RunConfig, package_path: str | Path) -> Path:
    """Write the KFP IR YAML of the training pipeline (with its kfp-kubernetes platform spec)."""
    check_plugins(config, require_import=False)  # an unknown reward or model fails here, not in a pod
    path = Path(package_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(config), str(path))
    return path
