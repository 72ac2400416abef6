"""What every stage shares: the run context, provenance and the run's event records."""

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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


def emit_event(ctx: StageContext, stage: str, round_index: int, result: StageResult,
               shard: int | None = None) -> None:
    """Record a finished stage (or stage shard) under runs/<run_id>/events/, for progress and the run report."""
    event = {"stage": stage, "round": round_index, "metrics": result.metrics,
             "outputs": {k: json.loads(v.to_json()) for k, v in result.outputs.items()}}
    suffix = "" if shard is None else f"-s{shard:03d}"
    if shard is not None:
        event["shard"] = shard
    ctx.store.put_json(f"runs/{ctx.run_id}/events/r{round_index:04d}-{stage}{suffix}.json", event)
