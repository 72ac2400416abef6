"""DRIFT (2026, "Diversity-Incentivized Reinforcement Fine-Tuning"): three levers against diversity collapse.

- Sampling: keep a reward-concentrated subset of each group. Outliers (|robust z| above a threshold, around the
  median) are dropped before the advantages are computed, so one lucky high-reward mode cannot dominate a group.
- Prompting: annealed noise on the prompt embeddings while sampling, strong at the noisy start and absent at the
  end, y' = sqrt(g) y + s sqrt(1 - g) eps with g(t) = 1 for t <= tau1, linear to 0 at tau2 (t = sigma, 1 = noise).
  The noise is regenerated from stored per-step seeds, so the update recomputes log-probs under the very
  conditioning the sampler used.
- Optimisation: potential-based shaping of the reward with an intra-group diversity potential (distances between
  the group's embeddings), added before normalisation, scaled and clipped.

The paper publishes no code; every choice it leaves open is a config field (`dgrpo.config.recipe.DriftConfig`).
"""

import numpy as np
import torch

from dgrpo.diversity import cosine_distances
from dgrpo.rng import Stream, derive_seed

MAD_TO_SIGMA = 0.6745
"""Phi^-1(3/4): the MAD of a normal sample is 0.6745 sigma (Iglewicz and Hoaglin's modified z-score)."""
MEANAD_TO_SIGMA = 0.7979
"""sqrt(2 / pi): the mean absolute deviation of a normal sample, used when more than half the group ties (MAD 0)."""
_REL_TOL = 1e-12  # "equal up to rounding" for spreads of float rewards


def robust_z(values: np.ndarray) -> np.ndarray:
    """0.6745 (x - median) / MAD; with MAD = 0 (over half the values equal) the mean absolute deviation replaces
    it; all zeros when every value is equal up to rounding."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"values must be a finite non-empty 1-D array, got shape {x.shape}")
    med = np.median(x)
    dev = np.abs(x - med)
    tiny = _REL_TOL * max(1.0, abs(med))
    mad = np.median(dev)
    if mad > tiny:
        return MAD_TO_SIGMA * (x - med) / mad
    mean_ad = dev.mean()
    if mean_ad > tiny:
        return MEANAD_TO_SIGMA * (x - med) / mean_ad
    return np.zeros_like(x)


def outlier_kept(values: np.ndarray, threshold: float) -> np.ndarray:
    """True for the values DRIFT keeps: |robust z| <= threshold. With threshold >= 0.6745 at least half stay (the
    values within one MAD of the median)."""
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    return np.abs(robust_z(values)) <= threshold


# Prompt noise -----------------------------------------------------------------------------------------------------
def anneal_gamma(t: np.ndarray, tau1: float, tau2: float) -> np.ndarray:
    """g(t): 1 (clean prompt) for t <= tau1, 0 (noise only) for t >= tau2, linear in between; t = 1 is pure noise."""
    if not 0 <= tau1 < tau2 <= 1:
        raise ValueError(f"need 0 <= tau1 < tau2 <= 1, got tau1 {tau1}, tau2 {tau2}")
    return np.clip((tau2 - np.asarray(t, dtype=np.float64)) / (tau2 - tau1), 0.0, 1.0)


def noise_coefficients(sigmas: torch.Tensor, tau1: float, tau2: float, scale: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per sampling step i (t = sigma_i): (sqrt(g), s sqrt(1 - g)) as float32, the exact factors the sampler and the
    update multiply with (stored in the rollouts table, so replay does not depend on the config)."""
    g = anneal_gamma(sigmas[:-1].double().numpy(), tau1, tau2)
    return np.sqrt(g).astype(np.float32), (scale * np.sqrt(1.0 - g)).astype(np.float32)


def step_seeds(root: int, round_index: int, prompt: int, sample: int, noise: np.ndarray, resample: str
               ) -> list[int | None]:
    """The seed of each step's prompt noise (stream PROMPT_NOISE), None where the step adds none. "trajectory"
    draws one noise per sample (every noisy step reuses step 0's seed), "step" a fresh one at every step."""
    if resample not in ("step", "trajectory"):
        raise ValueError(f"resample must be 'step' or 'trajectory', got {resample!r}")
    return [None if c == 0 else derive_seed(root, Stream.PROMPT_NOISE, round_index, prompt, sample,
                                            i if resample == "step" else 0)
            for i, c in enumerate(noise)]


