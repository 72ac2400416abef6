"""Rollout stage: sample a group of G SDE trajectories per prompt, with everything needed to replay them."""

import numpy as np
import pyarrow as pa
import torch

from dgrpo import artifacts
from dgrpo.contracts import ROLLOUTS
from dgrpo.evaluation import png_bytes
from dgrpo.stages.common import (
    StageContext,
    StageResult,
    derive_seed,
    emit_event,
    round_prompts,
    sde_steps,
)
from dgrpo.stages.policy_io import load_policy_for_round
from dgrpo.store import ArtifactRef
from dgrpo.trajectories import expand_conditioning, sample_sde_batched


def run_rollout(ctx: StageContext, round_index: int, adapter: ArtifactRef | None = None) -> StageResult:
    cfg = ctx.config
    s = cfg.sampling
    policy = load_policy_for_round(ctx, adapter, trainable=False)
    prompts = round_prompts(cfg, round_index)
    group_of = torch.arange(len(prompts)).repeat_interleave(s.group_size)
    seeds = [derive_seed(cfg.seed, round_index, 1 + i) for i in range(len(group_of))]
    cond = expand_conditioning(policy.encode_prompts(prompts), group_of)
    traj = sample_sde_batched(policy, cond, seeds, s.batch_size, num_steps=s.num_steps, shift=s.shift,
                              noise_level=s.noise_level, guidance_scale=s.guidance_scale, method=s.method,
                              sde_steps=sde_steps(cfg, round_index))
    size = s.batch_size or len(seeds)
    images = np.concatenate([policy.decode(traj.latents[i:i + size, -1]) for i in range(0, len(seeds), size)])

    rows = []
    for b, p in enumerate(group_of.tolist()):
        k = b % s.group_size
        rows.append({
            "sample_id": f"r{round_index}/p{p}/s{k}", "group_id": f"r{round_index}/p{p}", "prompt": prompts[p],
            "round": round_index, "sample_index": k, "seed": seeds[b], "image_png": png_bytes(images[b]),
            "sigmas": traj.sigmas.tolist(), "log_probs": traj.log_probs[b].tolist(),
            "latents": artifacts.tensors_to_bytes({"latents": traj.latents[b]}),
            "conditioning": artifacts.tensors_to_bytes({name: t[b] for name, t in cond.items()}),
        })
    table = pa.Table.from_pylist(rows, schema=ROLLOUTS.schema)
    prov = ctx.provenance("rollout", round_index, {
        "adapter": adapter, "base_model": ctx.base_model_ref(policy), "config": ctx.config_ref()},
        seeds={"first_sample_seed": seeds[0]})
    ref = artifacts.write_table(ctx.store, table, ROLLOUTS, prov)
    result = StageResult({"rollouts": ref}, {"samples": float(len(rows)),
                                             "mean_log_prob": float(traj.log_probs.nanmean())})
    emit_event(ctx, "rollout", round_index, result)
    return result
