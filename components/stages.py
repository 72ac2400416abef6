"""The five stage components. Each body imports and calls one `dgrpo.stages` function; nothing else.

No `from __future__ import annotations` here: KFP reads the annotations at definition time.
"""


from dgrpo_components.images import image_for
from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output


@dsl.component(base_image=image_for("rollout"), install_kfp_package=False)
def rollout(config_json: str, store_uri: str, run_id: str, round_index: int, rollouts: Output[Dataset],
            metrics: Output[Metrics], adapter: Input[Model] | None = None):
    """Sample G SDE trajectories per prompt with the current adapter."""
    from dgrpo.stages import entry
    from dgrpo.stages.rollout import run_rollout

    ctx = entry.context(config_json, store_uri, run_id)
    result = run_rollout(ctx, round_index, entry.read_ref(adapter))
    entry.publish(ctx, result, {"rollouts": rollouts}, metrics)


@dsl.component(base_image=image_for("reward"), install_kfp_package=False)
def reward(config_json: str, store_uri: str, run_id: str, round_index: int, rollouts: Input[Dataset],
           rewards: Output[Dataset], metrics: Output[Metrics]):
    """Score every rollout image with the configured reward model."""
    from dgrpo.stages import entry
    from dgrpo.stages.reward import run_reward

    ctx = entry.context(config_json, store_uri, run_id)
    result = run_reward(ctx, round_index, entry.read_ref(rollouts))
    entry.publish(ctx, result, {"rewards": rewards}, metrics)


@dsl.component(base_image=image_for("cluster"), install_kfp_package=False)
def cluster(config_json: str, store_uri: str, run_id: str, round_index: int, rollouts: Input[Dataset],
            rewards: Input[Dataset], scores: Output[Dataset], metrics: Output[Metrics]):
    """Turn quality rewards into final rewards (the DiverseGRPO slot)."""
    from dgrpo.stages import entry
    from dgrpo.stages.cluster import run_cluster

    ctx = entry.context(config_json, store_uri, run_id)
    result = run_cluster(ctx, round_index, entry.read_ref(rollouts), entry.read_ref(rewards))
    entry.publish(ctx, result, {"scores": scores}, metrics)


@dsl.component(base_image=image_for("update"), install_kfp_package=False)
def update(config_json: str, store_uri: str, run_id: str, round_index: int, rollouts: Input[Dataset],
           scores: Input[Dataset], new_adapter: Output[Model], new_optimizer_state: Output[Model],
           update_metrics: Output[Dataset], metrics: Output[Metrics], adapter: Input[Model] | None = None,
           optimizer_state: Input[Model] | None = None):
    """One GRPO round on the trajectories; writes the new LoRA adapter and optimizer state."""
    from dgrpo.stages import entry
    from dgrpo.stages.update import run_update

    ctx = entry.context(config_json, store_uri, run_id)
    result = run_update(ctx, round_index, entry.read_ref(rollouts), entry.read_ref(scores),
                        entry.read_ref(adapter), entry.read_ref(optimizer_state))
    entry.publish(ctx, result, {"adapter": new_adapter, "optimizer_state": new_optimizer_state,
                                "metrics": update_metrics}, metrics)


@dsl.component(base_image=image_for("evaluate"), install_kfp_package=False)
def evaluate(config_json: str, store_uri: str, run_id: str, round_index: int, samples: Output[Dataset],
             grid: Output[HTML], metrics: Output[Metrics], adapter: Input[Model] | None = None):
    """Deterministic evaluation: quality, mode coverage, diversity, and an image grid."""
    from dgrpo.stages import entry
    from dgrpo.stages.evaluate import run_evaluate

    ctx = entry.context(config_json, store_uri, run_id)
    result = run_evaluate(ctx, round_index, entry.read_ref(adapter))
    entry.publish(ctx, result, {"samples": samples}, metrics)
    entry.write_grid_html(ctx, result.outputs["grid"], grid.path)
