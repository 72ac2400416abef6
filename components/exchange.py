"""Adapters around a swapped-in stage: plain Parquet files out of and back into the artifact store.

Each body calls one `dgrpo.stages.shared.exchange` function. The exports also return the round, which a team's
component may declare as `round_index`: inside the shard loop it cannot come from outside the loop (kfp.local
would hand it the shard index instead). No `from __future__ import annotations`.
"""

from dgrpo_components.images import image_for
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


@dsl.component(base_image=image_for("reward"), install_kfp_package=False)
def export_table(store_uri: str, run_id: str, contract: str, state: Input[Artifact], part: Input[Dataset],
                 table: Output[Dataset]) -> int:
    """One stored table as a Parquet file for an external component; returns the round."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.shared.exchange import export_table as export

    with cio.task(store_uri, run_id, f"export {contract}", state) as (ctx, st, _):
        table.metadata["rows"] = export(ctx, cio.read_ref(part), contract, table.path)
        return st.round


@dsl.component(base_image=image_for("reward"), install_kfp_package=False)
def export_shards(store_uri: str, run_id: str, contract: str, state: Input[Artifact], parts: Input[list[Dataset]],
                  table: Output[Dataset]) -> int:
    """The shards of a stored table, merged in shard order, as one Parquet file for an external component."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.shared.exchange import export_table as export

    with cio.task(store_uri, run_id, f"export {contract}", state) as (ctx, st, _):
        table.metadata["rows"] = export(ctx, cio.read_refs(parts), contract, table.path)
        return st.round


@dsl.component(base_image=image_for("reward"), install_kfp_package=False)
def import_rewards(store_uri: str, run_id: str, recipe_sha256: str, image: str, state: Input[Artifact],
                   rollouts: Input[Dataset], table: Input[Dataset], rewards: Output[Dataset],
                   metrics: Output[Metrics]):
    """Validate an external reward stage's Parquet against the rewards contract and store it."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.shared.exchange import import_table

    with cio.task(store_uri, run_id, "import rewards", state) as (ctx, st, _):
        result = import_table(ctx, st.round, "reward", "rewards", table.path, {"rollouts": cio.read_ref(rollouts)},
                              image)
        cio.publish(ctx, result, {"rewards": rewards}, metrics)


@dsl.component(base_image=image_for("cluster"), install_kfp_package=False)
def import_scores(store_uri: str, run_id: str, recipe_sha256: str, image: str, state: Input[Artifact],
                  rollouts: Input[list[Dataset]], rewards: Input[list[Dataset]], table: Input[Dataset],
                  scores: Output[Dataset], metrics: Output[Metrics]):
    """Validate an external cluster stage's Parquet against the scores contract and store it."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.stages.shared.exchange import import_table

    with cio.task(store_uri, run_id, "import scores", state) as (ctx, st, _):
        result = import_table(ctx, st.round, "cluster", "scores", table.path,
                              {"rollouts": cio.read_refs(rollouts), "rewards": cio.read_refs(rewards)}, image)
        cio.publish(ctx, result, {"scores": scores}, metrics)
