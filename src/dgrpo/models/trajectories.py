"""Whole-trajectory sampling on top of the per-step math in `dgrpo.sampling`.

Two hooks let the methods of `dgrpo.methods` act inside the loop without this module knowing them: `conditioning`
gives the conditioning of some samples at a step (DRIFT's prompt noise), and `prune` keeps a subset of the live
samples at a checkpoint step, given their previews x0_hat = x - sigma v (Pro-GRPO's expand-and-prune).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dgrpo.config import SamplingConfig
from dgrpo.models.policy import FlowPolicy
from dgrpo.sampling import Schedule, ScheduleStep, euler_step, step_with_logprob, trajectory_noise

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


@dataclass(frozen=True, kw_only=True)
class SamplerSpec:
    """How `sample_sde` samples, besides the policy, the conditioning and the seeds: the schedule, the step, the
    guidance, the SDE window, the chunking, and the methods' hooks (all keyword-only, so a call names what it sets)."""

    num_steps: int
    shift: float | None
    """None: the model's own."""
    noise_level: float
    guidance_scale: float
    method: str = "sde"
    """The stochastic step, "sde" or "cps" (`dgrpo.sampling.step_with_logprob`)."""
    sde_steps: range | None = None
    """The stochastic steps (None: all); the others are deterministic Euler steps whose log-prob is NaN."""
    batch_size: int | None = None
    """Live samples per model call (None: all at once); a sample's numbers do not depend on it."""
    conditioning: ConditioningAt | None = None
    """The conditioning of some samples at a step (None: the input's, at every step)."""
    prune_steps: tuple[int, ...] = ()
    prune: Pruner | None = None
    """At each step of `prune_steps`, chooses the live samples that take the step and continue."""
    shared_noise_steps: tuple[int, ...] = ()
    """SDE steps whose noise every sample takes from the first one's (the structure profile's probe,
    `dgrpo.stages.structure_profile`); the initial noise and the other steps' stay each sample's own."""

    @classmethod
    def from_config(cls, sampling: SamplingConfig, **overrides: Any) -> "SamplerSpec":
        """The spec of a config's `sampling` section; `overrides` sets the window, the hooks or other fields."""
        return cls(**{"num_steps": sampling.num_steps, "shift": sampling.shift, "noise_level": sampling.noise_level,
                      "guidance_scale": sampling.guidance_scale, "method": sampling.method,
                      "batch_size": sampling.batch_size, **overrides})


@torch.no_grad()
def sample_sde(policy: FlowPolicy, cond: dict[str, torch.Tensor], seeds: list[int], *, spec: SamplerSpec
               ) -> Trajectories:
    """Sample one trajectory per seed as `spec` says; each sample's initial and step noise come from its own seed.

    The model runs on chunks of `spec.batch_size` live samples. At each step of `spec.prune_steps`, after the
    velocity of every live sample is known, `spec.prune` chooses the samples that take the step and continue; the
    others stop there.
    """
    schedule = Schedule(policy.sigmas(spec.num_steps, spec.shift))
    sde_steps = range(spec.num_steps) if spec.sde_steps is None else spec.sde_steps
    conditioning = spec.conditioning or (lambda _step, rows: {k: v[rows] for k, v in cond.items()})
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.stack([torch.randn(policy.latent_shape(), generator=g) for g in generators]).to(policy.device)
    noise = trajectory_noise(generators, len(sde_steps), policy.latent_shape())
    for i in spec.shared_noise_steps:
        noise[:, sde_steps.index(i)] = noise[0, sde_steps.index(i)]
    live = list(range(len(seeds)))
    history: list[list[torch.Tensor]] = [[x[b].cpu()] for b in live]
    log_probs: list[list[torch.Tensor]] = [[] for _ in live]
    size, nfe = spec.batch_size or len(seeds), 0
    for i in range(spec.num_steps):
        v = torch.cat([_velocity(policy, x[c:c + size], schedule.sigmas[i], conditioning(i, live[c:c + size]),
                                 spec.guidance_scale) for c in range(0, len(live), size)])
        nfe += len(live)
        if i in spec.prune_steps and spec.prune is not None:
            keep = spec.prune(i, x.float() - schedule.sigmas[i].item() * v.float(), list(live))
            rows = [live.index(p) for p in keep]
            x, v, live = x[rows], v[rows], list(keep)
        step_noise = noise[:, sde_steps.index(i)] if i in sde_steps else None
        x, lp = _take_step(policy, spec, x=x, v=v, step=schedule.step(i), noise=step_noise, live=live, size=size)
        for b, x_b, lp_b in zip(live, x.cpu(), lp.cpu(), strict=True):
            history[b].append(x_b)
            log_probs[b].append(lp_b)
    return Trajectories(torch.stack([torch.stack(history[b]) for b in live]),
                        torch.stack([torch.stack(log_probs[b]) for b in live]), schedule.sigmas, live, nfe)


def _take_step(policy: FlowPolicy, spec: SamplerSpec, *, x: torch.Tensor, v: torch.Tensor, step: ScheduleStep,
               noise: torch.Tensor | None, live: list[int], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The live samples' next latents and log-probs: the step per chunk too, as sampling chunk by chunk would.
    `noise` holds every sample's draw for this step ([B, ...], indexed by position), None for an Euler step."""
    parts = []
    for c in range(0, len(live), size):
        xc, vc, pos = x[c:c + size], v[c:c + size], live[c:c + size]
        if noise is not None:
            out = step_with_logprob(vc, xc, step, method=spec.method, noise_level=spec.noise_level,
                                    noise=noise[pos].to(policy.device))
            parts.append((out.prev_sample, out.log_prob))
        else:
            parts.append((euler_step(vc, xc, step.sigma, step.sigma_next), torch.full((len(pos),), math.nan)))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


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
