"""The toy reproduction of DiverseGRPO's claim: every arm x several seeds, quality against diversity.

Every arm starts from the same toy checkpoint with the same prompts and budget (rounds, group size, optimizer steps,
learning rate) and differs only in its method sections, taken from its preset; every arm runs once per seed, through
the in-process engine, into one shared store. The evaluation records give, per evaluated round and separately for
the held-out and the training captions: the mode-independent quality (`toy_quality`), the reward, the mode entropy,
the modes holding >= 10%, the favoured quadrant's share, and the embedding diversity (mean pairwise distance and
Vendi score of the toy embeddings). Each round's reward and score tables give what the update learned from: how
much of the final reward's in-group spread is the quadrant and how much the quality, and in which quadrants the
rollouts' quality rose (`rollout_signal`).

The summary compares arms by mean and sample standard deviation over seeds: the final quality gain over the base
model, the final diversity, and the diversity at matched quality, i.e. where a run's quality path on the training
captions first reaches the quality Flow-GRPO ends at there (mean over seeds). Training captions, because that is
the quality the reward optimises, and held-out quality can fall while a policy collapses (it did with a held-out
colour, docs/experiment.md): a target below the base model would be "reached" by every run at round 0. Held-out
quality and diversity are reported beside it. `check_goals` decides the issue's goals from those numbers; the goal
on learning uses the standard error (std / sqrt(seeds)).
"""

import csv
import io
import json
import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from dgrpo.config import RunConfig, config_from_json, load_config
from dgrpo.contracts import REWARDS, SCORES
from dgrpo.files import atomic_write_bytes, atomic_write_text
from dgrpo.runs.evaluations import has_evaluation, read_evaluation
from dgrpo.runs.exchange import experiment_wall_seconds, put_experiment_wall
from dgrpo.runs.records import Event
from dgrpo.runtime.engine import run_inprocess
from dgrpo.runtime.report.summary import load_events
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.shards import read_merged
from dgrpo.store import ArtifactRef, ArtifactStore, LocalStore
from dgrpo.toyworld.data import N_MODES
from dgrpo.toyworld.reward import MODE_PREFERENCE

PRESETS = {"flowgrpo": "toy-flowgrpo.yaml", "sareg": "toy-sareg.yaml", "bonus": "toy-bonus.yaml",
           "diversegrpo": "toy-diversegrpo.yaml"}
"""The arms `make experiment-toy` runs: the baseline, SA-Reg alone, the bonus alone, both (DiverseGRPO)."""
OPTIONAL_PRESETS = {"diversegrpo-paper": "toy-diversegrpo-paper.yaml", "drift": "toy-drift.yaml",
                    "progrpo": "toy-progrpo.yaml", "gardo": "toy-gardo.yaml"}
"""Run with `--all-arms` (they add about 100% to the experiment's time): DiverseGRPO as the paper has it, without any
of this project's additions (`difference_lines` lists the fields), and the public baselines."""
BASELINE = "flowgrpo"
METHOD = "diversegrpo"
DEFAULT_SEEDS = (0, 1, 2)
SPLITS = ("heldout", "train")
METRICS = ("quality", "reward", "mode_entropy", "modes_over_10pct", "favoured_share", "embedding_diversity", "vendi")
SIGNAL = ("rollout_mode_share", "rollout_quality_share", "rollout_cluster_quality_share", "rollout_quality_favoured",
          "rollout_quality_others")
