"""GARDO (arXiv 2512.24138), the diversity-aware Flow-GRPO with public code (yifan123/flow_grpo:
scripts/train_sd3_gardo.py, flow_grpo/stat_tracking.py), rebuilt from that code as options of our stages.

- Novelty-scaled advantages: A_i = (r_i - mean_g r) x novelty_i / mean_g(novelty) where r_i >= mean_g r, and
  A_i = r_i - mean_g r below it; no division by a std. novelty_i is the smallest cosine distance from image i to
  the other images of its group, on L2-normalised features (DINOv3 upstream, `cluster.embedder` here).
- KL gated to uncertain samples: uncertainty = rank under the main reward minus the mean rank under auxiliary
  rewards (ranks over the whole round, 1 = best); the KL applies to the samples above a percentile of the
  non-negative uncertainties.
- Reference resets: the KL's reference is replaced by the current policy when an optimizer step's KL passes a
  threshold, or every N rounds. The KL is upstream's form (train.kl_form "flow_grpo", divided by 2 std_t^2), so
  upstream's threshold means the same here.
docs/algorithms.md ("GARDO") lists where this differs from the upstream script.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
import torch

from dgrpo.config import RunConfig
from dgrpo.config.fields import POSITIVE, Range, check
from dgrpo.diversity import cosine_distances
from dgrpo.methods.base import Method, RoundSignals


def novelty(embeddings: np.ndarray) -> np.ndarray:
    """min over j != i of the cosine distance 1 - cos(e_i, e_j) within one group; 0 for a group of one."""
    d = cosine_distances(embeddings)
    n = d.shape[0]
    if n < 2:
        return np.zeros(n)
    return d[~np.eye(n, dtype=bool)].reshape(n, n - 1).min(axis=1)


def novelty_advantages(rewards: np.ndarray, group_ids: list[str], novelties: np.ndarray, clip: float,
                       kept: np.ndarray | None = None) -> np.ndarray:
    """GARDO's advantages, clipped to +-clip; rows outside `kept` (a filter's dropped samples) get 0 and do not
    enter their group's means. Where a group's mean novelty is 0 (identical images) the scale is 1: no signal."""
    r = np.asarray(rewards, dtype=np.float64)
    nov = np.asarray(novelties, dtype=np.float64)
    groups = np.asarray(group_ids)
    keep = np.ones(len(r), dtype=bool) if kept is None else np.asarray(kept, dtype=bool)
    if not (r.shape == nov.shape == keep.shape == groups.shape):
        raise ValueError(f"rewards {r.shape}, novelty {nov.shape}, kept {keep.shape} and groups {groups.shape} "
                         f"must have one entry per sample")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(nov))):
        raise ValueError("rewards and novelty must be finite")
    adv = np.zeros_like(r)
    for g in np.unique(groups):
        mask = (groups == g) & keep
        if not mask.any():
            continue
        centred = r[mask] - r[mask].mean()
        mean_novelty = nov[mask].mean()
        scale = np.ones_like(centred) if mean_novelty == 0 else nov[mask] / mean_novelty
        adv[mask] = centred * np.where(centred < 0, 1.0, scale)
    return np.clip(adv, -clip, clip)


def descending_ranks(values: np.ndarray) -> np.ndarray:
    """Rank 1 for the largest value, n for the smallest; ties keep their order (stable), so ranks are unique."""
    x = np.asarray(values, dtype=np.float64)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[np.argsort(-x, kind="stable")] = np.arange(1, len(x) + 1)
    return ranks


def uncertainty(main: np.ndarray, auxiliary: list[np.ndarray]) -> np.ndarray:
    """rank(main) - mean_a rank(aux_a): positive where the main reward ranks a sample worse than the auxiliary
    rewards do (the sign of the upstream code)."""
    if not auxiliary:
        raise ValueError("uncertainty needs at least one auxiliary reward")
    return descending_ranks(main) - np.mean([descending_ranks(a) for a in auxiliary], axis=0)


def kl_gate(uncert: np.ndarray, share: float, rule: str = "percentile") -> np.ndarray:
    """True where the KL applies, among the samples with non-negative uncertainty (none are gated without any).

    "percentile" (upstream): uncertainty strictly above the (100 - 100 share)th percentile of the non-negative
    values (numpy's linear interpolation). Uncertainties are rank differences, so they tie often, and when more than
    `share` of them tie at the maximum nothing is gated. "top_share": exactly ceil(share x their number) of them,
    the largest first, ties in sample order.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    u = np.asarray(uncert, dtype=np.float64)
    candidates = np.flatnonzero(u >= 0)
    gate = np.zeros(len(u), dtype=bool)
    if candidates.size == 0:
        return gate
    if rule == "percentile":
        return u > np.percentile(u[candidates], 100 - 100 * share)
    if rule == "top_share":
        order = candidates[np.argsort(-u[candidates], kind="stable")]
        gate[order[:int(np.ceil(share * candidates.size))]] = True
        return gate
    raise ValueError(f"rule must be 'percentile' or 'top_share', got {rule!r}")


def reset_due(step_kls: list[float], threshold: float, rounds_since_reset: int, every: int) -> bool:
    """Replace the reference after this round: an optimizer step's KL passed `threshold`, or the reference has
    served `every` rounds."""
    return any(k > threshold for k in step_kls) or rounds_since_reset >= every


@dataclass
class GardoOptions:
    """GARDO's options, the config's top-level `gardo` section (docs/algorithms.md, "GARDO"); each is off by
    default."""

    novelty_advantage: bool = False
    """A = (r - mean_g r) x novelty / mean_g(novelty) where r >= mean_g r, r - mean_g r elsewhere, no std division;
    novelty = smallest cosine distance to the rest of the group on cluster.embedder's features. Replaces the
    group-normalised advantage (train.global_std does not apply)."""
    kl_gate: bool = False
    """Apply the KL (train.regularizer kl or both) only to uncertain samples: uncertainty = rank under the reward
    minus the mean rank under aux_components, over the round; gated above a percentile (kl_gate_share)."""
    aux_components: list[str] = field(default_factory=list)
    """Auxiliary rewards: names of the reward's `components` (the rewards table), e.g. aesthetic and imagereward
    from the "multi" reward (upstream's), or the toy reward's quality."""
    kl_gate_share: Annotated[float, Range(gt=0, le=1)] = 0.1
    """Share of the non-negative uncertainties above the gate: the KL applies above their (100 - 100 share)th
    percentile. Upstream starts at 0.1 and adapts it within [0.02, 0.2] across rounds; here it is fixed."""
    kl_gate_rule: Literal["percentile", "top_share"] = "percentile"
    """"percentile" (upstream): uncertainty strictly above that percentile; rank differences tie often, and when
    more than kl_gate_share of them tie at the maximum nothing is gated. "top_share": exactly that share of them,
    the largest first (ties in sample order)."""
    reference_reset: bool = False
    """Replace the regulariser's reference (first the base model) by the current policy after a round in which an
    optimizer step's KL passed reset_kl_threshold, or reset_every rounds after the last reset."""
    reset_kl_threshold: Annotated[float, POSITIVE] = 3e-4
    """KL (as in the update metrics' `kl`) above which the reference is reset (upstream's kl_thres)."""
    reset_every: Annotated[int, POSITIVE] = 15
    """Rounds after which the reference is reset anyway (upstream's reset_freq)."""

    def validate(self, path: str) -> None:
        check(not self.kl_gate or len(self.aux_components) > 0, f"{path}.aux_components",
              "must name at least one reward component when kl_gate is on")


class Gardo(Method):
    """GARDO's hooks: novelty and the KL gate in the cluster stage; novelty-scaled advantages, gate weights and the
    resettable reference in the update."""

    name = "gardo"
    Options = GardoOptions

    @classmethod
    def check_run(cls, cfg: RunConfig) -> None:
        """GARDO's checks that span sections."""
        g, t = cfg.gardo, cfg.train
        check(not g.novelty_advantage or cfg.cluster.embedder is not None, "cluster.embedder",
              "must name an embedder: gardo.novelty_advantage uses the distances between a group's embeddings")
        check(not g.kl_gate or t.uses_kl, "gardo.kl_gate",
              f"gates the KL, but train.regularizer is {t.regularizer!r}: set it to kl or both")
        check(not g.reference_reset or t.regularizer != "none", "gardo.reference_reset",
              "resets the regulariser's reference, but train.regularizer is 'none'")

    def group_columns(self, *, quality: np.ndarray, final: np.ndarray, embeddings: np.ndarray | None,
                      keep: np.ndarray) -> dict[str, np.ndarray]:
        return {"novelty": novelty(embeddings)} if self.cfg.gardo.novelty_advantage else {}

    def round_columns(self, *, scored: pa.Table) -> dict[str, np.ndarray]:
        if not self.cfg.gardo.kl_gate:
            return {}
        u, gate = round_kl_gate(self.cfg.gardo, scored)
        return {"uncertainty": u, "kl_gate": gate}

    def cluster_metrics(self, *, columns: dict[str, np.ndarray], metrics: dict[str, float]) -> dict[str, float]:
        out = {}
        if "novelty" in columns:
            out["novelty_mean"] = float(columns["novelty"].mean())
        if "kl_gate" in columns:
            out |= {"kl_gated_share": float(columns["kl_gate"].mean()),
                    "uncertainty_mean": float(columns["uncertainty"].mean())}
        return out

    def needed_columns(self) -> dict[str, str]:
        g = self.cfg.gardo
        return ({"novelty": "gardo.novelty_advantage"} if g.novelty_advantage else {}) | (
            {"kl_gate": "gardo.kl_gate"} if g.kl_gate else {})

    def advantages(self, *, signals: RoundSignals) -> np.ndarray | None:
        if not self.cfg.gardo.novelty_advantage:
            return None
        return novelty_advantages(signals.rewards, signals.groups, signals.novelty, self.cfg.train.adv_clip_max,
                                  signals.kept)

    def kl_weights(self, *, signals: RoundSignals) -> np.ndarray | None:
        """gate / (the round's gated share), so the KL term is the mean over gated samples in expectation, whatever
        the micro-batches and processes (upstream divides by the gated count of each batch). Read from the scores
        table whenever it holds a gate."""
        if signals.kl_gate is None:
            return None
        gate = signals.kl_gate.astype(np.float64)
        share = gate.mean()
        return gate / share if share > 0 else gate

    def reference(self, *, policy, tensors: dict[str, torch.Tensor] | None) -> "ResetReference | None":
        return ResetReference(self.cfg.gardo, policy, tensors) if self.cfg.gardo.reference_reset else None


def round_kl_gate(g, scored: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The (uncertainty, KL gate) over the whole round: the reward against g.aux_components, components of the
    rewards table."""
    components = [dict(c) for c in scored.column("components").to_pylist()]
    aux = []
    for name in g.aux_components:
        missing = [i for i, c in enumerate(components) if name not in c]
        if missing:
            raise ValueError(f"config field 'gardo.aux_components': the rewards table has no component {name!r} "
                             f"(column 'components') for sample {scored.column('sample_id')[missing[0]]}; it has "
                             f"{sorted(components[missing[0]])}")
        aux.append(np.array([c[name] for c in components], dtype=np.float64))
    u = uncertainty(np.asarray(scored.column("reward").to_pylist(), dtype=np.float64), aux)
    return u, kl_gate(u, g.kl_gate_share, g.kl_gate_rule)


REFERENCE_PREFIX = "reference."
LAST_RESET = "reference.last_reset_round"


class ResetReference:
    """The regularisers' reference under reference resets: the base model (adapter off) until the first reset, then
    a stored copy of the LoRA weights, kept in the optimizer-state artifact with the round after which it was
    taken."""

    def __init__(self, g, policy, tensors: dict[str, torch.Tensor] | None):
        self.policy, self.gardo = policy, g
        tensors = tensors or {}
        n = len(policy.lora_parameters())
        self.weights = [tensors[f"{REFERENCE_PREFIX}lora.{i}"] for i in range(n)] if LAST_RESET in tensors else None
        self.last_reset = int(tensors[LAST_RESET]) if self.weights is not None else 0
        self.resets = 0

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The policy as the reference, under no_grad; the trained weights come back bit for bit afterwards."""
        if self.weights is None:
            with self.policy.adapter_disabled():
                yield
            return
        params = self.policy.lora_parameters()
        saved = [p.detach().clone() for p in params]
        try:
            for p, w in zip(params, self.weights, strict=True):
                p.data.copy_(w)
            yield
        finally:
            for p, s in zip(params, saved, strict=True):
                p.data.copy_(s)

    def after_round(self, round_index: int, step_kls: list[float]) -> None:
        """Reset the reference to the weights the round ended with, when the rule says so."""
        if reset_due(step_kls, self.gardo.reset_kl_threshold, self.age(round_index), self.gardo.reset_every):
            self.weights = [p.detach().clone() for p in self.policy.lora_parameters()]
            self.last_reset, self.resets = round_index + 1, 1

    def age(self, round_index: int) -> int:
        """Rounds trained against the current reference, this one included."""
        return round_index + 1 - self.last_reset

    def to_tensors(self) -> dict[str, torch.Tensor]:
        if self.weights is None:
            return {}
        return {LAST_RESET: torch.tensor(self.last_reset),
                **{f"{REFERENCE_PREFIX}lora.{i}": w.detach().cpu() for i, w in enumerate(self.weights)}}

    def metrics(self, round_index: int) -> dict[str, float]:
        return {"reference_resets": float(self.resets), "reference_age": float(self.age(round_index))}
