"""The method options' part of the update, called from `train`: what the scores table says about each sample
(kept, novelty, KL gate), DRIFT's replayed prompt noise, and GARDO's resettable reference.

The scores table is the source of truth: a filter or gate a cluster stage recorded is applied even if this run's
config did not ask for it, and one the config asks for but the table lacks (an external cluster stage that left
the column null) is an error naming the column.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from dgrpo.config import RunConfig
from dgrpo.methods import drift, gardo
from dgrpo.models import FlowPolicy

REFERENCE_PREFIX = "reference."
LAST_RESET = "reference.last_reset_round"


@dataclass(frozen=True)
class RoundSignals:
    """One round's per-sample inputs of the advantage and the KL, in the rollouts' row order."""

    rewards: np.ndarray
    groups: list[str]
    kept: np.ndarray | None
    cluster_ids: np.ndarray
    novelty: np.ndarray | None
    kl_gate: np.ndarray | None


def _column(cfg_needs: bool, option: str, scored: pa.Table, name: str, order: list[int], source: str
            ) -> np.ndarray | None:
    column = scored.column(name).to_pylist()
    values = [column[i] for i in order]
    nulls = sum(v is None for v in values)
    if nulls == len(values) and not cfg_needs:
        return None
    if nulls:
        raise ValueError(f"{source}: column '{name}' is null for {nulls} of {len(values)} samples, but "
                         f"{option} needs it: the cluster stage that wrote it did not apply the option")
    return np.asarray(values)


def read_signals(cfg: RunConfig, sample_ids: list[str], groups: list[str], scored: pa.Table, source: str
                 ) -> RoundSignals:
    """The scores of `sample_ids` (the rollouts' order): final rewards, and the method columns that are set."""
    row_of = {sid: i for i, sid in enumerate(scored.column("sample_id").to_pylist())}
    order = [row_of[i] for i in sample_ids]
    filters = cfg.drift.outlier_filter or cfg.progrpo.mode == "filter"
    kept = _column(filters, "drift.outlier_filter or progrpo.mode filter", scored, "kept", order, source)
    return RoundSignals(
        rewards=np.asarray(scored.column("final_reward").to_numpy()[order], dtype=np.float64),
        groups=groups, kept=None if kept is None else kept.astype(bool),
        cluster_ids=np.asarray(scored.column("cluster_id").to_numpy()[order]),
        novelty=_column(cfg.gardo.novelty_advantage, "gardo.novelty_advantage", scored, "novelty", order, source),
        kl_gate=_column(cfg.gardo.kl_gate, "gardo.kl_gate", scored, "kl_gate", order, source))


def novelty_advantages(cfg: RunConfig, signals: RoundSignals) -> np.ndarray:
    return gardo.novelty_advantages(signals.rewards, signals.groups, signals.novelty, cfg.train.adv_clip_max,
                                    signals.kept)


def kl_weights(signals: RoundSignals) -> np.ndarray | None:
    """Per-sample KL weights: gate / (the round's gated share), so the KL term is the mean over gated samples in
    expectation, whatever the micro-batches and processes (upstream divides by the gated count of each batch)."""
    if signals.kl_gate is None:
        return None
    gate = signals.kl_gate.astype(np.float64)
    share = gate.mean()
    return gate / share if share > 0 else gate


def metrics(signals: RoundSignals) -> dict[str, float]:
    out = {}
    if signals.kept is not None:
        out |= {"kept": float(signals.kept.sum()), "dropped": float((~signals.kept).sum())}
    if signals.kl_gate is not None:
        out["kl_gated_share"] = float(signals.kl_gate.mean())
    return out


@dataclass(frozen=True)
class PromptNoiseReplay:
    """DRIFT's prompt noise of the rows this process trains, read back from the rollouts table."""

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
        return drift.noisy_conditioning(cond, [self.seeds[r][step] for r in rows],
                                        [self.signal[r][step] for r in rows], [self.scale[r][step] for r in rows])


class Reference:
    """The regularisers' reference: the base model (adapter off) until GARDO resets it, then a stored copy of the
    LoRA weights, kept in the optimizer-state artifact with the round after which it was taken."""

    def __init__(self, cfg: RunConfig, policy: FlowPolicy, tensors: dict[str, torch.Tensor] | None):
        self.enabled = cfg.gardo.reference_reset
        self.policy, self.gardo = policy, cfg.gardo
        tensors = tensors or {}
        n = len(policy.lora_parameters())
        self.weights = ([tensors[f"{REFERENCE_PREFIX}lora.{i}"] for i in range(n)]
                        if self.enabled and LAST_RESET in tensors else None)
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
        """Reset the reference to the weights the round ended with, when GARDO's rule says so."""
        if self.enabled and gardo.reset_due(step_kls, self.gardo.reset_kl_threshold, self.age(round_index),
                                            self.gardo.reset_every):
            self.weights = [p.detach().clone() for p in self.policy.lora_parameters()]
            self.last_reset, self.resets = round_index + 1, 1

    def age(self, round_index: int) -> int:
        """Rounds trained against the current reference, this one included."""
        return round_index + 1 - self.last_reset

    def to_tensors(self) -> dict[str, torch.Tensor]:
        if not self.enabled or self.weights is None:
            return {}
        return {LAST_RESET: torch.tensor(self.last_reset),
                **{f"{REFERENCE_PREFIX}lora.{i}": w.detach().cpu() for i, w in enumerate(self.weights)}}

    def metrics(self, round_index: int) -> dict[str, float]:
        if not self.enabled:
            return {}
        return {"reference_resets": float(self.resets), "reference_age": float(self.age(round_index))}
