"""The round's trajectories as the update replays them: the optimizer steps and the agreement gate read the same
micro-batch at a denoising step, with its conditioning replayed as the rollout sampled it."""

from dataclasses import dataclass
from typing import Any

import torch

from dgrpo.sampling import Schedule, ScheduleStep


@dataclass(frozen=True)
class ReplayBatch:
    """Trajectories `rows` of the round at denoising step `j`, on the policy's device."""

    rows: torch.Tensor
    j: int
    step: ScheduleStep
    timesteps: torch.Tensor
    """Step j's sigma per trajectory: the model's time input."""
    x: torch.Tensor
    x_next: torch.Tensor
    cond: dict[str, torch.Tensor]
    old_log_prob: torch.Tensor
    """The rollout's log-prob of the step x -> x_next: the PPO ratio's denominator."""
    advantages: torch.Tensor | None
    """[n, 2]: the structure (group) and the detail baseline's advantages."""
    kl_weight: torch.Tensor | None
    """Per-trajectory KL weights (GARDO's gate), or None: all 1."""


@dataclass(frozen=True, kw_only=True)
class Replay:
    """This process's rows of the round's rollouts and what the update adds to them (advantages, KL weights)."""

    latents: torch.Tensor
    """[N, T+1, ...]."""
    cond: dict[str, torch.Tensor]
    old_log_probs: torch.Tensor
    """[N, T]."""
    schedule: Schedule
    advantages: torch.Tensor | None = None
    kl_weight: torch.Tensor | None = None
    prompt_noise: Any = None
    """A method's conditioning replay (DRIFT's prompt noise): `conditioning(cond, rows, j)`."""

    def __len__(self) -> int:
        return len(self.latents)

    def batch(self, rows: torch.Tensor, j: int, device: torch.device | str) -> ReplayBatch:
        """Trajectories `rows` at denoising step j, moved to `device`."""
        cond = {k: v[rows].to(device) for k, v in self.cond.items()}
        if self.prompt_noise is not None:
            cond = self.prompt_noise.conditioning(cond, rows.tolist(), j)
        return ReplayBatch(
            rows=rows, j=j, step=self.schedule.step(j), timesteps=self.schedule.timesteps(j, len(rows), device),
            x=self.latents[rows, j].to(device), x_next=self.latents[rows, j + 1].to(device), cond=cond,
            old_log_prob=self.old_log_probs[rows, j].to(device),
            advantages=None if self.advantages is None else self.advantages[rows].to(device),
            kl_weight=None if self.kl_weight is None else self.kl_weight[rows])
