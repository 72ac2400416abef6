"""The training plan: which stage runs when over a whole fine-tune, and what one segment (KFP run) executes.

Both engines run the same rounds, segment by segment (`dgrpo.runtime.segment`); the stages of a round, their
order and which of them fan out over shards come from the stage table (`dgrpo.contracts.stages`). The tasks of a
compiled segment, derived here from the same table, feed the size model of its Argo Workflow
(`dgrpo.runtime.workflow_size`): the compiler refuses a segment whose estimate exceeds half of Argo's limit.
"""

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from dgrpo.config import ConfigError, RunConfig
from dgrpo.contracts.stages import ROUND_STAGES, stage_spec
from dgrpo.runtime.rounds import ROUND
from dgrpo.runtime.workflow_size import WORKFLOW_BUDGET_BYTES, Segment, SizeModel, Task, size_model


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


SEGMENT_TASKS = ("open_segment", "plan_segment", "finish_segment")
"""Tasks of a staged segment outside its rounds (finish_segment is the exit task)."""
FUSED_TASKS = ("open_segment", "train_segment", "finish_segment")
"""Every task of a fused segment, whatever its rounds: train_segment runs them, evaluations included."""


def round_tasks(config: RunConfig) -> list[Task]:
    """The container tasks of one staged round's body, without its evaluation, from the round shape
    (`dgrpo.runtime.rounds.ROUND`, which the pipeline factory builds from too): begin_round, then each step (per
    shard when sharded), a swapped stage as an export task per table it reads, the team's component and an import
    task per table it writes. A step reads every shard of a sharded step's table (`dsl.Collected`) when it is not
    sharded itself."""
    shards = config.pipeline.shards
    swaps = config.pipeline.swaps()
    tasks = [Task("begin_round", None, plain_inputs=1, parameters=3)]
    per_shard: dict[str, bool] = {}  # table written earlier in the round -> written per shard
    for step in ROUND:
        name = step.stage
        per_port = {port: shards if per_shard[port] and not step.sharded else 1 for port in step.inputs}
        published = sum(per_port.values())
        if name in swaps:
            tasks += [Task(f"export_{port}", None, step.sharded, published_inputs=n, plain_inputs=1, parameters=3)
                      for port, n in per_port.items()]
            tasks.append(Task(f"{name}_custom", name, step.sharded, plain_inputs=len(per_port),
                              outputs=len(step.outputs), parameters=3))
            tasks += [Task(f"import_{port}", None, step.sharded, published_inputs=published,
                           plain_inputs=2, parameters=4) for port in step.outputs]
        else:
            tasks.append(Task(name, name, step.sharded, published_inputs=published, plain_inputs=1,
                              outputs=len(stage_spec(name).writes) + 1, parameters=5 if step.sharded else 3))
        per_shard |= {port: step.sharded for port in step.outputs}
    return tasks


def evaluation_task() -> Task:
    """The evaluation task: it reads the round's state and the update's adapter and optimizer state."""
    spec = stage_spec("evaluate")
    return Task("evaluate", "evaluate", published_inputs=2, plain_inputs=1, outputs=len(spec.writes) + 2,
                parameters=4)


def segment_shape(config: RunConfig) -> Segment:
    """The tasks of a segment of `config`'s execution."""
    light = [Task(name, None, plain_inputs=int(name != "open_segment"), parameters=4) for name in SEGMENT_TASKS]
    if config.pipeline.execution == "fused":
        return Segment(tuple(Task(name, "fused" if name == "train_segment" else None, plain_inputs=1, parameters=4)
                             for name in FUSED_TASKS), (), None)
    return Segment(tuple(light), tuple(round_tasks(config)), evaluation_task())


def tasks_per_round(config: RunConfig) -> int:
    """Tasks one staged round executes, without its evaluation (0 under fused execution)."""
    if config.pipeline.execution == "fused":
        return 0
    return sum(config.pipeline.shards if t.per_shard else 1 for t in round_tasks(config))


def _segment_rounds(config: RunConfig, start: int) -> tuple[range, int]:
    """The rounds of a segment starting at `start`, and the evaluations it runs (the base model's in the first)."""
    rounds = range(start, min(start + config.pipeline.rounds_per_run, config.rounds))
    evals = set(config.eval_rounds())
    return rounds, int(start == 0 and 0 in evals) + sum(r + 1 in evals for r in rounds)


def segment_tasks(config: RunConfig, start: int) -> int:
    """Tasks a segment starting at round `start` executes: its own, its rounds', and its evaluations (the base
    model's in the first segment). A fused segment is its own tasks whatever its rounds."""
    if config.pipeline.execution == "fused":
        return len(FUSED_TASKS)
    rounds, evaluations = _segment_rounds(config, start)
    return len(SEGMENT_TASKS) + len(rounds) * tasks_per_round(config) + evaluations


def max_tasks_per_run(config: RunConfig) -> int:
    """The most tasks any segment of the fine-tune executes, over every round a segment may start at (a retried
    segment starts at the last committed round, not at a multiple of rounds_per_run)."""
    return max(segment_tasks(config, start) for start in range(config.rounds))


def workflow_bytes(config: RunConfig, model: SizeModel | None = None) -> int:
    """The estimated Workflow size of the fine-tune's largest segment (`dgrpo.runtime.workflow_size`), over every
    round a segment may start at."""
    model = model or size_model(config, segment_shape(config))
    if config.pipeline.execution == "fused":
        return model.workflow_bytes(0, 0)
    return max(model.workflow_bytes(len(r), e) for r, e in (_segment_rounds(config, s) for s in range(config.rounds)))


def check_run_size(config: RunConfig) -> None:
    """ConfigError naming pipeline.rounds_per_run when a segment's estimated Argo Workflow exceeds
    WORKFLOW_BUDGET_BYTES (half of Argo's 1 MiB), with the largest rounds_per_run that fits."""
    model = size_model(config, segment_shape(config))
    most = workflow_bytes(config, model)
    if most <= WORKFLOW_BUDGET_BYTES:
        return

    def with_rounds(n: int) -> RunConfig:
        return dataclasses.replace(config, pipeline=dataclasses.replace(config.pipeline, rounds_per_run=n))

    fits = next((n for n in range(config.pipeline.rounds_per_run - 1, 0, -1)
                 if workflow_bytes(with_rounds(n), model) <= WORKFLOW_BUDGET_BYTES), 0)
    raise ConfigError(
        f"config field 'pipeline.rounds_per_run': a segment of {config.pipeline.rounds_per_run} rounds at "
        f"{config.pipeline.shards} shards makes an Argo Workflow of about {most / 1024:.0f} KiB, over the "
        f"{WORKFLOW_BUDGET_BYTES // 1024} KiB budget (half of Argo's 1 MiB; docs/kubernetes.md \"Workflow size\"); "
        + (f"use at most {fits}" if fits else "use fewer shards")
        + (" or pipeline.execution: fused" if not config.pipeline.swaps() else ""))
