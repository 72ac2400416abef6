"""The training plan: which stage runs when, the one description both engines run.

The in-process engine (`dgrpo.runtime.engine`) walks it task by task; the Kubeflow pipeline factory builds the same
sequence of tasks. The stages of a round, their order and which of them fan out over shards come from the stage
table (`dgrpo.contracts.stages`).
"""

from collections.abc import Iterator
from dataclasses import dataclass

from dgrpo.config import RunConfig
from dgrpo.contracts.stages import ROUND_STAGES, stage_spec


@dataclass(frozen=True)
class PlannedTask:
    stage: str
    """A stage of the stage table."""
    round: int
    """Training round for the round's stages; completed rounds (0 = base model) for evaluate.

    Counted from the run's start: a run resuming after round R adds R + 1 (`dgrpo.stages.shared.commits`)."""
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
