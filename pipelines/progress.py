"""The terminal progress display of a fine-tune: one rich.progress task across all its rounds and segments.

Fed by two things only, so it does not care how the rounds are orchestrated (one pipeline run, a chain of
segments, the in-process engine): the run's stage events (`dgrpo.stages.shared.context.emit_event`) and the
number of rounds done and in total. Progress is counted in rounds: a round is done when its update commits it,
and the stage events of the round in flight fill in the fraction, so the bar never passes its total after a resume
(it starts at the rounds already done) and the ETA is that of the rounds left.
"""

import re
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dgrpo.config import RunConfig
from dgrpo.runtime.plan import training_plan
from dgrpo.runtime.report.summary import evaluation_label

SHOWN = ("reward_mean", "policy_loss", "approx_kl", "ratio_std", "reward", "vendi", "mode_entropy")
"""Metrics printed on a stage's line, where the stage reports them."""

PIPELINE_ORDER = ("evaluate", "rollout", "reward", "cluster", "update")
"""The stages of a round in the order they run; an evaluation of round r (r rounds done) precedes round r's rollout."""

IN_ROUND_CAP = 0.95
"""The share of a round its stage events may fill in: the round counts as done only when its update commits."""


class FineTuneProgress:
    """One progress task for the whole fine-tune: current round and stage, rounds done, elapsed time and ETA.

    `stages_per_round` is how many stage events one round emits (sharded stages once per shard; evaluations
    excluded): with it a round's events move the bar inside the round. Use as a context manager.
    """

    def __init__(self, done_rounds: int, total_rounds: int, stages_per_round: int, console: Console | None = None,
                 get_time: Callable[[], float] | None = None, log_stages: bool = True):
        if not 0 <= done_rounds <= total_rounds:
            raise ValueError(f"progress: {done_rounds} rounds done of {total_rounds}: expected 0 <= done <= total")
        self.done, self.total, self.per_round = done_rounds, total_rounds, max(stages_per_round, 1)
        self.in_round: dict[int, int] = {}
        self.stage, self.round = "starting", done_rounds
        self.log_stages = log_stages
        # ETA from the whole run's pace, not the last 30 s (rich's default): a round takes minutes
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[rounds]}"),
            TaskProgressColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, get_time=get_time or time.monotonic, speed_estimate_period=24 * 3600.0,
            redirect_stdout=False, redirect_stderr=False)
        self.task = self.progress.add_task(self._description(), total=float(total_rounds),
                                           completed=float(done_rounds), rounds=self._rounds())

    def __enter__(self) -> "FineTuneProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def set_rounds(self, done: int, total: int) -> None:
        """The fine-tune's rounds done (committed) and in total, e.g. when a new segment starts."""
        if not 0 <= done <= total:
            raise ValueError(f"progress: {done} rounds done of {total}: expected 0 <= done <= total")
        self.done, self.total = max(self.done, done), total
        self._refresh()

    def on_event(self, event: dict) -> None:
        """A finished stage (or stage shard) of the run."""
        stage, r = event["stage"], int(event["round"])
        if stage == "update":
            self.done = min(max(self.done, r + 1), self.total)
        elif stage != "evaluate" and r >= self.done:
            self.in_round[r] = self.in_round.get(r, 0) + 1
        self.stage, self.round = stage, r
        if self.log_stages:
            shown = "  ".join(f"{k} {event['metrics'][k]:.4g}" for k in SHOWN if k in event.get("metrics", {}))
            shard = f" shard {event['shard']}" if "shard" in event else ""
            # one numbering: the k-th training round is "round k" (events count from 0), an evaluation is named by
            # the rounds done before it ("base" for none)
            where = f"{evaluation_label(r):<10}" if stage == "evaluate" else f"round {r + 1:>4}"
            self.progress.console.print(f"{where} {stage:<9}{shard:<9} {shown}", highlight=False)
        self._refresh()

    def _completed(self) -> float:
        partial = self.in_round.get(self.done, 0) / self.per_round
        return min(self.done + min(partial, IN_ROUND_CAP), float(self.total))

    def _rounds(self) -> str:
        return f"{self.done}/{self.total} rounds"

    def _description(self) -> str:
        if self.stage == "evaluate":
            return f"evaluate {evaluation_label(self.round)}"
        current = min(self.done + 1, self.total)
        return f"round {current}/{self.total} {self.stage}"

    def _refresh(self) -> None:
        self.progress.update(self.task, completed=self._completed(), total=float(self.total),
                             description=self._description(), rounds=self._rounds())

    @property
    def completed(self) -> float:
        return self.progress.tasks[0].completed

    @property
    def time_remaining(self) -> float | None:
        return self.progress.tasks[0].time_remaining


def stages_per_round(config: RunConfig) -> int:
    """Stage events one training round emits: one per shard of a sharded stage, one per other stage."""
    return sum(t.shards for t in training_plan(config) if t.round == 0 and t.stage != "evaluate")


EVENT_KEY = re.compile(r"r(?P<round>\d+)-(?P<stage>[a-z_]+?)(?:-s(?P<shard>\d+))?\.json$")


def pipeline_order(key: str) -> tuple:
    """Sort key of an event record's store key (`r0003-reward-s001.json`): by round, then stage in the order the
    pipeline runs them (not the keys' alphabetical order, which puts cluster before rollout), then shard. A key of
    another form sorts last, by name."""
    match = EVENT_KEY.match(key.rsplit("/", 1)[-1])
    if match is None or match["stage"] not in PIPELINE_ORDER:
        return (1, 0, 0, 0, key)
    return (0, int(match["round"]), PIPELINE_ORDER.index(match["stage"]), int(match["shard"] or 0), key)
