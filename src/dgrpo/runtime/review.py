"""After each evaluation: record the best adapter so far and apply the guard rails (`dgrpo.runtime.chain`).

Apart from `dgrpo.runtime.segment` so that a segment's light tasks (open, plan, begin, finish) do not import the
evaluate stage and its models: a task is a process (a pod on a cluster), and its imports are part of its cost.
"""

from dgrpo.config import GuardRails
from dgrpo.metrics import IMAGE_MONITORS
from dgrpo.runs import keys
from dgrpo.runs.commits import read_commit
from dgrpo.runs.evaluations import evaluations, event_keys, read_event_at, write_best
from dgrpo.runs.records import BestRecord, EvalRecord
from dgrpo.runs.segments import write_stop
from dgrpo.runtime import chain, report
from dgrpo.runtime.segment import RoundState
from dgrpo.stages.evaluate import run_evaluate
from dgrpo.stages.shared.context import StageContext, StageResult
from dgrpo.store import ArtifactRef


def evaluate(ctx: StageContext, state: RoundState, after_update: bool, adapter: ArtifactRef | None = None,
             optimizer_state: ArtifactRef | None = None) -> StageResult:
    """Evaluate the policy after `state`'s round (or, before any training, the base model), then review."""
    if after_update:
        result = run_evaluate(ctx, evaluated_round(state, after_update), adapter, optimizer_state)
    else:
        result = run_evaluate(ctx, evaluated_round(state, after_update), state.adapter, state.optimizer_state)
    review_evaluations(ctx)
    return result


def evaluated_round(state: RoundState, after_update: bool) -> int:
    """The round number of the evaluation `evaluate` records: rounds completed when it runs."""
    return state.round + 1 if after_update else state.round


def review_evaluations(ctx: StageContext) -> chain.Stop | None:
    """Record the best adapter so far, and a stop record when a guard rail fires."""
    rules, evals = ctx.config.pipeline.guard_rails, evaluations(ctx.store, ctx.run_id)
    best = chain.best_evaluation(rules, evals)
    if best is not None:
        commit = read_commit(ctx.store, ctx.run_id, best.round - 1) if best.round > 0 else None
        write_best(ctx.store, ctx.run_id, BestRecord(
            metric=rules.best_metric, mode=rules.best_mode, value=best.metrics[rules.best_metric],
            round=best.round, adapter=commit.adapter if commit else None,
            optimizer_state=commit.optimizer_state if commit else None,
            ema=ctx.config.eval.use_ema and ctx.config.train.ema_decay > 0, at=keys.now()))
    stop = chain.check_guard_rails(rules, evals, _training_rewards(ctx, rules, evals),
                                   _training_monitors(ctx, rules, evals))
    if stop is not None:
        write_stop(ctx.store, ctx.run_id, stop.record(at=keys.now()))
    return stop


def _training_rewards(ctx: StageContext, rules: GuardRails, evals: list[EvalRecord]) -> dict[int, float]:
    """Mean training reward of the rounds the hacking rule's window spans (only those events are read)."""
    if rules.hacking_evaluations is None or len(evals) <= rules.hacking_evaluations:
        return {}
    first = evals[-(rules.hacking_evaluations + 1)].round
    found = [k for k in event_keys(ctx.store, ctx.run_id)
             if keys.event_stage(k) == "reward" and keys.event_round(k) >= first]
    return report.round_means([read_event_at(ctx.store, k) for k in found])


def _training_monitors(ctx: StageContext, rules: GuardRails, evals: list[EvalRecord]) -> dict[int, dict[str, float]]:
    """The reward stage's image monitors of the rounds since the previous evaluation, each a sample-weighted mean
    over a sharded round's shards; read only when a monitor rule is set."""
    if not (rules.monitor_max or rules.monitor_min) or len(evals) < 2:
        return {}
    found = [read_event_at(ctx.store, k) for k in event_keys(ctx.store, ctx.run_id)
             if keys.event_stage(k) == "reward" and keys.event_round(k) >= evals[-2].round]
    return report.round_metric_means(found, {*IMAGE_MONITORS, *rules.monitor_max, *rules.monitor_min})