def noisy_sample_conditioning(cond: dict[str, torch.Tensor], seed: int | None, signal: float, noise: float
                              ) -> dict[str, torch.Tensor]:
    """One sample's conditioning (unbatched tensors) at one step: sqrt(g) y + s sqrt(1 - g) eps on every positive
    floating tensor (keys without the "negative_" prefix: classifier-free guidance keeps its unconditional branch).

    Bit-exact wherever it runs: eps comes from a CPU generator seeded with `seed` (one draw per tensor, in sorted key
    order) and each product and the sum are separate float32 operations, which IEEE rounds identically on every CPU
    (a fused multiply-add could round differently between vector widths). The result is cast back to y's dtype.
    """
    if seed is None or noise == 0:
        return cond
    gen = torch.Generator().manual_seed(seed)
    a, c = torch.tensor(signal, dtype=torch.float32), torch.tensor(noise, dtype=torch.float32)
    out = dict(cond)
    for key in sorted(cond):
        y = cond[key]
        if key.startswith("negative_") or not y.is_floating_point():
            continue
        eps = torch.randn(y.shape, generator=gen, dtype=torch.float32)
        out[key] = torch.add(torch.mul(y.detach().cpu().float(), a), torch.mul(eps, c)).to(y.device, y.dtype)
    return out


def noisy_conditioning(cond: dict[str, torch.Tensor], seeds: list[int | None], signal: list[float],
                       noise: list[float]) -> dict[str, torch.Tensor]:
    """A batch's conditioning at one step: row b gets `noisy_sample_conditioning` with its own seed and factors,
    so a row's values do not depend on the batch it is in."""
    if all(s is None for s in seeds):
        return cond
    rows = [noisy_sample_conditioning({k: v[b] for k, v in cond.items()}, seeds[b], signal[b], noise[b])
            for b in range(len(seeds))]
    return {k: torch.stack([r[k] for r in rows]) for k in cond}


def relative_change(cond: dict[str, torch.Tensor], signal: np.ndarray, noise: np.ndarray, seeds: list[int | None]
                    ) -> np.ndarray:
    """Per sampling step, how far the prompt noise moves one prompt's conditioning: ||y' - y|| / ||y|| over its
    positive floating tensors, with one sample's stored step seeds (0 at clean steps; about s / rms(y) where the
    prompt is replaced). The rollout logs it per round, because whether s = 0.25 perturbs or drowns a prompt
    depends on the encoder's embedding scale."""
    out = np.zeros(len(signal))
    for i, (a, c, seed) in enumerate(zip(signal, noise, seeds, strict=True)):
        if c == 0 or seed is None:
            continue
        noisy = noisy_sample_conditioning(cond, seed, float(a), float(c))
        keys = [k for k, y in cond.items() if not k.startswith("negative_") and y.is_floating_point()]
        diff = sum(float((noisy[k].float() - cond[k].float()).square().sum()) for k in keys)
        norm = sum(float(cond[k].float().square().sum()) for k in keys)
        out[i] = np.sqrt(diff / max(norm, 1e-30))
    return out


# Reward shaping ---------------------------------------------------------------------------------------------------
def diversity_potential(embeddings: np.ndarray, potential: str = "mean_distance") -> np.ndarray:
    """Phi_i: the mean (or nearest) cosine distance of image i to the other members of its group."""
    d = cosine_distances(embeddings)
    n = d.shape[0]
    if n < 2:
        return np.zeros(n)
    others = d[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    if potential == "mean_distance":
        return others.mean(axis=1)
    if potential == "nearest_distance":
        return others.min(axis=1)
    raise ValueError(f"potential must be 'mean_distance' or 'nearest_distance', got {potential!r}")


def potential_shaping(potential: np.ndarray, rewards: np.ndarray, weight: float, clip: float, scale: str
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(shaping F_i, clipped flags) for one group: F_i = S clip(weight (Phi_i - Phi_0), -clip, clip).

    Potential-based shaping adds gamma Phi(s') - Phi(s) per step; with one terminal reward and gamma = 1 the steps
    telescope to Phi(x_T) - Phi(x_0). Every member starts from the same state (the prompt and fresh noise), so
    Phi(x_0) is one number per group; it is taken as the group's mean potential Phi_0, which makes F zero-mean
    before clipping. S = 1 ("absolute") or the group's reward std ("reward_std": weight and clip are then in units
    of the reward's own spread, whatever the reward model's scale).
    """
    phi = np.asarray(potential, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    if phi.shape != r.shape:
        raise ValueError(f"potential shape {phi.shape} must match rewards shape {r.shape}")
    if scale not in ("absolute", "reward_std"):
        raise ValueError(f"scale must be 'absolute' or 'reward_std', got {scale!r}")
    raw = weight * (phi - phi.mean())
    clipped = np.abs(raw) > clip
    s = r.std() if scale == "reward_std" else 1.0
    return s * np.clip(raw, -clip, clip), clipped
