"""The chain's decisions, as pure functions: what follows a segment, and when the evaluations say stop.

A fine-tune of many rounds runs as a chain of segments (one KFP run each, `pipeline.rounds_per_run` rounds at
most). After each segment `decide` says what comes next: the next segment, a retry of a failed one from the last
committed round, or the end (done, stopped by a guard rail, failed too often). The exit task of a KFP run, the
local kfp.local driver and the in-process engine all call it, so the chain behaves the same everywhere.
`check_guard_rails` reads the evaluations and the training rewards and names the rule that fired, with its
numbers; `best_evaluation` picks the evaluation whose adapter is the best so far.
"""

from dataclasses import dataclass, field
from typing import Literal

from dgrpo.config import GuardRails
from dgrpo.runs.keys import after_round, shown
from dgrpo.runs.records import EvalRecord, StopRecord

Action = Literal["continue", "retry", "done", "stopped", "failed"]
CHAIN_STATE = {"continue": "running", "retry": "running", "done": "done", "stopped": "stopped", "failed": "failed"}
"""The fine-tune's state after each action, as `dgrpo status` shows it."""


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str

    @property
    def submits(self) -> bool:
        """Whether another segment follows."""
        return self.action in ("continue", "retry")

    @property
    def state(self) -> str:
        return CHAIN_STATE[self.action]


def decide(*, rounds_total: int, rounds_done: int, progress: int, succeeded: bool, failures_in_a_row: int,
           max_retries: int, stop: StopRecord | None = None, error: str = "", permanent: bool = False
           ) -> Decision:
    """What follows a segment that ended with `rounds_done` rounds committed (`progress` of them its own).

    `failures_in_a_row` counts this segment, if it failed, and the failed segments right before it that committed
    nothing; a guard-rail `stop` ends the chain whatever else happened. A `permanent` error (bad data or config,
    non-finite values: `segment.is_permanent`) is not retried, since the same inputs would fail the same way."""
    if stop is not None:
        return Decision("stopped", stop_label(stop.rule) + f": {stop.message}")
    if rounds_done >= rounds_total:
        return Decision("done", f"{rounds_done}/{rounds_total} rounds committed")
    if succeeded and progress > 0:
        return Decision("continue", f"{rounds_done}/{rounds_total} rounds committed; the next segment starts at "
                                    f"round {shown(rounds_done)}")
    why = error or "the segment committed no round"
    if permanent:
        return Decision("failed", f"segment failed ({why}); not retried: a retry from round {shown(rounds_done)} "
                                  "repeats this error")
    if failures_in_a_row <= max_retries:
        return Decision("retry", f"segment failed ({why}); retry {failures_in_a_row} of {max_retries} from round "
                                 f"{rounds_done}")
    return Decision("failed", f"{failures_in_a_row} segments in a row failed without committing a round "
                              f"(pipeline.max_retries {max_retries}); last error: {why}")


OPERATOR_STOPS = {"manual": "stopped by hand", "terminated": "terminated by an operator"}
"""Stop rules that are a person's, not a guard rail's: `dgrpo stop`, and a KFP run terminated (UI or --now)."""


def stop_label(rule: str) -> str:
    return OPERATOR_STOPS.get(rule, f"guard rail {rule}")


@dataclass(frozen=True)
class Stop:
    """A guard rail that fired: which rule, after which evaluation, and the numbers that made it fire."""

    rule: str
    round: int
    message: str
    values: dict = field(default_factory=dict)

    def record(self, at: str) -> StopRecord:
        return StopRecord(rule=self.rule, round=self.round, message=self.message, values=self.values, at=at)


def _metric(evaluation: EvalRecord, name: str, field_name: str) -> float:
    metrics = evaluation.metrics
    if name not in metrics:
        raise ValueError(f"config field 'pipeline.guard_rails.{field_name}': the evaluation after round "
                         f"{evaluation.round} has no metric {name!r} (it has: {', '.join(sorted(metrics))})")
    return float(metrics[name])


