"""The toy experiment's bookkeeping: arms share one budget, and diversity is compared at matched reward."""

from pathlib import Path

import pytest

from dgrpo.toyworld.experiment import PRESETS, at_matched_reward, build_arms, summarise

CONFIGS = Path(__file__).parents[1] / "configs"


def test_arms_differ_only_in_their_method_sections():
    arms = build_arms(CONFIGS, betas=[0.5, 1.0, 2.0])
    names = [a.name for a in arms]
    assert names == ["flowgrpo", "sareg", "diversegrpo", "drift", "progrpo", "gardo", "bonus-beta0.5", "bonus-beta1",
                     "bonus-beta2"]
    base = arms[0].config.to_dict()
    for arm in arms[1:]:
        other = arm.config.to_dict()
        # GARDO's reward adds its auxiliary reward beside the same main reward
        assert {k for k in base if base[k] != other[k]} <= {"name", "cluster", "train", "drift", "progrpo", "gardo",
                                                            "reward"}
        assert {k for k in base["train"] if base["train"][k] != other["train"][k]} <= {
            "regularizer", "sa_lambda", "sa_steps", "beta_kl"}
    assert arms[0].config.cluster.method == "passthrough" and arms[0].config.train.regularizer == "none"
    assert arms[1].config.train.regularizer == "sa" and arms[1].config.cluster.method == "passthrough"
    assert arms[2].config.cluster.method == "diverse" and arms[2].config.train.regularizer == "sa"
    assert arms[-1].config.cluster.beta == 2.0 and arms[-1].config.train.regularizer == "none"


def test_budget_mismatch_is_refused(tmp_path):
    for name, preset in PRESETS.items():
        text = (CONFIGS / preset).read_text()
        if name == "sareg":
            text += "rounds: 31\n"
        (tmp_path / preset).write_text(text)
    with pytest.raises(ValueError, match="budget"):
        build_arms(tmp_path, betas=[])


def test_matched_reward_interpolates_along_the_curve():
    rows = [{"arm": "a", "reward": 0.5, "h": 1.0}, {"arm": "a", "reward": 0.7, "h": 0.6},
            {"arm": "a", "reward": 0.9, "h": 0.2}]
    assert at_matched_reward(rows, 0.6, "h") == pytest.approx(0.8)
    assert at_matched_reward(rows, 0.5, "h") == 1.0
    assert at_matched_reward(rows, 0.95, "h") != at_matched_reward(rows, 0.95, "h")  # never reached: nan
    keys = {"mode_entropy": 0.9, "modes_over_10pct": 4, "favoured_share": 0.25, "embedding_diversity": 0.6}
    rows = [{"arm": "x", "round": 0, "reward": 0.5, **keys}, {"arm": "x", "round": 5, "reward": 0.8, **keys},
            {"arm": "y", "round": 0, "reward": 0.5, **keys}, {"arm": "y", "round": 5, "reward": 0.6, **keys}]
    summary, matched = summarise(rows, ["x", "y"])
    assert matched == 0.6 and [s["arm"] for s in summary] == ["x", "y"]
