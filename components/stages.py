"""The components of a segment. Each body calls one `dgrpo` function inside `component_io.task`, which opens the
store, loads the config by its sha256 and records a failure for the exit task; nothing else.

A round's tasks get the round and the state it trains from in a small `state` artifact written by `begin_round`:
an artifact, not a parameter, because kfp.local overwrites task-output parameters passed into a ParallelFor with
the loop item, and because the previous iteration's outputs cannot reach the next one (the store's last commit
does). Stage tasks take `recipe_sha256` as a parameter, so KFP's cache key holds the recipe, not the deployment.
No `from __future__ import annotations` here: KFP reads the annotations at definition time.
"""

from typing import List  # noqa: UP035 - kfp.local resolves a ParallelFor over a `-> List[int]` output only

from dgrpo_components.images import image_for
from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


@dsl.component(base_image=image_for("control"), install_kfp_package=False)
def open_segment(store_uri: str, run_id: str, config_sha256: str, kfp_run_id: str, segment: Output[Artifact]
                 ) -> bool:
    """Take the fine-tune's lease and plan this run's rounds; True when the base model is to be evaluated."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.runtime.segment import open_segment as open_

    with cio.task(store_uri, run_id, "open_segment") as (_, _, store):
        state, base_due = open_(store, run_id, config_sha256, kfp_run_id)
        cio.write_text(segment, state.to_json())
    return base_due


@dsl.component(base_image=image_for("control"), install_kfp_package=False)
def plan_segment(store_uri: str, run_id: str, segment: Input[Artifact]) -> List[int]:  # noqa: UP006
    """The segment's rounds, the items of its round loop (empty when the fine-tune is complete or stopped)."""
    from dgrpo.runtime import component_io as cio

    with cio.task(store_uri, run_id, "plan_segment", segment) as (_, state, _):
        return list(state.rounds)


@dsl.component(base_image=image_for("control"), install_kfp_package=False)
def begin_round(store_uri: str, run_id: str, round_index: int, segment: Input[Artifact], state: Output[Artifact]
                ) -> bool:
    """Check the round is the fine-tune's next and the lease still held; write its state. True: evaluate after."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.runtime.segment import begin_round as begin

    with cio.task(store_uri, run_id, "begin_round", round_index=round_index) as (_, _, store):
        seg = cio.read_state(segment)
        round_state = begin(store, seg, round_index)
        cio.write_text(state, round_state.to_json())
    return round_state.evaluate


@dsl.component(base_image=image_for("rollout"), install_kfp_package=False)
def rollout(store_uri: str, run_id: str, recipe_sha256: str, shard_index: int, shard_count: int,
            state: Input[Artifact], rollouts: Output[Dataset], metrics: Output[Metrics]):
    """Sample G SDE trajectories per prompt of one shard with the round's adapter."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.rollout import run_rollout

    with cio.task(store_uri, run_id, "rollout", state) as (ctx, st, _):
        result = run_rollout(ctx, st.round, st.adapter, shard_index, shard_count)
        cio.publish(ctx, result, {"rollouts": rollouts}, metrics)


@dsl.component(base_image=image_for("reward"), install_kfp_package=False)
def reward(store_uri: str, run_id: str, recipe_sha256: str, state: Input[Artifact], rollouts: Input[Dataset],
           rewards: Output[Dataset], metrics: Output[Metrics]):
    """Score every rollout image of one shard with the configured reward model."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.reward import run_reward

    with cio.task(store_uri, run_id, "reward", state) as (ctx, st, _):
        result = run_reward(ctx, st.round, cio.read_ref(rollouts))
        cio.publish(ctx, result, {"rewards": rewards}, metrics)


@dsl.component(base_image=image_for("cluster"), install_kfp_package=False)
def cluster(store_uri: str, run_id: str, recipe_sha256: str, state: Input[Artifact], rollouts: Input[list[Dataset]],
            rewards: Input[list[Dataset]], scores: Output[Dataset], metrics: Output[Metrics]):
    """Turn the round's quality rewards (all shards) into final rewards (the DiverseGRPO slot)."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.cluster import run_cluster

    with cio.task(store_uri, run_id, "cluster", state) as (ctx, st, _):
        result = run_cluster(ctx, st.round, cio.read_refs(rollouts), cio.read_refs(rewards),
                             optimizer_state=st.optimizer_state)
        cio.publish(ctx, result, {"scores": scores}, metrics)


