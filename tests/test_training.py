import numpy as np
import pytest
import torch

from dgrpo.objectives import clipped_policy_loss, cluster_advantages, group_advantages, kl_to_reference


def test_group_advantages_normalise_within_groups():
    rewards = np.array([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    groups = ["a", "a", "a", "b", "b", "b"]
    adv = group_advantages(rewards, groups, global_std=False, clip=5.0)
    assert adv[:3] == pytest.approx([-1.2247, 0.0, 1.2247], abs=1e-3)
    assert adv[3:] == pytest.approx([0, 0, 0])
    glob = group_advantages(rewards, groups, global_std=True, clip=5.0)
    assert glob[:3] == pytest.approx(np.array([-1, 0, 1]) / (rewards.std() + 1e-4))


def test_advantages_are_clipped():
    adv = group_advantages(np.array([0.0] * 20 + [1.0]), ["g"] * 21, global_std=False, clip=2.0)
    assert adv.max() == 2.0


def test_cluster_advantages_centre_on_the_cluster_and_scale_by_the_residuals():
    """Group a: clusters {0: 1.0, 3.0} and {1: 10.0, 12.0}; group b: a lone image (cluster 0) and {1: 5.0, 7.0}.
    Every pair's residuals are -1, +1 and the lone image's 0, so the batch std of the residuals is sqrt(6/7)."""
    rewards = np.array([1.0, 3.0, 10.0, 12.0, 100.0, 5.0, 7.0])
    groups = ["a"] * 4 + ["b"] * 3
    clusters = np.array([0, 0, 1, 1, 0, 1, 1])
    std = np.sqrt(6 / 7)
    glob = cluster_advantages(rewards, groups, clusters, global_std=True, clip=5.0)
    assert glob == pytest.approx(np.array([-1, 1, -1, 1, 0, -1, 1]) / (std + 1e-4))
    per_group = cluster_advantages(rewards, groups, clusters, global_std=False, clip=5.0)
    assert per_group[4:] == pytest.approx(np.array([0, -1, 1]) / (np.sqrt(2 / 3) + 1e-4))
    # the group baseline sees the clusters' 9-point gap instead
    assert group_advantages(rewards, groups, global_std=True, clip=5.0)[2] > 0


def test_cluster_advantages_skip_dropped_samples_and_check_shapes():
    rewards = np.array([1.0, 3.0, 50.0, 2.0])
    kept = np.array([True, True, False, True])
    adv = cluster_advantages(rewards, ["g"] * 4, np.zeros(4, int), global_std=True, clip=5.0, kept=kept)
    residuals = np.array([-1.0, 1.0, 0.0])  # mean of the kept 1, 3, 2
    assert adv[2] == 0
    assert adv[[0, 1, 3]] == pytest.approx(residuals / (residuals.std() + 1e-4))
    with pytest.raises(ValueError, match="cluster_ids"):
        cluster_advantages(rewards, ["g"] * 4, np.zeros(3, int), global_std=True, clip=5.0)


def test_on_policy_loss_is_minus_mean_advantage():
    lp = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 2.0])
    loss, approx_kl, clip_fraction = clipped_policy_loss(lp, lp.detach(), adv, 1e-4)
    assert float(loss.detach()) == pytest.approx(-2.0 / 3)
    assert float(approx_kl) == 0 and float(clip_fraction) == 0
    loss.backward()
    torch.testing.assert_close(lp.grad, -adv / 3)


def test_clipping_stops_gradient_beyond_range():
    old = torch.zeros(2)
    lp = torch.tensor([0.5, -0.5], requires_grad=True)
    loss, _, clip_fraction = clipped_policy_loss(lp, old, torch.tensor([1.0, -1.0]), 0.1)
    loss.backward()
    assert float(clip_fraction) == 1.0
    torch.testing.assert_close(lp.grad, torch.zeros(2))


def test_kl_matches_gaussian_formula():
    mean, ref = torch.ones(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    torch.testing.assert_close(kl_to_reference(mean, ref, torch.tensor(0.5)), torch.full((2,), 2.0))
