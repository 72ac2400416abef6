"""The typed records of a fine-tune, one class per kind, each with `to_json`/`from_json` (`dgrpo.runs.record`).

Field names are the JSON keys stores already hold; optional fields that older code wrote only sometimes default to
None and are omitted while None.
"""

from dataclasses import dataclass, field
from typing import Any

from dgrpo.runs.record import Record
from dgrpo.store import ArtifactRef


@dataclass(kw_only=True)
class Base(Record):
    """Where a fine-tune branched from another starts: that one's commit of `round`."""

    REFS = ("adapter", "optimizer_state")
    run_id: str
    round: int
    adapter: ArtifactRef | None
    optimizer_state: ArtifactRef | None


@dataclass(kw_only=True)
class Claim(Record):
    """The one record that makes a run id a fine-tune (created once, atomically): its recipe and starting point."""

    OMITTED_WHEN_NONE = ("adopted", "replaces")
    run_id: str
    claim: str
    claimed_at: str
    recipe_sha256: str
    config_sha256: str
    base: dict | None = None
    resumed_from: str = ""
    adopted: bool | None = None
    """Claimed late for a fine-tune that committed before claims existed."""
    replaces: str | None = None
    """The claim id of a failed start whose records were set aside."""

    @property
    def base_commit(self) -> Base | None:
        return None if self.base is None else Base.from_json(self.base)


@dataclass(kw_only=True)
class Lease(Record):
    """The segment (one KFP run) that trains the fine-tune now."""

    holder: str
    acquired_at: str
    segment: int = 0
    kfp_run_id: str = ""
    start_round: int = 0


@dataclass(kw_only=True)
class LeaseBreak(Record):
    """Who released someone else's lease, and why."""

    lease: dict
    by: str
    reason: str
    at: str

    @property
    def broken(self) -> Lease:
        return Lease.from_json(self.lease)


@dataclass(kw_only=True)
class Commit(Record):
    """A committed round: the adapter and optimizer state the next round trains from."""

    REFS = ("adapter", "optimizer_state")
    run_id: str
    round: int
    adapter: ArtifactRef
    optimizer_state: ArtifactRef | None
    parent: str | None = None
    """sha256 of the adapter the round trained from."""
    recipe_sha256: str | None = None
    lease: str | None = None
    committed_at: str = ""


@dataclass(kw_only=True)
class Decision(Record):
    action: str
    reason: str


@dataclass(kw_only=True)
class SegmentRecord(Record):
    """One segment: its planned rounds while running, and how it ended once its exit step ran."""

    OMITTED_WHEN_NONE = ("finished_at", "progress", "error", "kfp_final_state", "decision", "next_kfp_run_id")
    segment: int
    rounds: list[int]
    kfp_run_id: str = ""
    holder: str = ""
    start_round: int = 0
    config_sha256: str = ""
    started_at: str = ""
    state: str = "running"
    finished_at: str | None = None
    progress: int | None = None
    error: str | None = None
    kfp_final_state: str | None = None
    decision: dict | None = None
    next_kfp_run_id: str | None = None

    @property
    def ended(self) -> Decision | None:
        return None if self.decision is None else Decision.from_json(self.decision)


@dataclass(kw_only=True)
class StatusRecord(Record):
    """The chain's state after its latest segment (or the failed submission of the next)."""

    state: str
    action: str = ""
    reason: str = ""
    segment: int = 0
    rounds_done: int = 0
    rounds_total: int = 0
    at: str = ""


@dataclass(kw_only=True)
class ChainRecord(Record):
    """How the chain runs: the config, the mode (local, kfp, schedule) and the KFP connection."""

    run_id: str
    config_sha256: str
    recipe_sha256: str
    rounds: int
    rounds_per_run: int
    mode: str
    kfp: dict | None
    updated_at: str

    @property
    def scheduled(self) -> bool:
        """Whether recurring runs drive or watch the chain (`dgrpo schedule`)."""
        return self.mode == "schedule" or bool((self.kfp or {}).get("watchdog_cron"))


@dataclass(kw_only=True)
class DriverRecord(Record):
    """The local driver process of a chain run on this machine."""

    host: str
    pid: int
    started_at: str


@dataclass(kw_only=True)
class ErrorRecord(Record):
    """A failed task's error, one line, redacted."""

    task: str
    segment: int | None
    round: int | None
    error: str
    permanent: bool = False
    at: str = ""


@dataclass(kw_only=True)
class StopRecord(Record):
    """A guard rail that fired, or an operator's stop: the chain trains no further round until resumed."""

    rule: str
    round: int
    message: str
    values: dict[str, Any] = field(default_factory=dict)
    at: str = ""


@dataclass(kw_only=True)
class BestRecord(Record):
    """The best evaluation so far by the guard rails' metric, and the adapter it scored."""

    REFS = ("adapter", "optimizer_state")
    metric: str
    mode: str
    value: float
    round: int
    adapter: ArtifactRef | None
    optimizer_state: ArtifactRef | None
    ema: bool
    at: str


@dataclass(kw_only=True)
class EvalRecord(Record):
    """One evaluation, after `round` completed rounds: metrics, per-prompt rows, the reward and the grid."""

    REFS = ("grid",)
    round: int
    metrics: dict[str, float]
    per_prompt: list[dict] = field(default_factory=list)
    reward: Any = None
    grid: ArtifactRef | None = None
    grid_columns: int | None = None
    eval_seed: int | None = None


@dataclass(kw_only=True)
class Event(Record):
    """A finished stage (or stage shard): its metrics and output references, for progress and the reports."""

    OMITTED_WHEN_NONE = ("shard",)
    stage: str
    round: int
    metrics: dict[str, float]
    outputs: dict[str, dict]
    finished_at: str = ""
    shard: int | None = None

    def output(self, name: str) -> ArtifactRef | None:
        ref = self.outputs.get(name)
        return None if ref is None else ArtifactRef(**ref)


@dataclass(kw_only=True)
class PrunedEntry(Record):
    """One object a gc pass deleted, as its record lists it."""

    sha256: str
    kind: str
    size: int
    round: int
    key: str


@dataclass(kw_only=True)
class Pruned(Record):
    """One gc pass: the objects it deleted (listed before the first delete) and the policy it applied."""

    run_id: str
    pruned_at: str
    by: str
    policy: dict
    objects: list[dict]

    @property
    def pruned(self) -> list[PrunedEntry]:
        return [PrunedEntry.from_json(o) for o in self.objects]