@dsl.component(base_image=image_for("update"), install_kfp_package=False)
def update(store_uri: str, run_id: str, recipe_sha256: str, state: Input[Artifact], rollouts: Input[list[Dataset]],
           scores: Input[Dataset], new_adapter: Output[Model], new_optimizer_state: Output[Model],
           update_metrics: Output[Dataset], metrics: Output[Metrics]):
    """One GRPO round on the trajectories; writes the new LoRA adapter and optimizer state and commits the round."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.update import run_update

    with cio.task(store_uri, run_id, "update", state) as (ctx, st, _):
        result = run_update(ctx, st.round, cio.read_refs(rollouts), cio.read_ref(scores), st.adapter,
                            st.optimizer_state)
        cio.publish(ctx, result, {"adapter": new_adapter, "optimizer_state": new_optimizer_state,
                                    "metrics": update_metrics}, metrics)


@dsl.component(base_image=image_for("evaluate"), install_kfp_package=False)
def evaluate(store_uri: str, run_id: str, recipe_sha256: str, after_update: bool, state: Input[Artifact],
             samples: Output[Dataset], grid: Output[HTML], metrics: Output[Metrics], summary: Output[Markdown],
             adapter: Input[Model] | None = None, optimizer_state: Input[Model] | None = None):
    """Deterministic evaluation after the round (or of the base model): quality, mode coverage, diversity (all,
    held-out and training prompts), an image grid and a Markdown summary; then the guard rails and the best
    adapter. Uses the EMA of the weights when the run keeps one and eval.use_ema is on."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.runtime.review import evaluate as evaluate_
    from dgrpo.runtime.review import evaluated_round

    with cio.task(store_uri, run_id, "evaluate", state) as (ctx, st, _):
        result = evaluate_(ctx, st, after_update, cio.read_ref(adapter), cio.read_ref(optimizer_state))
        cio.publish(ctx, result, {"samples": samples}, metrics)
        cio.write_grid_html(ctx, result.outputs["grid"], grid.path)
        cio.write_evaluation_markdown(ctx, evaluated_round(st, after_update), summary)


@dsl.component(base_image=image_for("evaluate"), install_kfp_package=False)
def train_segment(store_uri: str, run_id: str, recipe_sha256: str, base_due: bool, segment: Input[Artifact],
                  metrics: Output[Metrics], summary: Output[Markdown]):
    """The fused segment (pipeline.execution fused): every round of the segment in this pod, through the same stage
    functions as the staged tasks, with the same records in the store; per-round metrics and a Markdown table of
    them for the KFP UI. The evaluate image holds every stage's packages."""
    from dgrpo.runtime import component_io as cio

    cio.train_fused(store_uri, run_id, segment, base_due, metrics, summary)


@dsl.component(base_image=image_for("control"), install_kfp_package=False)
def finish_segment(store_uri: str, run_id: str, config_sha256: str, kfp_run_id: str,
                   status: dsl.PipelineTaskFinalStatus, report: Output[HTML]):
    """The exit task: record the outcome, decide what follows, release the lease, submit the next segment, and
    publish the fine-tune's HTML report."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.runtime.fine_tune import finish_on_cluster

    with cio.task(store_uri, run_id, "finish_segment") as (_, _, store):
        text = finish_on_cluster(store, run_id, config_sha256, kfp_run_id, status.state)
        cio.write_run_report(store, run_id, text, report)


STAGE_COMPONENTS = {"rollout": rollout, "reward": reward, "cluster": cluster, "update": update, "evaluate": evaluate}
"""The component of each stage of the stage table, `dgrpo.contracts.stages.STAGES` (a test checks they agree)."""
