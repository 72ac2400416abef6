"""`dgrpo verify RUN`: every object of a run checked against its lineage, before anyone trusts or ships it.

The run's records (commits, stage events, evaluations, the report) name its artifacts; from each, the lineage graph
leads to everything it was made from. Every object reached is read and hashed, and every lineage record must parse
and describe its own object. Bytes are not enough: a result is trusted for how it was made, so verify also checks
provenance. The commits run without a gap from the fine-tune's first round (0, or the round after the one it was
branched from), and every round a segment recorded as done has its commit; each commit extends the previous one.
Each lineage input is the artifact of the round and stage its record implies, by the records' own round and stage
(`expected_source`): the update of round r trains from the adapter of the update of round r-1 on the rollouts of
round r, an evaluation after r rounds evaluates round r-1's adapter, and so on. A problem names the record holding
the input (a dangling input included). A corrupt object is named with both hashes; an identical rerun of the stage
that wrote it heals it (`ArtifactStore.put` rewrites an object that fails its hash). An object `dgrpo gc` deleted
and recorded (`dgrpo.runtime.pruned`) is listed as pruned, not missing; its lineage record is still checked.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from dgrpo.runs import keys, lineage
from dgrpo.runs.archive import read_raw, run_record_keys
from dgrpo.runs.keys import after_round, lineage_key, shown
from dgrpo.runtime.pruned import PrunedObject, pruned_index
from dgrpo.store import ArtifactRef, ArtifactStore, StoreError

_SAME_ROUND = {"rollouts": "rollout", "prune_decisions": "rollout", "rewards": "reward", "scores": "cluster"}
"""Inputs made earlier in the same round, by the stage that makes them."""
_PREVIOUS_ROUND = {"adapter": "update", "optimizer_state": "update", "ema_state": "update"}
"""Inputs carried from the update of the round before: what round r starts from (the evaluation numbered r, taken
after r rounds, evaluates the update of round r-1 as well)."""
_NO_ROUND = {"base_model": "base_model", "config": "config"}
_ROUNDLESS_BYTES = {"eval_grid"}
"""Kinds whose bytes do not hold their round (an evaluation grid is pixels only): a model that did not change draws
the same grid, and its content-addressed lineage record names the evaluation that drew it first."""


@dataclass
class Verification:
    run_id: str
    objects: int = 0
    """Objects of the store read and hashed."""
    records: int = 0
    """Lineage records read."""
    external: int = 0
    """Artifacts recorded by location and hash only (the base weights): not in the store, not checked."""
    problems: list[str] = field(default_factory=list)
    pruned: list[PrunedObject] = field(default_factory=list)
    """Objects the run's records lead to that `dgrpo gc` deleted (and recorded): not there, and not a problem."""

    def summary(self) -> str:
        what = (f"run {self.run_id}: {self.objects} objects and {self.records} lineage records checked"
                + (f", {self.external} external artifacts (base weights) not in the store" if self.external else "")
                + (f", {len(self.pruned)} objects pruned by gc" if self.pruned else ""))
        return f"ok: {what}" if not self.problems else f"{what}: {len(self.problems)} problems"


def pruned_lines(result: Verification) -> list[str]:
    """The objects gc deleted, one line per gc pass: how many, their kinds and rounds, and when."""
    passes: dict[str, list[PrunedObject]] = {}
    for obj in result.pruned:
        passes.setdefault(obj.pruned_at, []).append(obj)
    lines = []
    for _, objs in sorted(passes.items()):
        rounds = sorted({o.round for o in objs})
        span = f"round {shown(rounds[0])}" if len(rounds) == 1 else f"rounds {shown(rounds[0])}-{shown(rounds[-1])}"
        lines.append(f"{len(objs)} objects ({', '.join(sorted({o.kind for o in objs}))}) of {span}: "
                     f"{objs[0].describe()}")
    return lines


def refs_in(data: Any) -> list[ArtifactRef]:
    """The artifact references anywhere inside a run record: dicts with kind, uri, sha256 and size."""
    if isinstance(data, dict):
        if {"kind", "uri", "sha256", "size"} <= data.keys() and isinstance(data["sha256"], str):
            try:
                return [ArtifactRef(kind=str(data["kind"]), uri=str(data["uri"]), sha256=data["sha256"],
                                    size=int(data["size"]))]
            except (TypeError, ValueError):
                return []
        return [r for v in data.values() for r in refs_in(v)]
    if isinstance(data, list):
        return [r for v in data for r in refs_in(v)]
    return []


def describe(rec: lineage.LineageRecord) -> str:
    """A lineage record as a problem names it: its key, and what it says made its artifact."""
    made = rec.stage + (f" round {shown(rec.round)}" if rec.round is not None else "")
    return f"lineage record {lineage_key(rec.sha256)} ({rec.kind} of {made})"


