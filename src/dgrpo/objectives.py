"""The GRPO objective of Flow-GRPO (docs/algorithms.md, "The GRPO objective"): advantages, clipped ratio loss,
KL and SA-Reg to the reference."""

import numpy as np
import torch

from dgrpo.sampling import SDEStep

ADV_EPS = 1e-4


def group_advantages(rewards: np.ndarray, group_ids: list[str], global_std: bool, clip: float,
                     kept: np.ndarray | None = None) -> np.ndarray:
    """A_i = (R_i - mean_group(R)) / (std + 1e-4), std of the batch (global) or of the group, clipped.

    With `kept` (a filter's choice: DRIFT's outlier filter, Pro-GRPO's OVF) the means and stds are those of the kept
    samples only and a dropped sample's advantage is 0, so it adds no policy gradient.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    groups = np.asarray(group_ids)
    keep = np.ones(len(rewards), dtype=bool) if kept is None else np.asarray(kept, dtype=bool)
    if keep.shape != rewards.shape:
        raise ValueError(f"kept has shape {keep.shape}, rewards {rewards.shape}: one flag per sample")
    adv = np.zeros_like(rewards)
    batch_std = rewards[keep].std() if keep.any() else 0.0
    for g in np.unique(groups):
        mask = (groups == g) & keep
        if not mask.any():
            continue
        std = batch_std if global_std else rewards[mask].std()
        adv[mask] = (rewards[mask] - rewards[mask].mean()) / (std + ADV_EPS)
    return np.clip(adv, -clip, clip)


def cluster_advantages(rewards: np.ndarray, group_ids: list[str], cluster_ids: np.ndarray, global_std: bool,
                       clip: float, kept: np.ndarray | None = None) -> np.ndarray:
    """A_i = (R_i - mean(R over i's cluster in its group)) / (std of those residuals + 1e-4), clipped.

    The baseline of the detail steps (train.detail_baseline "cluster"): once the structure is drawn, the image's
    cluster is fixed, so its mean reward is a baseline those steps cannot change and what is left is the spread
    within the structure. The std is of the residuals, over the batch (global) or the group, so the advantages
    keep unit scale however much of the reward the clusters explain; an image alone in its cluster gets 0.
    Dropped samples (`kept` False) get 0 and count in no mean or std.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    keep = np.ones(len(rewards), dtype=bool) if kept is None else np.asarray(kept, dtype=bool)
    groups, clusters = np.asarray(group_ids), np.asarray(cluster_ids)
    if not (keep.shape == clusters.shape == rewards.shape):
        raise ValueError(f"rewards {rewards.shape}, cluster_ids {clusters.shape} and kept {keep.shape} need one "
                         f"entry per sample")
    residual = np.zeros_like(rewards)
    for g in np.unique(groups):
        for c in np.unique(clusters[groups == g]):
            mask = (groups == g) & (clusters == c) & keep
            if mask.any():
                residual[mask] = rewards[mask] - rewards[mask].mean()
    adv = np.zeros_like(rewards)
    batch_std = residual[keep].std() if keep.any() else 0.0
    for g in np.unique(groups):
        mask = (groups == g) & keep
        std = batch_std if global_std else residual[mask].std() if mask.any() else 0.0
        adv[mask] = residual[mask] / (std + ADV_EPS)
    return np.clip(adv, -clip, clip)


def clipped_policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                        clip_range: float, log_ratio: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mean(max(-A r, -A clip(r, 1-eps, 1+eps))); also approx-KL and clip fraction for logging. `log_ratio`, when
    given, replaces log_prob - old_log_prob (a method's transformed ratio, `dgrpo.methods.base.Method.log_ratio`)."""
    if log_ratio is None:
        log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    approx_kl = 0.5 * (log_ratio.detach() ** 2).mean()
    clip_fraction = ((ratio.detach() - 1).abs() > clip_range).float().mean()
    return loss, approx_kl, clip_fraction


KL_FORMS = ("flow_grpo", "gaussian")


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample mean((mu - mu_ref)^2) / (2 std^2): with std the step's noise std, the KL of two Gaussians with
    equal std (per element)."""
    sq = ((mean - ref_mean) ** 2).mean(dim=tuple(range(1, mean.ndim)))
    std = std.reshape(-1) if std.ndim else std
    return sq / (2 * std**2)


def step_kl(step: SDEStep, ref_mean: torch.Tensor, form: str) -> torch.Tensor:
    """Per-sample KL of a policy step to the reference's step mean, in train.kl_form's form.

    "flow_grpo" divides by 2 std_t^2, the SDE's std per unit time, as upstream's train_sd3.py does since July 2025,
    so a recipe's beta weighs the same term it weighs there. "gaussian" divides by the step's noise variance
    std_t^2 |dt|, the exact KL of the two Gaussian steps: 1 / |dt| times larger (25x on SD3.5's first step, 3.7x
    on its ninth). For a CPS step, which has no dt to factor out, both divide by its noise std.
    """
    if form == "flow_grpo":
        return kl_to_reference(step.prev_sample_mean, ref_mean, step.std_t)
    if form == "gaussian":
        return kl_to_reference(step.prev_sample_mean, ref_mean, step.std_dev_t)
    raise ValueError(f"train.kl_form must be one of {KL_FORMS}, got {form!r}")


def sa_regularizer(mean: torch.Tensor, ref_mean: torch.Tensor) -> torch.Tensor:
    """Per-sample SA-Reg: mean((mu - mu_ref)^2), the squared W2 distance of equal-covariance Gaussian steps.

    No std^2 denominator (unlike KL), so early, noisy steps are not discounted; the reference is detached.
    """
    sq = (mean - ref_mean.detach()) ** 2
    return sq.mean(dim=tuple(range(1, mean.ndim)))