"""What the update learned from in the rounds before an evaluation, and where it improved (`rollout_signal`): the
shares of the final reward's in-group variance that the quadrant explains and that the mode-independent quality
explains, over the samples the update trains on (GARDO's novelty weighting of the advantage is not in the final
reward, so not here); the quality's share of the variance within the groups' clusters (what the detail steps learn
from under train.detail_baseline "cluster"; the in-group share where nothing was clustered); and the mean quality
of all the rollouts in the favoured quadrant and in the other three."""
COLUMNS = ["arm", "seed", "round", *[f"{s}_{m}" for s in SPLITS for m in METRICS], *SIGNAL]
MATCH_KEY = "train_quality"
"""The quality that defines matched quality: mode-independent, on the training captions."""
FINAL = ("train_quality", "train_quality_gain", "heldout_quality", "heldout_quality_gain", "heldout_reward",
         "heldout_mode_entropy", "train_mode_entropy", "heldout_modes_over_10pct", "train_modes_over_10pct",
         "heldout_favoured_share", "train_favoured_share", "heldout_embedding_diversity", "train_embedding_diversity",
         "heldout_vendi", "train_vendi", *SIGNAL)
MATCHED = ("heldout_mode_entropy", "train_mode_entropy", "heldout_modes_over_10pct", "train_modes_over_10pct",
           "heldout_embedding_diversity", "train_embedding_diversity", "heldout_vendi", "train_vendi")
COST = ("rollout_nfe_per_round", "wall_s")
"""Per run: the rollout's transformer evaluations per round (summed over shards; Pro-GRPO's pruning lowers it) and
the seconds its training took in the experiment (every run of one call shares its jobs x threads)."""
GOALS = {"learn_se": 3.0, "collapse_entropy": 0.3, "quality_share": 0.97, "entropy_at_match": 0.85,
         "entropy_ratio": 3.0, "modes_kept": 3.5}
"""The issue's thresholds for the shipped presets (means over seeds)."""


@dataclass(frozen=True)
class Arm:
    name: str
    config: RunConfig


def build_arms(config_dir: Path, betas: list[float] | None = None, overrides: dict | None = None,
               presets: dict[str, str] | None = None) -> list[Arm]:
    """The methods from their presets, then an optional beta sweep of the bonus alone ("bonus-beta<b>").

    Every arm must share the budget (rounds, prompts, batch, learning rate, evaluation, checkpoint): a comparison
    at different budgets says nothing about the methods. The seed is set per run by `run_experiment`.
    """
    overrides = overrides or {}
    presets = presets or PRESETS
    arms = [Arm(name, load_config(config_dir / preset, overrides)) for name, preset in presets.items()]
    for beta in betas or []:
        arms.append(Arm(f"bonus-beta{beta:g}", load_config(config_dir / PRESETS["bonus"], overrides | {
            "cluster.beta": beta})))
    budget = {(a.config.rounds, a.config.seed, a.config.sampling.group_size, a.config.sampling.prompts_per_round,
               a.config.train.batch_size, a.config.train.learning_rate, tuple(a.config.sampling.prompts),
               tuple(a.config.eval.prompts), a.config.eval.samples_per_prompt, a.config.eval.every,
               a.config.model.pretrained) for a in arms}
    if len(budget) != 1:
        raise ValueError(f"the presets in {config_dir} differ in budget or seeds; the comparison needs one: {budget}")
    return arms


