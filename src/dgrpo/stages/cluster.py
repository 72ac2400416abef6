"""Cluster stage: the DiverseGRPO slot that turns quality rewards into the final rewards of the update.

In pass-through mode (Flow-GRPO) the final reward is the quality reward; the stage still checks that the
rewards cover exactly the round's rollouts, so a swapped-in reward stage cannot drop or invent samples.
"""

import pyarrow as pa
import pyarrow.compute as pc

from dgrpo import artifacts
from dgrpo.contracts import REWARDS, ROLLOUTS, SCORES, ContractError
from dgrpo.stages.common import StageContext, StageResult, emit_event
from dgrpo.stages.shards import named_inputs, read_merged, uris
from dgrpo.store import ArtifactRef


def check_same_samples(left: pa.Table, right: pa.Table, left_name: str, right_name: str) -> None:
    a, b = set(left.column("sample_id").to_pylist()), set(right.column("sample_id").to_pylist())
    if a != b or len(a) != left.num_rows or len(b) != right.num_rows:
        missing, extra = sorted(a - b)[:3], sorted(b - a)[:3]
        raise ContractError(f"{right_name} does not match {left_name} sample for sample (column 'sample_id'): "
                            f"missing {missing}, unexpected {extra}, or duplicate ids")


def run_cluster(ctx: StageContext, round_index: int, rollouts: ArtifactRef | list[ArtifactRef],
                rewards: ArtifactRef | list[ArtifactRef]) -> StageResult:
    """Score a round; `rollouts` and `rewards` may each be one table or the shards of one."""
    samples = read_merged(ctx.store, rollouts, ROLLOUTS).select(["sample_id", "group_id"])
    scored = read_merged(ctx.store, rewards, REWARDS)
    check_same_samples(samples, scored, f"rollouts {uris(rollouts)}", f"rewards {uris(rewards)}")
    quality = scored.column("reward")
    n = scored.num_rows
    out = pa.table({
        "sample_id": scored.column("sample_id"), "group_id": scored.column("group_id"),
        "prompt": scored.column("prompt"), "quality": quality,
        "bonus": pa.array([0.0] * n, pa.float64()), "cluster_id": pa.array([0] * n, pa.int32()),
        "final_reward": quality,
    }, schema=SCORES.schema)
    prov = ctx.provenance("cluster", round_index, named_inputs("rollouts", rollouts) | named_inputs("rewards", rewards),
                          seeds={})
    ref = artifacts.write_table(ctx.store, out, SCORES, prov)
    result = StageResult({"scores": ref}, {"final_reward_mean": float(pc.mean(quality).as_py()),
                                           "bonus_std": 0.0, "quality_std": float(pc.stddev(quality).as_py())})
    emit_event(ctx, "cluster", round_index, result)
    return result

