"""The stage components. Each body imports and calls one `dgrpo.stages` function; nothing else.

Every stage gets the run's start point (`resume`'s output), which turns its round within this pipeline run into
the fine-tune's absolute round. No `from __future__ import annotations` here: KFP reads the annotations at
definition time.
"""


from dgrpo_components.images import image_for
from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


@dsl.component(base_image=image_for("update"), install_kfp_package=False)
def resume(config_json: str, store_uri: str, run_id: str, resume_from: str, start: Output[Artifact]):
    """Where this run begins: round 0, or after the last committed round of `resume_from`."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.shared.commits import start_point

    ctx = cio.context(config_json, store_uri, run_id)
    cio.write_text(start, start_point(ctx, resume_from).to_json())


@dsl.component(base_image=image_for("rollout"), install_kfp_package=False)
def rollout(config_json: str, store_uri: str, run_id: str, round_index: int, shard_index: int, shard_count: int,
            start: Input[Artifact], rollouts: Output[Dataset], metrics: Output[Metrics],
            adapter: Input[Model] | None = None):
    """Sample G SDE trajectories per prompt of one shard with the current adapter."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.rollout import run_rollout

    ctx = cio.context(config_json, store_uri, run_id)
    round_abs, adapter_ref, _ = cio.round_state(start, round_index, adapter)
    result = run_rollout(ctx, round_abs, adapter_ref, shard_index, shard_count)
    cio.publish(ctx, result, {"rollouts": rollouts}, metrics)


@dsl.component(base_image=image_for("reward"), install_kfp_package=False)
def reward(config_json: str, store_uri: str, run_id: str, round_index: int, start: Input[Artifact],
           rollouts: Input[Dataset], rewards: Output[Dataset], metrics: Output[Metrics]):
    """Score every rollout image of one shard with the configured reward model."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.reward import run_reward

    ctx = cio.context(config_json, store_uri, run_id)
    round_abs, _, _ = cio.round_state(start, 0)
    result = run_reward(ctx, round_abs + round_index, cio.read_ref(rollouts))
    cio.publish(ctx, result, {"rewards": rewards}, metrics)


@dsl.component(base_image=image_for("cluster"), install_kfp_package=False)
def cluster(config_json: str, store_uri: str, run_id: str, round_index: int, start: Input[Artifact],
            rollouts: Input[list[Dataset]], rewards: Input[list[Dataset]], scores: Output[Dataset],
            metrics: Output[Metrics]):
    """Turn the round's quality rewards (all shards) into final rewards (the DiverseGRPO slot)."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.cluster import run_cluster

    ctx = cio.context(config_json, store_uri, run_id)
    round_abs, _, _ = cio.round_state(start, 0)
    result = run_cluster(ctx, round_abs + round_index, cio.read_refs(rollouts), cio.read_refs(rewards))
    cio.publish(ctx, result, {"scores": scores}, metrics)


@dsl.component(base_image=image_for("update"), install_kfp_package=False)
def update(config_json: str, store_uri: str, run_id: str, round_index: int, start: Input[Artifact],
           rollouts: Input[list[Dataset]], scores: Input[Dataset], new_adapter: Output[Model],
           new_optimizer_state: Output[Model], update_metrics: Output[Dataset], metrics: Output[Metrics],
           adapter: Input[Model] | None = None, optimizer_state: Input[Model] | None = None):
    """One GRPO round on the trajectories; writes the new LoRA adapter and optimizer state and commits the round."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.update import run_update

    ctx = cio.context(config_json, store_uri, run_id)
    round_abs, adapter_ref, optimizer_ref = cio.round_state(start, round_index, adapter, optimizer_state)
    result = run_update(ctx, round_abs, cio.read_refs(rollouts), cio.read_ref(scores), adapter_ref,
                        optimizer_ref)
    cio.publish(ctx, result, {"adapter": new_adapter, "optimizer_state": new_optimizer_state,
                                "metrics": update_metrics}, metrics)


@dsl.component(base_image=image_for("evaluate"), install_kfp_package=False)
def evaluate(config_json: str, store_uri: str, run_id: str, round_index: int, start: Input[Artifact],
             samples: Output[Dataset], grid: Output[HTML], metrics: Output[Metrics], summary: Output[Markdown],
             adapter: Input[Model] | None = None, optimizer_state: Input[Model] | None = None):
    """Deterministic evaluation: quality, mode coverage, diversity (all, held-out and training prompts), an image
    grid and a Markdown summary (of the EMA weights when the run keeps an EMA and eval.use_ema is on)."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.evaluate import run_evaluate

    ctx = cio.context(config_json, store_uri, run_id)
    round_abs, adapter_ref, optimizer_ref = cio.round_state(start, round_index, adapter, optimizer_state)
    result = run_evaluate(ctx, round_abs, adapter_ref, optimizer_ref)
    cio.publish(ctx, result, {"samples": samples}, metrics)
    cio.write_grid_html(ctx, result.outputs["grid"], grid.path)
    cio.write_evaluation_markdown(ctx, round_abs, summary)


STAGE_COMPONENTS = {"rollout": rollout, "reward": reward, "cluster": cluster, "update": update, "evaluate": evaluate}
"""The component of each stage of the stage table, `dgrpo.contracts.stages.STAGES` (a test checks they agree)."""
