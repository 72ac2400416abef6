"""A segment's training in one process group: the body of the fused KFP task and of the in-process engine.

`train_segment` runs what the staged pipeline runs as tasks, in the same order and through the same functions:
the base-model evaluation when due, then per round `begin_round`, the round's steps (`dgrpo.runtime.rounds`) and
the evaluation when due. It writes the same objects and records as the staged pipeline, so the two are
interchangeable at any commit (tested bit for bit).

In a pod with several GPUs the segment runs in `train.num_processes` processes started by torchrun (`launch`),
one per GPU: the sharded steps (rollout, reward) split their shards over the processes, the cluster step runs on
the first process over the whole round's groups, the update trains data-parallel in every process (the first
commits), and evaluations run on the first. Artifact references travel between processes over a gloo group;
the artifacts themselves are in the store.

Each process sees the store through a `ResidentStore`: its writes go out in the background while the next step
computes, and the objects it wrote stay in memory for the steps after. So each process keeps to the data it
produced: the cluster step's embeddings are computed where the images are (each process its own shards; the
first process clusters the groups from them) and the update trains each process on its own shards' rows
(`dgrpo.stages.update.train.own_rollouts`). The writes are flushed before the processes exchange references.
"""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dgrpo.models import resident_models
from dgrpo.runs.commits import trained_state
from dgrpo.runs.keys import evaluation_label, shown
from dgrpo.runtime import review
from dgrpo.runtime import segment as seg
from dgrpo.runtime.rounds import OnStep, StepCall, run_round
from dgrpo.runtime.termination import described, sigterm_raises, time_limit
from dgrpo.stages.shared.context import StageContext, StageResult
from dgrpo.store import ArtifactStore, ResidentStore, open_store
from dgrpo.store.resident import GiB


@dataclass(frozen=True)
class Processes:
    """The processes that run a segment together; one by default."""

    rank: int = 0
    world: int = 1
    group: Any = None
    """A torch.distributed (gloo) group for passing artifact references; None with one process."""
    flush: Callable[[], None] = lambda: None
    """Called before every exchange: what a process wrote is in the store before another acts on it."""

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            self.flush()
            dist.barrier(group=self.group)

    def broadcast(self, value: Any) -> Any:
        """The first process's `value`, in every process."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        self.flush()
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, mine: dict) -> dict:
        """Every process's dict merged, in every process."""
        if self.world == 1:
            return mine
        import torch.distributed as dist

        self.flush()
        parts: list[dict] = [{} for _ in range(self.world)]
        dist.all_gather_object(parts, mine, group=self.group)
        return {k: v for part in parts for k, v in part.items()}

    def shard_indices(self, shards: int) -> list[int]:
        return list(range(self.rank, shards, self.world))


def step_label(stage: str, round_index: int, shard: int | None) -> str:
    """A step as the fused task's log names it: "round 3: rollout (shard 1)", "after round 3: evaluate", "base:
    evaluate" (rounds shown from 1, evaluations by the rounds done)."""
    if stage == "evaluate":
        return f"{evaluation_label(round_index + 1)}: evaluate"
    return f"round {shown(round_index)}: {stage}" + ("" if shard is None else f" (shard {shard})")


def _distributed_calls(processes: Processes) -> dict[str, StepCall]:
    """The unsharded steps across processes: each process embeds its own shards' images and the first clusters
    the round from the embeddings; the update runs in every process."""

    def cluster(ctx: StageContext, state: seg.RoundState, *, shard: int, shards: int, rollouts: list,
                rewards: list) -> StageResult:
        from dgrpo.stages.cluster import Embedded, embed_rollouts, run_cluster

        mine = embed_rollouts(ctx, [rollouts[i] for i in processes.shard_indices(len(rollouts))])
        embedded = Embedded(processes.gather(mine.by_id), processes.gather(mine.probe),
                            max(processes.gather({processes.rank: mine.seconds}).values()))
        result = run_cluster(ctx, state.round, rollouts, rewards, embedded,
                             optimizer_state=state.optimizer_state) if processes.main else None
        return processes.broadcast(None if result is None else StageResult(result.outputs, {}))

    def update(ctx: StageContext, state: seg.RoundState, *, shard: int, shards: int, rollouts: list, scores
               ) -> StageResult:
        from dgrpo.stages.update import UpdateInputs, commit_update, train_round

        inputs = UpdateInputs(state.round, rollouts, scores, state.adapter, state.optimizer_state)
        result = train_round(ctx, inputs)
        if processes.main:
            commit_update(ctx, inputs, result)
        return processes.broadcast(None if result is None else StageResult(result.outputs, {}))

    return {"cluster": cluster, "update": update}


