"""`dgrpo gc RUN`: delete what a fine-tune's retention policy (`retention.keep_rounds`) lets go.

A round's rollouts carry every trajectory's latents, so the store grows by them every round (docs/storage.md). What
gc may delete is a short allow-list, `PRUNABLE_KINDS`, of the outputs stage events name for rounds older than the
last `keep_rounds` committed ones. Everything else stays: committed adapters (and EMA adapters), the optimizer
state of the commits in the window (the last one is what a resume needs), evaluations (samples, grids), rewards
tables (the report's training curve reads every round's), configs, lineage records and every run record. Objects
are content-addressed and so shared between fine-tunes: an object is deleted only if no run in the store keeps it,
each run under its own policy (a run whose policy cannot be read keeps everything it names). Each pass records what
it deletes before deleting it (`dgrpo.runtime.pruned`), so `verify` and `lineage` report those objects as pruned.
"""

from dataclasses import dataclass, field

from dgrpo.runs import keys
from dgrpo.runs.archive import known_runs, read_raw, run_record_keys
from dgrpo.runs.commits import last_commit
from dgrpo.runs.ownership import read_claim
from dgrpo.runs.segments import read_chain
from dgrpo.runtime.pruned import write_record
from dgrpo.runtime.verify import refs_in
from dgrpo.stages.shared.run_config import load_config
from dgrpo.store import ArtifactRef, ArtifactStore, StoreError

PRUNABLE_KINDS = frozenset({"rollouts", "prune_decisions", "scores", "update_metrics", "optimizer_state"})
"""What a round's training leaves that nothing reads once later rounds are committed: the rollout, cluster and
update tables, and optimizer states other than the ones a resume or a branch starts from. Rewards tables are not
here: the report's training curve reads every round's (a few KB a round)."""


@dataclass
class RunRetention:
    """What one run's records name, split by its policy into what it keeps and what it lets go."""

    run_id: str
    keep_rounds: int | None
    first_kept: int | None = None
    """The oldest round whose training outputs are kept; None when everything is (no policy, or no commit)."""
    kept: set[str] = field(default_factory=set)
    prunable: dict[str, tuple[ArtifactRef, int]] = field(default_factory=dict)
    """sha256 -> (reference, round) of the outputs the policy lets go."""


@dataclass
class GcPlan:
    """What one gc pass of a run deletes, and what it leaves because another kept artifact needs it."""

    run_id: str
    keep_rounds: int | None
    first_kept: int | None
    objects: list[dict] = field(default_factory=list)
    """The objects to delete: sha256, kind, size, round, key."""
    shared: int = 0
    """Objects the policy lets go that a kept artifact of this or another run still names."""
    absent: int = 0
    """Objects the policy lets go that are already gone (deleted by an earlier pass)."""

    @property
    def bytes(self) -> int:
        return sum(o["size"] for o in self.objects)

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "keep_rounds": self.keep_rounds, "first_kept_round": self.first_kept,
                "objects": len(self.objects), "bytes": self.bytes, "shared_kept": self.shared,
                "already_gone": self.absent, "pruned": self.objects}


def run_policy(store: ArtifactStore, run_id: str) -> int | None:
    """`retention.keep_rounds` of the config the run trains (its claim's, else its chain record's); None when it
    keeps everything or its config cannot be read."""
    record = read_claim(store, run_id) or read_chain(store, run_id)
    if record is None or not record.config_sha256:
        return None
    try:
        return load_config(store, record.config_sha256).retention.keep_rounds
    except (StoreError, ValueError):
        return None


def run_ids(store: ArtifactStore) -> list[str]:
    return known_runs(store)


