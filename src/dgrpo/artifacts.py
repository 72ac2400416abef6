"""Typed artifact I/O: contract-validated Parquet tables and safetensors blobs, each with its lineage."""

import json

import pyarrow as pa
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dgrpo import contracts
from dgrpo.contracts import Contract
from dgrpo.runs import lineage
from dgrpo.runs.lineage import Provenance
from dgrpo.store import ArtifactRef, ArtifactStore, StoreError


def write_table(store: ArtifactStore, table: pa.Table, contract: Contract, prov: Provenance) -> ArtifactRef:
    """Validate `table` against `contract` on write, store it as Parquet and record its lineage."""
    where = f" of round {prov.round + 1}" if prov.round is not None else ""  # shown from 1
    data = contracts.to_parquet_bytes(table, contract, f"{prov.stage} output '{contract.name}'{where}")
    ref = store.put(data, kind=contract.name, suffix=".parquet")
    lineage.record(store, ref, prov)
    return ref


def read_table(store: ArtifactStore, ref: ArtifactRef, contract: Contract) -> pa.Table:
    """Read a table and validate it against `contract` on read."""
    if ref.kind != contract.name:
        raise contracts.ContractError(f"artifact {ref.uri}: is a '{ref.kind}' artifact, expected '{contract.name}'")
    return contracts.from_parquet_bytes(store.get(ref), contract, f"artifact {ref.uri}")


def write_tensors(store: ArtifactStore, tensors: dict[str, torch.Tensor], kind: str, prov: Provenance,
                  metadata: dict[str, str] | None = None) -> ArtifactRef:
    data = tensors_to_bytes(tensors, metadata)
    ref = store.put(data, kind=kind, suffix=".safetensors")
    lineage.record(store, ref, prov)
    return ref


def read_tensors(store: ArtifactStore, ref: ArtifactRef, kind: str) -> dict[str, torch.Tensor]:
    if ref.kind != kind:
        raise StoreError(f"artifact {ref.uri}: is a '{ref.kind}' artifact, expected '{kind}'")
    return st_load(store.get(ref))


def write_blob(store: ArtifactStore, data: bytes, kind: str, suffix: str, prov: Provenance) -> ArtifactRef:
    ref = store.put(data, kind=kind, suffix=suffix)
    lineage.record(store, ref, prov)
    return ref


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Safetensors bytes that depend only on the content, so equal tensors get equal content hashes.

    safetensors writes the metadata map in hash order, which varies between processes; the header is
    rewritten with sorted keys (same length, so the data offsets stay valid).
    """
    data = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    if not metadata or len(metadata) < 2:
        return data
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if len(encoded) > size:
        raise RuntimeError("safetensors header grew while sorting its metadata")
    return data[:8] + encoded.ljust(size, b" ") + data[8 + size:]


def tensors_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    return st_load(data)
