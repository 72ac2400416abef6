"""Rollout stage: sample a group of G SDE trajectories per prompt, with everything needed to replay them.

Two method options act here. DRIFT's prompt noise (drift.prompt_noise) perturbs the positive prompt embeddings at
the early steps; each sample's per-step noise seeds and factors go into the table, so the update replays the exact
conditioning. Pro-GRPO's expand-and-prune (progrpo.mode expand_prune) starts expand_group_size trajectories per
prompt, scores decoded previews with the reward at the prune steps and keeps the Optimal Variance Filtering
subset; the survivors are the group's rows, and every decision is stored in the table and, as a JSON artifact, in
the rollouts' lineage. The rollout then needs the reward model's packages.
"""

import json

import numpy as np
import pyarrow as pa
import torch

from dgrpo import artifacts
from dgrpo.config import RunConfig
from dgrpo.contracts import ROLLOUTS
from dgrpo.images import png_bytes
from dgrpo.methods import drift, progrpo
from dgrpo.models import FlowPolicy
from dgrpo.models.trajectories import ConditioningAt, Trajectories, expand_conditioning, sample_sde
from dgrpo.rewards import RewardModel, load_reward
from dgrpo.rng import Stream, derive_seed
from dgrpo.stages.shared.context import StageContext, StageResult, emit_event
from dgrpo.stages.shared.policy_io import load_policy_for_round
from dgrpo.stages.shared.rounds import round_prompts, sde_steps
from dgrpo.stages.shared.shards import shard_prompt_indices
from dgrpo.store import ArtifactRef

PRUNE_DECISIONS_KIND = "prune_decisions"


def run_rollout(ctx: StageContext, round_index: int, adapter: ArtifactRef | None = None, shard: int = 0,
                shards: int = 1) -> StageResult:
    """Sample the prompt groups of `shard` (of `shards`); ids and seeds are those of the unsharded round."""
    cfg = ctx.config
    policy = load_policy_for_round(ctx, adapter, trainable=False)
    prompts = round_prompts(cfg, round_index)
    reward = load_reward(cfg.reward.name, cfg.reward.options) if cfg.progrpo.mode == "expand_prune" else None
    rows, log_probs, decisions, nfe = [], [], {}, 0
    for p in shard_prompt_indices(len(prompts), shard, shards):  # one group per call: no dependence on sharding
        group_rows, traj, records = sample_group(cfg, policy, reward, round_index, p, prompts[p])
        rows += group_rows
        log_probs.append(traj.log_probs)
        nfe += traj.nfe
        if records is not None:
            decisions[group_rows[0]["group_id"]] = records
    table = pa.Table.from_pylist(rows, schema=ROLLOUTS.schema)
    inputs = {"adapter": adapter, "base_model": ctx.base_model_ref(policy), "config": ctx.config_ref()}
    seeds_info = {"first_sample_seed": rows[0]["seed"]}
    part = {"shard": shard, "shards": shards} if shards > 1 else {}
    if reward is not None:
        inputs["prune_decisions"] = artifacts.write_blob(
            ctx.store, json.dumps({"schedule": prune_schedule(cfg), "groups": decisions}, sort_keys=True).encode(),
            PRUNE_DECISIONS_KIND, ".json", ctx.provenance("rollout", round_index, dict(inputs), seeds_info, **part))
    ref = artifacts.write_table(ctx.store, table, ROLLOUTS,
                                ctx.provenance("rollout", round_index, inputs, seeds_info, **part))
    metrics = {"samples": float(len(rows)), "mean_log_prob": float(torch.cat(log_probs).nanmean()),
               "nfe": float(nfe), "nfe_per_sample": nfe / len(rows), **option_metrics(cfg, policy, rows)}
    result = StageResult({"rollouts": ref}, metrics)
    emit_event(ctx, "rollout", round_index, result, shard if shards > 1 else None)
    return result


def sample_group(cfg: RunConfig, policy: FlowPolicy, reward: RewardModel | None, round_index: int, p: int,
                 prompt: str) -> tuple[list[dict], Trajectories, list[dict] | None]:
    """One prompt group: its table rows, its trajectories and, under expand-and-prune, its prune decisions."""
    s = cfg.sampling
    started = cfg.progrpo.expand_group_size if reward is not None else s.group_size
    seeds = [derive_seed(cfg.seed, Stream.SAMPLE, round_index, p, k) for k in range(started)]
    cond = expand_conditioning(policy.encode_prompts([prompt]), torch.zeros(started, dtype=torch.long))
    noise = None
    if cfg.drift.prompt_noise:
        noise = PromptNoise(cfg, policy.sigmas(s.num_steps, s.shift), round_index, p, started)
    pruner = GroupPruner(cfg, policy, reward, prompt, seeds) if reward is not None else None
    traj = sample_sde(policy, cond, seeds, s.num_steps, s.shift, s.noise_level, s.guidance_scale, s.method,
                      sde_steps(cfg, round_index), s.batch_size, noise.hook(cond) if noise else None,
                      tuple(cfg.progrpo.prune_steps) if pruner else (), pruner)
    n, size = len(traj.positions), s.batch_size or len(traj.positions)
    images = np.concatenate([policy.decode(traj.latents[i:i + size, -1]) for i in range(0, n, size)])
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


