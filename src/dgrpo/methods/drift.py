"""DRIFT (2026, "Diversity-Incentivized Reinforcement Fine-Tuning"): three levers against diversity collapse.

- Sampling: keep a reward-concentrated subset of each group. Outliers (|robust z| above a threshold, around the
  median) are dropped before the advantages are computed, so one lucky high-reward mode cannot dominate a group.
- Prompting: annealed noise on the prompt embeddings while sampling, strong at the noisy start and absent at the
  end, y' = sqrt(g) y + s sqrt(1 - g) eps with g(t) = 1 for t <= tau1, linear to 0 at tau2 (t = sigma, 1 = noise).
  The noise is regenerated from stored per-step seeds, so the update recomputes log-probs under the very
  conditioning the sampler used.
- Optimisation: potential-based shaping of the reward with an intra-group diversity potential (distances between
  the group's embeddings), added before normalisation, scaled and clipped.

The paper publishes no code; every choice it leaves open is an option of `DriftOptions` below (the config's `drift`
section).
"""

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
import torch

from dgrpo.config import RunConfig
from dgrpo.config.fields import NON_NEGATIVE, POSITIVE, Range, check
from dgrpo.diversity import cosine_distances
from dgrpo.methods.base import Method, kept_metrics
from dgrpo.models.trajectories import ConditioningAt
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


@dataclass
class DriftOptions:
    """DRIFT's three options, the config's top-level `drift` section (docs/algorithms.md, "DRIFT"); each is off by
    default. The paper publishes no code: every default below is this project's choice."""

    outlier_filter: bool = False
    """Sampling: drop each group's reward outliers (|robust z of the quality reward| > outlier_threshold around the
    median) before the advantages, which are computed on the kept subset; the scores table's `kept` column shows
    what was dropped. Refused together with a Pro-GRPO mode (both pick a subset of the same group)."""
    outlier_threshold: Annotated[float, Range(ge=1)] = 2.0
    """alpha: robust z = 0.6745 (Q - median) / MAD (the mean absolute deviation where MAD is 0). At >= 1 at least
    half of every group stays."""
    prompt_noise: bool = False
    """Prompting: annealed noise on the positive prompt embeddings during rollout, y' = sqrt(g) y + s sqrt(1 - g) eps,
    replayed exactly in the update from per-step seeds stored in the rollouts table."""
    prompt_noise_scale: Annotated[float, NON_NEGATIVE] = 0.25
    """s, the noise's std relative to the unit normal (CADS' default)."""
    prompt_noise_tau1: Annotated[float, Range(ge=0, le=1)] = 0.6
    """g = 1 (no noise) for sigma <= tau1."""
    prompt_noise_tau2: Annotated[float, Range(ge=0, le=1)] = 0.9
    """g = 0 (the prompt replaced by noise) for sigma >= tau2; linear between tau1 and tau2."""
    prompt_noise_resample: Literal["step", "trajectory"] = "step"
    """"step": a fresh eps at every noisy step (CADS); "trajectory": one eps per sample for all its steps."""
    shaping_weight: Annotated[float, NON_NEGATIVE] = 0.0
    """Optimisation: weight of the potential-based shaping F = S clip(w (Phi - Phi_0), -c, c) added to the final
    reward before normalisation; 0 turns it off. Phi is the intra-group diversity potential on cluster.embedder."""
    shaping_potential: Literal["mean_distance", "nearest_distance"] = "mean_distance"
    """Phi_i: mean (or smallest) cosine distance of image i to the other kept images of its group."""
    shaping_clip: Annotated[float, POSITIVE] = 1.0
    """c: the shaping's bound before the scale S."""
    shaping_scale: Literal["absolute", "reward_std"] = "reward_std"
    """S: 1, or the group's reward std, so that w and c are relative to the reward's own spread (PickScore spreads
    ~0.01 in a group, the toy reward ~0.15)."""

    def validate(self, path: str) -> None:
        check(not self.prompt_noise or self.prompt_noise_tau1 < self.prompt_noise_tau2, f"{path}.prompt_noise_tau1",
              f"must be < prompt_noise_tau2 ({self.prompt_noise_tau2}), got {self.prompt_noise_tau1}")