def classify(store: ArtifactStore, run_id: str, keep_rounds: int | None) -> RunRetention:
    """Split what `run_id`'s records name into kept and prunable under `keep_rounds` (None: all kept)."""
    out = RunRetention(run_id, keep_rounds)
    last = last_commit(store, run_id)
    if keep_rounds is not None and last is not None:
        out.first_kept = last.round - keep_rounds + 1
    for key in run_record_keys(store, run_id):
        if key.startswith(keys.pruned_prefix(run_id) + "/"):
            continue
        try:
            data = read_raw(store, key)
        except ValueError as exc:  # a record gc cannot read may name anything: keep the store as it is
            raise StoreError(f"{key} in {store.uri}: corrupt, not JSON ({exc}); gc reads every run record") from exc
        _split(out, key, data)
    out.prunable = {sha: v for sha, v in out.prunable.items() if sha not in out.kept}
    return out


def _split(out: RunRetention, key: str, data: object) -> None:
    """Add what record `key` names to `out.kept`, or to `out.prunable` where it is an old round's prunable output."""
    old = (out.first_kept is not None and isinstance(data, dict) and isinstance(data.get("round"), int)
           and data["round"] < out.first_kept)
    if old and keys.is_event_key(key) and data.get("stage") != "evaluate":
        for ref in refs_in(data.get("outputs")):
            if ref.kind in PRUNABLE_KINDS:
                out.prunable.setdefault(ref.sha256, (ref, data["round"]))
            else:
                out.kept.add(ref.sha256)
        return
    # an old commit keeps its adapter, not its optimizer state
    keep_state = not (old and keys.commit_round_of(key) is not None)
    out.kept |= {ref.sha256 for ref in refs_in(data) if keep_state or ref.kind not in PRUNABLE_KINDS}


def plan_gc(store: ArtifactStore, run_id: str, keep_rounds: int | None = None) -> GcPlan:
    """What gc of `run_id` deletes under `keep_rounds` (default: the run's own policy): its prunable objects that
    no run in the store keeps and that are still there."""
    if not store.list(keys.run_key(run_id, "")):
        raise StoreError(f"run {run_id!r}: no records under runs/{run_id}/ in {store.uri}")
    keep_rounds = run_policy(store, run_id) if keep_rounds is None else keep_rounds
    target = classify(store, run_id, keep_rounds)
    kept = set(target.kept)
    for other in run_ids(store):
        if other != run_id:
            kept |= classify(store, other, run_policy(store, other)).kept
    plan = GcPlan(run_id, keep_rounds, target.first_kept)
    for sha, (ref, round_index) in sorted(target.prunable.items(), key=lambda kv: (kv[1][1], kv[0])):
        key = store.key_of(ref)
        if sha in kept:
            plan.shared += 1
        elif not store.exists(key):
            plan.absent += 1
        else:
            plan.objects.append({"sha256": sha, "kind": ref.kind, "size": ref.size, "round": round_index,
                                 "key": key})
    return plan


def collect(store: ArtifactStore, plan: GcPlan) -> str | None:
    """Record `plan`'s objects as pruned, then delete them; the record's key (None when there was nothing).
    Recording first means a pass killed half-way leaves every object either there or listed; the next pass
    deletes what is left."""
    if not plan.objects:
        return None
    key = write_record(store, plan.run_id, plan.objects, {"keep_rounds": plan.keep_rounds,
                                                          "first_kept_round": plan.first_kept})
    for obj in plan.objects:
        store.delete(obj["key"])
    return key


def format_plan(plan: GcPlan, dry_run: bool) -> str:
    """One paragraph: what the pass frees (or would), and what it keeps."""
    if plan.keep_rounds is None:
        return (f"run {plan.run_id}: retention keeps everything (retention.keep_rounds unset in its config; "
                "--keep-rounds N chooses a policy): nothing to delete")
    verb = "would delete" if dry_run else "deleted"
    window = (f"keeping rounds {plan.first_kept}+ (the last {plan.keep_rounds})" if plan.first_kept is not None
              else "no round committed yet, keeping everything")
    return (f"run {plan.run_id}: {verb} {len(plan.objects)} objects, {_size(plan.bytes)}, {window}; "
            f"{plan.shared} objects kept because a kept artifact names them, {plan.absent} already gone")


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} bytes"
    size = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1000
        if size < 1000 or unit == "TB":
            break
    return f"{size:.1f} {unit}"