def _leaves(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def config_differences(config: RunConfig, reference: RunConfig) -> dict[str, tuple[object, object]]:
    """The named fields (dotted paths, `name` left out) in which `config` differs from `reference`:
    {field: (reference's value, config's value)}, sorted by field."""
    mine, theirs = _leaves(config.to_dict()), _leaves(reference.to_dict())
    return {k: (theirs.get(k), mine.get(k)) for k in sorted(mine.keys() | theirs.keys())
            if k != "name" and mine.get(k) != theirs.get(k)}


ARM_REFERENCES = {"diversegrpo-paper": METHOD}
"""Arms compared with another arm than the baseline in the differences section: the paper's DiverseGRPO with the
shipped one, so the table says which of this project's additions separate them."""


def difference_lines(arms: list[Arm], baseline: str = BASELINE) -> list[str]:
    """Markdown: per arm, the named fields in which it differs from the baseline (or its ARM_REFERENCES arm)."""
    by = {a.name: a.config for a in arms}
    lines = ["## How the arms differ", "", "| arm | against | differing fields (against's value -> arm's) |",
             "|---|---|---|"]
    for arm in arms:
        ref = ARM_REFERENCES.get(arm.name, baseline)
        if arm.name == baseline or ref not in by:
            continue
        diff = config_differences(arm.config, by[ref])
        lines.append(f"| {arm.name} | {ref} | "
                     + ("; ".join(f"`{k}`: {a!r} -> {b!r}" for k, (a, b) in diff.items()) or "none") + " |")
    return [*lines, ""]


def with_seed(config: RunConfig, seed: int) -> RunConfig:
    data = config.to_dict()
    data["seed"] = seed
    return config_from_json(json.dumps(data))


def run_id_of(arm: str, config: RunConfig) -> str:
    """Arm, seed and config hash: a finished run is reused only for the very same recipe."""
    return f"experiment-{arm}-s{config.seed}-{config.sha256()[:10]}"


def favoured_mode(config: RunConfig) -> int:
    """The quadrant the run's toy reward favours most (`reward.options.mode_preference`, else `MODE_PREFERENCE`),
    whose share shows the collapse."""
    preference = np.asarray(config.reward.options.get("mode_preference", MODE_PREFERENCE), dtype=np.float64)
    if preference.shape != (N_MODES,) or preference.max() <= 0:
        raise ValueError(f"config field 'reward.options.mode_preference': the experiment compares the arms against "
                         f"one favoured quadrant, so it needs {N_MODES} entries with a positive one; got "
                         f"{preference.tolist()}")
    return int(preference.argmax())


def eval_rows(store: ArtifactStore, arm: str, seed: int, run_id: str, rounds: list[int],
              favoured: int) -> list[dict]:
    """One row per evaluated round: the evaluate stage's per-prompt measures, averaged per caption split
    (`favoured_share`: the share of quadrant `favoured`)."""
    rows = []
    for r in rounds:
        record = read_evaluation(store, run_id, r)
        if record is None:
            raise FileNotFoundError(f"run {run_id}: no evaluation after round {r} in {store.uri}")
        row: dict = {"arm": arm, "seed": seed, "round": r}
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


def at_matched(rows: list[dict], target: float, key: str, quality_key: str = MATCH_KEY) -> float:
    """`key` where a run's quality path first reaches `target`, linearly interpolated between evaluations;
    nan when it never does."""
    prev = None
    for row in rows:
        if row[quality_key] >= target:
            if prev is None or row[quality_key] == prev[quality_key]:
                return float(row[key])
            w = (target - prev[quality_key]) / (row[quality_key] - prev[quality_key])
            return float(prev[key] + w * (row[key] - prev[key]))
        prev = row
    return math.nan


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) over the finite values; nan for none."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def per_run(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    runs: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        runs.setdefault((row["arm"], row["seed"]), []).append(row)
    return {k: sorted(v, key=lambda r: r["round"]) for k, v in runs.items()}


