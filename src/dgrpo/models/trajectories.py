"""Whole-trajectory sampling on top of the per-step math in `dgrpo.sampling`.

Two hooks let the methods of `dgrpo.methods` act inside the loop without this module knowing them: `conditioning`
gives the conditioning of some samples at a step (DRIFT's prompt noise), and `prune` keeps a subset of the live
samples at a checkpoint step, given their previews x0_hat = x - sigma v (Pro-GRPO's expand-and-prune).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dgrpo.models.policy import FlowPolicy
from dgrpo.sampling import euler_step, step_with_logprob, trajectory_noise

ConditioningAt = Callable[[int, list[int]], dict[str, torch.Tensor]]
"""(step, positions of samples in the input) -> their conditioning at that step, batch first."""
Pruner = Callable[[int, torch.Tensor, list[int]], list[int]]
"""(step, previews x0_hat of the live samples [n, ...], their positions) -> the positions to keep."""


@dataclass
class Trajectories:
    latents: torch.Tensor
    """[B, T+1, ...]: x_0 (noise) to x_T (sample)."""
    log_probs: torch.Tensor
    """[B, T]: log-prob of each transition under the sampling policy."""
    sigmas: torch.Tensor
    """[T+1]."""
    positions: list[int] = field(default_factory=list)
    """Which input samples these rows are (all of them, in order, unless pruned)."""
    nfe: int = 0
    """Velocity evaluations, counted per sample and step (each is two transformer passes under true CFG)."""


def expand_conditioning(cond: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in cond.items()}


@torch.no_grad()
def sample_sde(policy: FlowPolicy, cond: dict[str, torch.Tensor], seeds: list[int], num_steps: int,
               shift: float | None, noise_level: float, guidance_scale: float, method: str = "sde",
               sde_steps: range | None = None, batch_size: int | None = None,
               conditioning: ConditioningAt | None = None, prune_steps: tuple[int, ...] = (),
               prune: Pruner | None = None) -> Trajectories:
    """Sample one trajectory per seed; each sample's initial and step noise come from its own seed.

    The model runs on chunks of `batch_size` live samples (None: all at once); a sample's numbers do not depend on
    the chunking. Steps outside `sde_steps` (default: all) are deterministic Euler steps whose log-prob is NaN.
    At each step of `prune_steps`, after the velocity of every live sample is known, `prune` chooses the samples
    that take the step and continue; the others stop there.
    """
    sigmas = policy.sigmas(num_steps, shift)
    sde_steps = range(num_steps) if sde_steps is None else sde_steps
    conditioning = conditioning or (lambda _step, rows: {k: v[rows] for k, v in cond.items()})
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.stack([torch.randn(policy.latent_shape(), generator=g) for g in generators]).to(policy.device)
    noise = trajectory_noise(generators, len(sde_steps), policy.latent_shape())
    live = list(range(len(seeds)))
    history: list[list[torch.Tensor]] = [[x[b].cpu()] for b in live]
    log_probs: list[list[torch.Tensor]] = [[] for _ in live]
    size, nfe = batch_size or len(seeds), 0
    for i in range(num_steps):
        v = torch.cat([_velocity(policy, x[c:c + size], sigmas[i], conditioning(i, live[c:c + size]), guidance_scale)
                       for c in range(0, len(live), size)])
        nfe += len(live)
        if i in prune_steps and prune is not None:
            keep = prune(i, x.float() - sigmas[i].item() * v.float(), list(live))
            rows = [live.index(p) for p in keep]
            x, v, live = x[rows], v[rows], list(keep)
        parts = []
        for c in range(0, len(live), size):  # the step per chunk too, as sampling chunk by chunk would
            xc, vc, pos = x[c:c + size], v[c:c + size], live[c:c + size]
            if i in sde_steps:
                step = step_with_logprob(method, vc, xc, sigmas[i].item(), sigmas[i + 1].item(), sigmas[1].item(),
                                         noise_level, noise=noise[pos, sde_steps.index(i)].to(policy.device))
                parts.append((step.prev_sample, step.log_prob))
            else:
                parts.append((euler_step(vc, xc, sigmas[i].item(), sigmas[i + 1].item()),
                              torch.full((len(pos),), math.nan)))
        x = torch.cat([p[0] for p in parts])
        for b, x_b, lp in zip(live, x.cpu(), torch.cat([p[1] for p in parts]).cpu(), strict=True):
            history[b].append(x_b)
            log_probs[b].append(lp)
    return Trajectories(torch.stack([torch.stack(history[b]) for b in live]),
                        torch.stack([torch.stack(log_probs[b]) for b in live]), sigmas, live, nfe)


def _velocity(policy: FlowPolicy, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor],
              guidance_scale: float) -> torch.Tensor:
    return policy.velocity(x.to(policy.dtype), sigma.expand(len(x)).to(policy.device), cond, guidance_scale)


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
