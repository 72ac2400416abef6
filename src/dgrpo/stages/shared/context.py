"""What every stage shares: the run context, provenance and the run's event records."""

import datetime
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dgrpo.config import RunConfig
from dgrpo.runs import lineage
from dgrpo.runs.evaluations import write_event
from dgrpo.runs.lineage import Provenance
from dgrpo.runs.record import ref_dict
from dgrpo.runs.records import Event
from dgrpo.stages.shared import run_config
from dgrpo.store import ArtifactRef, ArtifactStore

if TYPE_CHECKING:
    from dgrpo.models import FlowPolicy

@dataclass
class StageContext:
    """The run a stage belongs to."""

    config: RunConfig
    store: ArtifactStore
    run_id: str
    lease: str = ""
    """Holder id of the segment's lease (`dgrpo.runs.ownership`); a commit checks it is still held."""
    _refs: dict[str, ArtifactRef] = field(default_factory=dict, init=False, repr=False, compare=False)

    def provenance(self, stage: str, round_index: int | None, inputs: dict[str, ArtifactRef | None],
                   seeds: dict[str, int] | None = None, shard: int | None = None,
                   shards: int | None = None) -> Provenance:
        """Lineage of what `stage` writes: the recipe hash identifies what was trained, the deployment object
        where and how (pods, shards, processes) apart from it; `shard` of `shards` for a sharded step's part."""
        present = {k: v for k, v in inputs.items() if v is not None}
        if "deployment" not in self._refs:
            self._refs["deployment"] = run_config.put_deployment(self.store, self.config)
        return Provenance(stage=stage, run_id=self.run_id, config_sha256=self.config.recipe_sha256(),
                          round=round_index, inputs=present, seeds=dict(seeds or {}),
                          deployment_sha256=self._refs["deployment"].sha256, shard=shard, shards=shards)

    def config_ref(self) -> ArtifactRef:
        """The run config as an artifact (`run_config.put_config`): the root of every lineage chain."""
        if "config" not in self._refs:
            self._refs["config"] = run_config.put_config(self.store, self.config)
        return self._refs["config"]

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
    event = Event(stage=stage, round=round_index, metrics=result.metrics, shard=shard,
                  outputs={k: ref_dict(v) for k, v in result.outputs.items()},
                  finished_at=datetime.datetime.now(datetime.UTC).isoformat())  # the report's s/round
    write_event(ctx.store, ctx.run_id, event)
