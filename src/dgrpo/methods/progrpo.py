"""Pro-GRPO (Huang et al. 2025, "Expand and Prune"): keep the subset of a group whose rewards vary the most.

Many trajectories of a group collapse towards the group's mean reward and carry little signal; Optimal Variance
Filtering (OVF) keeps the k of G samples whose rewards have the largest variance. Expand-and-Prune samples
G_max > G trajectories and applies OVF to reward previews at checkpoint steps, stopping the others early, which is
where its savings in transformer evaluations (NFEs) come from.
"""

from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import torch

from dgrpo.config import RunConfig
from dgrpo.config.fields import NON_NEGATIVE, Range, check
from dgrpo.methods.base import Method, kept_metrics


def optimal_variance_subset(values: np.ndarray, k: int) -> np.ndarray:
    """Indices (ascending) of the k values with the largest population variance: the exact sort-and-split solution.

    A maximum-variance k-subset is always made of the i lowest and the k - i highest values for some i: the
    variance is convex in any one member's value, so a chosen value lying between two unchosen ones can be
    swapped for one of them without lowering it. Trying the k + 1 splits of the sorted values is therefore exact;
    `tests/test_progrpo.py` checks it against brute force up to G = 12. Ties: values
    are sorted by (value, index) and the first best split wins, so the choice is deterministic.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite")
    n = x.size
    if not (isinstance(k, int | np.integer) and 1 <= k <= n):
        raise ValueError(f"k must be an integer in 1..{n} (the number of values), got {k!r}")
    order = np.lexsort((np.arange(n), x))
    best, best_var = order[n - k:], -1.0
    for low in range(k + 1):
        idx = np.concatenate([order[:low], order[n - (k - low):]])
        var = float(x[idx].var())
        if var > best_var:
            best, best_var = idx, var
    return np.sort(best)


def nfe_of_schedule(group_size: int, num_steps: int, prune_steps: list[int], prune_sizes: list[int]) -> int:
    """Velocity evaluations (sample-steps) of one group under expand-and-prune: every live trajectory evaluates the
    velocity once per step; at a checkpoint step c the velocity of all live ones is computed (it gives the preview)
    and only the survivors take step c and the following steps."""
    nfe, live, start = 0, group_size, 0
    for step, size in zip(prune_steps, prune_sizes, strict=True):
        nfe += live * (step + 1 - start)
        live, start = size, step + 1
    return nfe + live * (num_steps - start)


@dataclass
class ProGRPOOptions:
    """Pro-GRPO's options, the config's top-level `progrpo` section (docs/algorithms.md, "Pro-GRPO"): Optimal
    Variance Filtering, after sampling or during it."""

    mode: Literal["off", "filter", "expand_prune"] = "off"
    """"filter": the cluster stage keeps the filter_keep samples of each group whose final rewards vary the most
    (OVF; the others get no advantage). "expand_prune": the rollout samples expand_group_size trajectories per
    prompt and at each prune step previews x0_hat = x - sigma v, scores the previews with the reward and keeps the
    OVF subset; the sampling.group_size survivors are the group."""
    filter_keep: Annotated[int, Range(ge=2)] = 8
    """k, samples kept per group in "filter" mode (< sampling.group_size)."""
    expand_group_size: Annotated[int, Range(ge=3)] = 32
    """G_max, trajectories started per prompt in "expand_prune" mode (> sampling.group_size)."""
    prune_steps: list[Annotated[int, NON_NEGATIVE]] = field(default_factory=lambda: [5, 7])
    """Steps (0-based, increasing, < sampling.num_steps) at which the live trajectories are previewed and pruned."""
    prune_sizes: list[Annotated[int, Range(ge=2)]] = field(default_factory=lambda: [24, 16])
    """Trajectories kept at each prune step, decreasing; the last is sampling.group_size."""


class ProGRPO(Method):
    """Pro-GRPO's hooks: expand-and-prune in the rollout (progrpo.mode expand_prune), OVF after sampling in the
    cluster stage (filter)."""

    name = "progrpo"
    Options = ProGRPOOptions

    @classmethod
    def check_run(cls, cfg: RunConfig) -> None:
        """Pro-GRPO's checks that span sections: the filter's and the prune schedule's sizes against the group."""
        p, s = cfg.progrpo, cfg.sampling
        if p.mode == "filter":
            check(p.filter_keep < s.group_size, "progrpo.filter_keep",
                  f"must be < sampling.group_size ({s.group_size}), got {p.filter_keep}")
        if p.mode == "expand_prune":
            steps, sizes = p.prune_steps, p.prune_sizes
            check(p.expand_group_size > s.group_size, "progrpo.expand_group_size",
                  f"must be > sampling.group_size ({s.group_size}), got {p.expand_group_size}")
            check(len(steps) == len(sizes) > 0, "progrpo.prune_sizes",
                  f"needs one size per prune step ({len(steps)} steps), got {len(sizes)}")
            check(all(a < b for a, b in zip(steps, steps[1:], strict=False)) and steps[-1] < s.num_steps,
                  "progrpo.prune_steps",
                  f"must increase and stay below sampling.num_steps ({s.num_steps}), got {steps}")
            check(all(a > b for a, b in zip([p.expand_group_size, *sizes], sizes, strict=False))
                  and sizes[-1] == s.group_size, "progrpo.prune_sizes",
                  f"must decrease from progrpo.expand_group_size ({p.expand_group_size}) and end at "
                  f"sampling.group_size ({s.group_size}), got {sizes}")

    def rollout_reward(self) -> bool:
        return self.cfg.progrpo.mode == "expand_prune"

    def started_group_size(self) -> int | None:
        return self.cfg.progrpo.expand_group_size if self.rollout_reward() else None

    def pruner(self, *, policy, reward, prompt: str, seeds: list[int]) -> "GroupPruner | None":
        return GroupPruner(self.cfg, policy, reward, prompt, seeds) if self.rollout_reward() else None

    def rollout_record(self) -> dict | None:
        p = self.cfg.progrpo
        if not self.rollout_reward():
            return None
        return {"expand_group_size": p.expand_group_size, "prune_steps": list(p.prune_steps),
                "prune_sizes": list(p.prune_sizes), "reward": self.cfg.reward.name}

    def rollout_metrics(self, *, policy, rows: list[dict]) -> dict[str, float]:
        s, p = self.cfg.sampling, self.cfg.progrpo
        if not self.rollout_reward():
            return {}
        groups = len(rows) // s.group_size
        return {"started": float(p.expand_group_size * groups),
                "pruned": float((p.expand_group_size - s.group_size) * groups),
                "nfe_without_pruning": float(p.expand_group_size * s.num_steps * groups)}

    def keep(self, *, quality: np.ndarray, final: np.ndarray) -> np.ndarray | None:
        """OVF on the final rewards."""
        if self.cfg.progrpo.mode != "filter":
            return None
        return np.isin(np.arange(len(final)), optimal_variance_subset(final, self.cfg.progrpo.filter_keep))

    def cluster_metrics(self, *, columns: dict[str, np.ndarray], metrics: dict[str, float]) -> dict[str, float]:
        return kept_metrics(columns) if self.cfg.progrpo.mode == "filter" else {}

    def needed_columns(self) -> dict[str, str]:
        return {"kept": "progrpo.mode filter"} if self.cfg.progrpo.mode == "filter" else {}


