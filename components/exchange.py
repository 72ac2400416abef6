"""Adapters around a swapped-in stage: plain Parquet files out of and back into the artifact store.

Each body imports and calls one `dgrpo.stages.exchange` function. No `from __future__ import annotations`.
"""


from dgrpo_components.images import image_for
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


@dsl.component(base_image=image_for("reward"), install_kfp_package=False)
def export_table(config_json: str, store_uri: str, run_id: str, contract: str, part: Input[Dataset],
                 table: Output[Dataset]):
    """One stored table as a Parquet file for an external component."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.shared.exchange import export_table as export

    ctx = cio.context(config_json, store_uri, run_id)
    table.metadata["rows"] = export(ctx, cio.read_ref(part), contract, table.path)


@dsl.component(base_image=image_for("reward"), install_kfp_package=False)
def export_shards(config_json: str, store_uri: str, run_id: str, contract: str, parts: Input[list[Dataset]],
                  table: Output[Dataset]):
    """The shards of a stored table, merged in shard order, as one Parquet file for an external component."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.shared.exchange import export_table as export

    ctx = cio.context(config_json, store_uri, run_id)
    table.metadata["rows"] = export(ctx, cio.read_refs(parts), contract, table.path)


@dsl.component(base_image=image_for("reward"), install_kfp_package=False)
def import_rewards(config_json: str, store_uri: str, run_id: str, round_index: int, image: str,
                   start: Input[Artifact], rollouts: Input[Dataset], table: Input[Dataset],
                   rewards: Output[Dataset], metrics: Output[Metrics]):
    """Validate an external reward stage's Parquet against the rewards contract and store it."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.shared.exchange import import_table

    ctx = cio.context(config_json, store_uri, run_id)
    round_abs, _, _ = cio.round_state(start, 0)
    result = import_table(ctx, round_abs + round_index, "reward", "rewards", table.path,
                          {"rollouts": cio.read_ref(rollouts)}, image)
    cio.publish(ctx, result, {"rewards": rewards}, metrics)


@dsl.component(base_image=image_for("cluster"), install_kfp_package=False)
def import_scores(config_json: str, store_uri: str, run_id: str, round_index: int, image: str,
                  start: Input[Artifact], rollouts: Input[list[Dataset]], rewards: Input[list[Dataset]],
                  table: Input[Dataset], scores: Output[Dataset], metrics: Output[Metrics]):
    """Validate an external cluster stage's Parquet against the scores contract and store it."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.shared.exchange import import_table

    ctx = cio.context(config_json, store_uri, run_id)
    round_abs, _, _ = cio.round_state(start, 0)
    result = import_table(ctx, round_abs + round_index, "cluster", "scores", table.path,
                          {"rollouts": cio.read_refs(rollouts), "rewards": cio.read_refs(rewards)}, image)
    cio.publish(ctx, result, {"scores": scores}, metrics)
