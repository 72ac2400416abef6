"""Cluster stage: the slot that turns quality rewards into the final rewards of the update.

Each image is embedded once (cluster.embedder) and the embedding is kept in the scores table. The run's methods
(`dgrpo.methods`) act on the rewards here through their hooks: a method may cluster each prompt group and pay on
its clusters (`cluster_group`: DiverseGRPO's creativity bonus, docs/algorithms.md); without one the final reward is
the quality reward (Flow-GRPO). Then a subset each group keeps (`keep`: DRIFT's outlier filter, Pro-GRPO's Optimal
Variance Filtering), per-group columns (`group_columns`: DRIFT's shaping, GARDO's novelty) and whole-round ones
(`round_columns`: GARDO's KL gate); a column no method sets is null. A controller (`round_coefficients`, the
diversity target) sets the round's beta and SA-Reg lambda from the rollouts' measured diversity (or its fixed-noise
probe's, `stages.shared.probe`) and the state the round trains from, before any group is scored.
Either way the stage checks that the rewards cover exactly the round's rollouts, and logs the in-group spread
of quality and of the bonus, the cluster counts and the rollouts' embedding diversity.
"""

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dgrpo import artifacts
from dgrpo.config import ClusterConfig
from dgrpo.contracts import REWARDS, ROLLOUTS, SCORES
from dgrpo.diversity import mean_pairwise_distance
from dgrpo.embedders import load_embedder
from dgrpo.images import png_decode
from dgrpo.methods.base import COEFFICIENT_COLUMNS, Coefficients, Method, first, methods_of
from dgrpo.rng import Stream, derive_seed
from dgrpo.stages.shared.context import StageContext, StageResult, emit_event
from dgrpo.stages.shared.policy_io import OPTIMIZER_KIND
from dgrpo.stages.shared.probe import COLUMN as PROBE_COLUMN
from dgrpo.stages.shared.probe import ProbeEmbeddings, read_probe
from dgrpo.stages.shared.shards import check_same_samples, named_inputs, read_merged, uris
from dgrpo.store import ArtifactRef


def method_columns(methods: list[Method], quality: np.ndarray, final: np.ndarray, embeddings: np.ndarray | None
                   ) -> dict[str, np.ndarray]:
    """One group's columns from the run's methods: the kept flags of the method that filters (the config allows
    one) and each method's columns, computed among the kept samples; a `final_reward` column replaces the final
    rewards."""
    out: dict[str, np.ndarray] = {}
    keep = first([m.keep(quality=quality, final=final) for m in methods])
    if keep is not None:
        out["kept"] = keep
    else:
        keep = np.ones(len(quality), dtype=bool)
    for m in methods:
        out |= m.group_columns(quality=quality, final=out.get("final_reward", final), embeddings=embeddings,
                               keep=keep)
    return out


@dataclass
class Embedded:
    """A round's samples embedded where their images are (`embed_rollouts`): what the process that clusters reads
    instead of the rollouts."""

    by_id: dict[str, np.ndarray | None] = field(default_factory=dict)
    """Each sample's embedding by sample id (None without cluster.embedder)."""
    probe: ProbeEmbeddings = field(default_factory=dict)
    """The diversity probe the rollouts carry, by probe prompt."""
    seconds: float = 0.0
    """The embedder's time."""


