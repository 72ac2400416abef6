"""The boundary to a swapped-in stage: plain Parquet files in and out, validated and stored with lineage.

Our stages pass references into the content-addressed store; a team's component reads and writes ordinary Parquet
files instead. `export_table` materialises a (merged) table for it; `import_table` validates what it wrote
against the stage's contract and stores it, with a lineage record naming the component's image.
"""

from pathlib import Path

import pyarrow.compute as pc

from dgrpo import artifacts, contracts
from dgrpo.files import atomic_write_bytes
from dgrpo.runs import lineage
from dgrpo.stages.shared.context import StageContext, StageResult, emit_event
from dgrpo.stages.shared.shards import as_list, read_merged, recorded_shard
from dgrpo.store import ArtifactRef

SUMMARY_COLUMN = {"rewards": "reward", "scores": "final_reward"}


def export_table(ctx: StageContext, refs: ArtifactRef | list[ArtifactRef], contract: str, path: str) -> int:
    """Write the table (shards merged in shard order) as a contract-valid Parquet file at `path`; returns rows.
    The file's mode follows the umask (`dgrpo.files`): the team's container may run as another user."""
    table = read_merged(ctx.store, refs, contracts.CONTRACTS[contract])
    atomic_write_bytes(path, contracts.to_parquet_bytes(table, contracts.CONTRACTS[contract], f"export of {contract}"))
    return table.num_rows


def import_table(ctx: StageContext, round_index: int, stage: str, contract: str, path: str,
                 inputs: dict[str, ArtifactRef | list[ArtifactRef]], image: str) -> StageResult:
    """Validate the Parquet file a swapped-in `stage` wrote, store it and record its lineage and event."""
    spec = contracts.CONTRACTS[contract]
    source = f"{stage} output '{contract}' ({image}) at {path}"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise contracts.ContractError(f"{source}: cannot read: {exc}") from exc
    table = contracts.from_parquet_bytes(data, spec, source)
    if "rollouts" in inputs:
        samples = read_merged(ctx.store, inputs["rollouts"], contracts.ROLLOUTS)
        contracts.check_sample_keys(samples.select(list(contracts.SAMPLE_KEY_COLUMNS)), table, "its input rollouts",
                                    source)
    named: dict[str, ArtifactRef] = {}
    for name, refs in inputs.items():
        refs = as_list(refs)
        named |= {name: refs[0]} if len(refs) == 1 else {f"{name}[{i}]": r for i, r in enumerate(refs)}
    first = lineage.read_record(ctx.store, next(iter(named.values())).sha256)
    shard, shards = recorded_shard(first) if len(named) == 1 else (None, None)
    prov = ctx.provenance(stage, round_index, named, shard=shard, shards=shards)
    prov.image = image
    ref = artifacts.write_table(ctx.store, table, spec, prov)
    metrics = {"samples": float(table.num_rows)}
    if contract in SUMMARY_COLUMN:
        metrics[f"{SUMMARY_COLUMN[contract]}_mean"] = float(pc.mean(table.column(SUMMARY_COLUMN[contract])).as_py())
    result = StageResult({contract: ref}, metrics)
    emit_event(ctx, stage, round_index, result, shard)
    return result
