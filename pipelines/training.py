"""The Kubeflow training pipeline: one run is one segment of a fine-tune, and its size does not depend on `rounds`.

    exit handler (finish_segment: record, decide, release the lease, submit the next segment, report)
      open_segment (lease, plan) -> [base-model evaluation]
      plan_segment -> ParallelFor(rounds, parallelism=1):          one iteration per round, in order
          begin_round (next uncommitted round? lease held? no guard-rail stop?) -> state artifact
          ParallelFor(shards): rollout -> reward                    (a team's reward between Parquet adapters)
          cluster(Collected) -> update (commits the round) -> [evaluate]

The round loop iterates over `plan_segment`'s list output; each round reads its starting state from the store's
last commit (an iteration cannot pass artifacts to the next), and the round travels to the stages in begin_round's
`state` artifact. This shape keeps the three kfp.local rules (docs/kubernetes.md): the loop iterates over a task's
single list output, conditions read a single bool output, and no task-output parameter enters a loop.
"""

from pathlib import Path

from dgrpo_components.exchange import export_shards, export_table, import_rewards, import_scores
from dgrpo_components.stages import (
    begin_round,
    cluster,
    evaluate,
    finish_segment,
    open_segment,
    plan_segment,
    reward,
    rollout,
    update,
)
from dgrpo_pipelines.kubernetes import configure, light
from dgrpo_pipelines.swaps import image_of, load_custom
from kfp import compiler, dsl, kubernetes

from dgrpo.config import RunConfig
from dgrpo.runtime.checks import check_plugins
from dgrpo.runtime.plan import check_run_size

PIPELINE_PARAMETERS = ("store_uri", "run_id", "config_sha256", "recipe_sha256")
"""Every run parameter of a segment: ids and hashes only (the config is in the store)."""


def build_pipeline(config: RunConfig):
    """The segment pipeline for `config`'s stages, swaps, shards and pods (`rounds` does not enter it)."""
    check_run_size(config)
    k8s = config.kubernetes
    swaps = {stage: load_custom(stage, custom) for stage, custom in config.pipeline.swaps().items()}
    shards = config.pipeline.shards

    def stage_task(task: dsl.PipelineTask, stage: str, name: str) -> dsl.PipelineTask:
        return configure(task, k8s.resolve(stage), k8s).set_display_name(name)

    def light_task(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
        return configure(task, light(k8s), k8s).set_display_name(name)

    def custom_task(stage: str, round_index, shard=0, **tables) -> dsl.PipelineTask:
        comp = swaps[stage]
        declared = set(comp.component_spec.inputs or {})
        params = {"round_index": round_index, "shard_index": shard, "shard_count": shards if stage == "reward" else 1}
        args = tables | {k: v for k, v in params.items() if k in declared}
        return stage_task(comp(**args), stage, f"{stage} ({image_of(comp)})")

    @dsl.pipeline(name=config.name, description=f"dgrpo training segment: up to {config.pipeline.rounds_per_run} "
                                                "rounds of a fine-tune, continued by the next run")
    def training(store_uri: str, run_id: str, config_sha256: str, recipe_sha256: str):
        ids = {"store_uri": store_uri, "run_id": run_id}
        common = ids | {"recipe_sha256": recipe_sha256}
        job = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        finish = light_task(finish_segment(**ids, config_sha256=config_sha256, kfp_run_id=job), "finish segment")
        kubernetes.add_pod_label(finish, "access-ml-pipeline", "true")  # the KFP API token (PodDefault)
        with dsl.ExitHandler(finish, name="segment"):
            opened = light_task(open_segment(**ids, config_sha256=config_sha256, kfp_run_id=job), "open segment")
            segment = opened.outputs["segment"]
            with dsl.If(opened.outputs["Output"] == True, name="base-model"):  # noqa: E712 - a KFP condition
                stage_task(evaluate(**common, after_update=False, state=segment), "evaluate", "evaluate base model")
            plan = light_task(plan_segment(**ids, segment=segment), "plan segment")
            with dsl.ParallelFor(plan.output, parallelism=1, name="rounds") as round_index:
                begin = light_task(begin_round(**ids, round_index=round_index, segment=segment), "begin round")
                state = begin.outputs["state"]
                with dsl.ParallelFor(list(range(shards)), parallelism=config.pipeline.parallelism) as shard:
                    ro = stage_task(rollout(**common, shard_index=shard, shard_count=shards, state=state),
                                    "rollout", "rollout")
                    rollouts = ro.outputs["rollouts"]
                    if "reward" in swaps:
                        exported = light_task(export_table(**ids, contract="rollouts", state=state, part=rollouts),
                                              "export rollouts")
                        ext = custom_task("reward", exported.outputs["Output"], shard,
                                          rollouts=exported.outputs["table"])
                        rw = light_task(import_rewards(**common, image=image_of(swaps["reward"]), state=state,
                                                       rollouts=rollouts, table=ext.outputs["rewards"]),
                                        "import rewards")
                    else:
                        rw = stage_task(reward(**common, state=state, rollouts=rollouts), "reward", "reward")
                fan = {"rollouts": ro.outputs["rollouts"], "rewards": rw.outputs["rewards"]}
                collected = {k: dsl.Collected(v) for k, v in fan.items()}
                if "cluster" in swaps:
                    exports = {k: light_task(export_shards(**ids, contract=k, state=state, parts=dsl.Collected(v)),
                                             f"export {k}") for k, v in fan.items()}
                    ext = custom_task("cluster", exports["rollouts"].outputs["Output"],
                                      **{k: t.outputs["table"] for k, t in exports.items()})
                    scores = light_task(import_scores(**common, image=image_of(swaps["cluster"]), state=state,
                                                      **collected, table=ext.outputs["scores"]), "import scores")
                else:
                    scores = stage_task(cluster(**common, state=state, **collected), "cluster", "cluster")
                up = stage_task(update(**common, state=state, rollouts=dsl.Collected(fan["rollouts"]),
                                       scores=scores.outputs["scores"]), "update", "update")
                with dsl.If(begin.outputs["Output"] == True, name="evaluation"):  # noqa: E712
                    stage_task(evaluate(**common, after_update=True, state=state, adapter=up.outputs["new_adapter"],
                                        optimizer_state=up.outputs["new_optimizer_state"]), "evaluate", "evaluate")

    return training


def compile_pipeline(config: RunConfig, package_path: str | Path) -> Path:
    """Write the KFP IR YAML of the segment pipeline (with its kfp-kubernetes platform spec)."""
    check_plugins(config, require_import=False)  # an unknown reward or model fails here, not in a pod
    path = Path(package_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(config), str(path))
    return path
