"""Versioned Arrow schemas of every table passed between stages.

These schemas are the contract that lets a team replace one stage with its own image: a table is valid when
it carries every column of its contract with the contract's type (extra columns are allowed and kept), no
nulls in non-nullable columns, and the contract's name and version in the Parquet metadata.
Tensors travel as safetensors bytes in binary columns, so dtype and shape survive for any model.
"""

import io
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

CONTRACT_KEY = b"dgrpo.contract"
VERSION_KEY = b"dgrpo.contract_version"


class ContractError(ValueError):
    """A table does not match its contract; the message names the artifact and the column."""


@dataclass(frozen=True)
class Contract:
    name: str
    version: int
    schema: pa.Schema
    description: str
    also_reads: tuple[int, ...] = ()
    """Earlier versions still readable, so artifacts written before a change can be inspected and checked: with the
    same columns (only a meaning changed, e.g. how seeds derive), or without some nullable columns added since
    (`added`), which read as null."""
    added: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Nullable columns by the version that added them: a file of an earlier version in `also_reads` lacks them."""
    allow_nan: frozenset[str] = frozenset()
    """Float columns where NaN is a value with a meaning (the column's doc says which); every other float column,
    list element and map value must be finite, on write, on read and in `dgrpo contract check`. Infinities are
    never allowed: a NaN or inf reward would otherwise train every LoRA weight to NaN and still look like success."""

    def metadata(self) -> dict[bytes, bytes]:
        return {CONTRACT_KEY: self.name.encode(), VERSION_KEY: str(self.version).encode()}


def _schema(*fields: tuple[str, pa.DataType, bool, str]) -> pa.Schema:
    return pa.schema([pa.field(n, t, nullable=nullable, metadata={"doc": doc}) for n, t, nullable, doc in fields])


_SAMPLE_KEYS = (
    ("sample_id", pa.string(), False, "unique id of the image: round/prompt/index"),
    ("group_id", pa.string(), False, "the prompt group the sample is normalised within"),
    ("prompt", pa.string(), False, "the caption"),
)

SAMPLE_KEY_COLUMNS: tuple[str, ...] = tuple(name for name, *_ in _SAMPLE_KEYS)
"""Fixed by the rollouts for every sample: a later stage (ours or a team's) carries them over unchanged."""

PRUNE_DECISION = pa.struct([pa.field("step", pa.int32()), pa.field("sample_index", pa.int32()),
                            pa.field("seed", pa.int64()), pa.field("preview_reward", pa.float64()),
                            pa.field("kept", pa.bool_())])
"""One candidate at one prune step of Pro-GRPO's expand-and-prune: its preview's reward and whether it went on."""

ROLLOUTS = Contract("rollouts", 5, _schema(
    *_SAMPLE_KEYS,
    ("round", pa.int32(), False, "training round"),
    ("sample_index", pa.int32(), False, "index within the group (within the expanded group under expand-and-prune)"),
    ("seed", pa.int64(), False, "seed of the initial noise and SDE noise"),
    ("image_png", pa.binary(), False, "decoded image, PNG"),
    ("sigmas", pa.list_(pa.float32()), False, "the T+1 schedule sigmas"),
    ("log_probs", pa.list_(pa.float32()), False,
     "log-prob of each of the T transitions under the sampler; NaN for a deterministic (non-SDE) step"),
    ("latents", pa.binary(), False, "safetensors: 'latents' [T+1, ...], the whole trajectory"),
    ("conditioning", pa.binary(), True,
     "safetensors: the prompt conditioning (incl. negative) to recompute; on the group's first row only"),
    ("prompt_noise_seeds", pa.list_(pa.int64()), True,
     "DRIFT prompt noise: per step, the seed of eps (null: none at that step); null when drift.prompt_noise is off"),
    ("prompt_noise_signal", pa.list_(pa.float32()), True, "DRIFT prompt noise: per step, sqrt(g) multiplying y"),
    ("prompt_noise_scale", pa.list_(pa.float32()), True, "DRIFT prompt noise: per step, s sqrt(1 - g) multiplying eps"),
    ("preview_rewards", pa.list_(pa.float64()), True,
     "Pro-GRPO expand-and-prune: this survivor's preview reward at each prune step; null when off"),
    ("prune_record", pa.list_(PRUNE_DECISION), True,
     "Pro-GRPO expand-and-prune: every candidate of the group at every prune step; on the group's first row only"),
    ("diversity_probe", pa.binary(), True,
     "safetensors: the diversity target's fixed-noise probe sampled by this table's policy, 'embeddings' [P, M, D] "
     "of its P probe prompts (of this shard) x M images and their 'prompt_index' [P]; on the table's first row "
     "only; null without a probe"),
), "SDE trajectories with everything needed to recompute log-probs (v2: conditioning once per group; v3: seeds "
   "from the named streams of dgrpo.rng; v4: DRIFT's prompt noise and Pro-GRPO's prune decisions; v5: the diversity "
   "probe).", allow_nan=frozenset({"log_probs"}), also_reads=(4,), added={5: ("diversity_probe",)})

REWARDS = Contract("rewards", 1, _schema(
    *_SAMPLE_KEYS,
    ("reward", pa.float64(), False, "the quality reward Q"),
    ("components", pa.map_(pa.string(), pa.float64()), False, "named parts of the reward, for audit"),
), "Per-image quality reward.")

SCORES = Contract("scores", 5, _schema(
    *_SAMPLE_KEYS,
    ("quality", pa.float64(), False, "the quality reward Q"),
    ("bonus", pa.float64(), False, "the creativity bonus beta x E' (after normalisation and gate); 0 in pass-through"),
    ("cluster_id", pa.int32(), False,
     "cluster within the group; 0 in pass-through; the detail steps' baseline under train.detail_baseline cluster"),
    ("final_reward", pa.float64(), False,
     "the reward the update normalises: Q' + bonus + shaping, Q' = Q or its group z-score"),
    ("embedding", pa.list_(pa.float32()), True, "the image's embedding (cluster.embedder); null without embedder"),
    ("kept", pa.bool_(), True,
     "in the group's kept subset (DRIFT outlier filter, Pro-GRPO filter); dropped samples get no advantage; "
     "null: no filter"),
    ("shaping", pa.float64(), True, "DRIFT's potential-based shaping term, included in final_reward; null when off"),
    ("novelty", pa.float64(), True,
     "GARDO: smallest cosine distance to the rest of the group; scales the advantage; null when off"),
    ("kl_gate", pa.bool_(), True, "GARDO: the KL applies to this sample; null: KL on every sample"),
    ("beta", pa.float64(), True, "the round's bonus weight set by a diversity controller; null: cluster.beta"),
    ("sa_lambda", pa.float64(), True,
     "the round's SA-Reg weight set by a diversity controller, used by the update; null: train.sa_lambda"),
    ("diversity_target", pa.float64(), True, "the rollout diversity the controller aims at; null without one"),
    ("diversity_smoothed", pa.float64(), True,
     "the controller's smoothed rollout diversity (what it compared with the target); null without one"),
), "Final per-image rewards after the cluster stage, with what produced them (v2: embedding; v3: kept, shaping, "
   "novelty, kl_gate; v4: beta, sa_lambda, diversity_target; v5: diversity_smoothed).", also_reads=(3, 4),
   added={4: ("beta", "sa_lambda", "diversity_target"), 5: ("diversity_smoothed",)})

UPDATE_METRICS = Contract("update_metrics", 3, _schema(
    ("round", pa.int32(), False, "training round"),
    ("optimizer_step", pa.int32(), False, "optimizer step within the round"),
    ("policy_loss", pa.float64(), False, "clipped GRPO loss"),
    ("kl", pa.float64(), False, "KL term (0 unless train.regularizer is kl or both)"),
    ("sa_reg", pa.float64(), False, "SA-Reg averaged over trained steps as in the loss (0 unless sa or both)"),
    ("approx_kl", pa.float64(), False, "0.5 mean (log ratio)^2"),
    ("clip_fraction", pa.float64(), False, "share of ratios outside the clip range"),
    ("grad_norm", pa.float64(), False, "gradient norm before clipping"),
    ("ratio_mean", pa.float64(), False, "mean importance ratio pi/pi_old over the step's samples and trained steps"),
    ("ratio_std", pa.float64(), False, "standard deviation of that ratio"),
), "One row per optimizer step of the update stage (v3: importance-ratio mean and std).")

EVAL_SAMPLES = Contract("eval_samples", 2, _schema(
    *_SAMPLE_KEYS,
    ("round", pa.int32(), False, "the round after which the policy was evaluated (0: base)"),
    ("held_out", pa.bool_(), False, "the prompt is not a training prompt"),
    ("image_png", pa.binary(), False, "decoded image, PNG"),
    ("reward", pa.float64(), False, "the quality reward"),
    ("mode", pa.int32(), True, "the visual mode from the mode classifier (-1: none); null without one"),
), "Deterministic evaluation samples (v2: noise from the EVAL_NOISE stream of dgrpo.rng).", also_reads=(1,))

CONTRACTS: dict[str, Contract] = {c.name: c for c in (ROLLOUTS, REWARDS, SCORES, UPDATE_METRICS, EVAL_SAMPLES)}


def validate(table: pa.Table, contract: Contract, artifact: str) -> pa.Table:
    """Check `table` against `contract`; return it with the contract's metadata attached."""
    for expected in contract.schema:
        if expected.name not in table.schema.names:
            raise ContractError(
                f"{artifact}: missing column '{expected.name}' ({expected.type}) required by "
                f"contract {contract.name} v{contract.version}")
        actual = table.schema.field(expected.name)
        if not actual.type.equals(expected.type):
            raise ContractError(
                f"{artifact}: column '{expected.name}' has type {actual.type}, contract "
                f"{contract.name} v{contract.version} expects {expected.type}")
        if not expected.nullable and table.column(expected.name).null_count:
            raise ContractError(f"{artifact}: column '{expected.name}' has nulls, contract "
                                f"{contract.name} v{contract.version} forbids them")
        _check_finite(table, expected.name, expected.name in contract.allow_nan, contract, artifact)
    metadata = dict(table.schema.metadata or {}) | contract.metadata()
    return table.replace_schema_metadata(metadata)


def _float_values(arr: pa.Array) -> tuple[pa.Array, np.ndarray] | None:
    """The float values inside `arr` (a float column, or lists or maps of floats) and, for each, its row."""
    if pa.types.is_floating(arr.type):
        return arr, np.arange(len(arr))
    if pa.types.is_fixed_size_list(arr.type):
        children, counts = arr.flatten(), np.full(len(arr), arr.type.list_size)
    elif pa.types.is_map(arr.type) or pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        offsets = arr.offsets.to_numpy()
        inner = arr.items if pa.types.is_map(arr.type) else arr.values
        children, counts = inner.slice(offsets[0], offsets[-1] - offsets[0]), np.diff(offsets)
    else:
        return None
    found = _float_values(children)
    if found is None:
        return None
    return found[0], np.repeat(np.arange(len(arr)), counts)[found[1]]


def _check_finite(table: pa.Table, name: str, nan_ok: bool, contract: Contract, artifact: str) -> None:
    """Refuse NaN (unless the contract gives it a meaning in this column) and infinities in a float column."""
    offset = 0
    for chunk in table.column(name).chunks:
        found = _float_values(chunk)
        if found is None:
            return  # not a float column
        values, rows = found
        bad = pc.is_inf(values) if nan_ok else pc.invert(pc.is_finite(values))
        bad = pc.fill_null(bad, False)
        if pc.any(bad).as_py():
            n_nan = 0 if nan_ok else pc.sum(pc.fill_null(pc.is_nan(values), False)).as_py()
            n_inf = pc.sum(pc.fill_null(pc.is_inf(values), False)).as_py()
            row = offset + int(rows[pc.index(bad, True).as_py()])
            where = f"row {row}"
            if "sample_id" in table.column_names:
                where += f", sample_id '{table.column('sample_id')[row].as_py()}'"
            allowed = "finite numbers or NaN" if nan_ok else "finite numbers"
            raise ContractError(f"{artifact}: column '{name}' holds {n_nan} NaN and {n_inf} infinite values "
                                f"(first at {where}); contract {contract.name} v{contract.version} allows only "
                                f"{allowed} there")
        offset += len(chunk)


def check_unique_ids(table: pa.Table, artifact: str) -> None:
    """Refuse a table that holds one sample twice: its reward or score would count twice, or pick one at random."""
    if "sample_id" not in table.column_names:
        return
    ids = table.column("sample_id")
    if pc.count_distinct(ids).as_py() == len(ids):
        return
    seen: dict[str, int] = {}
    for row, sid in enumerate(ids.to_pylist()):
        if sid in seen:
            raise ContractError(f"{artifact}: column 'sample_id' repeats sample '{sid}' (rows {seen[sid]} and "
                                f"{row}); each sample appears once")
        seen[sid] = row


def check_sample_keys(expected: pa.Table, actual: pa.Table, expected_name: str, actual_name: str) -> None:
    """Refuse `actual` (a swapped stage's table) unless it holds exactly the samples of `expected` (what the stage
    was given), once each, with the same value in every key column (SAMPLE_KEY_COLUMNS) that both carry.

    A team's table that rewrites `group_id` would have the advantages normalised, and clusters formed, across the
    wrong images: the round would still commit."""
    check_unique_ids(actual, actual_name)
    a, b = set(expected.column("sample_id").to_pylist()), set(actual.column("sample_id").to_pylist())
    if a != b:
        missing, extra = sorted(a - b)[:3], sorted(b - a)[:3]
        raise ContractError(f"{actual_name} does not match {expected_name} sample for sample (column 'sample_id'): "
                            f"missing {missing}, unexpected {extra}")
    want = expected.take(pc.sort_indices(expected, [("sample_id", "ascending")]))
    got = actual.take(pc.sort_indices(actual, [("sample_id", "ascending")]))
    for column in SAMPLE_KEY_COLUMNS[1:]:
        if column not in want.column_names or column not in got.column_names:
            continue
        differs = pc.fill_null(pc.not_equal(want.column(column), got.column(column)), True)
        if pc.any(differs).as_py():
            row = pc.index(differs, True).as_py()
            raise ContractError(f"{actual_name}: column '{column}' of sample '{got.column('sample_id')[row]}' is "
                                f"{got.column(column)[row].as_py()!r}, but {expected_name} have "
                                f"{want.column(column)[row].as_py()!r}; a swapped stage keeps the key columns "
                                f"{', '.join(SAMPLE_KEY_COLUMNS)} as it read them")


def check_metadata(schema: pa.Schema, contract: Contract, artifact: str) -> None:
    """Check the contract name and version a Parquet file declares."""
    meta = schema.metadata or {}
    name = meta.get(CONTRACT_KEY, b"<none>").decode()
    version = meta.get(VERSION_KEY, b"<none>").decode()
    if name != contract.name or version not in {str(v) for v in (contract.version, *contract.also_reads)}:
        raise ContractError(f"{artifact}: declares contract {name} v{version}, expected "
                            f"{contract.name} v{contract.version}")


def to_parquet_bytes(table: pa.Table, contract: Contract, artifact: str) -> bytes:
    table = validate(table, contract, artifact)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def read_parquet(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """Parquet bytes to a table on the calling thread. `pq.read_table` starts Arrow's thread pools, and a pool still
    alive at interpreter exit can abort the process ("terminate called without an active exception",
    apache/arrow#34314): a stage or CLI process whose work succeeded would then exit 134."""
    return pq.ParquetFile(pa.BufferReader(data)).read(columns=columns, use_threads=False)


def from_parquet_bytes(data: bytes, contract: Contract, artifact: str) -> pa.Table:
    try:
        table = read_parquet(data)
    except pa.ArrowInvalid as exc:
        raise ContractError(f"{artifact}: not a readable Parquet file: {exc}") from exc
    check_metadata(table.schema, contract, artifact)
    version = int(table.schema.metadata[VERSION_KEY])
    for since, names in contract.added.items():
        for name in names if version < since else ():
            if name not in table.column_names:
                table = table.append_column(contract.schema.field(name), pa.nulls(len(table), contract.schema.field(
                    name).type))
    return validate(table, contract, artifact)


def describe(contract: Contract) -> str:
    """Human-readable listing of a contract's columns."""
    lines = [f"{contract.name} v{contract.version}: {contract.description}"]
    for f in contract.schema:
        doc = (f.metadata or {}).get(b"doc", b"").decode()
        null = " (nullable)" if f.nullable else ""
        lines.append(f"  {f.name:<16} {str(f.type):<28}{null} {doc}")
    return "\n".join(lines)
