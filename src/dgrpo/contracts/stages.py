"""The stage table: the one list of pipeline stages, what each reads and writes, and how it runs.

Everything that needs the stages derives from `STAGES`: the per-stage config tables, the training plan of both
engines, the component images, `dgrpo contract show` and the compile-time check of a swapped-in component.
Tables are Parquet files valid against a versioned contract (`dgrpo.contracts.tables`), with the contract name
and version in the file's schema metadata.
"""

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from dgrpo.contracts.tables import (
    CONTRACT_KEY,
    CONTRACTS,
    VERSION_KEY,
    Contract,
    ContractError,
    check_unique_ids,
    describe,
    from_parquet_bytes,
)


@dataclass(frozen=True)
class Port:
    name: str
    """Input or output name, as a swapped-in component must name it."""
    kind: str
    """A contract name (a Parquet table) or an artifact kind (safetensors, PNG)."""
    note: str = ""


@dataclass(frozen=True)
class StageSpec:
    name: str
    summary: str
    reads: tuple[Port, ...]
    writes: tuple[Port, ...]
    per_round: bool = True
    """Part of every training round; evaluate runs on its own schedule instead."""
    sharded: bool = False
    """Fans out over prompt shards (pipeline.shards), one task per shard."""
    stochastic: bool = False
    """Has side effects beyond its outputs or draws fresh noise: KFP caching is off by default."""
    swappable: bool = False
    """Tables in, tables out: a team's component may replace it (pipeline.stages.<name>)."""


STAGES: tuple[StageSpec, ...] = (
    StageSpec("rollout", "Sample G SDE trajectories per prompt of the round's shard.",
              (Port("adapter", "lora_adapter", "safetensors, peft key names; absent before round 0"),),
              (Port("rollouts", "rollouts"),), sharded=True, stochastic=True),
    StageSpec("reward", "Score every rollout image (one task per shard).",
              (Port("rollouts", "rollouts", "one shard; reads sample_id, group_id, prompt, image_png"),),
              (Port("rewards", "rewards", "exactly the input's sample ids"),), sharded=True, swappable=True),
    StageSpec("cluster", "Turn quality rewards into final rewards (the DiverseGRPO slot).",
              (Port("rollouts", "rollouts", "all shards of the round, merged"),
               Port("rewards", "rewards", "all shards of the round, merged")),
              (Port("scores", "scores", "exactly the rollouts' sample ids"),), swappable=True),
    StageSpec("update", "One GRPO round: group-normalised advantages, clipped loss, LoRA step; commits the round.",
              (Port("rollouts", "rollouts", "all shards, in shard order"), Port("scores", "scores"),
               Port("adapter", "lora_adapter", "safetensors; absent before round 0"),
               Port("optimizer_state", "optimizer_state", "safetensors; absent before round 0")),
              (Port("adapter", "lora_adapter"), Port("optimizer_state", "optimizer_state"),
               Port("metrics", "update_metrics")), stochastic=True),
    StageSpec("evaluate", "Deterministic sampling on held-out prompts and seeds.",
              (Port("adapter", "lora_adapter", "absent for the base model"),),
              (Port("samples", "eval_samples"), Port("grid", "eval_grid", "PNG")), per_round=False),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
ROUND_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.per_round)
"""The stages of one training round, in order."""
SWAPPABLE_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.swappable)

SWAP_PARAMETERS = ("round_index", "shard_index", "shard_count")
"""Parameters passed to a swapped-in component when it declares them: the fine-tune's round, the shard and the
number of shards. (The config stays in the store: run parameters carry only its sha256.)"""


def stage_spec(name: str) -> StageSpec:
    for s in STAGES:
        if s.name == name:
            return s
    raise ValueError(f"unknown stage {name!r} (stages: {', '.join(STAGE_NAMES)})")


def table_ports(stage: str) -> list[Port]:
    s = stage_spec(stage)
    return [p for p in (*s.reads, *s.writes) if p.kind in CONTRACTS]


def describe_stage(stage: str) -> str:
    s = stage_spec(stage)
    lines = [f"stage {s.name}: {s.summary}" + (f" Swappable (pipeline.stages.{s.name})." if s.swappable else "")]
    for title, ports in (("reads", s.reads), ("writes", s.writes)):
        lines.append(f"  {title}:")
        for p in ports:
            what = f"Parquet, contract {p.kind} v{CONTRACTS[p.kind].version}" if p.kind in CONTRACTS else p.kind
            lines.append(f"    {p.name:<16} {what}" + (f"  ({p.note})" if p.note else ""))
    if s.swappable:
        lines.append(f"  a swapped-in component may also declare the parameters {', '.join(SWAP_PARAMETERS)}")
        lines.append(f"  tables carry the schema metadata {CONTRACT_KEY.decode()}=<name> and "
                     f"{VERSION_KEY.decode()}=<version>")
    seen = set()
    for p in table_ports(stage):
        if p.kind not in seen:
            seen.add(p.kind)
            lines += ["", describe(CONTRACTS[p.kind])]
    return "\n".join(lines)


def check_table(data: bytes, target: str, source: str) -> tuple[Contract, pa.Table]:
    """Validate Parquet bytes against contract `target`, or against the contract among stage `target`'s tables
    that the file declares. Raises ContractError naming the file and the column."""
    if target in CONTRACTS:
        allowed = [CONTRACTS[target]]
    elif target in STAGE_NAMES:
        allowed = [CONTRACTS[p.kind] for p in table_ports(target)]
    else:
        raise ContractError(f"unknown stage or contract {target!r} (stages: {', '.join(STAGE_NAMES)}; contracts: "
                            f"{', '.join(CONTRACTS)})")
    try:
        declared = (pq.read_schema(io.BytesIO(data)).metadata or {}).get(CONTRACT_KEY, b"").decode()
    except pa.ArrowInvalid as exc:
        raise ContractError(f"{source}: not a readable Parquet file: {exc}") from exc
    contract = next((c for c in allowed if c.name == declared), allowed[0] if len(allowed) == 1 else None)
    if contract is None:
        raise ContractError(f"{source}: declares contract {declared or '<none>'!r}; stage {target} reads and writes "
                            f"{', '.join(c.name for c in allowed)}")
    table = from_parquet_bytes(data, contract, source)
    check_unique_ids(table, source)
    return contract, table