def embed_samples(cfg: ClusterConfig, samples: pa.Table, ids: list[str]) -> np.ndarray:
    """The embeddings of `ids`, in that order, from `samples` (sample_id, image_png)."""
    png_of = dict(zip(samples.column("sample_id").to_pylist(), samples.column("image_png").to_pylist(), strict=True))
    images = np.stack([png_decode(png_of[i]) for i in ids])
    embeddings = np.asarray(load_embedder(cfg.embedder, cfg.embedder_options)(images), dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(ids) or not np.all(np.isfinite(embeddings)):
        raise ValueError(f"embedder {cfg.embedder!r} must return finite [{len(ids)}, D] embeddings, got "
                         f"{embeddings.shape}")
    return embeddings


def embed_rollouts(ctx: StageContext, rollouts: list[ArtifactRef]) -> Embedded:
    """The samples of `rollouts` (some shards of a round) embedded, with the probe they carry: what a fused process
    computes where its images are, so the process that clusters never reads them."""
    if not rollouts:
        return Embedded()
    samples = read_merged(ctx.store, rollouts, ROLLOUTS).select(["sample_id", "image_png", PROBE_COLUMN])
    ids = samples.column("sample_id").to_pylist()
    if ctx.config.cluster.embedder is None:
        return Embedded(dict.fromkeys(ids))
    start = time.perf_counter()
    embeddings = embed_samples(ctx.config.cluster, samples, ids)
    return Embedded(dict(zip(ids, embeddings, strict=True)), read_probe(samples), time.perf_counter() - start)


def round_coefficients(ctx: StageContext, methods: list[Method], round_index: int, groups: np.ndarray,
                       embeddings: np.ndarray | None, probe: ProbeEmbeddings,
                       optimizer_state: ArtifactRef | None) -> Coefficients | None:
    """The controller's coefficients for the round (None without one); the optimizer state the round trains from is
    read only if the controller asks for it."""
    if embeddings is None:
        return None
    group_embeddings = [embeddings[groups == g] for g in dict.fromkeys(groups.tolist())]

    def previous() -> dict | None:
        return None if optimizer_state is None else artifacts.read_tensors(ctx.store, optimizer_state, OPTIMIZER_KIND)

    return first([m.round_coefficients(round_index=round_index, group_embeddings=group_embeddings,
                                       probe_embeddings=[probe[j] for j in sorted(probe)] or None,
                                       previous=previous) for m in methods])


def run_cluster(ctx: StageContext, round_index: int, rollouts: ArtifactRef | list[ArtifactRef],
                rewards: ArtifactRef | list[ArtifactRef], embedded: Embedded | None = None, *,
                optimizer_state: ArtifactRef | None = None) -> StageResult:
    """Score a round; `rollouts` and `rewards` may each be one table or the shards of one. `embedded`: the
    round's samples already embedded (`embed_rollouts`); the rollouts are then not read. `optimizer_state`: the
    state the round trains from, where a controller continues from."""
    cfg, c = ctx.config, ctx.config.cluster
    methods = methods_of(cfg)
    scored = read_merged(ctx.store, rewards, REWARDS)
    ids = scored.column("sample_id").to_pylist()
    quality = np.asarray(scored.column("reward").to_pylist(), dtype=np.float64)
    groups = np.asarray(scored.column("group_id").to_pylist())
    n = len(ids)

    embeddings, embed_seconds, probe = None, 0.0, {}
    if embedded is None:
        samples = read_merged(ctx.store, rollouts, ROLLOUTS).select(["sample_id", "image_png", PROBE_COLUMN])
        check_same_samples(samples, scored, f"rollouts {uris(rollouts)}", f"rewards {uris(rewards)}")
        probe = read_probe(samples)
        if c.embedder is not None:
            start = time.perf_counter()
            embeddings = embed_samples(c, samples, ids)
            embed_seconds = time.perf_counter() - start
    else:
        check_same_samples(pa.table({"sample_id": list(embedded.by_id)}), scored, f"rollouts {uris(rollouts)}",
                           f"rewards {uris(rewards)}")
        embeddings = None if c.embedder is None else np.stack([embedded.by_id[i] for i in ids])
        embed_seconds, probe = embedded.seconds, embedded.probe

    coefficients = round_coefficients(ctx, methods, round_index, groups, embeddings, probe, optimizer_state)
    clustered = False
    cluster_id, bonus, final = np.zeros(n, np.int32), np.zeros(n), quality.copy()
    extra: dict[str, np.ndarray] = {}
    per_group: dict[str, list[float]] = {k: [] for k in ("quality_std", "bonus_std", "clusters", "singletons",
                                                         "kernel_width", "diversity")}
    start = time.perf_counter()
    for gi, g in enumerate(dict.fromkeys(groups.tolist())):
        idx = np.flatnonzero(groups == g)
        per_group["quality_std"].append(float(quality[idx].std()))
        if embeddings is not None:
            per_group["diversity"].append(mean_pairwise_distance(embeddings[idx]))
        out = first([m.cluster_group(quality=quality[idx], embeddings=None if embeddings is None else embeddings[idx],
                                     seed=derive_seed(cfg.seed, Stream.CLUSTER, round_index, gi),
                                     coefficients=coefficients) for m in methods])
        if out is not None:
            clustered = True
            cluster_id[idx], bonus[idx], final[idx] = out.cluster_id, out.bonus, out.final_reward
            sizes = np.bincount(out.cluster_id)
            per_group["clusters"].append(float(len(sizes)))
            per_group["singletons"].append(float(np.sum(sizes == 1)))
            per_group["kernel_width"].append(out.kernel_width)
        per_group["bonus_std"].append(float(bonus[idx].std()))
        for key, values in method_columns(methods, quality[idx], final[idx], None if embeddings is None
                                          else embeddings[idx]).items():
            target = final if key == "final_reward" else extra.setdefault(key, np.zeros(n, values.dtype))
            target[idx] = values
    for m in methods:
        extra |= m.round_columns(scored=scored)
    cluster_seconds = time.perf_counter() - start

    emb_col = (pa.nulls(n, SCORES.schema.field("embedding").type) if embeddings is None
               else pa.array(list(embeddings), SCORES.schema.field("embedding").type))
    out = pa.table({
        "sample_id": scored.column("sample_id"), "group_id": scored.column("group_id"),
        "prompt": scored.column("prompt"), "quality": pa.array(quality, pa.float64()),
        "bonus": pa.array(bonus, pa.float64()), "cluster_id": pa.array(cluster_id, pa.int32()),
        "final_reward": pa.array(final, pa.float64()), "embedding": emb_col,
        **{name: pa.array(extra[name], SCORES.schema.field(name).type) if name in extra
           else pa.nulls(n, SCORES.schema.field(name).type) for name in ("kept", "shaping", "novelty", "kl_gate")},
        **{name: pa.nulls(n, pa.float64()) if coefficients is None
           else pa.array(np.full(n, getattr(coefficients, name)), pa.float64())
           for name in COEFFICIENT_COLUMNS},
    }, schema=SCORES.schema)
    prov = ctx.provenance("cluster", round_index, named_inputs("rollouts", rollouts) | named_inputs("rewards", rewards),
                          seeds={"seed": cfg.seed, "stream": int(Stream.CLUSTER)} if clustered else {})
    ref = artifacts.write_table(ctx.store, out, SCORES, prov)
    metrics = {"final_reward_mean": float(pc.mean(out.column("final_reward")).as_py()),
               "quality_mean": float(quality.mean()), "quality_std": float(quality.std()),
               "bonus_std": float(bonus.std()), "embed_seconds": embed_seconds, "cluster_seconds": cluster_seconds}
    metrics |= {f"{k}_in_group" if k.endswith("_std") else f"{k}_mean": float(np.mean(v))
                for k, v in per_group.items() if v}
    if coefficients is not None:
        metrics |= coefficients.metrics
    for m in methods:
        metrics |= m.cluster_metrics(columns=extra, metrics=metrics)
    result = StageResult({"scores": ref}, metrics)
    emit_event(ctx, "cluster", round_index, result)
    return result
