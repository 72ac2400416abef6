"""What each run's records say: its evaluations per caption split, what its updates learned from (the reward and
score tables) and its cost.

The evaluation records give, per evaluated round and separately for the held-out and the training captions: the
mode-independent quality (`toy_quality`), the reward, the mode entropy, the modes holding >= 10%, the favoured
quadrant's share, and the embedding diversity (mean pairwise distance and Vendi score of the toy embeddings). Each
round's reward and score tables give how much of the final reward's in-group spread is the quadrant and how much
the quality, and in which quadrants the rollouts' quality rose (`rollout_signal`).
"""

import math

import numpy as np
import pyarrow.compute as pc
from dgrpo_lab.analysis import mean_std
from dgrpo_lab.columns import METRICS, SIGNAL, SPLITS
from dgrpo_lab.seeds import seed_group

from dgrpo.contracts import REWARDS, SCORES
from dgrpo.runs.evaluations import read_evaluation
from dgrpo.runs.exchange import experiment_wall_seconds
from dgrpo.runs.records import Event
from dgrpo.stages.shared.shards import read_merged
from dgrpo.store import ArtifactRef, ArtifactStore
from dgrpo.toyworld.data import N_MODES


def eval_rows(store: ArtifactStore, arm: str, seed: int, run_id: str, rounds: list[int],
              favoured: int) -> list[dict]:
    """One row per evaluated round: the evaluate stage's per-prompt measures, averaged per caption split
    (`favoured_share`: the share of quadrant `favoured`)."""
    rows = []
    for r in rounds:
        record = read_evaluation(store, run_id, r)
        if record is None:
            raise FileNotFoundError(f"run {run_id}: no evaluation after round {r} in {store.uri}")
        row: dict = {"arm": arm, "seed": seed, "seed_group": seed_group(seed), "round": r}
        for split in SPLITS:
            prompts = [p for p in record.per_prompt if p["held_out"] == (split == "heldout")]
            for m in METRICS:
                values = [p["mode_shares"][favoured] if m == "favoured_share" else p.get(m, math.nan)
                          for p in prompts]
                row[f"{split}_{m}"] = float(np.mean(values)) if values else math.nan
        rows.append(row)
    return rows


def rollout_signal(store: ArtifactStore, run_id: str, events: list[Event],
                   favoured: int) -> dict[int, tuple[float, ...]]:
    """Per training round of the run's `events` (`load_events`), the `SIGNAL` values: pooled over its prompt
    groups, the share of the final reward's in-group variance between the quadrants (eta squared) and the share the
    toy quality explains (squared correlation of the group-centred values), the latter again within the groups'
    clusters; then the rollouts' mean quality in the `favoured` quadrant and in the others (`quadrant_quality`).

    GRPO's advantage is that in-group spread, so the shares say what the update can learn from: a spread that is
    mostly the quadrant pushes the mode mix (or, where SA-Reg holds it, is noise for the late steps that set the
    colour). The qualities say whether what it learns in one quadrant carries over to the others.
    """
    by_round: dict[int, dict[str, list[ArtifactRef]]] = {}
    for event in events:
        if event.stage in ("reward", "cluster"):
            out = event.output("rewards" if event.stage == "reward" else "scores")
            by_round.setdefault(event.round, {}).setdefault(event.stage, []).append(out)
    signal = {}
    for rnd, refs in sorted(by_round.items()):
        if set(refs) != {"reward", "cluster"}:
            continue
        components = {sid: dict(c) for sid, c in zip(*read_merged(store, refs["reward"], REWARDS).select(
            ["sample_id", "components"]).to_pydict().values(), strict=True)}
        scores = read_merged(store, refs["cluster"], SCORES).select(["sample_id", "group_id", "cluster_id",
                                                                     "final_reward", "kept"])
        scores = scores.filter(pc.fill_null(scores.column("kept"), True))  # DRIFT's and Pro-GRPO's filters
        ids = scores.column("sample_id").to_pylist()
        if not all({"mode", "quality"} <= components[s].keys() for s in ids):
            raise ValueError(f"run {run_id} round {rnd + 1}: the rewards' components lack the toy reward's 'mode' and "
                             "'quality'")
        final = np.asarray(scores.column("final_reward").to_pylist(), dtype=np.float64)
        mode = np.array([components[s]["mode"] for s in ids])
        quality = np.array([components[s]["quality"] for s in ids], dtype=np.float64)
        groups = np.asarray(scores.column("group_id").to_pylist())
        clusters = [f"{g}/{c}" for g, c in zip(groups, scores.column("cluster_id").to_pylist(), strict=True)]
        signal[rnd] = variance_shares(final, mode, quality, groups)
        signal[rnd] += variance_shares(final, mode, quality, np.asarray(clusters))[1:]
        signal[rnd] += quadrant_quality(np.array([c["mode"] for c in components.values()]),
                                        np.array([c["quality"] for c in components.values()], dtype=np.float64),
                                        favoured)
    return signal


def quadrant_quality(mode: np.ndarray, quality: np.ndarray, favoured: int) -> tuple[float, float]:
    """Mean quality of the images in quadrant `favoured` and in the other quadrants (images with no mode, too
    little foreground, count in neither); nan for a side with no image."""
    inside, others = mode == favoured, (mode != favoured) & (mode < N_MODES)
    return tuple(float(quality[m].mean()) if m.any() else math.nan for m in (inside, others))


def variance_shares(final: np.ndarray, mode: np.ndarray, quality: np.ndarray,
                    groups: np.ndarray) -> tuple[float, float]:
    """(between-mode share, quality's share) of the within-group variance of `final`, pooled over `groups`;
    nan where `final` or `quality` does not vary within any group."""
    f_c, q_c, between = np.zeros_like(final), np.zeros_like(quality), 0.0
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        f_c[idx], q_c[idx] = final[idx] - final[idx].mean(), quality[idx] - quality[idx].mean()
        between += sum((mode[idx] == k).sum() * f_c[idx][mode[idx] == k].mean() ** 2 for k in np.unique(mode[idx]))
    total, q_total = float(f_c @ f_c), float(q_c @ q_c)
    if total <= 0 or q_total <= 0:
        return math.nan, math.nan
    return between / total, float(f_c @ q_c) ** 2 / (total * q_total)


def with_signal(rows: list[dict], signal: dict[int, tuple[float, ...]]) -> list[dict]:
    """Each evaluation row with `SIGNAL` averaged over the training rounds since the previous evaluation (over the
    rounds where a value exists: a collapsed policy leaves rounds with no image outside the favoured quadrant)."""
    prev = -1
    for row in rows:
        window = np.array([signal[r] for r in range(prev, row["round"]) if r in signal] if prev >= 0 else [],
                          dtype=np.float64).reshape(-1, len(SIGNAL))
        row |= {key: mean_std(window[:, i].tolist())[0] for i, key in enumerate(SIGNAL)}
        prev = row["round"]
    return rows


def cost_of(store: ArtifactStore, run_id: str, events: list[Event]) -> dict[str, float]:
    """The run's `COST`: NFEs from its rollout `events` (`load_events`); wall time as the experiment recorded it
    (nan for a run trained by a version that did not record it)."""
    per_round: dict[int, float] = {}
    for event in events:
        if event.stage == "rollout":
            per_round[event.round] = per_round.get(event.round, 0.0) + event.metrics["nfe"]
    wall = experiment_wall_seconds(store, run_id)
    wall = math.nan if wall is None else wall
    return {"rollout_nfe_per_round": float(np.mean(list(per_round.values()))) if per_round else math.nan,
            "wall_s": float(wall)}
