"""The arms compared over seeds: mean and sample standard deviation of the final measures, the quality gain over
the base model, and the diversity at matched quality, per seed group (tuning and evaluation seeds apart).

Matched quality is where a run's quality path on the training captions first reaches the quality Flow-GRPO ends at
there (mean over the group's seeds). Training captions, because that is the quality the reward optimises, and
held-out quality can fall while a policy collapses (it did with a held-out colour, docs/experiment.md): a target
below the base model would be "reached" by every run at round 0. Held-out quality and diversity are reported beside.
"""

import math

import numpy as np
from dgrpo_lab.arms import BASELINE
from dgrpo_lab.columns import COST, FINAL, MATCH_KEY, MATCHED, MEASURES, SPLITS
from dgrpo_lab.seeds import GROUPS, seed_group


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) over the finite values; nan for none."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


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


def per_run(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    runs: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        runs.setdefault((row["arm"], row["seed"]), []).append(row)
    return {k: sorted(v, key=lambda r: r["round"]) for k, v in runs.items()}


def summarise(rows: list[dict], arms: list[str], baseline: str = BASELINE,
              costs: dict[tuple[str, int], dict[str, float]] | None = None) -> tuple[list[dict], float]:
    """Per arm, over the seeds of `rows`: final measures and quality gains over round 0, the diversity at matched
    quality, and with `costs` ((arm, seed) -> `cost_of`) the cost.

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
            seeds = {seed for (a, seed) in runs if a == arm}
            entry |= {key: mean_std([c[key] for (a, s), c in costs.items() if a == arm and s in seeds])
                      for key in COST}
        summary.append(entry)
    return summary, target


Groups = dict[str, tuple[list[dict], float]]
"""Seed group -> (its `summarise` entries, its matched-quality target)."""


def summarise_groups(rows: list[dict], arms: list[str], baseline: str = BASELINE,
                     costs: dict[tuple[str, int], dict[str, float]] | None = None) -> Groups:
    """`summarise` per seed group present in `rows` (evaluation first), each entry labelled with its `seed_group`:
    a group's mean never mixes seeds the presets were tuned on with seeds they were not."""
    out = {}
    for group in GROUPS:
        mine = [r for r in rows if seed_group(r["seed"]) == group]
        if mine:
            summary, target = summarise(mine, arms, baseline, costs)
            out[group] = ([{"arm": s["arm"], "seed_group": group} | s for s in summary], target)
    return out


def path_means(rows: list[dict], arms: list[str]) -> list[dict]:
    """Per arm and evaluated round: mean and std over seeds of every measure (the arm's path)."""
    out = []
    for arm in arms:
        for rnd in sorted({r["round"] for r in rows if r["arm"] == arm}):
            at = [r for r in rows if r["arm"] == arm and r["round"] == rnd]
            out.append({"arm": arm, "round": rnd, "seeds": len(at), **{c: mean_std([r[c] for r in at])
                                                                        for c in MEASURES}})
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point matches or beats in both coordinates (higher is better), sorted by the first."""
    front = {p for p in points if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in points)}
    return sorted(front)


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
