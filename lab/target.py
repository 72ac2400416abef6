"""The diversity-target comparison (`dgrpo experiment --target-arms`): does the controller hold the rollouts'
diversity at its target, at what quality against fixed-beta DiverseGRPO, and which K does `structure_steps: auto`
pick (docs/experiment.md, "Diversity target").

Read from each run's records: the cluster stage's per-round rollout diversity (the training rollouts', and the
fixed-noise probe's where the controller measures one) and the update's K under auto; the quality gains come from
the summary the experiment already builds.
"""

import numpy as np
from dgrpo_lab.analysis import mean_std
from dgrpo_lab.arms import BASELINE, METHOD, run_id_of
from dgrpo_lab.report import fmt

from dgrpo.config import RunConfig
from dgrpo.runtime.report.summary import load_events
from dgrpo.store import ArtifactStore

TARGET_ARM = "target"
FIXED_BETA_PREFIX = METHOD
"""Arms whose name starts with this hold a fixed beta (the shipped DiverseGRPO and its beta variants)."""
BAND = 0.05
"""How far from the target, as a share of the base model's diversity, a round may be (the issue's +-0.05 around 0.95
of the base model's)."""
FROM_ROUND = 5
"""Rounds from which the band applies (1-based): the controller starts from the preset's beta and lambda."""
BASE_ROUNDS = 3
"""The base model's diversity is the mean of the first rounds' measurements, as the controller takes it
(methods.diversity_target.base_rounds): one round is a noisy reference."""
SMOOTH = 5
"""Rounds of the moving average reported beside the raw rounds: one round's training rollouts (6 groups of 16
images) measure the base model's diversity with a 2.1% standard deviation on their own."""
PROBE = "diversity_probe"
"""The cluster metric of a controller's fixed-noise probe (methods.diversity_target.probe_prompts): the same noise
every round, so it moves with the policy only; where a run has it, the band is judged on it."""
ROLLOUTS = "diversity_mean"
"""The cluster metric of the training rollouts' in-group diversity, which every run has."""
FAR_ABOVE = 0.2
"""A method's final training-caption mode entropy is "far above" the baseline's when at least this much higher (a
fifth of the measure's range)."""


def shares(metrics: list[dict[str, float]], key: str) -> np.ndarray:
    """A run's per-round `key` as a share of its first BASE_ROUNDS rounds' mean (the base model's)."""
    series = np.array([m[key] for m in metrics])
    return series / series[:BASE_ROUNDS].mean()


def late(share: np.ndarray) -> np.ndarray:
    """`share` from round FROM_ROUND on (a shorter run: its last round)."""
    return share[min(FROM_ROUND, len(share)) - 1:]


def deviation(share: np.ndarray, fraction: float) -> float:
    """The largest distance of `share` from `fraction` from round FROM_ROUND on."""
    return float(np.abs(late(share) - fraction).max())


def tracking(store: ArtifactStore, run_id: str, fraction: float) -> dict[str, float]:
    """One run's rollout diversity (its probe's where it has one, else its training rollouts') as a share of the base
    model's, from round FROM_ROUND on: the largest distance from `fraction`, raw and over a SMOOTH-round moving
    average, the same of the training rollouts alone, the share of rounds in the band, whether a probe was measured,
    the largest shortfall below it alone (what the controller guards against: a collapse), and K where the run chose
    it (structure_steps auto)."""
    events = load_events(store, run_id)
    by_round = {e.round: e.metrics for e in events if e.stage == "cluster"}
    metrics = [by_round[r] for r in sorted(by_round)]
    probed = all(PROBE in m for m in metrics)
    share = shares(metrics, PROBE if probed else ROLLOUTS)
    window = min(SMOOTH, len(share))
    smooth = np.convolve(share, np.ones(window) / window, mode="valid")
    ks = {e.metrics["structure_steps"] for e in events if e.stage == "update" and "structure_steps" in e.metrics}
    return {"probed": float(probed), "max_deviation": deviation(share, fraction),
            "max_deviation_smoothed": float(np.abs(smooth[max(FROM_ROUND - window, 0):] - fraction).max())
            if len(share) >= FROM_ROUND else deviation(share, fraction),
            "max_deviation_rollouts": deviation(shares(metrics, ROLLOUTS), fraction),
            "max_shortfall": float(max(fraction - late(share).min(), 0.0)),
            "in_band": float(np.mean(np.abs(late(share) - fraction) <= BAND + 1e-12)),
            "final_share": float(share[-5:].mean()), "k": ks.pop() if len(ks) == 1 else float("nan")}


def final_by_seed(rows: list[dict], arm: str, key: str) -> dict[int, float]:
    """Each seed's value of `key` at the run's last evaluation."""
    last: dict[int, dict] = {}
    for r in rows:
        if r["arm"] == arm and (r["seed"] not in last or r["round"] > last[r["seed"]]["round"]):
            last[r["seed"]] = r
    return {seed: r[key] for seed, r in last.items()}