def option_metrics(cfg: RunConfig, policy: FlowPolicy, rows: list[dict]) -> dict[str, float]:
    """Expand-and-prune's counts and the prompt noise's reach (on the shard's first sample), for the stage
    metrics."""
    samples, first = len(rows), rows[0]
    s, d, p, out = cfg.sampling, cfg.drift, cfg.progrpo, {}
    if p.mode == "expand_prune":
        groups = samples // s.group_size
        out |= {"started": float(p.expand_group_size * groups),
                "pruned": float((p.expand_group_size - s.group_size) * groups),
                "nfe_without_pruning": float(p.expand_group_size * s.num_steps * groups)}
    if d.prompt_noise:
        signal, scale = drift.noise_coefficients(policy.sigmas(s.num_steps, s.shift), d.prompt_noise_tau1,
                                                 d.prompt_noise_tau2, d.prompt_noise_scale)
        # whether the noise acts: steps noised and steps whose prompt it replaces (g = 0), and how far it moved the
        # first sample's prompt embeddings (DRIFT's values are this project's, docs/algorithms.md)
        cond = {k: v[0] for k, v in policy.encode_prompts([first["prompt"]]).items()}
        change = drift.relative_change(cond, signal, scale, seeds=first["prompt_noise_seeds"])
        out |= {"prompt_noise_steps": float(np.count_nonzero(scale)),
                "prompt_noise_replaced_steps": float(np.count_nonzero(signal == 0)),
                "prompt_noise_change_max": float(change.max()),
                "prompt_noise_change_mean": float(change[scale > 0].mean()) if np.any(scale > 0) else 0.0}
    return out


def prune_schedule(cfg: RunConfig) -> dict:
    p = cfg.progrpo
    return {"expand_group_size": p.expand_group_size, "prune_steps": list(p.prune_steps),
            "prune_sizes": list(p.prune_sizes), "reward": cfg.reward.name}


class PromptNoise:
    """DRIFT's prompt noise of one group: per-sample, per-step seeds (stream PROMPT_NOISE) and the step factors."""

    def __init__(self, cfg: RunConfig, sigmas: torch.Tensor, round_index: int, prompt: int, n: int):
        d = cfg.drift
        self.signal, self.scale = drift.noise_coefficients(sigmas, d.prompt_noise_tau1, d.prompt_noise_tau2,
                                                           d.prompt_noise_scale)
        self.seeds = [drift.step_seeds(cfg.seed, round_index, prompt, k, self.scale, d.prompt_noise_resample)
                      for k in range(n)]

    def hook(self, cond: dict[str, torch.Tensor]) -> ConditioningAt:
        def at(step: int, positions: list[int]) -> dict[str, torch.Tensor]:
            n = len(positions)
            return drift.noisy_conditioning({k: v[positions] for k, v in cond.items()},
                                            [self.seeds[p][step] for p in positions],
                                            [float(self.signal[step])] * n, [float(self.scale[step])] * n)
        return at

    def columns(self, sample: int) -> dict:
        return {"prompt_noise_seeds": self.seeds[sample], "prompt_noise_signal": self.signal.tolist(),
                "prompt_noise_scale": self.scale.tolist()}


class GroupPruner:
    """Pro-GRPO's prune decisions for one group: decode the previews, score them, keep the OVF subset."""

    def __init__(self, cfg: RunConfig, policy: FlowPolicy, reward: RewardModel, prompt: str, seeds: list[int]):
        self.policy, self.reward, self.prompt, self.seeds = policy, reward, prompt, seeds
        self.size_at = dict(zip(cfg.progrpo.prune_steps, cfg.progrpo.prune_sizes, strict=True))
        self.batch = cfg.sampling.batch_size
        self.records: list[dict] = []

    def __call__(self, step: int, previews: torch.Tensor, positions: list[int]) -> list[int]:
        size = self.batch or len(previews)
        images = np.concatenate([self.policy.decode(previews[i:i + size]) for i in range(0, len(previews), size)])
        scores = np.asarray(self.reward(images, [self.prompt] * len(images))["reward"], dtype=np.float64)
        keep = set(progrpo.optimal_variance_subset(scores, self.size_at[step]).tolist())
        self.records += [{"step": step, "sample_index": pos, "seed": self.seeds[pos],
                          "preview_reward": float(scores[j]), "kept": j in keep} for j, pos in enumerate(positions)]
        return [pos for j, pos in enumerate(positions) if j in keep]

    def columns(self, sample: int, first: bool) -> dict:
        return {"preview_rewards": [r["preview_reward"] for r in self.records if r["sample_index"] == sample],
                "prune_record": self.records if first else None}