def train_segment(store: ArtifactStore, state: seg.RoundState, base_due: bool, *, on_step: OnStep | None = None,
                  processes: Processes = Processes()) -> None:
    """Train `state`'s segment: the base-model evaluation when due, then its rounds, each evaluated on schedule.

    A failure is recorded in the store (stage, segment, round) as a staged task records it, then re-raised.
    `on_step(stage, round, shard)` is called as each step starts."""
    ctx = seg.context(store, state)
    resident = ResidentStore(store, int(ctx.config.pipeline.resident_gb * GiB))
    ctx.store, processes = resident, replace(processes, flush=resident.flush)
    where: dict = {"task": "evaluate", "round": None}

    def step(stage: str, round_index: int, shard: int | None) -> None:
        where.update(task=stage, round=round_index)
        if on_step:
            on_step(stage, round_index, shard)

    many, limit = processes.world > 1, ctx.config.pipeline.stage_timeout_s
    try:
        with sigterm_raises(), resident_models():  # the base weights load once a segment, not once a stage and round
            if base_due:
                step("evaluate", state.round - 1, None)  # the evaluation after round index r - 1: the base model
                where["round"] = None
                if processes.main:
                    with time_limit(limit, "evaluate of the base model"):
                        review.evaluate(ctx, state, after_update=False)
                processes.barrier()
            for r in state.rounds:
                step("begin_round", r, None)
                round_state = seg.begin_round(resident, state, r)
                run_round(ctx, round_state, on_step=step, calls=_distributed_calls(processes) if many else None,
                          shard_indices=processes.shard_indices, gather=processes.gather)
                if round_state.evaluate:
                    step("evaluate", r, None)
                    if processes.main:
                        done = trained_state(resident, state.run_id)
                        with time_limit(limit, f"evaluate after round {shown(r)}"):
                            review.evaluate(ctx, round_state, after_update=True, adapter=done.adapter,
                                            optimizer_state=done.optimizer_state)
                    processes.barrier()
        resident.close()  # every write of the segment in the store before the task reports success
    except Exception as exc:
        resident.close(raise_failure=False)  # what was written before the failure stays written
        exc = described(exc, where["task"], where["round"])
        seg.record_error(store, state.run_id, where["task"], exc, state.segment or None, where["round"])
        raise exc


def launch(store: ArtifactStore, state: seg.RoundState, base_due: bool) -> None:
    """Train the segment in `train.num_processes` processes (torchrun, one per GPU of the pod), this process
    waiting; a worker's failure is recorded by the worker and ends the others (torchrun)."""
    processes = seg.context(store, state).config.train.num_processes
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", __name__, store.uri, state.to_json(), json.dumps(base_due)]
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise SegmentWorkersFailed(f"segment {state.segment} of fine-tune {state.run_id!r}: the {processes} fused "
                                   f"processes failed (exit code {code}); the first error is recorded in the store "
                                   "and their log is above")


class SegmentWorkersFailed(RuntimeError):
    """A fused segment's worker processes failed; the workers recorded the cause."""


def worker_main(store_uri: str, state_json: str, base_due: str) -> None:
    """One of the fused segment's processes under torchrun."""
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    PartialState(cpu=not torch.cuda.is_available())  # torchrun's group as the update's accelerate sees it
    processes = Processes(dist.get_rank(), dist.get_world_size(), dist.new_group(backend="gloo"))
    state = seg.RoundState.from_json(state_json, source="fused segment state")
    train_segment(open_store(store_uri), state, json.loads(base_due), processes=processes,
                  on_step=lambda stage, r, shard: print(f"[rank {processes.rank}] {step_label(stage, r, shard)}",
                                                        flush=True))
    dist.barrier()


if __name__ == "__main__":
    worker_main(*sys.argv[1:4])
