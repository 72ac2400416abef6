"""What the HTML report shows of one run, read from the store: evaluations, training rewards, update metrics,
the final adapter's lineage and the run's recipe.

Everything comes from records the stages already write (events, evaluation records, the rewards tables, lineage),
so a report can be rebuilt at any time, for a run in progress too.
"""

from dataclasses import dataclass, field

import numpy as np

from dgrpo import artifacts
from dgrpo.config import RunConfig
from dgrpo.contracts import REWARDS
from dgrpo.metrics import IMAGE_MONITORS
from dgrpo.runs import lineage
from dgrpo.runs.evaluations import read_evaluation
from dgrpo.runs.records import Event
from dgrpo.runtime.report.headline import Headline, build_headline, run_config
from dgrpo.runtime.report.summary import load_events
from dgrpo.runtime.report.throughput import Throughput, run_throughput
from dgrpo.stages.shared.run_config import load_config
from dgrpo.store import ArtifactRef, ArtifactStore, StoreError


@dataclass
class Evaluation:
    round: int
    metrics: dict[str, float]
    per_prompt: list[dict]
    grid: ArtifactRef
    reward: dict[str, str] = field(default_factory=dict)
    """Which reward scored the evaluation, and why (`dgrpo.stages.evaluate.reward_source`); empty for old runs."""


@dataclass
class TrainingRound:
    round: int
    reward_mean: float
    """Mean quality reward over the round's rollouts (all shards)."""
    group_std: float
    """Mean over the round's prompt groups of the reward's standard deviation within the group."""
    update: dict[str, float] = field(default_factory=dict)
    """The update stage's metrics of the round (losses, ratio statistics, zero-spread share)."""
    rollouts: dict[str, float] = field(default_factory=dict)
    """What the round's rollouts showed: the image monitors of the reward stage (over all shards, weighted by their
    samples) and the cluster stage's metrics (the embedding diversity, a diversity controller's target, beta and
    lambda)."""


@dataclass
class RunData:
    run_id: str
    evaluations: list[Evaluation]
    training: list[TrainingRound]
    final_adapter: ArtifactRef | None
    lineage: list[tuple[int, str, lineage.LineageRecord]]
    """The final adapter's lineage chain (`dgrpo.runs.lineage.chain`); empty without an adapter."""
    recipe: dict | None
    """The recipe part of the run's config (`RunConfig.recipe_dict`), from the config artifact in the lineage."""
    config_sha256: str | None
    throughput: Throughput | None = None
    """Images per second and seconds per round, from the records' times (`report.throughput`)."""
    config: RunConfig | None = None
    """The whole config (recipe and deployment), for the headline and for which panels the recipe needs."""
    headline: Headline | None = None
    """Method, state, rounds, duration, engine and the verdict (`report.headline`)."""


def load_run(store: ArtifactStore, run_id: str) -> RunData:
    """Everything the report shows of `run_id`; a run with no evaluation is an error naming the run and store."""
    events = load_events(store, run_id)
    if not events:
        raise StoreError(f"run {run_id}: no records under runs/{run_id}/ in {store.uri}")
    evaluations = _evaluations(store, run_id, [e for e in events if e.stage == "evaluate"])
    if not evaluations:
        raise StoreError(f"run {run_id}: no evaluation recorded in {store.uri}")
    updates = sorted((e for e in events if e.stage == "update"), key=lambda e: e.round)
    training = _training(store, [e for e in events if e.stage == "reward"], {e.round: e for e in updates},
                         {e.round: e for e in events if e.stage == "cluster"})
    final = updates[-1].output("adapter") if updates else None
    chain = lineage.chain(store, final.sha256) if final else []
    config, config_sha = _config(store, chain)
    config = config or run_config(store, run_id)
    return RunData(run_id, evaluations, training, final, chain, config.recipe_dict() if config else None,
                   config_sha, run_throughput(store, run_id, events), config,
                   build_headline(store, run_id, [ev.metrics for ev in evaluations], config))


def _evaluations(store: ArtifactStore, run_id: str, events: list[Event]) -> list[Evaluation]:
    out = []
    for e in sorted(events, key=lambda e: e.round):
        record = read_evaluation(store, run_id, e.round)
        out.append(Evaluation(e.round, e.metrics, record.per_prompt if record else [], e.output("grid"),
                              (record.reward or {}) if record else {}))
    return out


def _training(store: ArtifactStore, reward_events: list[Event], updates: dict[int, Event],
              clusters: dict[int, Event]) -> list[TrainingRound]:
    """Per round: the quality reward's mean over all shards and its mean in-group spread, from the rewards tables,
    and what the round's stages measured of its rollouts."""
    by_round: dict[int, list[ArtifactRef]] = {}
    for e in reward_events:
        by_round.setdefault(e.round, []).append(e.output("rewards"))
    rounds = []
    for r in sorted(by_round):
        tables = [artifacts.read_table(store, ref, REWARDS).select(["group_id", "reward"]) for ref in by_round[r]]
        groups = np.concatenate([t.column("group_id").to_numpy(zero_copy_only=False) for t in tables])
        rewards = np.concatenate([t.column("reward").to_numpy() for t in tables])
        stds = [rewards[groups == g].std() for g in np.unique(groups)]
        rounds.append(TrainingRound(r, float(rewards.mean()), float(np.mean(stds)),
                                    updates[r].metrics if r in updates else {},
                                    _monitors([e for e in reward_events if e.round == r])
                                    | (clusters[r].metrics if r in clusters else {})))
    return rounds


def _monitors(shard_events: list[Event]) -> dict[str, float]:
    """The reward stage's image monitors of one round, averaged over its shards weighted by their samples."""
    weights = np.array([e.metrics.get("samples", 1.0) for e in shard_events])
    return {k: float(np.average([e.metrics[k] for e in shard_events], weights=weights)) for k in IMAGE_MONITORS
            if all(k in e.metrics for e in shard_events)}


def _config(store: ArtifactStore, chain: list[tuple[int, str, lineage.LineageRecord]]) -> tuple[RunConfig | None,
                                                                                                  str | None]:
    """The config the final adapter was trained with (its lineage names it), and its sha256."""
    rec = next((r for _, _, r in chain if r.kind == "config"), None)
    if rec is None:
        return None, None
    return load_config(store, rec.sha256), rec.sha256


def quality_key(metrics: dict[str, float]) -> str:
    """The evaluation's quality measure: the mode-independent quality where the reward reports one, else reward."""
    return "quality" if "quality" in metrics else "reward"


def diversity_key(metrics: dict[str, float]) -> str:
    """The evaluation's diversity measure: embedding distance where an embedder is configured, else pixels."""
    return "embedding_diversity" if "embedding_diversity" in metrics else "diversity"
