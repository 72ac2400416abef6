"""The Kubeflow training pipeline: one run is one segment of a fine-tune, and its size does not depend on `rounds`.

pipeline.execution staged (a task per stage and round):

    exit handler (finish_segment: record, decide, release the lease, submit the next segment, report)
      open_segment (lease, plan) -> [base-model evaluation]
      plan_segment -> ParallelFor(rounds, parallelism=1):          one iteration per round, in order
          begin_round (next uncommitted round? lease held? no guard-rail stop?) -> state artifact
          the round's steps (`dgrpo.runtime.rounds.ROUND`): the sharded ones in a ParallelFor over shards
            (rollout -> reward, a team's reward between Parquet adapters), then cluster -> update (commits)
          -> [evaluate]

pipeline.execution fused (a handful of tasks whatever rounds_per_run):

    exit handler (finish_segment)
      open_segment -> train_segment (every round of the segment in one pod, `dgrpo.runtime.fused`)

The round loop iterates over `plan_segment`'s list output; each round reads its starting state from the store's
last commit (an iteration cannot pass artifacts to the next), and the round travels to the stages in begin_round's
`state` artifact. This shape keeps the three kfp.local rules (docs/kubernetes.md): the loop iterates over a task's
single list output, conditions read a single bool output, and no task-output parameter enters a loop.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dgrpo_components import exchange
from dgrpo_components.stages import (
    STAGE_COMPONENTS,
    begin_round,
    evaluate,
    finish_segment,
    open_segment,
    plan_segment,
    train_segment,
)
from dgrpo_pipelines.kubernetes import configure, light
from dgrpo_pipelines.swaps import image_of, load_custom
from kfp import compiler, dsl, kubernetes

from dgrpo.config import RunConfig
from dgrpo.contracts.stages import stage_spec
from dgrpo.runtime.checks import check_plugins
from dgrpo.runtime.plan import check_run_size
from dgrpo.runtime.rounds import RoundStep, spans

PIPELINE_PARAMETERS = ("store_uri", "run_id", "config_sha256", "recipe_sha256")
"""Every run parameter of a segment: ids and hashes only (the config is in the store)."""

IMPORTERS = {"rewards": exchange.import_rewards, "scores": exchange.import_scores}
"""The task that checks a team's output table and stores it as ours, by the swapped stage's output."""


def build_pipeline(config: RunConfig):
    """The segment pipeline for `config`'s execution, stages, swaps, shards and pods (`rounds` does not enter it)."""
    check_run_size(config)
    k8s = config.kubernetes
    swaps = {stage: load_custom(stage, custom) for stage, custom in config.pipeline.swaps().items()}
    shards = config.pipeline.shards

    def stage_task(task: dsl.PipelineTask, stage: str, name: str) -> dsl.PipelineTask:
        return configure(task, k8s.resolve(stage), k8s).set_display_name(name)

    def light_task(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
        return configure(task, light(k8s), k8s).set_display_name(name)

    def swapped_step(step: RoundStep, shard: Any, tables: Callable[[], dict], ids: dict, common: dict, state
                     ) -> dict:
        """A team's component between Parquet exports of its inputs and the import that checks its output."""
        kinds = {p.name: p.kind for p in stage_spec(step.stage).reads}
        exports = {name: light_task(exchange.export_table(**ids, contract=kinds[name], state=state, part=table)
                                    if step.sharded else
                                    exchange.export_shards(**ids, contract=kinds[name], state=state, parts=table),
                                    f"export {name}") for name, table in tables().items()}
        comp = swaps[step.stage]
        declared = set(comp.component_spec.inputs or {})
        params = {"round_index": next(iter(exports.values())).outputs["Output"], "shard_index": shard or 0,
                  "shard_count": shards if step.sharded else 1}
        ext = stage_task(comp(**{k: t.outputs["table"] for k, t in exports.items()},
                              **{k: v for k, v in params.items() if k in declared}),
                         step.stage, f"{step.stage} ({image_of(comp)})")
        return {name: light_task(IMPORTERS[name](**common, image=image_of(comp), state=state, **tables(),
                                                 table=ext.outputs[name]), f"import {name}").outputs[name]
                for name in step.outputs}

    def round_step(step: RoundStep, shard: Any, tables: Callable[[], dict], ids: dict, common: dict, state
                   ) -> tuple[dict, dsl.PipelineTask | None]:
        """The step's task (or a swapped stage's tasks); `tables()` binds its inputs afresh for each consumer."""
        if step.stage in swaps:
            return swapped_step(step, shard, tables, ids, common, state), None
        comp = STAGE_COMPONENTS[step.stage]
        declared = set(comp.component_spec.inputs or {})
        params = {"shard_index": shard, "shard_count": shards} if step.sharded else {}
        task = stage_task(comp(**common, state=state, **tables(), **{k: v for k, v in params.items() if k in declared}),
                          step.stage, step.stage)
        return {name: task.outputs[name] for name in step.outputs}, task

    def staged_round(ids: dict, common: dict, state) -> dsl.PipelineTask:
        """The round's tasks from `ROUND`; returns the update task (the last step)."""
        produced, fanned = {}, set()  # outputs of earlier steps; those of a shard loop, collected per consumer

        def bound(step: RoundStep) -> dict:  # kfp's compiler rewrites a Collected it compiles: one per consumer
            return {n: dsl.Collected(produced[n]) if n in fanned else produced[n] for n in step.inputs}

        def in_shard(step: RoundStep, own: dict) -> Callable[[], dict]:  # a step inside the shard loop
            return lambda: {n: own[n] if n in own else bound(step)[n] for n in step.inputs}

        last = None
        for sharded, steps in spans():
            if not sharded:
                for step in steps:
                    outs, last = round_step(step, None, lambda step=step: bound(step), ids, common, state)
                    produced |= outs
                continue
            with dsl.ParallelFor(list(range(shards)), parallelism=config.pipeline.parallelism) as shard:
                own: dict = {}
                for step in steps:
                    own |= round_step(step, shard, in_shard(step, dict(own)), ids, common, state)[0]
            produced |= own
            fanned |= set(own)
        return last

    @dsl.pipeline(name=config.name, description=f"dgrpo training segment ({config.pipeline.execution}): up to "
                                                f"{config.pipeline.rounds_per_run} rounds of a fine-tune, continued "
                                                "by the next run")
    def training(store_uri: str, run_id: str, config_sha256: str, recipe_sha256: str):
        ids = {"store_uri": store_uri, "run_id": run_id}
        common = ids | {"recipe_sha256": recipe_sha256}
        job = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        finish = light_task(finish_segment(**ids, config_sha256=config_sha256, kfp_run_id=job), "finish segment")
        kubernetes.add_pod_label(finish, "access-ml-pipeline", "true")  # the KFP API token (PodDefault)
        with dsl.ExitHandler(finish, name="segment"):
            opened = light_task(open_segment(**ids, config_sha256=config_sha256, kfp_run_id=job), "open segment")
            kubernetes.add_pod_label(opened, "access-ml-pipeline", "true")  # looks a lease holder's run up
            segment = opened.outputs["segment"]
            if config.pipeline.execution == "fused":
                fused = train_segment(**common, base_due=opened.outputs["Output"], segment=segment)
                configure(fused, k8s.resolve_fused(), k8s).set_display_name("train segment")
                return
            with dsl.If(opened.outputs["Output"] == True, name="base-model"):  # noqa: E712 - a KFP condition
                stage_task(evaluate(**common, after_update=False, state=segment), "evaluate", "evaluate base model")
            plan = light_task(plan_segment(**ids, segment=segment), "plan segment")
            with dsl.ParallelFor(plan.output, parallelism=1, name="rounds") as round_index:
                begin = light_task(begin_round(**ids, round_index=round_index, segment=segment), "begin round")
                state = begin.outputs["state"]
                up = staged_round(ids, common, state)
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
