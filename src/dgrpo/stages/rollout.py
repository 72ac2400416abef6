"""Rollout stage: sample a group of G SDE trajectories per prompt, with everything needed to replay them."""

import numpy as np
import pyarrow as pa
import torch

from dgrpo import artifacts
from dgrpo.contracts import ROLLOUTS
from dgrpo.images import png_bytes
from dgrpo.models.trajectories import expand_conditioning, sample_sde_batched
from dgrpo.rng import Stream, derive_seed
from dgrpo.stages.shared.context import StageContext, StageResult, emit_event
from dgrpo.stages.shared.policy_io import load_policy_for_round
from dgrpo.stages.shared.rounds import round_prompts, sde_steps
from dgrpo.stages.shared.shards import shard_prompt_indices
from dgrpo.store import ArtifactRef


def run_rollout(ctx: StageContext, round_index: int, adapter: ArtifactRef | None = None, shard: int = 0,
                shards: int = 1) -> StageResult:
    """Sample the prompt groups of `shard` (of `shards`); ids and seeds are those of the unsharded round."""
    cfg = ctx.config
    s = cfg.sampling
    policy = load_policy_for_round(ctx, adapter, trainable=False)
    prompts = round_prompts(cfg, round_index)
    mine = shard_prompt_indices(len(prompts), shard, shards)
    window = sde_steps(cfg, round_index)
    size = s.batch_size or s.group_size
    rows, log_probs = [], []
    for p in mine:  # one prompt group per model batch, so a sample's numbers do not depend on the sharding
        seeds = [derive_seed(cfg.seed, Stream.SAMPLE, round_index, p, k) for k in range(s.group_size)]
        cond = expand_conditioning(policy.encode_prompts([prompts[p]]), torch.zeros(s.group_size, dtype=torch.long))
        traj = sample_sde_batched(policy, cond, seeds, s.batch_size, num_steps=s.num_steps, shift=s.shift,
                                  noise_level=s.noise_level, guidance_scale=s.guidance_scale, method=s.method,
                                  sde_steps=window)
        images = np.concatenate([policy.decode(traj.latents[i:i + size, -1]) for i in range(0, len(seeds), size)])
        log_probs.append(traj.log_probs)
        for k in range(s.group_size):
            rows.append({
                "sample_id": f"r{round_index}/p{p}/s{k}", "group_id": f"r{round_index}/p{p}", "prompt": prompts[p],
                "round": round_index, "sample_index": k, "seed": seeds[k], "image_png": png_bytes(images[k]),
                "sigmas": traj.sigmas.tolist(), "log_probs": traj.log_probs[k].tolist(),
                "latents": artifacts.tensors_to_bytes({"latents": traj.latents[k]}),
                "conditioning": artifacts.tensors_to_bytes({name: t[0] for name, t in cond.items()}) if k == 0
                else None,  # a group shares its prompt: MBs per row for SD3/FLUX, stored once
            })
    table = pa.Table.from_pylist(rows, schema=ROLLOUTS.schema)
    prov = ctx.provenance("rollout", round_index, {
        "adapter": adapter, "base_model": ctx.base_model_ref(policy), "config": ctx.config_ref()},
        seeds={"first_sample_seed": rows[0]["seed"], **({"shard": shard, "shards": shards} if shards > 1 else {})})
    ref = artifacts.write_table(ctx.store, table, ROLLOUTS, prov)
    result = StageResult({"rollouts": ref}, {"samples": float(len(rows)),
                                             "mean_log_prob": float(torch.cat(log_probs).nanmean())})
    emit_event(ctx, "rollout", round_index, result, shard if shards > 1 else None)
    return result