def summarise(rows: list[dict], arms: list[str], baseline: str = BASELINE,
              costs: dict[tuple[str, int], dict[str, float]] | None = None) -> tuple[list[dict], float]:
    """Per arm, over seeds: final measures and quality gains over round 0, the diversity at matched quality, and
    with `costs` ((arm, seed) -> `cost_of`) the cost.

    Matched quality is the baseline's mean final `MATCH_KEY` quality. A run that never reaches it counts with its
    final evaluation (the nearest to the target it has); `matched_reached` says how many seeds did reach it.
    """
    runs = per_run(rows)
    target = mean_std([rs[-1][MATCH_KEY] for (a, _), rs in runs.items() if a == baseline])[0]
    summary = []
    for arm in arms:
        mine = [rs for (a, _), rs in runs.items() if a == arm]
        if not mine:
            continue
        finals = [dict(rs[-1]) | {f"{s}_quality_gain": rs[-1][f"{s}_quality"] - rs[0][f"{s}_quality"]
                                  for s in SPLITS} for rs in mine]
        entry: dict = {"arm": arm, "seeds": len(mine), "rounds": mine[0][-1]["round"]}
        entry |= {key: mean_std([f[key] for f in finals]) for key in FINAL}
        reached = [np.isfinite(at_matched(rs, target, MATCH_KEY)) for rs in mine]
        entry["matched_reached"] = int(sum(reached))
        for key in MATCHED:
            entry[f"matched_{key}"] = mean_std([at_matched(rs, target, key) if ok else rs[-1][key]
                                                for rs, ok in zip(mine, reached, strict=True)])
        if costs:
            entry |= {key: mean_std([c[key] for (a, _), c in costs.items() if a == arm]) for key in COST}
        summary.append(entry)
    return summary, target


def check_goals(summary: list[dict], baseline: str = BASELINE, method: str = METHOD) -> list[dict]:
    """The issue's goals, each decided by the numbers printed beside it; [] when an arm is missing."""
    by = {s["arm"]: s for s in summary}
    if baseline not in by or method not in by:
        return []
    flow, div = by[baseline], by[method]
    gain, gain_std = flow["heldout_quality_gain"]
    se = gain_std / math.sqrt(flow["seeds"])
    train_gain, train_std = flow["train_quality_gain"]
    match_gain = flow[f"{MATCH_KEY}_gain"][0]
    share = div[f"{MATCH_KEY}_gain"][0] / match_gain if match_gain > 0 else math.nan
    flow_h = flow["heldout_mode_entropy"][0]
    div_h = div["matched_heldout_mode_entropy"][0]
    modes = div["matched_heldout_modes_over_10pct"][0]
    n_sigma = gain / se if se > 0 else (math.inf if gain > 0 else -math.inf)
    goals = [
        ("Flow-GRPO learns: held-out quality gain >= 3 standard errors over seeds",
         flow["seeds"] >= 3 and n_sigma >= GOALS["learn_se"],
         f"gain {gain:+.4f}, SE {se:.4f} ({n_sigma:.1f} SE, {flow['seeds']} seeds); training captions "
         f"{train_gain:+.4f}, SE {train_std / math.sqrt(flow['seeds']):.4f}"),
        ("Flow-GRPO collapses: final held-out mode entropy <= 0.3", flow_h <= GOALS["collapse_entropy"],
         f"{flow_h:.3f} (training captions {flow['train_mode_entropy'][0]:.3f})"),
        ("DiverseGRPO reaches >= 97% of Flow-GRPO's quality gain (training captions, the matched quality)",
         share >= GOALS["quality_share"],
         f"{share:.1%} ({div[f'{MATCH_KEY}_gain'][0]:+.4f} vs {match_gain:+.4f}); held-out "
         f"{div['heldout_quality_gain'][0]:+.4f} vs {gain:+.4f}"),
        ("DiverseGRPO's held-out mode entropy at matched quality >= 0.85", div_h >= GOALS["entropy_at_match"],
         f"{div_h:.3f} ({div['matched_reached']}/{div['seeds']} seeds reach the matched quality)"),
        ("... and >= 3x Flow-GRPO's", div_h >= GOALS["entropy_ratio"] * flow_h, f"{div_h:.3f} vs 3 x {flow_h:.3f}"),
        ("... with >= 3.5 of 4 modes (>= 10% each) kept on held-out captions", modes >= GOALS["modes_kept"],
         f"{modes:.2f}"),
    ]
    out = [{"goal": g, "met": bool(ok), "numbers": n} for g, ok, n in goals]
    if "sareg" in by and "bonus" in by:  # the paper's ablation: each part helps, together they do best
        parts = {a: by[a]["matched_heldout_mode_entropy"][0] for a in ("sareg", "bonus")}
        helps = all(v > flow_h for v in parts.values())
        best = div_h >= max(parts.values())
        out.append({"goal": "Ablation: SA-Reg alone and the bonus alone each keep more entropy than Flow-GRPO at "
                            "matched quality, and together (DiverseGRPO) the most", "met": helps and best,
                    "numbers": f"SA-Reg {parts['sareg']:.3f}, bonus {parts['bonus']:.3f}, DiverseGRPO {div_h:.3f},"
                               f" Flow-GRPO {flow_h:.3f}"})
    return out


