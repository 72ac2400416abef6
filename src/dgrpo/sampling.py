"""Flow-matching SDE sampling with log-probabilities (docs/algorithms.md, "The SDE step").

Small pure functions named like the paper. All math runs in float32 whatever the model dtype; sigma runs
from 1 (noise) to 0 (data) and the model predicts the velocity v with x_{t+dt} = x + v dt.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


class SDEStep(NamedTuple):
    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    prev_sample_mean: torch.Tensor
    std_dev_t: torch.Tensor
    """The step's noise std: x' = mean + std_dev_t eps."""
    std_t: torch.Tensor
    """The SDE's diffusion std per unit time, a sqrt(sigma / (1 - sigma)) (std_dev_t = std_t sqrt(-dt)): what
    upstream's `sde_step_with_logprob` returns as `std_dev_t` since July 2025 and its KL divides by. A CPS step has
    no dt to factor out, so there it is the noise std."""


class ScheduleStep(NamedTuple):
    """One denoising step's sigmas: what a stochastic step reads of the schedule (`Schedule.step`)."""

    sigma: float
    sigma_next: float
    sigma_max: float
    """The schedule's second sigma, sigmas[1]: the SDE's std uses it in place of sigma where sigma == 1, where
    sqrt(sigma / (1 - sigma)) is infinite (upstream's `sigma_max`)."""


@dataclass(frozen=True, eq=False)
class Schedule:
    """The T+1 sigmas of a sampling schedule, from 1 (noise) to 0 (data); one place that knows which of them a
    step reads, so the triple sigmas[j], sigmas[j + 1], sigmas[1] is spelled nowhere else."""

    sigmas: torch.Tensor

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def step(self, j: int) -> ScheduleStep:
        """Denoising step j's sigmas as Python floats (the float32 values exactly)."""
        return ScheduleStep(self.sigmas[j].item(), self.sigmas[j + 1].item(), self.sigmas[1].item())

    def timesteps(self, j: int, n: int, device: torch.device | str) -> torch.Tensor:
        """Step j's sigma for `n` samples on `device`: the model's time input."""
        return self.sigmas[j].expand(n).to(device)


def flow_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """The T+1 sigmas of diffusers' FlowMatchEulerDiscreteScheduler with `shift`, ending at 0."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(num_steps)
    return scheduler.sigmas.to(torch.float32)


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a float or a per-sample 1-D tensor against a batch tensor."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    return value.reshape(-1, *([1] * (like.ndim - 1))) if value.ndim else value


def randn_like_batch(x: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise shaped like `x`; a list of generators draws each sample from its own."""
    if isinstance(generator, list):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in generator]).to(x.device)
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)


def trajectory_noise(generators: list[torch.Generator], num_draws: int, shape: tuple[int, ...]) -> torch.Tensor:
    """[B, num_draws, *shape]: each sample's next `num_draws` standard-normal draws of `shape` from its generator.

    Equal to `num_draws` successive `torch.randn(shape, generator=g)` calls per sample. CPU `normal_` fills
    blocks of 16, so when the numel is a multiple of 16 one call of shape (num_draws, *shape) consumes the stream
    identically (checked in tests) and saves a Python loop per step; otherwise the draws are made one by one.
    """
    numel = math.prod(shape)
    if numel % 16 == 0:
        return torch.stack([torch.randn((num_draws, *shape), generator=g, dtype=torch.float32) for g in generators])
    return torch.stack([torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for _ in range(num_draws)])
                        for g in generators])


def _mean_over_elements(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def sde_step_with_logprob(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    sigma_max: float,
    noise_level: float,
    *,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    noise: torch.Tensor | None = None,
) -> SDEStep:
    """One Flow-GRPO SDE step; samples x' (or scores the given `prev_sample`) and returns its log-prob.

    `noise` (standard normal, shaped like `sample`) replaces the draw from `generator` when given.

    `std_dev_t` in the result is the noise std s = std_t sqrt(-dt), as a scalar or [B, 1, ...] tensor; `std_t` is
    the std per unit time. The mean is Flow-GRPO's: the reverse-time SDE dx = (v + std_t^2 / (2 sigma) (x + (1 -
    sigma) v)) dt + std_t dw, whose marginals are the flow's x_sigma = (1 - sigma) x0 + sigma eps at every noise level.
    `sigma_max` is the schedule's second sigma, used in place of sigma where sigma == 1 to keep std finite.
    The log-prob is the mean over all non-batch elements, which is why PPO clip ranges are tiny.
    """
    v = model_output.float()
    x = sample.float()
    s = _per_sample(sigma, x)
    s_next = _per_sample(sigma_next, x)
    dt = s_next - s
    s_safe = torch.where(s == 1, torch.full_like(s, sigma_max), s)
    std_t = noise_level * torch.sqrt(s / (1 - s_safe))
    mean = x * (1 + std_t**2 * dt / (2 * s)) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
    noise_std = std_t * torch.sqrt(-dt)
    if prev_sample is None:
        eps = randn_like_batch(x, generator) if noise is None else noise.to(x.device, torch.float32)
        prev_sample = mean + noise_std * eps
    prev = prev_sample.detach().float()
    log_prob = -((prev - mean) ** 2) / (2 * noise_std**2) - torch.log(noise_std) - math.log(math.sqrt(2 * math.pi))
    return SDEStep(prev, _mean_over_elements(log_prob), mean, noise_std, std_t)


def cps_step_with_logprob(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    noise_level: float,
    *,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    noise: torch.Tensor | None = None,
) -> SDEStep:
    """Coefficients-preserving step: std = sigma' sin(a pi / 2); its log-prob drops constants (clip ~1e-5)."""
    v = model_output.float()
    x = sample.float()
    s = _per_sample(sigma, x)
    s_next = _per_sample(sigma_next, x)
    std = s_next * math.sin(noise_level * math.pi / 2)
    x0_hat = x - s * v
    x1_hat = x + (1 - s) * v
    mean = x0_hat * (1 - s_next) + x1_hat * torch.sqrt(torch.clamp(s_next**2 - std**2, min=0))
    if prev_sample is None:
        eps = randn_like_batch(x, generator) if noise is None else noise.to(x.device, torch.float32)
        prev_sample = mean + std * eps
    prev = prev_sample.detach().float()
    log_prob = _mean_over_elements(-((prev - mean) ** 2))
    return SDEStep(prev, log_prob, mean, std, std)


def euler_step(model_output: torch.Tensor, sample: torch.Tensor, sigma: float | torch.Tensor,
               sigma_next: float | torch.Tensor) -> torch.Tensor:
    """The deterministic ODE step (noise level 0), used in evaluation."""
    x = sample.float()
    return x + model_output.float() * (_per_sample(sigma_next, x) - _per_sample(sigma, x))


def step_with_logprob(model_output: torch.Tensor, sample: torch.Tensor, step: ScheduleStep, *, method: str,
                      noise_level: float, prev_sample: torch.Tensor | None = None,
                      generator: torch.Generator | list[torch.Generator] | None = None,
                      noise: torch.Tensor | None = None) -> SDEStep:
    """Dispatch on the configured stochastic step ("sde" or "cps") over schedule step `step`."""
    draw = {"prev_sample": prev_sample, "generator": generator, "noise": noise}
    if method == "sde":
        return sde_step_with_logprob(model_output, sample, step.sigma, step.sigma_next, step.sigma_max, noise_level,
                                     **draw)
    if method == "cps":
        return cps_step_with_logprob(model_output, sample, step.sigma, step.sigma_next, noise_level, **draw)
    raise ValueError(f"sampling method {method!r}: expected 'sde' or 'cps'")