def target_lines(store: ArtifactStore, runs: list[tuple[str, int, RunConfig]], rows: list[dict],
                 summary: list[dict], fraction: float = 0.95) -> list[str]:
    """Markdown: per arm, how the rollouts' diversity tracked `fraction` of the base model's (every arm, for
    comparison; the controller's arms aim at it), K under auto, and the per-seed checks of the target's goals."""
    lines = ["## Diversity target", "",
             f"Rollout diversity as a share of the first {BASE_ROUNDS} rounds' mean (the base model's), from round "
             f"{FROM_ROUND} on, against {fraction:g} (band +-{BAND:g}): measured on the controller's fixed-noise probe "
             f"where the arm has one (the same noise every round), else on the training rollouts; the moving average "
             f"over {SMOOTH} rounds and the training rollouts' own deviation beside it.",
             "", "| arm | seeds | measured on | max deviation | max deviation (moving avg) | max shortfall | training "
             "rollouts' max deviation | rounds in band | final share | K |", "|---" * 10 + "|"]
    for arm in dict.fromkeys(name for name, _, _ in runs):
        per_seed = [tracking(store, run_id_of(n, config), fraction) for n, _, config in runs if n == arm]
        stat = {k: mean_std([t[k] for t in per_seed]) for k in per_seed[0]}
        ks = sorted({int(t["k"]) for t in per_seed if not np.isnan(t["k"])})
        cells = [fmt(stat[k]) for k in ("max_deviation", "max_deviation_smoothed", "max_shortfall",
                                         "max_deviation_rollouts", "in_band", "final_share")]
        lines.append(f"| {arm} | {len(per_seed)} | {'probe' if stat['probed'][0] == 1 else 'rollouts'} | "
                     f"{' | '.join(cells)} | {', '.join(map(str, ks)) or '-'} |")
    by = {s["arm"]: s for s in summary}
    fixed = {a: by[a]["train_quality_gain"][0] for a in by if a.startswith(FIXED_BETA_PREFIX)}
    lines += ["", *goal_lines(store, runs, rows, by, fixed, fraction)]
    return lines


def goal_lines(store: ArtifactStore, runs: list[tuple[str, int, RunConfig]], rows: list[dict], by: dict,
               fixed: dict[str, float], fraction: float) -> list[str]:
    """The target's goals on these seeds, each with its numbers."""
    out = []
    if TARGET_ARM in by:
        per_seed = [tracking(store, run_id_of(n, c), fraction) for n, _, c in runs if n == TARGET_ARM]
        for goal, key, what in (("target-held", "max_deviation", "every round's, as the controller measures it"),
                                ("target-held-mean", "max_deviation_smoothed", f"its {SMOOTH}-round mean"),
                                ("target-floor-held", "max_shortfall", "every round's, below the target only"),
                                ("target-held-rollouts", "max_deviation_rollouts",
                                 "every round's, on the training rollouts")):
            held = [t[key] <= BAND + 1e-12 for t in per_seed]
            out.append(f"- {goal}: the target arm's rollout diversity ({what}) within +-{BAND:g} of {fraction:g} "
                       f"from round {FROM_ROUND} on every seed: {sum(held)}/{len(held)} seeds "
                       f"({'PASS' if all(held) else 'FAIL'}; worst {max(t[key] for t in per_seed):.3f})")
        if fixed:
            best = max(fixed, key=fixed.get)
            gain = by[TARGET_ARM]["train_quality_gain"][0]
            out.append(f"- target-quality: the target arm's training-caption quality gain {gain:+.4f} against the best "
                       f"fixed-beta arm's ({best}) {fixed[best]:+.4f} ({'PASS' if gain >= fixed[best] else 'FAIL'})")
    if BASELINE in by and METHOD in by:
        start = {r["seed"]: r["train_quality"] for r in rows if r["round"] == 0 and r["arm"] == METHOD}
        gain, entropy = ({a: final_by_seed(rows, a, key) for a in (BASELINE, METHOD)}
                         for key in ("train_quality", "train_mode_entropy"))
        seeds = sorted(gain[METHOD])
        good = [s for s in seeds if gain[METHOD][s] >= gain[BASELINE][s]
                and entropy[METHOD][s] >= entropy[BASELINE][s] + FAR_ABOVE]
        detail = ", ".join(f"seed {s}: {gain[METHOD][s] - start[s]:+.3f} vs {gain[BASELINE][s] - start[s]:+.3f}, "
                           f"entropy {entropy[METHOD][s]:.2f} vs {entropy[BASELINE][s]:.2f}" for s in seeds)
        out.append(f"- method-per-seed: DiverseGRPO at least Flow-GRPO's training-caption quality gain and its final "
                   f"training-caption mode entropy >= Flow-GRPO's + {FAR_ABOVE:g}, on every seed but at most one: "
                   f"{len(good)}/{len(seeds)} seeds ({'PASS' if len(good) >= len(seeds) - 1 else 'FAIL'}; {detail})")
    return out
