"""Whole-trajectory sampling on top of the per-step math in `dgrpo.sampling`."""

import math
from dataclasses import dataclass

import torch

from dgrpo.models.policy import FlowPolicy
from dgrpo.sampling import euler_step, step_with_logprob, trajectory_noise


@dataclass
class Trajectories:
    latents: torch.Tensor
    """[B, T+1, ...]: x_0 (noise) to x_T (sample)."""
    log_probs: torch.Tensor
    """[B, T]: log-prob of each transition under the sampling policy."""
    sigmas: torch.Tensor
    """[T+1]."""


def expand_conditioning(cond: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in cond.items()}


@torch.no_grad()
def sample_sde(policy: FlowPolicy, cond: dict[str, torch.Tensor], seeds: list[int], num_steps: int,
               shift: float | None, noise_level: float, guidance_scale: float, method: str = "sde",
               sde_steps: range | None = None) -> Trajectories:
    """Sample one trajectory per seed; each sample's initial and step noise come from its own seed.

    Steps outside `sde_steps` (default: all) are deterministic Euler steps whose log-prob is NaN (undefined).
    """
    sigmas = policy.sigmas(num_steps, shift)
    sde_steps = range(num_steps) if sde_steps is None else sde_steps
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.stack([torch.randn(policy.latent_shape(), generator=g) for g in generators]).to(policy.device)
    noise = trajectory_noise(generators, len(sde_steps), policy.latent_shape()).to(policy.device)
    latents, log_probs = [x], []
    batch = x.shape[0]
    for i in range(num_steps):
        sigma = sigmas[i].expand(batch).to(policy.device)
        v = policy.velocity(x.to(policy.dtype), sigma, cond, guidance_scale)
        if i in sde_steps:
            step = step_with_logprob(method, v, x, sigmas[i].item(), sigmas[i + 1].item(), sigmas[1].item(),
                                     noise_level, noise=noise[:, sde_steps.index(i)])
            x, log_prob = step.prev_sample, step.log_prob
        else:
            x, log_prob = euler_step(v, x, sigmas[i].item(), sigmas[i + 1].item()), torch.full((batch,), math.nan)
        latents.append(x)
        log_probs.append(log_prob)
    return Trajectories(torch.stack(latents, 1).cpu(), torch.stack(log_probs, 1).cpu(), sigmas)


def sample_sde_batched(policy: FlowPolicy, cond: dict[str, torch.Tensor], seeds: list[int], batch_size: int | None,
                       **kwargs) -> Trajectories:
    """`sample_sde` in chunks of `batch_size` samples; the result equals one big batch (per-sample seeds)."""
    n = len(seeds)
    size = batch_size or n
    parts = [sample_sde(policy, {k: v[i:i + size] for k, v in cond.items()}, seeds[i:i + size], **kwargs)
             for i in range(0, n, size)]
    return Trajectories(torch.cat([p.latents for p in parts]), torch.cat([p.log_probs for p in parts]),
                        parts[0].sigmas)


@torch.no_grad()
def sample_ode(policy: FlowPolicy, cond: dict[str, torch.Tensor], seeds: list[int], num_steps: int,
               shift: float | None, guidance_scale: float) -> torch.Tensor:
    """Deterministic Euler sampling (noise level 0) for evaluation; returns the final latents."""
    sigmas = policy.sigmas(num_steps, shift)
    x = policy.initial_latents(seeds)
    for i in range(num_steps):
        sigma = sigmas[i].expand(x.shape[0]).to(policy.device)
        v = policy.velocity(x.to(policy.dtype), sigma, cond, guidance_scale)
        x = euler_step(v, x, sigmas[i].item(), sigmas[i + 1].item())
    return x
