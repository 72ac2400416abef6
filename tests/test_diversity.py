"""Creativity reward math: planted modes are recovered, the bonus pays rarity, and the degenerate cases stay silent."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from dgrpo.config import ClusterConfig
from dgrpo.diversity import (
    affinity,
    auto_kernel_width,
    cosine_distances,
    creativity_bonus,
    diverse_rewards,
    eigengap_k,
    mean_pairwise_distance,
    median_width,
    nearest_neighbour_width,
    spectral_clusters,
    vendi_score,
)
from dgrpo.methods.diversegrpo import score_group
from dgrpo.objectives import group_advantages


def blobs(sizes: list[int], dim: int = 16, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian modes around orthonormal directions: cross-mode cosine distance ~1, within-mode ~0.04."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][: len(sizes)]
    x = np.vstack([c + noise * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes, strict=True)])
    return x, np.repeat(np.arange(len(sizes)), sizes)


def advantages(rewards: np.ndarray) -> np.ndarray:
    """GRPO's group-normalised advantage."""
    return (rewards - rewards.mean()) / (rewards.std() + 1e-8)


PLANTED = [[6, 6, 6, 6], [12, 6, 4, 2], [8, 8, 7, 1]]


# --- cosine distances -------------------------------------------------------------------------------------------


def test_cosine_distances_properties_and_known_values():
    x, _ = blobs([5, 5, 5], seed=1)
    d = cosine_distances(x)
    assert d.shape == (15, 15)
    assert np.all(d >= 0) and np.all(d <= 2)
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    special = cosine_distances(np.array([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0], [5.0, 0.0]]))
    assert special[0, 1] == pytest.approx(1.0)  # orthogonal
    assert special[0, 2] == pytest.approx(2.0)  # opposite
    assert special[0, 3] == pytest.approx(0.0, abs=1e-12)  # same direction, other norm
    copies = np.random.default_rng(0).normal(size=16) * np.array([[1.0], [2.0], [3.0], [7.0], [0.1]])
    assert cosine_distances(copies).min() == 0.0  # rounding makes 1 - cos slightly negative; clipped


@pytest.mark.parametrize("bad", [np.ones(3), np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[np.nan, 1.0]])])
def test_cosine_distances_rejects_bad_embeddings(bad):
    with pytest.raises(ValueError, match="embeddings"):
        cosine_distances(bad)


# --- affinity and kernel width ----------------------------------------------------------------------------------


def test_affinity_keeps_self_affinity_and_follows_the_formula():
    d = np.array([[0.0, 0.5, 1.0], [0.5, 0.0, 0.2], [1.0, 0.2, 0.0]])
    a = affinity(d, kernel_width=0.5)
    np.testing.assert_allclose(a, np.exp(-(d**2) / 0.5))
    np.testing.assert_array_equal(np.diag(a), 1.0)


def test_automatic_width_stays_on_the_within_mode_scale():
    x, _ = blobs([6, 6, 6, 6])
    d = cosine_distances(x)
    width = nearest_neighbour_width(d)  # 7 neighbours > 5 mode mates: the 6th and 7th lie in other modes
    within = np.median(np.sort(d, axis=1)[:, 1:6])
    assert within / 2 < width < 3 * within < 0.2 * np.median(d[d > 0.5])
    np.testing.assert_allclose(affinity(d), affinity(d, kernel_width=width))


def test_automatic_width_is_positive_for_duplicates():
    assert nearest_neighbour_width(np.zeros((4, 4))) == 1.0
    d = cosine_distances(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert nearest_neighbour_width(d) > 0
    assert np.all(np.isfinite(affinity(d)))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"kernel_width": 0.0}, "kernel_width"),
        ({"kernel_width": float("nan")}, "kernel_width"),
        ({"n_neighbors": 0}, "n_neighbors"),
    ],
)
def test_affinity_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        affinity(np.zeros((3, 3)), **kwargs)


# --- spectral clustering ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", PLANTED)
@pytest.mark.parametrize("fixed_k", [True, False])
def test_spectral_clusters_recover_planted_modes(sizes, fixed_k):
    x, truth = blobs(sizes)
    labels = spectral_clusters(cosine_distances(x), k=len(sizes) if fixed_k else None)
    assert labels.max() + 1 == len(sizes)
    assert adjusted_rand_score(truth, labels) == 1.0