def path_means(rows: list[dict], arms: list[str]) -> list[dict]:
    """Per arm and evaluated round: mean and std over seeds of every measure (the arm's path)."""
    out = []
    for arm in arms:
        for rnd in sorted({r["round"] for r in rows if r["arm"] == arm}):
            at = [r for r in rows if r["arm"] == arm and r["round"] == rnd]
            out.append({"arm": arm, "round": rnd, "seeds": len(at),
                        **{c: mean_std([r[c] for r in at]) for c in COLUMNS[3:]}})
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point matches or beats in both coordinates (higher is better), sorted by the first."""
    front = {p for p in points if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in points)}
    return sorted(front)


def _fmt(value) -> str:
    if isinstance(value, tuple):
        mean, std = value
        return "n/a" if not np.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(records: list[dict], keys: list[str]) -> list[str]:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return lines + ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in records]


def markdown(summary: list[dict], target: float, goals: list[dict], rows: list[dict], arms: list[str],
             header: str) -> str:
    final_keys = ["arm", "seeds", "rounds", *FINAL]
    matched_keys = ["arm", "matched_reached", *[f"matched_{k}" for k in MATCHED]]
    path_keys = ["arm", "round", "seeds", "train_quality", "heldout_quality", "heldout_mode_entropy",
                 "train_mode_entropy", "heldout_modes_over_10pct", "heldout_favoured_share", "heldout_vendi",
                 "train_vendi", *SIGNAL]
    lines = [header, "", "Every cell: mean ± sample standard deviation over seeds (the goal on learning uses the "
             "standard error, std / sqrt(seeds)). Quality is the mode-independent `toy_quality`; gains are over "
             "the base model (round 0, the same for every run).", "",
             "## At the end of the budget", "", *_table(summary, final_keys), "",
             f"## At matched quality: training-caption quality {target:.4f}, where Flow-GRPO ends (mean over seeds)",
             "", "Interpolated along each run's evaluations where its quality on the training captions first reaches "
             "the target; a run "
             "that never reaches it counts with its final evaluation (`matched_reached` counts those that do).", "",
             *_table(summary, matched_keys), ""]
    if goals:
        lines += ["## The issue's goals", "", "| goal | result | numbers |", "|---|---|---|",
                  *[f"| {g['goal']} | {'PASS' if g['met'] else 'FAIL'} | {g['numbers']} |" for g in goals], ""]
    if COST[0] in summary[0]:
        lines += ["## Cost", "", "Rollout transformer evaluations (NFEs) per round, and the wall time of one run's "
                  "training in this experiment (runs share the machine as the header says, so compare the arms "
                  "with each other, not with other machines).", "",
                  *_table(summary, ["arm", "heldout_quality_gain", "heldout_mode_entropy", *COST]), ""]
    lines += ["## Paths (mean ± std over seeds per evaluated round)", "", *_table(path_means(rows, arms), path_keys),
              ""]
    return "\n".join(lines)


def plot(rows: list[dict], arms: list[str], path: Path, target: float | None = None) -> None:
    """Each arm's mean path through quality x diversity (held-out and training captions), seed bands (±1 std of
    the diversity, x bars ±1 std of the quality) and the Pareto front of all arms' mean points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("mode_entropy", "mode entropy / log 4"), ("embedding_diversity", "mean pairwise embedding distance"),
              ("vendi", "Vendi score (embeddings)")]
    means = path_means(rows, arms)
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    for row_axes, split in zip(axes, SPLITS, strict=True):
        for ax, (metric, label) in zip(row_axes, panels, strict=True):
            qkey, key = f"{split}_quality", f"{split}_{metric}"
            points = []
            for i, arm in enumerate(arms):
                pts = [m for m in means if m["arm"] == arm]
                x, xs = np.array([m[qkey][0] for m in pts]), np.array([m[qkey][1] for m in pts])
                y, ys = np.array([m[key][0] for m in pts]), np.array([m[key][1] for m in pts])
                ax.fill_between(x, y - ys, y + ys, color=f"C{i}", alpha=0.15, lw=0)
                ax.errorbar(x, y, xerr=xs, color=f"C{i}", marker="o", ms=3, lw=2 if arm in PRESETS else 1,
                            elinewidth=0.6, label=arm)
                ax.annotate(f"r{pts[-1]['round']}", (x[-1], y[-1]), fontsize=7, color=f"C{i}")
                points += [(float(a), float(b)) for a, b in zip(x, y, strict=True) if np.isfinite(a + b)]
            front = pareto_front(points)
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="k", ls=":", lw=1.2,
                    label="Pareto front")
            if target is not None and f"{split}_quality" == MATCH_KEY and np.isfinite(target):
                ax.axvline(target, color="grey", lw=0.8, ls="--")
            ax.set_xlabel(f"{'held-out' if split == 'heldout' else 'training'} captions: toy quality")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Toy world: each arm's path through quality and diversity (mean over seeds; bands ±1 std; "
                 "top: held-out captions; bottom: training captions, dashed: the matched quality)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _write_csv(path: Path, records: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(path, buf.getvalue())


