"""Flow-matching SDE sampling with log-probabilities (docs/algorithms.md, "The SDE step").

Small pure functions named like the paper. All math runs in float32 whatever the model dtype; sigma runs
from 1 (noise) to 0 (data) and the model predicts the velocity v with x_{t+dt} = x + v dt.
"""

import math
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
    sigma_1: float,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    noise: torch.Tensor | None = None,
) -> SDEStep:
    """One Flow-GRPO SDE step; samples x' (or scores the given `prev_sample`) and returns its log-prob.

    `noise` (standard normal, shaped like `sample`) replaces the draw from `generator` when given.

    `std_dev_t` in the result is the noise std s = std_t sqrt(-dt), as a scalar or [B, 1, ...] tensor; `std_t` is
    the std per unit time. The mean is Flow-GRPO's: the reverse-time SDE dx = (v + std_t^2 / (2 sigma) (x + (1 -
    sigma) v)) dt + std_t dw, whose marginals are the flow's x_sigma = (1 - sigma) x0 + sigma eps at every noise level.
    `sigma_1` is the schedule's second sigma, used in place of sigma where sigma == 1 to keep std finite.
    The log-prob is the mean over all non-batch elements, which is why PPO clip ranges are tiny.
    """
    v = model_output.float()
    x = sample.float()
    s = _per_sample(sigma, x)
    s_next = _per_sample(sigma_next, x)
    dt = s_next - s
    s_safe = torch.where(s == 1, torch.full_like(s, sigma_1), s)
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


def step_with_logprob(method: str, model_output: torch.Tensor, sample: torch.Tensor, sigma, sigma_next,
                      sigma_1: float, noise_level: float, prev_sample: torch.Tensor | None = None,
                      generator: torch.Generator | list[torch.Generator] | None = None,
                      noise: torch.Tensor | None = None) -> SDEStep:
    """Dispatch on the configured stochastic step ("sde" or "cps")."""
    if method == "sde":
        return sde_step_with_logprob(model_output, sample, sigma, sigma_next, sigma_1, noise_level,
                                     prev_sample, generator, noise)
    if method == "cps":
        return cps_step_with_logprob(model_output, sample, sigma, sigma_next, noise_level, prev_sample, generator,
                                     noise)
    raise ValueError(f"sampling method {method!r}: expected 'sde' or 'cps'")
