"""`dgrpo verify RUN`: every object of a run checked against its lineage, before anyone trusts or ships it.

The run's records (commits, stage events, evaluations, the report) name its artifacts; from each, the lineage graph
leads to everything it was made from. Every object reached is read and hashed, every lineage record must parse and
describe its own object, and each commit must extend the previous one (its adapter was trained from the previous
round's). A corrupt object is named with both hashes; an identical rerun of the stage that wrote it heals it
(`ArtifactStore.put` rewrites an object that fails its hash).
"""

import json
from dataclasses import dataclass, field
from typing import Any

from dgrpo import lineage
from dgrpo.store import ArtifactRef, ArtifactStore, StoreError


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

    def summary(self) -> str:
        what = (f"run {self.run_id}: {self.objects} objects and {self.records} lineage records checked"
                + (f", {self.external} external artifacts (base weights) not in the store" if self.external else ""))
        return f"ok: {what}" if not self.problems else f"{what}: {len(self.problems)} problems"


def _refs_in(data: Any) -> list[ArtifactRef]:
    """The artifact references anywhere inside a run record: dicts with kind, uri, sha256 and size."""
    if isinstance(data, dict):
        if {"kind", "uri", "sha256", "size"} <= data.keys() and isinstance(data["sha256"], str):
            try:
                return [ArtifactRef(kind=str(data["kind"]), uri=str(data["uri"]), sha256=data["sha256"],
                                    size=int(data["size"]))]
            except (TypeError, ValueError):
                return []
        return [r for v in data.values() for r in _refs_in(v)]
    if isinstance(data, list):
        return [r for v in data for r in _refs_in(v)]
    return []


def verify_run(store: ArtifactStore, run_id: str) -> Verification:
    """Check every object and lineage record the run's records lead to, and the chain of its commits."""
    keys = [k for k in store.list(f"runs/{run_id}") if k.endswith(".json")]
    if not keys:
        raise StoreError(f"run {run_id!r}: no records under runs/{run_id}/ in {store.uri}")
    out = Verification(run_id)
    roots: dict[str, ArtifactRef] = {}
    commits: list[dict] = []
    for key in keys:
        try:
            data = store.get_json(key)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            out.problems.append(f"{key}: corrupt, not JSON ({exc})")
            continue
        for ref in _refs_in(data):
            roots.setdefault(ref.sha256, ref)
        if "/commits/" in key and isinstance(data, dict):
            commits.append(data | {"_key": key})
    records: dict[str, lineage.LineageRecord] = {}
    todo = list(roots)
    while todo:
        sha = todo.pop()
        if sha in records:
            continue
        try:
            rec = lineage.read_record(store, sha)
        except StoreError as exc:
            out.problems.append(str(exc))
            records[sha] = None  # type: ignore[assignment]
            continue
        records[sha] = rec
        out.records += 1
        todo.extend(s for s in rec.inputs.values() if s not in records)
        if not lineage.in_store(rec):
            out.external += 1
            continue
        ref = roots.get(sha) or ArtifactRef(kind=rec.kind, uri=rec.uri, sha256=sha, size=0)
        out.objects += 1
        if (problem := store.check_object(ref)) is not None:
            out.problems.append(problem)
    out.problems += _commit_chain_problems(commits, records, run_id)
    return out


def _commit_chain_problems(commits: list[dict], records: dict, run_id: str) -> list[str]:
    """Each commit is of this run, and its adapter was trained from the previous commit's adapter."""
    problems = []
    previous: dict | None = None
    for commit in sorted(commits, key=lambda c: c["_key"]):
        key = commit["_key"]
        try:
            adapter = commit["adapter"]["sha256"]
            round_index = int(commit["round"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{key}: not a commit record")
            continue
        if commit.get("run_id") != run_id:
            problems.append(f"{key}: commit of run {commit.get('run_id')!r}, found under run {run_id!r}")
        rec = records.get(adapter)
        if rec is not None and (rec.stage != "update" or rec.round != round_index):
            problems.append(f"{key}: its adapter {adapter[:12]} was written by {rec.stage} round {rec.round}, "
                            f"not by the update of round {round_index}")
        if previous is not None and rec is not None and int(previous["round"]) == round_index - 1:
            trained_from = rec.inputs.get("adapter")
            if trained_from != previous["adapter"]["sha256"]:
                problems.append(f"{key}: round {round_index}'s adapter was trained from "
                                f"{(trained_from or 'no adapter')[:12]}, not from round {round_index - 1}'s "
                                f"committed adapter {previous['adapter']['sha256'][:12]}")
        previous = commit
    return problems