def test_eigengap_keeps_a_one_image_mode_as_its_own_cluster():
    x, _ = blobs([8, 8, 7, 1], seed=3)
    labels = spectral_clusters(cosine_distances(x))
    assert labels.max() + 1 == 4
    assert np.sum(labels == labels[-1]) == 1


def test_single_tight_blob_gives_one_cluster():
    x, _ = blobs([24], seed=2)
    np.testing.assert_array_equal(spectral_clusters(cosine_distances(x)), np.zeros(24))


def test_all_pairs_median_width_misses_the_modes():
    """docs/algorithms.md, "DiverseGRPO": most pairs are cross-mode, so that width makes the graph look connected;
    ours does not."""
    x, _ = blobs([6, 6, 6, 6])
    d = cosine_distances(x)
    assert spectral_clusters(d, kernel_width=float(np.median(d[np.triu_indices(24, 1)]))).max() == 0
    assert spectral_clusters(d).max() == 3


def test_eigengap_choice_and_cap():
    values = np.array([1.0, 0.99, 0.98, 0.3, 0.25, 0.2])
    assert eigengap_k(values, k_max=8) == 3
    assert eigengap_k(values, k_max=2) == 1  # gap at 3 is beyond the cap; 1 -> 0.99 beats 0.99 -> 0.98
    assert eigengap_k(np.array([1.0]), k_max=8) == 1


def test_spectral_clusters_are_deterministic_canonical_and_permutation_equivariant():
    x, truth = blobs([12, 6, 4, 2], seed=4)
    perm = np.random.default_rng(0).permutation(len(truth))
    d = cosine_distances(x[perm])
    labels = spectral_clusters(d, seed=7)
    np.testing.assert_array_equal(labels, spectral_clusters(d, seed=7))
    _, first = np.unique(labels, return_index=True)
    assert np.all(np.diff(first) > 0) and labels[0] == 0  # cluster j first appears before cluster j + 1
    assert adjusted_rand_score(truth[perm], labels) == 1.0


def test_spectral_clusters_edge_cases():
    np.testing.assert_array_equal(spectral_clusters(np.zeros((1, 1))), [0])
    np.testing.assert_array_equal(spectral_clusters(np.zeros((5, 5)), k=1), np.zeros(5))
    assert spectral_clusters(np.zeros((5, 5))).dtype.kind == "i"