class Drift(Method):
    """DRIFT's hooks: prompt noise in the rollout (replayed in the update), the outlier filter and the shaping in the
    cluster stage. Each acts only where its option in the `drift` section is on."""

    name = "drift"
    Options = DriftOptions

    @classmethod
    def check_run(cls, cfg: RunConfig) -> None:
        """DRIFT's checks that span sections."""
        d = cfg.drift
        check(not (d.outlier_filter and cfg.progrpo.mode != "off"), "drift.outlier_filter",
              f"cannot be combined with progrpo.mode {cfg.progrpo.mode!r}: both choose a subset of each group (DRIFT "
              "keeps the reward-concentrated middle, Pro-GRPO the high-variance extremes); turn one of them off")
        check(d.shaping_weight == 0 or cfg.cluster.embedder is not None, "cluster.embedder",
              "must name an embedder: drift.shaping_weight uses the distances between a group's embeddings")

    def prompt_noise(self, *, sigmas: torch.Tensor, round_index: int, prompt_index: int, n: int
                     ) -> "PromptNoise | None":
        if not self.cfg.drift.prompt_noise:
            return None
        return PromptNoise(self.cfg, sigmas, round_index, prompt_index, n)

    def rollout_metrics(self, *, policy, rows: list[dict]) -> dict[str, float]:
        """Whether the noise acts: steps noised and steps whose prompt it replaces (g = 0), and how far it moved the
        shard's first sample's prompt embeddings (DRIFT's values are this project's, docs/algorithms.md)."""
        d, s = self.cfg.drift, self.cfg.sampling
        if not d.prompt_noise:
            return {}
        first = rows[0]
        signal, scale = noise_coefficients(policy.sigmas(s.num_steps, s.shift), d.prompt_noise_tau1,
                                           d.prompt_noise_tau2, d.prompt_noise_scale)
        cond = {k: v[0] for k, v in policy.encode_prompts([first["prompt"]]).items()}
        change = relative_change(cond, signal, scale, seeds=first["prompt_noise_seeds"])
        return {"prompt_noise_steps": float(np.count_nonzero(scale)),
                "prompt_noise_replaced_steps": float(np.count_nonzero(signal == 0)),
                "prompt_noise_change_max": float(change.max()),
                "prompt_noise_change_mean": float(change[scale > 0].mean()) if np.any(scale > 0) else 0.0}

    def keep(self, *, quality: np.ndarray, final: np.ndarray) -> np.ndarray | None:
        """The filter reads the quality reward: filtering the shaped reward would drop exactly the diverse images
        the shaping pays."""
        d = self.cfg.drift
        return outlier_kept(quality, d.outlier_threshold) if d.outlier_filter else None

    def group_columns(self, *, quality: np.ndarray, final: np.ndarray, embeddings: np.ndarray | None,
                      keep: np.ndarray) -> dict[str, np.ndarray]:
        """The shaping, computed among the kept images, added to their final reward."""
        d = self.cfg.drift
        if d.shaping_weight <= 0:
            return {}
        phi = diversity_potential(embeddings[keep], d.shaping_potential)
        shaping, clipped = np.zeros(len(final)), np.zeros(len(final), dtype=bool)
        shaping[keep], clipped[keep] = potential_shaping(phi, final[keep], d.shaping_weight, d.shaping_clip,
                                                         d.shaping_scale)
        return {"shaping": shaping, "shaping_clipped": clipped, "final_reward": final + shaping}

    def cluster_metrics(self, *, columns: dict[str, np.ndarray], metrics: dict[str, float]) -> dict[str, float]:
        out = kept_metrics(columns) if self.cfg.drift.outlier_filter else {}
        if "shaping" in columns:
            out |= {"shaping_abs_mean": float(np.abs(columns["shaping"]).mean()),
                    "shaping_std": float(columns["shaping"].std()),
                    "shaping_clipped_share": float(columns["shaping_clipped"].mean())}
            if metrics.get("quality_std_in_group", 0) > 0:  # does the shaping act? (its w is ours)
                out["shaping_std_over_quality_std"] = out["shaping_std"] / metrics["quality_std_in_group"]
        return out

    def needed_columns(self) -> dict[str, str]:
        return {"kept": "drift.outlier_filter"} if self.cfg.drift.outlier_filter else {}

    def conditioning_replay(self, *, rollouts: pa.Table) -> "PromptNoiseReplay | None":
        """Read from the table whatever the config says: the rollouts are the source of truth."""
        return PromptNoiseReplay.from_rollouts(rollouts)


class PromptNoise:
    """The prompt noise of one group: per-sample, per-step seeds (stream PROMPT_NOISE) and the step factors."""

    def __init__(self, cfg, sigmas: torch.Tensor, round_index: int, prompt: int, n: int):
        d = cfg.drift
        self.signal, self.scale = noise_coefficients(sigmas, d.prompt_noise_tau1, d.prompt_noise_tau2,
                                                     d.prompt_noise_scale)
        self.seeds = [step_seeds(cfg.seed, round_index, prompt, k, self.scale, d.prompt_noise_resample)
                      for k in range(n)]

    def hook(self, cond: dict[str, torch.Tensor]) -> ConditioningAt:
        def at(step: int, positions: list[int]) -> dict[str, torch.Tensor]:
            n = len(positions)
            return noisy_conditioning({k: v[positions] for k, v in cond.items()},
                                      [self.seeds[p][step] for p in positions],
                                      [float(self.signal[step])] * n, [float(self.scale[step])] * n)
        return at

    def columns(self, sample: int) -> dict:
        return {"prompt_noise_seeds": self.seeds[sample], "prompt_noise_signal": self.signal.tolist(),
                "prompt_noise_scale": self.scale.tolist()}


@dataclass(frozen=True)
class PromptNoiseReplay:
    """The prompt noise of the rows one update process trains, read back from the rollouts table."""

    seeds: list[list[int | None]]
    signal: list[list[float]]
    scale: list[list[float]]

    @classmethod
    def from_rollouts(cls, traj: pa.Table) -> "PromptNoiseReplay | None":
        seeds = traj.column("prompt_noise_seeds").to_pylist()
        if all(s is None for s in seeds):
            return None
        if any(s is None for s in seeds):
            raise ValueError("rollouts column 'prompt_noise_seeds': set on some rows only; a round's rows are all "
                             "sampled with or without prompt noise")
        return cls(seeds, traj.column("prompt_noise_signal").to_pylist(), traj.column("prompt_noise_scale").to_pylist())

    def conditioning(self, cond: dict[str, torch.Tensor], rows: list[int], step: int) -> dict[str, torch.Tensor]:
        """The conditioning the sampler used for `rows` (indices into this process's rows) at `step`."""
        return noisy_conditioning(cond, [self.seeds[r][step] for r in rows], [self.signal[r][step] for r in rows],
                                  [self.scale[r][step] for r in rows])
