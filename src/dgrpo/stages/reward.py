"""Reward stage: score every rollout image with the configured reward model, and monitor the images' pixels
(`dgrpo.metrics.image_monitors`) where the images are decoded anyway."""

import numpy as np
import pyarrow as pa

from dgrpo import artifacts
from dgrpo.contracts import REWARDS, ROLLOUTS
from dgrpo.images import png_decode
from dgrpo.metrics import image_monitors
from dgrpo.rewards import load_reward
from dgrpo.runs import lineage
from dgrpo.stages.shared.context import StageContext, StageResult, emit_event
from dgrpo.stages.shared.shards import recorded_shard
from dgrpo.store import ArtifactRef


def run_reward(ctx: StageContext, round_index: int, rollouts: ArtifactRef) -> StageResult:
    table = artifacts.read_table(ctx.store, rollouts, ROLLOUTS).select(
        ["sample_id", "group_id", "prompt", "image_png"])
    reward_model = load_reward(ctx.config.reward.name, ctx.config.reward.options)
    images = np.stack([png_decode(b) for b in table.column("image_png").to_pylist()])
    scores = reward_model(images, table.column("prompt").to_pylist())
    if "reward" not in scores or len(scores["reward"]) != len(images):
        raise ValueError(f"reward {ctx.config.reward.name!r} must return 'reward' with one value per image")
    names = sorted(k for k in scores if k != "reward")
    components = [[(n, float(scores[n][i])) for n in names] for i in range(len(images))]
    out = table.drop_columns(["image_png"]).append_column(
        pa.field("reward", pa.float64(), nullable=False), pa.array(scores["reward"], pa.float64())
    ).append_column(pa.field("components", REWARDS.schema.field("components").type, nullable=False),
                    pa.array(components, REWARDS.schema.field("components").type))
    shard, shards = recorded_shard(lineage.read_record(ctx.store, rollouts.sha256))
    prov = ctx.provenance("reward", round_index, {"rollouts": rollouts}, shard=shard, shards=shards)
    ref = artifacts.write_table(ctx.store, out, REWARDS, prov)
    reward = np.asarray(scores["reward"])
    result = StageResult({"rewards": ref}, {"reward_mean": float(reward.mean()), "reward_std": float(reward.std()),
                                            "samples": float(len(reward)), **image_monitors(images)})
    emit_event(ctx, "reward", round_index, result, shard)
    return result