def summary_records(summary: list[dict]) -> tuple[list[dict], list[str]]:
    """The summary flattened for CSV: <key>_mean and <key>_std columns."""
    out = []
    for s in summary:
        rec: dict = {}
        for k, v in s.items():
            if isinstance(v, tuple):
                rec[f"{k}_mean"], rec[f"{k}_std"] = v
            else:
                rec[k] = v
        out.append(rec)
    return out, list(out[0])


def _run_arm(config_json: str, store_root: str, run_id: str, threads: int) -> float:
    """One run in a worker process (spawned: torch state is not shared); returns its wall time."""
    import torch

    torch.set_num_threads(threads)
    start = time.monotonic()
    run_inprocess(StageContext(config_from_json(config_json), LocalStore(store_root), run_id))
    return time.monotonic() - start


def _finished(store: ArtifactStore, run_id: str, config: RunConfig) -> bool:
    return has_evaluation(store, run_id, config.rounds)


def run_experiment(config_dir: Path, output: Path, betas: list[float] | None = None, overrides: dict | None = None,
                   log: Callable[[str], object] = print, jobs: int = 2, threads: int = 1,
                   seeds: list[int] | tuple[int, ...] = DEFAULT_SEEDS, presets: dict[str, str] | None = None,
                   html: bool = True) -> dict[str, Path]:
    """Run every arm x seed (`jobs` at a time, `threads` torch threads each; finished runs of the same recipe are
    reused), then write experiment.csv (every evaluation), experiment-summary.csv, experiment.md, experiment.png
    and, with `html`, one run report per seed overlaying the arms (experiment-seed<N>.html)."""
    output.mkdir(parents=True, exist_ok=True)
    store = LocalStore(output / "store")
    arms = build_arms(config_dir, betas, overrides, presets)
    favoured = {arm.name: favoured_mode(arm.config) for arm in arms}  # before training: a bad preference fails now
    start = time.monotonic()
    runs = [(arm.name, seed, with_seed(arm.config, seed)) for seed in seeds for arm in arms]
    todo = [r for r in runs if not _finished(store, run_id_of(r[0], r[2]), r[2])]
    log(f"{len(runs)} runs ({len(arms)} arms x {len(seeds)} seeds), {len(runs) - len(todo)} already finished; "
        f"{jobs} at a time")
    timings: dict[str, float] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_arm, config.to_json(), str(output / "store"), run_id_of(name, config),
                               threads): (name, seed, run_id_of(name, config)) for name, seed, config in todo}
        for future in as_completed(futures):
            name, seed, run_id = futures[future]
            timings[f"{name}-s{seed}"] = future.result()
            put_experiment_wall(store, run_id, {"seconds": timings[f"{name}-s{seed}"], "jobs": jobs,
                                                "threads": threads})
            log(f"{name:<12} seed {seed}: trained in {timings[f'{name}-s{seed}']:.0f}s "
                f"({len(timings)}/{len(todo)}, {time.monotonic() - start:.0f}s elapsed)")
    rows, costs = [], {}
    for name, seed, config in runs:
        run_id = run_id_of(name, config)
        events = load_events(store, run_id)
        rows += with_signal(eval_rows(store, name, seed, run_id, config.eval_rounds(), favoured[name]),
                            rollout_signal(store, run_id, events, favoured[name]))
        costs[name, seed] = cost_of(store, run_id, events)
    names = [a.name for a in arms]
    summary, target = summarise(rows, names, costs=costs)
    goals = check_goals(summary)
    for s in summary:
        log(f"{s['arm']:<12} held-out quality gain {_fmt(s['heldout_quality_gain'])}, mode entropy "
            f"{_fmt(s['heldout_mode_entropy'])} held-out, {_fmt(s['train_mode_entropy'])} training; at matched "
            f"quality {_fmt(s['matched_heldout_mode_entropy'])} ({s['matched_reached']}/{s['seeds']} reach it)")
    for g in goals:
        log(f"  {'PASS' if g['met'] else 'FAIL'}  {g['goal']}: {g['numbers']}")
    paths = {"csv": output / "experiment.csv", "summary": output / "experiment-summary.csv",
             "markdown": output / "experiment.md", "plot": output / "experiment.png"}
    _write_csv(paths["csv"], rows, COLUMNS)
    _write_csv(paths["summary"], *summary_records(summary))
    cfg = arms[0].config
    wall = time.monotonic() - start
    held_out = sum(p not in cfg.sampling.prompts for p in cfg.eval.prompts)
    header = (f"# Toy reproduction: {len(names)} arms x {len(seeds)} seeds ({', '.join(map(str, seeds))})\n\n"
              f"{cfg.rounds} rounds of {cfg.sampling.prompts_per_round} prompts x {cfg.sampling.group_size} images, "
              f"batch {cfg.train.batch_size}, lr {cfg.train.learning_rate:g}; evaluation every {cfg.eval.every} "
              f"rounds on {len(cfg.eval.prompts)} captions ({held_out} held out) x {cfg.eval.samples_per_prompt} "
              f"samples, {cfg.eval.num_steps} ODE steps. "
              + (f"{len(timings)} runs trained in this call, {jobs} at a time, {threads} torch thread(s) each: wall "
                 f"time {wall:.0f}s, {min(timings.values()):.0f}-{max(timings.values()):.0f}s per run"
                 if timings else "Every run reused from the store (trained by an earlier call)."))
    differences = difference_lines(arms)
    for line in differences[4:-1]:
        log(line)
    header += "\n\n" + "\n".join(differences)
    atomic_write_text(paths["markdown"], markdown(summary, target, goals, rows, names, header))
    plot(rows, names, paths["plot"], target)
    if html:
        from dgrpo.runtime.report import write_html

        for seed in seeds:
            ids = [run_id_of(name, config) for name, s, config in runs if s == seed]
            paths[f"html-seed{seed}"] = write_html(store, ids, output / f"experiment-seed{seed}.html")
    return paths
