"""Update stage: one round of Flow-GRPO on the round's trajectories, carrying LoRA and optimizer state."""

import json

import numpy as np
import pyarrow as pa
import torch

from dgrpo import artifacts
from dgrpo.config import RunConfig
from dgrpo.contracts import ROLLOUTS, SCORES, UPDATE_METRICS
from dgrpo.models import FlowPolicy
from dgrpo.sampling import SDEStep, step_with_logprob
from dgrpo.stages.cluster import check_same_samples
from dgrpo.stages.common import (
    StageContext,
    StageResult,
    derive_seed,
    emit_event,
    trained_steps,
)
from dgrpo.stages.policy_io import ADAPTER_KIND, OPTIMIZER_KIND, load_policy_for_round
from dgrpo.stages.resume import commit_round
from dgrpo.stages.shards import named_inputs, read_merged, uris
from dgrpo.store import ArtifactRef
from dgrpo.training import clipped_policy_loss, group_advantages, kl_to_reference, sa_regularizer


def make_optimizer(policy: FlowPolicy, cfg: RunConfig) -> torch.optim.AdamW:
    t = cfg.train
    return torch.optim.AdamW(policy.lora_parameters(), lr=t.learning_rate, betas=tuple(t.adam_betas),
                             weight_decay=t.weight_decay)


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten an optimizer state dict into safetensors tensors plus JSON metadata."""
    state = opt.state_dict()
    tensors = {f"state.{i}.{name}": t for i, s in state["state"].items() for name, t in s.items()}
    return tensors, {"param_groups": json.dumps(state["param_groups"])}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        _, i, name = key.split(".", 2)
        state.setdefault(int(i), {})[name] = t
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def _stack_rows(column: list[bytes], key: str | None = None) -> dict[str, torch.Tensor] | torch.Tensor:
    rows = [artifacts.tensors_from_bytes(b) for b in column]
    stacked = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    return stacked[key] if key else stacked


def run_update(ctx: StageContext, round_index: int, rollouts: ArtifactRef | list[ArtifactRef], scores: ArtifactRef,
               adapter: ArtifactRef | None = None, optimizer_state: ArtifactRef | None = None) -> StageResult:
    """One GRPO round; `rollouts` may be the shards of the round, merged here in shard order."""
    cfg, t = ctx.config, ctx.config.train
    traj = read_merged(ctx.store, rollouts, ROLLOUTS)
    scored = artifacts.read_table(ctx.store, scores, SCORES)
    check_same_samples(traj, scored, f"rollouts {uris(rollouts)}", f"scores {scores.uri}")
    reward_of = dict(zip(scored.column("sample_id").to_pylist(), scored.column("final_reward").to_pylist(),
                         strict=True))
    rewards = np.array([reward_of[i] for i in traj.column("sample_id").to_pylist()])
    adv = torch.tensor(group_advantages(rewards, traj.column("group_id").to_pylist(), t.global_std,
                                        t.adv_clip_max), dtype=torch.float32)

    policy = load_policy_for_round(ctx, adapter, trainable=True)
    opt = make_optimizer(policy, cfg)
    if optimizer_state is not None:
        optimizer_from_tensors(opt, artifacts.read_tensors(ctx.store, optimizer_state, OPTIMIZER_KIND))
    latents = _stack_rows(traj.column("latents").to_pylist(), "latents")
    cond = _stack_rows(traj.column("conditioning").to_pylist())
    old_log_probs = torch.tensor(traj.column("log_probs").to_pylist(), dtype=torch.float32)
    sigmas = torch.tensor(traj.column("sigmas")[0].as_py(), dtype=torch.float32)

    rows = []
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, round_index, 1 << 21))
    n = len(adv)
    for _ in range(t.inner_epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, max(n - t.batch_size, 0) + 1, t.batch_size):  # drops a partial last batch
            batch = order[start:start + t.batch_size]
            stats = _optimizer_step(policy, opt, cfg, batch, latents, cond, old_log_probs, adv, sigmas,
                                    trained_steps(cfg, round_index))
            rows.append({"round": round_index, "optimizer_step": len(rows), **stats})

    prov = ctx.provenance("update", round_index, {
        **named_inputs("rollouts", rollouts), "scores": scores, "adapter": adapter, "optimizer_state": optimizer_state,
        "base_model": ctx.base_model_ref(policy), "config": ctx.config_ref()})
    lora_meta = {"lora_config": json.dumps({"r": cfg.lora.rank, "lora_alpha": cfg.lora.alpha,
                                            "target_modules": cfg.lora.target_modules or policy.lora_targets}),
                 "round": str(round_index), **policy.lora_adapter_metadata()}
    adapter_ref = artifacts.write_tensors(ctx.store, policy.lora_state_dict(), ADAPTER_KIND, prov, lora_meta)
    opt_tensors, opt_meta = optimizer_to_tensors(opt)
    opt_ref = artifacts.write_tensors(ctx.store, opt_tensors, OPTIMIZER_KIND, prov, opt_meta)
    metrics_ref = artifacts.write_table(ctx.store, pa.Table.from_pylist(rows, schema=UPDATE_METRICS.schema),
                                        UPDATE_METRICS, prov)
    means = {k: float(np.mean([r[k] for r in rows]))
             for k in ("policy_loss", "kl", "sa_reg", "approx_kl", "clip_fraction")}
    result = StageResult({"adapter": adapter_ref, "optimizer_state": opt_ref, "metrics": metrics_ref},
                         {**means, "optimizer_steps": float(len(rows)), "reward_mean": float(rewards.mean()),
                          "zero_std_groups": _zero_std_share(rewards, traj.column("group_id").to_pylist())})
    commit_round(ctx, round_index, adapter_ref, opt_ref)
    emit_event(ctx, "update", round_index, result)
    return result


def _zero_std_share(rewards: np.ndarray, groups: list[str]) -> float:
    g = np.asarray(groups)
    return float(np.mean([rewards[g == k].std() == 0 for k in np.unique(g)]))


def _optimizer_step(policy: FlowPolicy, opt: torch.optim.Optimizer, cfg: RunConfig, batch: torch.Tensor,
                    latents: torch.Tensor, cond: dict[str, torch.Tensor], old_log_probs: torch.Tensor,
                    adv: torch.Tensor, sigmas: torch.Tensor, steps: list[int]) -> dict[str, float]:
    """Accumulate gradients over micro-batches and trained steps, then take one optimizer step."""
    t, s = cfg.train, cfg.sampling
    micro = [batch[i:i + t.micro_batch_size] for i in range(0, len(batch), t.micro_batch_size)]
    totals = {"policy_loss": 0.0, "kl": 0.0, "sa_reg": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0}
    scale = 1.0 / (len(steps) * len(micro))
    for idx in micro:
        mb_cond = {k: v[idx].to(policy.device) for k, v in cond.items()}
        for position, j in enumerate(steps):
            x, x_next = latents[idx, j].to(policy.device), latents[idx, j + 1].to(policy.device)
            sigma = sigmas[j].expand(len(idx)).to(policy.device)
            v = policy.velocity(x.to(policy.dtype), sigma, mb_cond, s.guidance_scale)
            step = step_with_logprob(s.method, v, x, sigmas[j].item(), sigmas[j + 1].item(), sigmas[1].item(),
                                     s.noise_level, prev_sample=x_next)
            policy_loss, approx_kl, clip_fraction = clipped_policy_loss(
                step.log_prob, old_log_probs[idx, j].to(policy.device), adv[idx].to(policy.device), t.clip_range)
            kl, sa = regularizer_terms(policy, cfg, j, position, x, x_next, sigmas, mb_cond, step)
            loss = policy_loss + t.beta_kl * kl + t.sa_lambda * sa
            (loss * scale).backward()
            for name, value in (("policy_loss", policy_loss), ("kl", kl), ("sa_reg", sa),
                                ("approx_kl", approx_kl), ("clip_fraction", clip_fraction)):
                totals[name] += float(value.detach()) * scale
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.lora_parameters(), t.max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {**totals, "grad_norm": float(grad_norm)}


def regularizer_terms(policy: FlowPolicy, cfg: RunConfig, j: int, position: int, x: torch.Tensor,
                      x_next: torch.Tensor, sigmas: torch.Tensor, cond: dict[str, torch.Tensor], step: SDEStep
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL, SA-Reg) of sampling step j, the `position`-th trained step; each a batch mean, 0 where not enabled.

    KL acts on every trained step, SA-Reg on the first sa_steps trained steps only (position < sa_steps). The
    reference is the base model (adapter off) under no_grad, so gradients flow through the policy's step mean alone.
    """
    t, s = cfg.train, cfg.sampling
    use_kl = t.regularizer in ("kl", "both")
    use_sa = t.regularizer in ("sa", "both") and position < t.sa_steps
    zero = torch.zeros((), device=step.prev_sample_mean.device)
    if not (use_kl or use_sa):
        return zero, zero
    with torch.no_grad(), policy.adapter_disabled():
        v_ref = policy.velocity(x.to(policy.dtype), sigmas[j].expand(len(x)).to(x.device), cond, s.guidance_scale)
        ref = step_with_logprob(s.method, v_ref, x, sigmas[j].item(), sigmas[j + 1].item(), sigmas[1].item(),
                                s.noise_level, prev_sample=x_next)
    kl = kl_to_reference(step.prev_sample_mean, ref.prev_sample_mean, step.std_dev_t).mean() if use_kl else zero
    sa = sa_regularizer(step.prev_sample_mean, ref.prev_sample_mean).mean() if use_sa else zero
    return kl, sa
