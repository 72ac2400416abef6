"""The training plan: which stage runs when over a whole fine-tune, and what one segment (KFP run) executes.

Both engines run the same rounds, segment by segment (`dgrpo.runtime.segment`); the stages of a round, their
order and which of them fan out over shards come from the stage table (`dgrpo.contracts.stages`). The task counts
here bound the size of a segment's Argo Workflow; the compiler refuses a segment over MAX_TASKS_PER_RUN.
"""

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from dgrpo.config import ConfigError, RunConfig
from dgrpo.contracts.stages import ROUND_STAGES, stage_spec


@dataclass(frozen=True)
class PlannedTask:
    stage: str
    """A stage of the stage table."""
    round: int
    """Training round for the round's stages; completed rounds (0 = base model) for evaluate."""
    shards: int = 1
    """Parallel tasks of the stage (prompt shards of the sharded stages)."""


def training_plan(config: RunConfig) -> Iterator[PlannedTask]:
    """Evaluate the base model, then per round each round stage in order, evaluating on schedule."""
    eval_after = set(config.eval_rounds())
    if 0 in eval_after:
        yield PlannedTask("evaluate", 0)
    for r in range(config.rounds):
        for stage in ROUND_STAGES:
            yield PlannedTask(stage, r, config.pipeline.shards if stage_spec(stage).sharded else 1)
        if r + 1 in eval_after:
            yield PlannedTask("evaluate", r + 1)


MAX_TASKS_PER_RUN = 400
"""Tasks one KFP run may execute. Argo keeps every executed task in its Workflow object (about 1.5 KB each,
compressed; docs/kubernetes.md "Workflow size"), which must stay under its 1 MiB limit and etcd's 1.5 MiB."""
SEGMENT_TASKS = 3
"""Tasks of a segment outside its rounds: open_segment, plan_segment and the exit task finish_segment."""


def tasks_per_round(config: RunConfig) -> int:
    """Tasks of one round's body in the compiled segment, without its evaluation: begin_round, then per shard
    rollout and reward (export, team component, import when swapped), cluster (2 exports, the component and the
    import when swapped) and update."""
    swaps = config.pipeline.swaps()
    reward = 3 if "reward" in swaps else 1
    cluster = 4 if "cluster" in swaps else 1
    return 1 + config.pipeline.shards * (1 + reward) + cluster + 1


def segment_tasks(config: RunConfig, start: int) -> int:
    """Tasks a segment starting at round `start` executes: its own, its rounds', and its evaluations (the base
    model's in the first segment)."""
    rounds = range(start, min(start + config.pipeline.rounds_per_run, config.rounds))
    evals = set(config.eval_rounds())
    return (SEGMENT_TASKS + int(start == 0 and 0 in evals) + len(rounds) * tasks_per_round(config)
            + sum(r + 1 in evals for r in rounds))


def max_tasks_per_run(config: RunConfig) -> int:
    """The most tasks any segment of the fine-tune executes, over every round a segment may start at (a retried
    segment starts at the last committed round, not at a multiple of rounds_per_run)."""
    return max(segment_tasks(config, start) for start in range(config.rounds))


def check_run_size(config: RunConfig) -> None:
    """ConfigError naming pipeline.rounds_per_run when a segment would execute more than MAX_TASKS_PER_RUN."""
    most = max_tasks_per_run(config)
    if most > MAX_TASKS_PER_RUN:
        fits = next((n for n in range(config.pipeline.rounds_per_run - 1, 0, -1) if max_tasks_per_run(
            dataclasses.replace(config, pipeline=dataclasses.replace(config.pipeline, rounds_per_run=n)))
            <= MAX_TASKS_PER_RUN), 0)
        raise ConfigError(f"config field 'pipeline.rounds_per_run': a segment of {config.pipeline.rounds_per_run} "
                          f"rounds executes up to {most} tasks, over the {MAX_TASKS_PER_RUN} one KFP run may hold "
                          f"({tasks_per_round(config)} per round at {config.pipeline.shards} shards, plus "
                          f"evaluations); use at most {fits}" + ("" if fits else " with fewer shards"))