def verify_run(store: ArtifactStore, run_id: str) -> Verification:
    """Check every object and lineage record the run's records lead to, their provenance, and the chain of its
    commits."""
    found = run_record_keys(store, run_id)
    if not found:
        raise StoreError(f"run {run_id!r}: no records under {keys.run_key(run_id, '')} in {store.uri}")
    out = Verification(run_id)
    pruned = pruned_index(store)
    roots: dict[str, ArtifactRef] = {}
    named_by: dict[str, str] = {}
    """Who names each artifact first: a run record's key, or a lineage record and its input's name."""
    run_records: dict[str, Any] = {}
    for key in found:
        try:
            data = read_raw(store, key)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            out.problems.append(f"{key}: corrupt, not JSON ({exc})")
            continue
        run_records[key] = data
        for ref in refs_in(data):
            roots.setdefault(ref.sha256, ref)
            named_by.setdefault(ref.sha256, f"run record {key}")
    records: dict[str, lineage.LineageRecord | None] = {}
    todo = list(roots)
    while todo:
        sha = todo.pop()
        if sha in records:
            continue
        try:
            rec = lineage.read_record(store, sha)
        except StoreError as exc:
            out.problems.append(f"{exc}; named by {named_by[sha]}")
            records[sha] = None
            continue
        records[sha] = rec
        out.records += 1
        for name, input_sha in sorted(rec.inputs.items()):
            named_by.setdefault(input_sha, f"input '{name}' of {describe(rec)}")
            if input_sha not in records:
                todo.append(input_sha)
        if not lineage.in_store(rec):
            out.external += 1
            continue
        ref = roots.get(sha) or ArtifactRef(kind=rec.kind, uri=rec.uri, sha256=sha, size=0)
        problem = store.check_object(ref)
        if problem is not None and sha in pruned and not store.exists(store.key_of(ref)):
            out.pruned.append(pruned[sha])
            continue
        out.objects += 1
        if problem is not None:
            out.problems.append(f"{problem}; named by {named_by[sha]}")
    known = {sha: rec for sha, rec in records.items() if rec is not None}
    out.problems += _input_problems(known)
    out.problems += _run_record_problems(run_records, known)
    commits = {key: data for key, data in run_records.items()
               if keys.commit_round_of(key) is not None and isinstance(data, dict)}
    out.problems += _commit_chain_problems(commits, known, run_id)
    out.problems += _gap_problems(commits, run_records, run_id)
    return out


def expected_source(name: str, round_index: int) -> tuple[str, int | None] | None:
    """The (stage, round) whose artifact the input `name` of a record of round `round_index` must be; None when
    dgrpo's stages do not name that input (a swapped stage's own: only checked not to come from a later round)."""
    base = name.split("[")[0]  # rollouts[0], rollouts[1]: the shards of one table
    if base in _SAME_ROUND:
        return _SAME_ROUND[base], round_index
    if base in _PREVIOUS_ROUND:
        return _PREVIOUS_ROUND[base], round_index - 1
    if base in _NO_ROUND:
        return _NO_ROUND[base], None
    return None


def _input_problems(records: dict[str, lineage.LineageRecord]) -> list[str]:
    """Each input of each record is of the kind the record says, and of the stage and round its own round implies."""
    problems = []
    for rec in sorted(records.values(), key=lambda r: (r.round if r.round is not None else -1, r.stage, r.sha256)):
        for name, sha in sorted(rec.inputs.items()):
            source = records.get(sha)
            if source is None:
                continue  # dangling: reported with the record that names it
            made = f"{source.kind} of {source.stage}" + (f" round {_round(source.round)}" if source.round is not None
                                                         else "")
            where = f"{describe(rec)}: input '{name}' {sha[:12]} is the {made}"
            kind = rec.input_kinds.get(name)
            if kind is not None and kind != source.kind:
                problems.append(f"{where}, not the {kind} the record says")
                continue
            if rec.round is None:
                if source.round is not None:
                    problems.append(f"{where}: a record of no round cannot come from a round")
                continue
            expected = expected_source(name, rec.round)
            if expected is None:
                if source.round is not None and source.round > rec.round:
                    problems.append(f"{where}, a later round")
            elif (source.stage, source.round) != expected:
                stage, round_index = expected
                problems.append(f"{where}, not the artifact of the {stage}"
                                + (f" of round {shown(round_index)}" if round_index is not None else ""))
    return problems


def _round(index: object) -> object:
    """A round index from a record as shown (`keys.shown`); anything else, as it is."""
    return shown(index) if isinstance(index, int) else index


