"""Committed rounds, so a fine-tune continues across pipeline runs (a KFP run is bounded to its unrolled rounds).

The update stage commits each round after its adapter and optimizer state are stored: one JSON marker per round,
`runs/<run_id>/commits/r<round>.json`, written atomically by the store. A run started with `resume_from` begins
after the last committed round of that run, with its LoRA adapter and optimizer state. Every seed derives from
(config.seed, round), so the round counter is the whole RNG state: a resumed run samples exactly what an
uninterrupted run would have.
"""

import datetime
import json
from dataclasses import dataclass

from dgrpo.stages.shared.context import StageContext
from dgrpo.store import ArtifactRef, StoreError

MATCHING = ("model", "lora", "seed")
"""Config fields a resumed run must share with the run it continues: the adapter and the seeds depend on them."""


class ResumeError(RuntimeError):
    """A run cannot start or continue as asked; the message names the run and the field."""


@dataclass(frozen=True)
class StartPoint:
    """Where a pipeline run begins: the first round to train and the state carried into it."""

    round: int
    adapter: ArtifactRef | None = None
    optimizer_state: ArtifactRef | None = None
    resumed_from: str = ""

    def to_json(self) -> str:
        return json.dumps({"round": self.round, "adapter": _ref_dict(self.adapter),
                           "optimizer_state": _ref_dict(self.optimizer_state), "resumed_from": self.resumed_from})

    @classmethod
    def from_json(cls, text: str, source: str = "start point") -> "StartPoint":
        try:
            data = json.loads(text)
            return cls(int(data["round"]), _ref(data["adapter"]), _ref(data["optimizer_state"]), data["resumed_from"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{source}: not a dgrpo start point ({exc})") from exc


def _ref_dict(ref: ArtifactRef | None) -> dict | None:
    return None if ref is None else json.loads(ref.to_json())


def _ref(data: dict | None) -> ArtifactRef | None:
    return None if data is None else ArtifactRef(**data)


def commit_key(run_id: str, round_index: int) -> str:
    return f"runs/{run_id}/commits/r{round_index:06d}.json"


def commit_round(ctx: StageContext, round_index: int, adapter: ArtifactRef, optimizer_state: ArtifactRef) -> None:
    """Mark `round_index` of the run as committed: its adapter and optimizer state are durable in the store."""
    cfg = ctx.config.to_dict()
    ctx.store.put_json(commit_key(ctx.run_id, round_index), {
        "run_id": ctx.run_id, "round": round_index, "adapter": json.loads(adapter.to_json()),
        "optimizer_state": json.loads(optimizer_state.to_json()), "config_sha256": ctx.config.sha256(),
        **{k: cfg[k] for k in MATCHING},
        "committed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")})


def last_commit(ctx: StageContext, run_id: str) -> dict | None:
    keys = ctx.store.list(f"runs/{run_id}/commits")
    return ctx.store.get_json(keys[-1]) if keys else None


def start_point(ctx: StageContext, resume_from: str = "") -> StartPoint:
    """The start of a run: round 0, or the round after the last committed round of `resume_from`.

    A run that continues itself (resume_from == run_id, as a recurring run does) starts at round 0 while it has
    no committed round; resuming another run requires one. A fresh run must not reuse a run id that has commits.
    """
    if not resume_from:
        if (done := last_commit(ctx, ctx.run_id)) is not None:
            raise ResumeError(f"run {ctx.run_id} already has committed rounds up to {done['round']} in "
                              f"{ctx.store.uri}: resume it (resume_from={ctx.run_id}) or choose another run id")
        return StartPoint(0)
    commit = last_commit(ctx, resume_from)
    if commit is None:
        if resume_from == ctx.run_id:
            return StartPoint(0, resumed_from=resume_from)
        raise ResumeError(f"resume_from {resume_from!r}: no committed round under runs/{resume_from}/commits in "
                          f"{ctx.store.uri}")
    if resume_from != ctx.run_id and (own := last_commit(ctx, ctx.run_id)) is not None:
        raise ResumeError(f"run {ctx.run_id} already has committed rounds up to {own['round']}: a run resuming "
                          f"{resume_from!r} needs a new run id")
    cfg = ctx.config.to_dict()
    for key in MATCHING:
        if commit[key] != cfg[key]:
            raise ResumeError(f"resume_from {resume_from!r}: config field '{key}' differs from the run being resumed "
                              f"({cfg[key]!r} here, {commit[key]!r} there)")
    return StartPoint(commit["round"] + 1, ArtifactRef(**commit["adapter"]), ArtifactRef(**commit["optimizer_state"]),
                      resume_from)
