"""What every stage shares: the run context, provenance, policy loading and the run's event records."""

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dgrpo import lineage
from dgrpo.config import RunConfig
from dgrpo.lineage import Provenance
from dgrpo.store import ArtifactRef, ArtifactStore

if TYPE_CHECKING:
    from dgrpo.models import FlowPolicy

@dataclass
class StageContext:
    """The run a stage belongs to."""

    config: RunConfig
    store: ArtifactStore
    run_id: str

    def provenance(self, stage: str, round_index: int | None, inputs: dict[str, ArtifactRef | None],
                   seeds: dict[str, int] | None = None) -> Provenance:
        present = {k: v for k, v in inputs.items() if v is not None}
        return Provenance(stage=stage, run_id=self.run_id, config_sha256=self.config.sha256(),
                          round=round_index, inputs=present, seeds=dict(seeds or {}))

    def config_ref(self) -> ArtifactRef:
        """The run config as an artifact: the root of every lineage chain."""
        ref = self.store.put(self.config.to_json().encode(), kind="config", suffix=".json")
        lineage.record(self.store, ref, self.provenance("config", None, {}, {"seed": self.config.seed}))
        return ref

    def base_model_ref(self, policy: "FlowPolicy") -> ArtifactRef:
        """The base weights, recorded by location and hash (never copied into the store)."""
        base = policy.base_model
        ref = ArtifactRef(kind="base_model", uri=base.uri, sha256=base.sha256, size=0)
        lineage.record(self.store, ref, self.provenance("base_model", None, {}))
        return ref


@dataclass
class StageResult:
    outputs: dict[str, ArtifactRef]
    metrics: dict[str, float] = field(default_factory=dict)


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (root seed, round, index, ...), stable across machines."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def sde_steps(config: RunConfig, round_index: int) -> range:
    """The round's stochastic steps: all of them, or the SDE window at a seeded random start (Flow-GRPO-Fast)."""
    s = config.sampling
    if s.sde_window_size == 0:
        return range(s.num_steps)
    lo, hi = s.sde_window_range or [0, s.num_steps]
    rng = np.random.default_rng(derive_seed(config.seed, round_index, 2))
    start = int(rng.integers(lo, hi - s.sde_window_size + 1))
    return range(start, start + s.sde_window_size)


def trained_steps(config: RunConfig, round_index: int) -> list[int]:
    """Steps the update trains: the SDE window, or the first `train_fraction` of the steps."""
    if config.sampling.sde_window_size:
        return list(sde_steps(config, round_index))
    return list(range(config.num_train_steps))


def round_prompts(config: RunConfig, round_index: int) -> list[str]:
    """The prompts of a training round: a seeded draw without replacement."""
    rng = np.random.default_rng(derive_seed(config.seed, round_index, 0))
    picks = rng.choice(len(config.sampling.prompts), size=config.sampling.prompts_per_round, replace=False)
    return [config.sampling.prompts[i] for i in sorted(picks)]


def emit_event(ctx: StageContext, stage: str, round_index: int, result: StageResult,
               shard: int | None = None) -> None:
    """Record a finished stage (or stage shard) under runs/<run_id>/events/, for progress and the run report."""
    event = {"stage": stage, "round": round_index, "metrics": result.metrics,
             "outputs": {k: json.loads(v.to_json()) for k, v in result.outputs.items()}}
    suffix = "" if shard is None else f"-s{shard:03d}"
    if shard is not None:
        event["shard"] = shard
    ctx.store.put_json(f"runs/{ctx.run_id}/events/r{round_index:04d}-{stage}{suffix}.json", event)
