"""The DRIFT, Pro-GRPO and GARDO presets: built with `base:` on the recipe presets, differing only in what the
method changes."""

from pathlib import Path

import pytest

from dgrpo.config import load_config
from dgrpo.methods.progrpo import nfe_of_schedule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(("preset", "base", "differs"), [
    ("toy-drift", "toy-flowgrpo", {"drift"}),
    ("toy-progrpo", "toy-flowgrpo", {"progrpo"}),
    ("toy-gardo", "toy-flowgrpo", {"gardo", "reward", "train"}),
    ("sd35m-drift", "sd35m-flowgrpo", {"drift"}),
    ("sd35m-progrpo", "sd35m-flowgrpo", {"progrpo", "sampling"}),
    ("sd35m-gardo", "sd35m-flowgrpo", {"gardo", "reward", "train"}),
])
def test_method_presets_build_on_the_recipe(preset, base, differs):
    cfg, ref = load_config(CONFIGS / f"{preset}.yaml").to_dict(), load_config(CONFIGS / f"{base}.yaml").to_dict()
    assert cfg["name"] == preset
    assert {k for k in cfg if cfg[k] != ref[k]} == differs | {"name"}


def test_method_presets_turn_their_options_on():
    drift = load_config(CONFIGS / "toy-drift.yaml").drift
    assert drift.outlier_filter and drift.prompt_noise and drift.shaping_weight > 0
    pro = load_config(CONFIGS / "sd35m-progrpo.yaml")
    assert pro.progrpo.mode == "expand_prune" and pro.sampling.group_size == pro.progrpo.prune_sizes[-1] == 12
    assert nfe_of_schedule(48, 10, pro.progrpo.prune_steps, pro.progrpo.prune_sizes) == 360  # this project's schedule
    toy_pro = load_config(CONFIGS / "toy-progrpo.yaml")
    assert toy_pro.sampling.group_size == load_config(CONFIGS / "toy-flowgrpo.yaml").sampling.group_size
    gardo = load_config(CONFIGS / "sd35m-gardo.yaml")
    assert gardo.gardo.novelty_advantage and gardo.gardo.kl_gate and gardo.gardo.reference_reset
    assert gardo.reward.name == "multi" and gardo.gardo.aux_components == ["aesthetic", "imagereward"]
    assert gardo.train.regularizer == "kl" and gardo.cluster.embedder == "dreamsim"
