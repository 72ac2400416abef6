"""Prompt shards: how a round's groups split over parallel rollout and reward tasks, and how they merge back.

A shard holds whole prompt groups (contiguous prompt indices), and every sample keeps the id and seed it has in
an unsharded round, so a sharded round produces the same samples as an unsharded one.
"""

import numpy as np
import pyarrow as pa

from dgrpo import artifacts
from dgrpo.contracts import Contract, ContractError
from dgrpo.runs import lineage
from dgrpo.store import ArtifactRef, ArtifactStore


def shard_prompt_indices(n_prompts: int, shard: int, shards: int) -> list[int]:
    """The prompt indices of `shard` out of `shards`: contiguous, sizes differing by at most one."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard index {shard} is outside 0..{shards - 1}")
    if shards > n_prompts:
        raise ValueError(f"{shards} shards for {n_prompts} prompts: a shard must hold at least one prompt group")
    return contiguous_part(n_prompts, shard, shards)


def contiguous_part(n: int, part: int, parts: int) -> list[int]:
    """Part `part` of 0..n-1 cut into `parts` contiguous parts whose sizes differ by at most one (empty where
    parts > n: a rollout shard with no probe prompt)."""
    return [int(i) for i in np.array_split(np.arange(n), parts)[part]]


def as_list(refs: ArtifactRef | list[ArtifactRef]) -> list[ArtifactRef]:
    return list(refs) if isinstance(refs, list | tuple) else [refs]


def recorded_shard(rec: lineage.LineageRecord) -> tuple[int | None, int | None]:
    """(shard, shards) the producing stage recorded, (None, None) when unsharded. Records written before
    `Provenance.shard` existed carry them in `seeds`, and still read."""
    if rec.shard is not None:
        return rec.shard, rec.shards
    shard, shards = rec.seeds.get("shard"), rec.seeds.get("shards")
    return (None if shard is None else int(shard)), (None if shards is None else int(shards))


def shard_of(store: ArtifactStore, ref: ArtifactRef) -> int:
    """The shard index the producing stage recorded in the artifact's lineage (0 when unsharded)."""
    shard, _ = recorded_shard(lineage.read_record(store, ref.sha256))
    return shard or 0


def read_merged(store: ArtifactStore, refs: ArtifactRef | list[ArtifactRef], contract: Contract) -> pa.Table:
    """Read the shards of one table, in shard order, as one table.

    Raises ContractError naming the artifacts when a sample id repeats or a group is split between shards.
    """
    refs = as_list(refs)
    if len(refs) > 1:  # an unsharded table needs no lineage read
        refs.sort(key=lambda r: shard_of(store, r))
    if not refs:
        raise ContractError(f"no {contract.name} shards given")
    tables = [artifacts.read_table(store, r, contract) for r in refs]
    owner: dict[str, str] = {}
    for ref, table in zip(refs, tables, strict=True):
        for group in set(table.column("group_id").to_pylist()):
            if group in owner:
                raise ContractError(f"{contract.name} group '{group}' spans shards {owner[group]} and {ref.uri}")
            owner[group] = ref.uri
    merged = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    ids = merged.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise ContractError(f"{contract.name} shards repeat sample ids {dup} (column 'sample_id')")
    return merged


def uris(refs: ArtifactRef | list[ArtifactRef]) -> str:
    return ", ".join(r.uri for r in as_list(refs))


def named_inputs(name: str, refs: ArtifactRef | list[ArtifactRef]) -> dict[str, ArtifactRef]:
    """Lineage input names: 'rollouts' for one table, 'rollouts[i]' for the shards of one."""
    refs = as_list(refs)
    return {name: refs[0]} if len(refs) == 1 else {f"{name}[{i}]": r for i, r in enumerate(refs)}


def check_same_samples(left: pa.Table, right: pa.Table, left_name: str, right_name: str) -> None:
    a, b = set(left.column("sample_id").to_pylist()), set(right.column("sample_id").to_pylist())
    if a != b or len(a) != left.num_rows or len(b) != right.num_rows:
        missing, extra = sorted(a - b)[:3], sorted(b - a)[:3]
        raise ContractError(f"{right_name} does not match {left_name} sample for sample (column 'sample_id'): "
                            f"missing {missing}, unexpected {extra}, or duplicate ids")