def _run_record_problems(run_records: dict[str, Any], records: dict[str, lineage.LineageRecord]) -> list[str]:
    """A stage event's outputs were written by that stage in that round, as its lineage records say."""
    problems = []
    for key, data in run_records.items():
        if not keys.is_event_key(key) or not isinstance(data, dict) or not isinstance(data.get("outputs"), dict):
            continue
        for name, ref in sorted(data["outputs"].items()):
            rec = records.get(ref.get("sha256")) if isinstance(ref, dict) else None
            if rec is None or (rec.kind in _ROUNDLESS_BYTES and rec.stage == data.get("stage")):
                continue
            if (rec.stage, rec.round) != (data.get("stage"), data.get("round")):
                problems.append(f"{key}: its output '{name}' {rec.sha256[:12]} was written by {rec.stage} round "
                                f"{_round(rec.round)}, not by the {data.get('stage')} of round "
                                f"{_round(data.get('round'))}")
    return problems


def _commit_chain_problems(commits: dict[str, dict], records: dict, run_id: str) -> list[str]:
    """Each commit is of this run, and its adapter was trained from the previous commit's adapter."""
    problems = []
    previous: dict | None = None
    for key, commit in sorted(commits.items()):
        try:
            adapter = commit["adapter"]["sha256"]
            round_index = int(commit["round"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{key}: not a commit record")
            continue
        if commit.get("run_id") != run_id:
            problems.append(f"{key}: commit of run {commit.get('run_id')!r}, found under run {run_id!r}")
        if keys.commit_round_of(key) != round_index:
            problems.append(f"{key}: holds the commit of round {shown(round_index)}")
        rec = records.get(adapter)
        state = records.get((commit.get("optimizer_state") or {}).get("sha256"))
        if rec is not None and (rec.stage != "update" or rec.round != round_index):
            problems.append(f"{key}: its adapter {adapter[:12]} was written by {rec.stage} round {shown(rec.round)}, "
                            f"not by the update of round {shown(round_index)}")
        elif state is not None and (state.stage != "update" or state.round != round_index):
            problems.append(f"{key}: its optimizer state {state.sha256[:12]} was written by {state.stage} round "
                            f"{shown(state.round)}, not by the update of round {shown(round_index)}")
        if previous is not None and rec is not None and int(previous["round"]) == round_index - 1:
            trained_from = rec.inputs.get("adapter")
            if trained_from != previous["adapter"]["sha256"]:
                problems.append(f"{key}: round {shown(round_index)}'s adapter was trained from "
                                f"{(trained_from or 'no adapter')[:12]}, not from round {shown(round_index - 1)}'s "
                                f"committed adapter {previous['adapter']['sha256'][:12]}")
        previous = commit
    return problems


def _gap_problems(commits: dict[str, dict], run_records: dict[str, Any], run_id: str) -> list[str]:
    """Commits run without a gap from the fine-tune's first round, up to every round a segment recorded as done.

    A commit record deleted from the middle leaves a gap; one deleted from the end is missed by the segment that
    committed it (its `start_round` + `progress`) or by an evaluation taken after it."""
    claim = run_records.get(keys.claim_key(run_id))
    base = claim.get("base") if isinstance(claim, dict) else None
    first = int(base["round"]) + 1 if isinstance(base, dict) and "round" in base else 0
    committed = {r for key in commits if (r := keys.commit_round_of(key)) is not None}
    done: dict[int, str] = {}
    """The rounds that other records say were committed, with the record that says so."""
    for key, data in sorted(run_records.items()):
        if not isinstance(data, dict):
            continue
        if (keys.is_segment_key(key) and data.get("finished_at") and isinstance(data.get("progress"), int)
                and isinstance(data.get("start_round"), int)):
            for r in range(int(data["start_round"]), int(data["start_round"]) + data["progress"]):
                done.setdefault(r, f"{key} (segment {data.get('segment')}, {data['progress']} rounds from round "
                                   f"{shown(data['start_round'])})")
        elif keys.is_eval_key(key) and isinstance(data.get("round"), int) and data["round"] > 0:
            done.setdefault(data["round"] - 1, f"{key} (the evaluation {after_round(data['round'])})")
    last = max(committed | set(done), default=first - 1)
    problems = []
    for r in range(first, last + 1):
        if r not in committed:
            why = (f"{done[r]} says it was committed" if r in done else
                   f"round {shown(last)} is {'committed' if last in committed else 'done'}")
            problems.append(f"{keys.commits_prefix(run_id)}: no commit record of round {shown(r)} (commits run "
                            f"without a gap from round {shown(first)}); {why}")
    problems += [f"{keys.commit_key(run_id, r)}: round {shown(r)} is before the fine-tune's first round "
                 f"{shown(first)}"
                 for r in sorted(committed) if r < first]
    return problems
