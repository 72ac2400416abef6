"""What each stage reads and writes: the interface a swapped-in component must honour.

Tables are Parquet files valid against a versioned contract (`dgrpo.contracts`), including the contract name and
version in the file's schema metadata. `dgrpo contract show <stage>` prints this; `dgrpo contract check` applies it.
"""

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from dgrpo import contracts
from dgrpo.contracts import CONTRACT_KEY, Contract, ContractError


@dataclass(frozen=True)
class Port:
    name: str
    """Input or output name, as a swapped-in component must name it."""
    kind: str
    """A contract name (a Parquet table) or an artifact kind (safetensors, PNG)."""
    note: str = ""


@dataclass(frozen=True)
class StageInterface:
    stage: str
    summary: str
    reads: tuple[Port, ...]
    writes: tuple[Port, ...]
    swappable: bool = False


SWAP_PARAMETERS = ("round_index", "shard_index", "shard_count", "config_json")
"""Parameters passed to a swapped-in component when it declares them: the absolute round is not known at compile
time, so `round_index` is the round within the pipeline run."""

STAGES: dict[str, StageInterface] = {s.stage: s for s in (
    StageInterface("rollout", "Sample G SDE trajectories per prompt of the round's shard.",
                   (Port("adapter", "lora_adapter", "safetensors, peft key names; absent before round 0"),),
                   (Port("rollouts", "rollouts"),)),
    StageInterface("reward", "Score every rollout image (one task per shard).",
                   (Port("rollouts", "rollouts", "one shard; reads sample_id, group_id, prompt, image_png"),),
                   (Port("rewards", "rewards", "exactly the input's sample ids"),), swappable=True),
    StageInterface("cluster", "Turn quality rewards into final rewards (the DiverseGRPO slot).",
                   (Port("rollouts", "rollouts", "all shards of the round, merged"),
                    Port("rewards", "rewards", "all shards of the round, merged")),
                   (Port("scores", "scores", "exactly the rollouts' sample ids"),), swappable=True),
    StageInterface("update", "One GRPO round: group-normalised advantages, clipped loss, LoRA step.",
                   (Port("rollouts", "rollouts", "all shards, in shard order"), Port("scores", "scores"),
                    Port("adapter", "lora_adapter", "safetensors; absent before round 0"),
                    Port("optimizer_state", "optimizer_state", "safetensors; absent before round 0")),
                   (Port("adapter", "lora_adapter"), Port("optimizer_state", "optimizer_state"),
                    Port("metrics", "update_metrics"))),
    StageInterface("evaluate", "Deterministic sampling on held-out prompts and seeds.",
                   (Port("adapter", "lora_adapter", "absent for the base model"),),
                   (Port("samples", "eval_samples"), Port("grid", "eval_grid", "PNG"))),
)}


def table_ports(stage: str) -> list[Port]:
    s = STAGES[stage]
    return [p for p in (*s.reads, *s.writes) if p.kind in contracts.CONTRACTS]


def describe_stage(stage: str) -> str:
    s = STAGES[stage]
    lines = [f"stage {s.stage}: {s.summary}" + (" Swappable (pipeline.stages." + s.stage + ")." if s.swappable
                                                 else "")]
    for title, ports in (("reads", s.reads), ("writes", s.writes)):
        lines.append(f"  {title}:")
        for p in ports:
            what = f"Parquet, contract {p.kind} v{contracts.CONTRACTS[p.kind].version}" \
                if p.kind in contracts.CONTRACTS else p.kind
            lines.append(f"    {p.name:<16} {what}" + (f"  ({p.note})" if p.note else ""))
    if s.swappable:
        lines.append(f"  a swapped-in component may also declare the parameters {', '.join(SWAP_PARAMETERS)}")
        lines.append(f"  tables carry the schema metadata {CONTRACT_KEY.decode()}=<name> and "
                     f"{contracts.VERSION_KEY.decode()}=<version>")
    seen = set()
    for p in table_ports(stage):
        if p.kind not in seen:
            seen.add(p.kind)
            lines += ["", contracts.describe(contracts.CONTRACTS[p.kind])]
    return "\n".join(lines)


def check_table(data: bytes, target: str, source: str) -> tuple[Contract, pa.Table]:
    """Validate Parquet bytes against contract `target`, or against the contract among stage `target`'s tables
    that the file declares. Raises ContractError naming the file and the column."""
    if target in contracts.CONTRACTS:
        allowed = [contracts.CONTRACTS[target]]
    elif target in STAGES:
        allowed = [contracts.CONTRACTS[p.kind] for p in table_ports(target)]
    else:
        raise ContractError(f"unknown stage or contract {target!r} (stages: {', '.join(STAGES)}; contracts: "
                            f"{', '.join(contracts.CONTRACTS)})")
    try:
        declared = (pq.read_schema(io.BytesIO(data)).metadata or {}).get(CONTRACT_KEY, b"").decode()
    except pa.ArrowInvalid as exc:
        raise ContractError(f"{source}: not a readable Parquet file: {exc}") from exc
    contract = next((c for c in allowed if c.name == declared), allowed[0] if len(allowed) == 1 else None)
    if contract is None:
        raise ContractError(f"{source}: declares contract {declared or '<none>'!r}; stage {target} reads and writes "
                            f"{', '.join(c.name for c in allowed)}")
    return contract, contracts.from_parquet_bytes(data, contract, source)
