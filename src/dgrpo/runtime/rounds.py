"""The shape of one training round, derived once from the stage table (`dgrpo.contracts.stages`).

Every engine builds its round from `ROUND`: the KFP pipeline factory (a task per step, the sharded steps inside one
loop over shards), the in-process and fused engines (`run_round`), and the task counts of `dgrpo.runtime.plan`.
A step reads the round's state (the adapter and optimizer state it trains from) and the tables written by the
steps before it; a sharded step runs once per shard and a later unsharded step reads all its shards, in shard
order. A new stage is a row of the stage table and an entry of `STEP_CALLS`.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import groupby

from dgrpo.contracts.stages import ROUND_STAGES, stage_spec
from dgrpo.contracts.tables import CONTRACTS
from dgrpo.runs.keys import shown
from dgrpo.runtime.segment import RoundState
from dgrpo.runtime.termination import time_limit
from dgrpo.stages.shared.context import StageContext, StageResult
from dgrpo.store import ArtifactRef


@dataclass(frozen=True)
class RoundStep:
    stage: str
    sharded: bool
    """Runs once per prompt shard (pipeline.shards); later unsharded steps read every shard's output."""
    inputs: tuple[str, ...]
    """Tables it reads from earlier steps of the round, by port name (= the producing step's output name)."""
    outputs: tuple[str, ...]
    """Tables it writes that later steps read."""


def _round_steps() -> tuple[RoundStep, ...]:
    steps: list[RoundStep] = []
    produced: set[str] = set()
    for name in ROUND_STAGES:
        spec = stage_spec(name)
        inputs = tuple(p.name for p in spec.reads if p.name in produced)
        outputs = tuple(p.name for p in spec.writes if p.kind in CONTRACTS)
        steps.append(RoundStep(name, spec.sharded, inputs, outputs))
        produced |= set(outputs)
    return tuple(steps)


ROUND: tuple[RoundStep, ...] = _round_steps()
"""The steps of one training round, in order."""


def spans(steps: tuple[RoundStep, ...] = ROUND) -> Iterator[tuple[bool, list[RoundStep]]]:
    """Consecutive steps grouped by whether they run per shard: the pipeline opens one shard loop per sharded span."""
    for sharded, group in groupby(steps, key=lambda s: s.sharded):
        yield sharded, list(group)


StepCall = Callable[..., StageResult]
"""`call(ctx, state, shard=, shards=, **tables)`: one stage of the round, its tables bound by port name."""

Tables = dict[str, ArtifactRef | list[ArtifactRef]]


def _rollout(ctx: StageContext, state: RoundState, *, shard: int, shards: int) -> StageResult:
    from dgrpo.stages.rollout import run_rollout

    return run_rollout(ctx, state.round, state.adapter, shard, shards)


def _reward(ctx: StageContext, state: RoundState, *, shard: int, shards: int, rollouts: ArtifactRef) -> StageResult:
    from dgrpo.stages.reward import run_reward

    return run_reward(ctx, state.round, rollouts)


def _cluster(ctx: StageContext, state: RoundState, *, shard: int, shards: int, rollouts: list[ArtifactRef],
             rewards: list[ArtifactRef]) -> StageResult:
    from dgrpo.stages.cluster import run_cluster

    return run_cluster(ctx, state.round, rollouts, rewards, optimizer_state=state.optimizer_state)


def _update(ctx: StageContext, state: RoundState, *, shard: int, shards: int, rollouts: list[ArtifactRef],
            scores: ArtifactRef) -> StageResult:
    from dgrpo.stages.update import run_update

    return run_update(ctx, state.round, rollouts, scores, state.adapter, state.optimizer_state)


STEP_CALLS: dict[str, StepCall] = {"rollout": _rollout, "reward": _reward, "cluster": _cluster, "update": _update}
"""How each round stage is called in process (each stage module is imported when its step first runs)."""

OnStep = Callable[[str, int, int | None], None]
"""`on_step(stage, round, shard)`: called as a step (or a shard of it) starts: the fused task's log line."""


def run_round(ctx: StageContext, state: RoundState, *, on_step: OnStep | None = None,
              calls: dict[str, StepCall] | None = None, shard_indices: Callable[[int], list[int]] | None = None,
              gather: Callable[[dict[int, Tables]], dict[int, Tables]] | None = None) -> Tables:
    """Run `ROUND` for `state`'s round in this process; returns every table the round wrote (sharded ones as lists).

    The fused pod's processes (`dgrpo.runtime.fused`) pass their own `calls` for the unsharded steps,
    `shard_indices(shards)` to pick the shards this process runs (all by default), and `gather` to merge every
    process's shards before an unsharded step. Each call is bounded by pipeline.stage_timeout_s.
    """
    calls = STEP_CALLS | (calls or {})
    shards, limit = ctx.config.pipeline.shards, ctx.config.pipeline.stage_timeout_s
    mine = shard_indices(shards) if shard_indices else list(range(shards))
    tables: Tables = {}
    for sharded, steps in spans():
        if not sharded:
            for step in steps:
                if on_step:
                    on_step(step.stage, state.round, None)
                bound = {name: tables[name] for name in step.inputs}
                with time_limit(limit, f"{step.stage} of round {shown(state.round)}"):
                    result = calls[step.stage](ctx, state, shard=0, shards=1, **bound)
                tables |= {name: result.outputs[name] for name in step.outputs}
            continue
        per_shard: dict[int, Tables] = {}
        for i in mine:
            own: Tables = {}
            for step in steps:
                if on_step:
                    on_step(step.stage, state.round, i)
                bound = {name: own[name] if name in own else tables[name] for name in step.inputs}
                with time_limit(limit, f"{step.stage} of round {shown(state.round)} (shard {i})"):
                    result = calls[step.stage](ctx, state, shard=i, shards=shards, **bound)
                own |= {name: result.outputs[name] for name in step.outputs}
            per_shard[i] = own
        if gather:
            per_shard = gather(per_shard)
        for name in {n for step in steps for n in step.outputs}:
            tables[name] = [per_shard[i][name] for i in sorted(per_shard)]
    return tables


__all__ = ["ROUND", "STEP_CALLS", "RoundStep", "run_round", "spans"]
