"""Rollout stage: sample a group of G SDE trajectories per prompt, with everything needed to replay them.

The run's methods (`dgrpo.methods`) act here through their hooks: a conditioning perturbation (DRIFT's prompt
noise, whose per-step seeds and factors go into the table so that the update replays the exact conditioning), more
trajectories started than the group keeps and a pruner that decides which go on (Pro-GRPO's expand-and-prune: its
decisions are stored in the table and, as a JSON artifact, in the rollouts' lineage; the rollout then needs the
reward model's packages), a diversity probe (the diversity target's: a fixed-noise sample of the round's policy,
embedded here and stored in the table's first row, `stages.shared.probe`; the rollout then needs the embedder's
packages), and their own stage metrics.
"""

import json

import pyarrow as pa
import torch

from dgrpo import artifacts
from dgrpo.config import RunConfig
from dgrpo.contracts import ROLLOUTS
from dgrpo.images import png_bytes
from dgrpo.methods.base import Method, first, methods_of
from dgrpo.models import FlowPolicy
from dgrpo.models.trajectories import SamplerSpec, Trajectories, expand_conditioning, sample_sde
from dgrpo.rewards import RewardModel, load_reward
from dgrpo.rng import Stream, derive_seed
from dgrpo.stages.shared import probe as diversity_probe
from dgrpo.stages.shared.context import StageContext, StageResult, emit_event
from dgrpo.stages.shared.policy_io import load_policy_for_round
from dgrpo.stages.shared.rounds import round_prompts, sde_steps
from dgrpo.stages.shared.shards import contiguous_part, shard_prompt_indices
from dgrpo.store import ArtifactRef

PRUNE_DECISIONS_KIND = "prune_decisions"


def run_rollout(ctx: StageContext, round_index: int, adapter: ArtifactRef | None = None, shard: int = 0,
                shards: int = 1) -> StageResult:
    """Sample the prompt groups of `shard` (of `shards`); ids and seeds are those of the unsharded round."""
    cfg = ctx.config
    policy = load_policy_for_round(ctx, adapter, trainable=False)
    prompts = round_prompts(cfg, round_index)
    methods = methods_of(cfg)
    reward = load_reward(cfg.reward.name, cfg.reward.options) if any(m.rollout_reward() for m in methods) else None
    rows, log_probs, decisions, nfe = [], [], {}, 0
    for p in shard_prompt_indices(len(prompts), shard, shards):  # one group per call: no dependence on sharding
        group_rows, traj, records = sample_group(cfg, methods, policy, reward, round_index=round_index, p=p,
                                                 prompt=prompts[p])
        rows += group_rows
        log_probs.append(traj.log_probs)
        nfe += traj.nfe
        if records is not None:
            decisions[group_rows[0]["group_id"]] = records
    probe = first([m.diversity_probe() for m in methods])
    mine = contiguous_part(len(probe.prompts), shard, shards) if probe else []  # the shards split the probe too
    if mine:
        rows[0][diversity_probe.COLUMN] = diversity_probe.sample_probe(cfg, policy, probe, round_index=round_index,
                                                                       indices=mine)
    table = pa.Table.from_pylist(rows, schema=ROLLOUTS.schema)
    inputs = {"adapter": adapter, "base_model": ctx.base_model_ref(policy), "config": ctx.config_ref()}
    seeds_info = {"first_sample_seed": rows[0]["seed"]}
    part = {"shard": shard, "shards": shards} if shards > 1 else {}
    schedule = first([m.rollout_record() for m in methods])
    if schedule is not None:
        inputs["prune_decisions"] = artifacts.write_blob(
            ctx.store, json.dumps({"schedule": schedule, "groups": decisions}, sort_keys=True).encode(),
            PRUNE_DECISIONS_KIND, ".json", ctx.provenance("rollout", round_index, dict(inputs), seeds_info, **part))
    ref = artifacts.write_table(ctx.store, table, ROLLOUTS,
                                ctx.provenance("rollout", round_index, inputs, seeds_info, **part))
    metrics = {"samples": float(len(rows)), "mean_log_prob": float(torch.cat(log_probs).nanmean()),
               "nfe": float(nfe), "nfe_per_sample": nfe / len(rows)}
    if mine:
        metrics["probe_samples"] = float(len(mine) * probe.images)
    for m in methods:
        metrics |= m.rollout_metrics(policy=policy, rows=rows)
    result = StageResult({"rollouts": ref}, metrics)
    emit_event(ctx, "rollout", round_index, result, shard if shards > 1 else None)
    return result


def sample_group(cfg: RunConfig, methods: list[Method], policy: FlowPolicy, reward: RewardModel | None, *,
                 round_index: int, p: int, prompt: str) -> tuple[list[dict], Trajectories, list[dict] | None]:
    """One prompt group: its table rows, its trajectories and, with a method's pruner, its prune decisions."""
    s = cfg.sampling
    started = first([m.started_group_size() for m in methods]) or s.group_size
    seeds = [derive_seed(cfg.seed, Stream.SAMPLE, round_index, p, k) for k in range(started)]
    cond = expand_conditioning(policy.encode_prompts([prompt]), torch.zeros(started, dtype=torch.long))
    noise = first([m.prompt_noise(sigmas=policy.sigmas(s.num_steps, s.shift), round_index=round_index,
                                  prompt_index=p, n=started) for m in methods])
    pruner = first([m.pruner(policy=policy, reward=reward, prompt=prompt, seeds=seeds) for m in methods])
    spec = SamplerSpec.from_config(s, sde_steps=sde_steps(cfg, round_index),
                                   conditioning=noise.hook(cond) if noise else None,
                                   prune_steps=pruner.steps if pruner else (), prune=pruner)
    traj = sample_sde(policy, cond, seeds, spec=spec)
    images = policy.decode_batches(traj.latents[:, -1], s.batch_size)
    rows = [{
        "sample_id": f"r{round_index}/p{p}/s{k}", "group_id": f"r{round_index}/p{p}", "prompt": prompt,
        "round": round_index, "sample_index": k, "seed": seeds[k], "image_png": png_bytes(images[row]),
        "sigmas": traj.sigmas.tolist(), "log_probs": traj.log_probs[row].tolist(),
        "latents": artifacts.tensors_to_bytes({"latents": traj.latents[row]}),
        "conditioning": artifacts.tensors_to_bytes({name: t[0] for name, t in cond.items()}) if row == 0
        else None,  # a group shares its prompt: MBs per row for SD3/FLUX, stored once
        **(noise.columns(k) if noise else {}), **(pruner.columns(k, first=row == 0) if pruner else {}),
    } for row, k in enumerate(traj.positions)]
    return rows, traj, None if pruner is None else pruner.records