def check_guard_rails(rules: GuardRails, evaluations: list[EvalRecord], training_reward: dict[int, float],
                      monitors: dict[int, dict[str, float]] | None = None) -> Stop | None:
    """The first rule that fires on `evaluations` (in round order; the first one is the base of the drop rule),
    given the mean training reward of each round so far and the training rollouts' image monitors by round (those
    since the previous evaluation suffice); None when none does.

    Reward hacking pairs evaluation i (after round rho_i) with the training rewards of the rounds sampled since the
    previous evaluation, [rho_{i-1}, rho_i): the held-out metric must fall at each of the last
    `hacking_evaluations` evaluations while that training reward ends higher than where the window began."""
    if not evaluations or not rules.enabled():
        return None
    last = evaluations[-1]
    if rules.diversity_floor is not None or rules.diversity_max_drop is not None:
        value = _metric(last, rules.diversity_metric, "diversity_metric")
        if rules.diversity_floor is not None and value < rules.diversity_floor:
            return Stop("collapse-floor", last.round,
                        f"{rules.diversity_metric} {value:.4g} {after_round(last.round)} is below the floor "
                        f"{rules.diversity_floor:.4g}", {"metric": rules.diversity_metric, "value": value,
                                                         "floor": rules.diversity_floor})
        base = _metric(evaluations[0], rules.diversity_metric, "diversity_metric")
        if rules.diversity_max_drop is not None and value < base * (1 - rules.diversity_max_drop):
            return Stop("collapse-drop", last.round,
                        f"{rules.diversity_metric} fell from {base:.4g} ({after_round(evaluations[0].round)}) to "
                        f"{value:.4g} {after_round(last.round)}, by {1 - value / base:.1%} > the allowed "
                        f"{rules.diversity_max_drop:.1%}", {"metric": rules.diversity_metric, "base": base,
                                                            "value": value, "max_drop": rules.diversity_max_drop})
    if (rules.monitor_max or rules.monitor_min) and len(evaluations) > 1:
        stop = _degenerate_images(rules, evaluations[-2].round, last.round, monitors or {})
        if stop is not None:
            return stop
    n = rules.hacking_evaluations
    if n is not None and len(evaluations) > n:
        window = evaluations[-(n + 1):]
        held = [_metric(e, rules.heldout_metric, "heldout_metric") for e in window]
        spans = [[training_reward[r] for r in range(a.round, b.round) if r in training_reward]
                 for a, b in zip(window, window[1:], strict=False)]
        means = [sum(s) / len(s) if s else None for s in spans]
        falling = all(b < a for a, b in zip(held, held[1:], strict=False))
        if falling and means[0] is not None and means[-1] is not None and means[-1] > means[0]:
            return Stop("reward-hacking", last.round,
                        f"{rules.heldout_metric} fell at {n} evaluations in a row ("
                        + " -> ".join(f"{h:.4g}" for h in held) + f", after rounds {window[0].round}.."
                        f"{last.round}) while the training reward rose from {means[0]:.4g} to {means[-1]:.4g}",
                        {"metric": rules.heldout_metric, "rounds": [e.round for e in window], "heldout": held,
                         "training_reward": [means[0], means[-1]]})
    return None


def _degenerate_images(rules: GuardRails, since: int, until: int, monitors: dict[int, dict[str, float]]
                       ) -> Stop | None:
    """The monitor rule on the training rounds [since, until): each monitor's mean over them against its limit."""
    rounds = [monitors[r] for r in range(since, until) if r in monitors]
    if not rounds:
        return None
    for bound, limits in (("max", rules.monitor_max), ("min", rules.monitor_min)):
        for name, limit in limits.items():
            if any(name not in m for m in rounds):
                raise ValueError(f"config field 'pipeline.guard_rails.monitor_{bound}': the training rollouts have no "
                                 f"monitor {name!r} (they have: {', '.join(sorted(rounds[0]))})")
            mean = sum(m[name] for m in rounds) / len(rounds)
            if mean > limit if bound == "max" else mean < limit:
                return Stop("degenerate-images", until,
                            f"the training rollouts' {name} averaged {mean:.4g} over rounds {shown(since)}..{until}, "
                            f"{'above the limit' if bound == 'max' else 'below the floor'} {limit:.4g}",
                            {"monitor": name, "value": mean, bound: limit, "rounds": [since + 1, until]})
    return None


def best_evaluation(rules: GuardRails, evaluations: list[EvalRecord]) -> EvalRecord | None:
    """The evaluation with the best `best_metric` (the earliest on a tie), or None before any evaluation."""
    if not evaluations:
        return None
    sign = 1.0 if rules.best_mode == "max" else -1.0
    return max(evaluations, key=lambda e: (sign * _metric(e, rules.best_metric, "best_metric"), -e.round))
