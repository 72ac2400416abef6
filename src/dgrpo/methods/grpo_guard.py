"""GRPO-Guard (Wang et al. 2025, arXiv 2510.22319): regulated clipping for Flow-GRPO, a pure change of the loss.

Why: the SDE step's log ratio against the rollout policy, log r = log p - log p_old, has mean -||mu - mu_old||^2 /
(2 s^2) (s the step's noise std): the ratio sits left of 1, so PPO's clip band [1 - eps, 1 + eps] stops engaging on
the positive side and the update over-optimises. Its spread also differs ~20x across steps (1 / s), so the late,
sharp steps dominate the gradient.

- Ratio normalisation (`ratio_norm`): log r~ = s (log p - log p_old + mean((mu - mu_old)^2) / (2 s^2)); the bias is
  removed and the log ratio rescaled by s, as upstream's trainers compute it (Flow-Factory's GRPOGuardTrainer:
  ratio = exp((log_prob - old_log_prob) scale + mse / (2 scale)), scale = sqrt(-dt) std_dev_t). mu_old is the
  step mean under the round's input weights (recomputed here: the rollouts table does not store it).
- Per-step gradient reweighting (`step_reweight`): the step's policy loss times delta = 1 / |dt| (the paper's
  flow_grpo form, Eq. 12).

Only the update changes; the update metrics gain the ratio's mean and std at each trained step
(`guard_ratio_mean_step<j>`, `guard_ratio_std_step<j>`). Turn it on with `methods: {grpo_guard: {}}`.
"""

from dataclasses import dataclass

import torch

from dgrpo.methods.base import Method, PolicyStep


@dataclass
class GuardOptions:
    """GRPO-Guard's two parts, each on by default (`methods.grpo_guard.*`)."""

    ratio_norm: bool = True
    """Remove the ratio's mean bias and rescale the log ratio by the step's noise std."""
    step_reweight: bool = True
    """Weigh each step's policy loss by 1 / |dt|."""


def normalized_log_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor, mean: torch.Tensor,
                         old_mean: torch.Tensor, noise_std: torch.Tensor) -> torch.Tensor:
    """s (log p - log p_old + mean((mu - mu_old)^2) / (2 s^2)) per sample, s the step's noise std."""
    mse = ((mean - old_mean) ** 2).mean(dim=tuple(range(1, mean.ndim)))
    s = noise_std.reshape(-1) if noise_std.ndim else noise_std
    return (log_prob - old_log_prob + mse / (2 * s**2)) * s


class GRPOGuard(Method):
    """GRPO-Guard's hooks: the update's log ratio and per-step loss weight, and its ratio metrics."""

    name = "grpo_guard"
    Options = GuardOptions

    def log_ratio(self, *, step: PolicyStep) -> torch.Tensor | None:
        if not self.options.ratio_norm:
            return None
        return normalized_log_ratio(step.log_prob, step.old_log_prob, step.mean, step.old_mean(), step.std_dev_t)

    def step_weight(self, *, j: int, sigma: float, sigma_next: float) -> float | None:
        return 1.0 / (sigma - sigma_next) if self.options.step_reweight else None

    def update_metrics(self, *, ratio_by_step: dict[int, dict[str, float]]) -> dict[str, float]:
        out = {}
        for j, stats in ratio_by_step.items():
            out |= {f"guard_ratio_mean_step{j}": stats["ratio_mean"], f"guard_ratio_std_step{j}": stats["ratio_std"]}
        return out