class GroupPruner:
    """The prune decisions of one group: decode the previews, score them, keep the OVF subset."""

    def __init__(self, cfg, policy, reward, prompt: str, seeds: list[int]):
        self.policy, self.reward, self.prompt, self.seeds = policy, reward, prompt, seeds
        self.steps = tuple(cfg.progrpo.prune_steps)
        self.size_at = dict(zip(cfg.progrpo.prune_steps, cfg.progrpo.prune_sizes, strict=True))
        self.batch = cfg.sampling.batch_size
        self.records: list[dict] = []

    def __call__(self, step: int, previews: torch.Tensor, positions: list[int]) -> list[int]:
        images = self.policy.decode_batches(previews, self.batch)
        scores = np.asarray(self.reward(images, [self.prompt] * len(images))["reward"], dtype=np.float64)
        keep = set(optimal_variance_subset(scores, self.size_at[step]).tolist())
        self.records += [{"step": step, "sample_index": pos, "seed": self.seeds[pos],
                          "preview_reward": float(scores[j]), "kept": j in keep} for j, pos in enumerate(positions)]
        return [pos for j, pos in enumerate(positions) if j in keep]

    def columns(self, sample: int, first: bool) -> dict:
        return {"preview_rewards": [r["preview_reward"] for r in self.records if r["sample_index"] == sample],
                "prune_record": self.records if first else None}