@pytest.mark.parametrize(
    ("distances", "kwargs", "name"),
    [
        (np.zeros((3, 4)), {}, "distances"),
        (np.array([[0.0, 1.0], [0.5, 0.0]]), {}, "distances"),
        (np.array([[0.0, np.inf], [np.inf, 0.0]]), {}, "distances"),
        (np.zeros((3, 3)), {"k": 0}, "k"),
        (np.zeros((3, 3)), {"k": 4}, "k"),
        (np.zeros((3, 3)), {"k_max": 0}, "k_max"),
    ],
)
def test_spectral_clusters_validate_inputs(distances, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        spectral_clusters(distances, **kwargs)


# --- creativity bonus -------------------------------------------------------------------------------------------


def test_bonus_of_a_singleton_in_a_group_of_24():
    labels = np.array([0] * 23 + [1])
    e = creativity_bonus(labels)
    assert e.dtype == np.float64
    assert e[-1] == pytest.approx(np.sqrt(24))
    np.testing.assert_allclose(e[:-1], np.sqrt(24 / 23))


def test_bonus_follows_cluster_sizes():
    sizes = np.array([12, 6, 4, 2])
    e = creativity_bonus(np.repeat([3, 0, 9, 5], sizes))  # label values themselves do not matter
    np.testing.assert_allclose(e, np.sqrt(24 / np.repeat(sizes, sizes)))


def test_equal_clusters_leave_advantages_unchanged():
    """Constant E is no signal: Q + beta E has exactly the group-normalised advantages of Q."""
    labels = np.repeat(np.arange(4), 6)
    quality = np.random.default_rng(0).normal(0.88, 0.02, size=24)
    np.testing.assert_allclose(creativity_bonus(labels), 2.0)
    for normalization in ("none", "zscore", "minmax"):
        _, reward = diverse_rewards(quality, labels, beta=3.0, normalization=normalization)
        np.testing.assert_allclose(advantages(reward), advantages(quality), atol=1e-6)
    _, unequal = diverse_rewards(quality, np.repeat(np.arange(4), [12, 6, 4, 2]), beta=3.0)
    assert not np.allclose(advantages(unequal), advantages(quality), atol=1e-3)


def test_zscore_and_minmax_normalisation():
    labels = np.repeat(np.arange(4), [12, 6, 4, 2])
    z = creativity_bonus(labels, "zscore")
    assert z.mean() == pytest.approx(0.0, abs=1e-12) and z.std() == pytest.approx(1.0)
    m = creativity_bonus(labels, "minmax")
    assert m.min() == 0.0 and m.max() == 1.0
    np.testing.assert_array_equal(m[labels == 3], 1.0)  # the rarest mode gets the full bonus
    np.testing.assert_array_equal(np.argsort(z, kind="stable"), np.argsort(creativity_bonus(labels), kind="stable"))
    for normalization in ("zscore", "minmax"):
        np.testing.assert_array_equal(creativity_bonus(np.repeat(np.arange(3), 5), normalization), 0.0)


def test_unknown_normalization_is_named():
    with pytest.raises(ValueError, match="softmax"):
        creativity_bonus(np.zeros(3, dtype=int), "softmax")


def test_quality_gate_zeroes_the_bonus_below_mean_quality():
    quality = np.array([0.9, 0.8, 0.85, 0.7, 0.95, 0.6])
    labels = np.array([0, 0, 1, 1, 2, 3])
    bonus, reward = diverse_rewards(quality, labels, beta=3.0, quality_gate=True)
    above = quality >= quality.mean()
    np.testing.assert_array_equal(bonus[~above], 0.0)
    np.testing.assert_allclose(bonus[above], 3.0 * creativity_bonus(labels)[above])
    np.testing.assert_allclose(reward, quality + bonus)
    ungated, _ = diverse_rewards(quality, labels, beta=3.0)
    assert np.all(ungated[~above] > 0)
    flat = np.full(6, 0.7)  # its float mean is 0.7000000000000001
    gated, _ = diverse_rewards(flat, labels, beta=1.0, quality_gate=True)
    np.testing.assert_allclose(gated, creativity_bonus(labels))  # equal quality: nobody is below the mean


def test_diverse_rewards_validate_inputs():
    with pytest.raises(ValueError, match="quality"):
        diverse_rewards(np.zeros(3), np.zeros(4, dtype=int), beta=1.0)
    with pytest.raises(ValueError, match="beta"):
        diverse_rewards(np.zeros(3), np.zeros(3, dtype=int), beta=-1.0)
    with pytest.raises(ValueError, match="labels"):
        diverse_rewards(np.zeros(0), np.zeros(0, dtype=int), beta=1.0)


# --- Vendi score ------------------------------------------------------------------------------------------------


def test_vendi_score_counts_effective_modes():
    assert vendi_score(np.tile([[0.3, -1.2, 2.0]], (6, 1))) == pytest.approx(1.0)
    assert vendi_score(np.eye(5) * np.arange(1, 6)[:, None]) == pytest.approx(5.0)
    assert vendi_score(np.repeat(np.eye(2), 4, axis=0)) == pytest.approx(2.0)
    x, _ = blobs([6, 6, 6, 6], noise=0.01)
    assert 3.9 < vendi_score(x) < 4.2


def test_duplicates_do_not_shrink_the_width_into_singletons():
    """Exact copies (a collapsed policy, discrete jitter) carry no scale: modes stay whole."""
    x, truth = blobs([8, 8, 8], seed=5)
    x = np.repeat(x[::2], 2, axis=0)  # every image twice
    d = cosine_distances(x)
    assert nearest_neighbour_width(d) > 0.01
    assert adjusted_rand_score(truth[::2].repeat(2), spectral_clusters(d)) == 1.0


def test_width_heuristics_and_embedding_diversity():
    x, _ = blobs([6, 6, 6, 6])
    d = cosine_distances(x)
    assert median_width(d) == pytest.approx(np.median(d[np.triu_indices(24, 1)]))
    assert auto_kernel_width(d, "median") == median_width(d)
    assert auto_kernel_width(d, "knn", 3) == nearest_neighbour_width(d, 3)
    with pytest.raises(ValueError, match="heuristic"):
        auto_kernel_width(d, "silverman")
    assert mean_pairwise_distance(x) == pytest.approx(d[~np.eye(24, dtype=bool)].mean())
    assert mean_pairwise_distance(x[:1]) == 0.0


def test_quality_normalization_makes_beta_zero_plain_zscored_quality():
    quality = np.array([0.5, 0.7, 0.6, 0.9])
    labels = np.array([0, 0, 0, 1])
    bonus, reward = diverse_rewards(quality, labels, beta=0.0, normalization="zscore", quality_normalization="zscore")
    np.testing.assert_array_equal(bonus, 0.0)
    np.testing.assert_allclose(reward, (quality - quality.mean()) / quality.std())
    bonus, reward = diverse_rewards(quality, labels, beta=2.0, normalization="zscore", quality_normalization="zscore")
    np.testing.assert_allclose(reward, (quality - quality.mean()) / quality.std() + 2.0 * creativity_bonus(
        labels, "zscore"))
    with pytest.raises(ValueError, match="quality_normalization"):
        diverse_rewards(quality, labels, beta=1.0, quality_normalization="rank")


# --- the eigengap at its cap, and beta = 0 as Flow-GRPO ------------------------------------------------------------


@pytest.mark.parametrize("k_max", [2, 3, 4])
def test_eigengap_can_choose_k_max_itself(k_max):
    """The widest gap right after the k_max-th eigenvalue: the search over 1..k_max must reach it."""
    values = np.concatenate([np.linspace(1.0, 0.97, k_max), [0.2, 0.15, 0.1]])
    assert eigengap_k(values, k_max=k_max) == k_max
    assert eigengap_k(values[:k_max + 1], k_max=8) == k_max  # N - 1 caps the search at the last gap, also reached
    x, truth = blobs([6] * k_max, seed=5)
    labels = spectral_clusters(cosine_distances(x), k_max=k_max)
    assert labels.max() + 1 == k_max and adjusted_rand_score(truth, labels) == 1.0


def _flow_grpo_advantages(rewards: np.ndarray, groups: list[str]) -> np.ndarray:
    """Flow-GRPO's: (R - group mean) / (batch std + 1e-4), written out independently of dgrpo.objectives."""
    g = np.asarray(groups)
    means = np.array([rewards[g == k].mean() for k in g])
    return np.clip((rewards - means) / (rewards.std() + 1e-4), -5.0, 5.0)


def _four_groups() -> tuple[np.ndarray, list[str], np.ndarray]:
    """Four groups of 6 with PickScore-like spreads 0.002 to 0.04, and embeddings with planted modes."""
    rng = np.random.default_rng(11)
    quality = np.concatenate([0.22 + spread * rng.normal(size=6) for spread in (0.002, 0.01, 0.02, 0.04)])
    x, _ = blobs([2, 2, 1, 1], seed=6)
    return quality, [f"g{i // 6}" for i in range(24)], x


@pytest.mark.parametrize("shipped_options", [False, True])
def test_beta_zero_is_flow_grpo_exactly(shipped_options):
    """beta = 0 under the paper's defaults, and under every bonus option this project adds (bonus z-scoring, the
    quality gate, the eigengap, kNN widths): the final reward is the quality bit for bit, so the advantages are
    Flow-GRPO's."""
    quality, groups, x = _four_groups()
    options = dict(normalization="zscore", quality_gate=True, k_selection="eigengap", width_heuristic="knn",
                   ) if shipped_options else {}
    c = ClusterConfig(method="diverse", beta=0.0, k=2, **options)
    final = np.concatenate([score_group(quality[i:i + 6], x, c, seed=0)["final_reward"] for i in range(0, 24, 6)])
    assert np.array_equal(final, quality)
    flow_grpo = _flow_grpo_advantages(quality, groups)
    np.testing.assert_allclose(group_advantages(final, groups, True, 5.0), flow_grpo, rtol=1e-12, atol=0)


def test_quality_zscore_is_not_flow_grpo_at_beta_zero():
    """quality_normalization "zscore" (a project addition) gives the nearly collapsed group unit spread: its mean
    |advantage| grows far beyond Flow-GRPO's, which is why it is not the default."""
    quality, groups, _ = _four_groups()
    labels = np.zeros(6, dtype=int)
    final = np.concatenate([diverse_rewards(quality[i:i + 6], labels, 0.0, quality_normalization="zscore")[1]
                            for i in range(0, 24, 6)])
    collapsed = slice(0, 6)
    ratio = (np.abs(group_advantages(final, groups, True, 5.0)[collapsed]).mean()
             / np.abs(_flow_grpo_advantages(quality, groups)[collapsed]).mean())
    assert ratio > 5
