"""The experiment's goals, each named, with its threshold and why, in docs/experiment.md#goals: decided from the
summary of the evaluation seeds (the presets were tuned on the others), each by the numbers printed beside it."""

import math

from dgrpo_lab.arms import BASELINE, METHOD
from dgrpo_lab.columns import MATCH_KEY

GOALS_DOC = "docs/experiment.md#goals"
"""Where a reader finds every goal: its name, threshold and why."""
GOALS = {"baseline-learns": 3.0, "baseline-collapses": 0.3, "quality-matched": 0.97, "diversity-kept": 0.85,
         "diversity-ratio": 3.0, "modes-kept": 3.5}
"""Each goal's threshold, by the name docs/experiment.md#goals gives it (means over the deciding seeds):
Flow-GRPO's held-out gain in standard errors, its final held-out mode entropy (at most), DiverseGRPO's share of
its training-caption gain, DiverseGRPO's held-out mode entropy at matched quality, that as a multiple of
Flow-GRPO's, the modes (>= 10% each) kept at matched quality."""
GOAL_NAMES = (*GOALS, "ablation")
"""Every goal, in the order it is printed; the ablation has no number, only an order of the arms."""


def verdict(goal: dict, group: str) -> str:
    """PASS or FAIL on the evaluation seeds; on the tuning seeds "pass (tuning)" or "fail (tuning)": shown, not
    decided."""
    if group == "evaluation":
        return "PASS" if goal["met"] else "FAIL"
    return f"{'pass' if goal['met'] else 'fail'} ({group})"


def check_goals(summary: list[dict], baseline: str = BASELINE, method: str = METHOD) -> list[dict]:
    """The goals of docs/experiment.md#goals as {name, goal, met, numbers}, decided on one seed group's `summary`
    (`summarise`); [] when the baseline or the method arm is missing. The ablation needs the SA-Reg and bonus arms.
    """
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
        ("baseline-learns", "Flow-GRPO learns: held-out quality gain >= 3 standard errors over seeds",
         flow["seeds"] >= 3 and n_sigma >= GOALS["baseline-learns"],
         f"gain {gain:+.4f}, SE {se:.4f} ({n_sigma:.1f} SE, {flow['seeds']} seeds); training captions "
         f"{train_gain:+.4f}, SE {train_std / math.sqrt(flow['seeds']):.4f}"),
        ("baseline-collapses", "Flow-GRPO collapses: final held-out mode entropy <= 0.3",
         flow_h <= GOALS["baseline-collapses"],
         f"{flow_h:.3f} (training captions {flow['train_mode_entropy'][0]:.3f})"),
        ("quality-matched", "DiverseGRPO reaches >= 97% of Flow-GRPO's quality gain (training captions, the matched "
         "quality)", share >= GOALS["quality-matched"],
         f"{share:.1%} ({div[f'{MATCH_KEY}_gain'][0]:+.4f} vs {match_gain:+.4f}); held-out "
         f"{div['heldout_quality_gain'][0]:+.4f} vs {gain:+.4f}"),
        ("diversity-kept", "DiverseGRPO's held-out mode entropy at matched quality >= 0.85",
         div_h >= GOALS["diversity-kept"], f"{div_h:.3f} ({div['matched_reached']}/{div['seeds']} seeds reach the "
                                           "matched quality)"),
        ("diversity-ratio", "... and >= 3x Flow-GRPO's", div_h >= GOALS["diversity-ratio"] * flow_h,
         f"{div_h:.3f} vs 3 x {flow_h:.3f}"),
        ("modes-kept", "... with >= 3.5 of 4 modes (>= 10% each) kept on held-out captions",
         modes >= GOALS["modes-kept"], f"{modes:.2f}"),
    ]
    if "sareg" in by and "bonus" in by:  # the paper's ablation: each part helps, together they do best
        parts = {a: by[a]["matched_heldout_mode_entropy"][0] for a in ("sareg", "bonus")}
        goals.append(("ablation", "SA-Reg alone and the bonus alone each keep more entropy than Flow-GRPO at matched "
                      "quality, and together (DiverseGRPO) the most",
                      all(v > flow_h for v in parts.values()) and div_h >= max(parts.values()),
                      f"SA-Reg {parts['sareg']:.3f}, bonus {parts['bonus']:.3f}, DiverseGRPO {div_h:.3f}, Flow-GRPO "
                      f"{flow_h:.3f}"))
    return [{"name": name, "goal": goal, "met": bool(ok), "numbers": numbers} for name, goal, ok, numbers in goals]
