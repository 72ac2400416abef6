"""The methods' part of the update, called from `train`: what the scores table says about each sample (kept,
novelty, KL gate) and the regularisers' reference when no method replaces it.

The scores table is the source of truth: a filter or gate a cluster stage recorded is applied even if this run's
config did not ask for it, and one a method needs but the table lacks (an external cluster stage that left the
column null) is an error naming the column and the option.
"""

import contextlib
import dataclasses
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch

from dgrpo.config import RunConfig
from dgrpo.methods.base import COEFFICIENT_COLUMNS, Method, RoundSignals
from dgrpo.models import FlowPolicy

OPTIONAL_COLUMNS = ("kept", "novelty", "kl_gate")
"""Scores columns a method may set (null otherwise) that the update reads."""


def _column(option: str | None, scored: pa.Table, name: str, order: list[int], source: str) -> np.ndarray | None:
    column = scored.column(name).to_pylist()
    values = [column[i] for i in order]
    nulls = sum(v is None for v in values)
    if nulls == len(values) and option is None:
        return None
    if nulls:
        raise ValueError(f"{source}: column '{name}' is null for {nulls} of {len(values)} samples, but "
                         f"{option or 'the update'} needs it: the cluster stage that wrote it did not apply the option")
    return np.asarray(values)


def read_signals(methods: list[Method], sample_ids: list[str], groups: list[str], scored: pa.Table, source: str
                 ) -> RoundSignals:
    """The scores of `sample_ids` (the rollouts' order): final rewards, and the method columns that are set."""
    row_of = {sid: i for i, sid in enumerate(scored.column("sample_id").to_pylist())}
    order = [row_of[i] for i in sample_ids]
    needs: dict[str, list[str]] = {}
    for m in methods:
        for name, option in m.needed_columns().items():
            needs.setdefault(name, []).append(option)
    cols = {name: _column(" or ".join(needs[name]) if name in needs else None, scored, name, order, source)
            for name in OPTIONAL_COLUMNS}
    return RoundSignals(
        rewards=np.asarray(scored.column("final_reward").to_numpy()[order], dtype=np.float64),
        groups=groups, kept=None if cols["kept"] is None else cols["kept"].astype(bool),
        cluster_ids=np.asarray(scored.column("cluster_id").to_numpy()[order]),
        novelty=cols["novelty"], kl_gate=cols["kl_gate"])


def recorded_coefficients(scored: pa.Table, source: str) -> dict[str, float]:
    """The round's controller coefficients from the scores table, {} where none was set; they are one value per
    round, so a column that varies or is only partly set is an error naming it."""
    out = {}
    for name in COEFFICIENT_COLUMNS:
        values = scored.column(name).unique().to_pylist()
        if values == [None]:
            continue
        if len(values) != 1 or values[0] is None:
            raise ValueError(f"{source}: column '{name}' must hold one value for the whole round (a diversity "
                             f"controller's), got {sorted(values, key=str)[:4]}")
        out[name] = float(values[0])
    return out


def round_config(cfg: RunConfig, coefficients: dict[str, float], structure_steps: int) -> RunConfig:
    """The run config this round trains with: SA-Reg's lambda as the controller set it and K as resolved."""
    train = dataclasses.replace(cfg.train, sa_lambda=coefficients.get("sa_lambda", cfg.train.sa_lambda),
                                structure_steps=structure_steps)
    return dataclasses.replace(cfg, train=train)


def metrics(signals: RoundSignals) -> dict[str, float]:
    out = {}
    if signals.kept is not None:
        out |= {"kept": float(signals.kept.sum()), "dropped": float((~signals.kept).sum())}
    if signals.kl_gate is not None:
        out["kl_gated_share"] = float(signals.kl_gate.mean())
    return out


class BaseReference:
    """The regularisers' reference when no method replaces it (`Method.reference`): the base model, adapter off."""

    def __init__(self, policy: FlowPolicy):
        self.policy = policy

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self.policy.adapter_disabled():
            yield

    def after_round(self, round_index: int, step_kls: list[float]) -> None:
        """Nothing: the base model stays the reference."""

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def metrics(self, round_index: int) -> dict[str, float]:
        return {}
