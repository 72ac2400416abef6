"""Lineage records: which stage, config, code, image, inputs and seeds produced an artifact.

A record is written beside every object (`lineage/<sha256>.json`) and names its inputs by hash, so the chain
from a LoRA adapter back to the base checkpoint and the config can be walked in any store.
"""

import datetime
import functools
import json
import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dgrpo.runs.keys import lineage_key
from dgrpo.store import ArtifactRef, ArtifactStore, StoreError
from dgrpo.store.base import OBJECT_KEY


@dataclass
class Provenance:
    """What a stage knows about the artifacts it is about to write."""

    stage: str
    run_id: str
    config_sha256: str
    round: int | None = None
    inputs: dict[str, ArtifactRef] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)
    image: str | None = None
    """Image of the producing component when it is not this process's own (a swapped-in stage)."""
    deployment_sha256: str | None = None
    """The run's deployment settings (pods, shards, segments, execution-only fields) as a stored object; kept apart
    from `config_sha256`, the recipe hash, so a result's identity does not depend on where it was computed."""
    shard: int | None = None
    """Which of the round's `shards` prompt shards the artifact holds (rollout, reward); None when unsharded. The
    merge of a sharded table orders its parts by it (`stages.shared.shards.shard_of`)."""
    shards: int | None = None


@dataclass
class LineageRecord:
    sha256: str
    kind: str
    uri: str
    stage: str
    run_id: str
    config_sha256: str
    round: int | None
    code_version: str
    image: str | None
    inputs: dict[str, str]
    input_kinds: dict[str, str]
    seeds: dict[str, int]
    created_at: str
    deployment_sha256: str | None = None
    shard: int | None = None
    """None in a record written before the field: its shard, if any, is `seeds["shard"]`."""
    shards: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LineageRecord":
        if not isinstance(data, dict):
            raise TypeError(f"expected a mapping, got {type(data).__name__}")
        return cls(**data)


@functools.cache
def code_version() -> str:
    """The package version plus the git revision when run from a checkout (DGRPO_CODE_VERSION overrides)."""
    from dgrpo import __version__

    if os.environ.get("DGRPO_CODE_VERSION"):
        return os.environ["DGRPO_CODE_VERSION"]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5).stdout
        return f"{__version__}+g{rev}{'.dirty' if dirty.strip() else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def record(store: ArtifactStore, ref: ArtifactRef, prov: Provenance) -> LineageRecord:
    """Write the lineage record of `ref`, produced under `prov`."""
    rec = LineageRecord(
        sha256=ref.sha256, kind=ref.kind, uri=ref.uri, stage=prov.stage, run_id=prov.run_id,
        config_sha256=prov.config_sha256, round=prov.round, code_version=code_version(),
        image=prov.image or os.environ.get("DGRPO_IMAGE"),
        inputs={name: r.sha256 for name, r in prov.inputs.items()},
        input_kinds={name: r.kind for name, r in prov.inputs.items()},
        seeds=dict(prov.seeds),
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        deployment_sha256=prov.deployment_sha256, shard=prov.shard, shards=prov.shards,
    )
    if _intact_record(store, ref.sha256) is None:  # absent, or unreadable: (re)write it
        store.put_json(lineage_key(ref.sha256), asdict(rec))
    return rec


def _intact_record(store: ArtifactStore, sha256: str) -> LineageRecord | None:
    """The stored record of `sha256` if it is there and whole; None if absent or corrupt (then it is rewritten)."""
    try:
        return read_record(store, sha256)
    except StoreError:
        return None


def read_record(store: ArtifactStore, sha256: str) -> LineageRecord:
    """The lineage record of artifact `sha256`; StoreError if it is missing, unreadable or names another object."""
    key = lineage_key(sha256)
    try:
        data = store.get_json(key)
    except FileNotFoundError as exc:
        raise StoreError(f"no lineage record for artifact {sha256} in {store.uri}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"lineage record {key} in {store.uri}: corrupt, not JSON ({exc})") from exc
    try:
        rec = LineageRecord.from_dict(data)
    except TypeError as exc:
        raise StoreError(f"lineage record {key} in {store.uri}: corrupt, not a lineage record ({exc})") from exc
    if rec.sha256 != sha256:
        raise StoreError(f"lineage record {key} in {store.uri}: corrupt, it describes artifact {rec.sha256}")
    return rec


def object_problem(store: ArtifactStore, rec: LineageRecord) -> str | None:
    """What is wrong with the object `rec` describes (missing, corrupt), None if intact or not kept in the store
    (the base weights are recorded by location and hash only)."""
    if not in_store(rec):
        return None
    return store.check_object(ArtifactRef(kind=rec.kind, uri=rec.uri, sha256=rec.sha256, size=0))


def in_store(rec: LineageRecord) -> bool:
    """Whether the artifact is an object of a dgrpo store (not an external location such as the base weights)."""
    return re.search(r"/" + OBJECT_KEY.pattern + "$", rec.uri) is not None


def chain(store: ArtifactStore, sha256: str) -> list[tuple[int, str, LineageRecord]]:
    """Depth-first walk of the lineage graph: (depth, input name, record), each artifact once."""
    seen: set[str] = set()
    out: list[tuple[int, str, LineageRecord]] = []

    def visit(sha: str, name: str, depth: int) -> None:
        rec = read_record(store, sha)
        out.append((depth, name, rec))
        if sha in seen:
            return
        seen.add(sha)
        for input_name, input_sha in sorted(rec.inputs.items()):
            visit(input_sha, input_name, depth + 1)

    visit(sha256, "", 0)
    return out


def chain_problems(store: ArtifactStore, entries: list[tuple[int, str, LineageRecord]]) -> dict[str, str]:
    """The corrupt or missing objects along a chain, by sha256: a chain is only as good as its objects."""
    problems = {}
    for _, _, rec in entries:
        if rec.sha256 not in problems and (problem := object_problem(store, rec)) is not None:
            problems[rec.sha256] = problem
    return problems


def format_chain(entries: list[tuple[int, str, LineageRecord]], problems: dict[str, str] | None = None) -> str:
    """The chain as an indented tree; an object listed in `problems` is flagged on its line."""
    seen: set[str] = set()
    lines = []
    problems = problems or {}
    for depth, name, rec in entries:
        label = f"{name}: " if name else ""
        where = f" round {rec.round + 1}" if rec.round is not None else ""  # shown from 1
        repeat = " (see above)" if rec.sha256 in seen and rec.inputs else ""
        lines.append(f"{'  ' * depth}{label}{rec.kind} {rec.sha256[:12]} <- {rec.stage}{where}"
                     f" config {rec.config_sha256[:12]} code {rec.code_version}{repeat}"
                     + (f"  !! {problems[rec.sha256]}" if rec.sha256 in problems else ""))
        if depth == 0 or not rec.inputs:
            lines.append(f"{'  ' * depth}  uri {rec.uri}")
        seen.add(rec.sha256)
    return "\n".join(lines)
