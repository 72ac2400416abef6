"""The diversity target (issue 27): the controller's step, its checks, and the cluster stage continuing from the state
the round trains from: beta rises when the rollouts' diversity is below the target and falls above it."""

import math

import numpy as np
import pytest
import torch
from support import small_config

from dgrpo import artifacts
from dgrpo.config import ConfigError
from dgrpo.contracts import SCORES
from dgrpo.diversity import mean_pairwise_distance
from dgrpo.lineage import Provenance
from dgrpo.methods.diversity_target import adapt, measure_diversity
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.policy_io import OPTIMIZER_KIND

TARGET = {"cluster.method": "diverse", "cluster.beta": 2.0, "train.regularizer": "sa", "train.sa_lambda": 1.0,
          "methods": {"diversity_target": {"fraction": 0.95, "gain": 2.0, "error_clip": 0.2}}}
STEP = {"gain": 2.0, "error_clip": 0.2, "bounds": [0.01, 30.0]}


def test_below_the_target_raises_above_it_lowers_and_bounds_hold():
    assert adapt(1.0, measured=0.4, target=0.5, **STEP) == pytest.approx(math.exp(2.0 * 0.2))  # e = 0.2
    assert adapt(1.0, measured=0.55, target=0.5, **STEP) == pytest.approx(math.exp(-2.0 * 0.1))  # e = -0.1
    assert adapt(1.0, measured=0.5, target=0.5, **STEP) == 1.0
    assert adapt(1.0, measured=0.0, target=0.5, **STEP) == pytest.approx(math.exp(0.4))  # e clipped to 0.2
    assert adapt(29.0, measured=0.0, target=0.5, **STEP) == 30.0  # clipped to the bound
    assert adapt(0.011, measured=9.0, target=0.5, **STEP) == 0.01


def test_measures_average_the_groups():
    rng = np.random.default_rng(0)
    groups = [rng.normal(size=(8, 5)) for _ in range(3)]
    assert measure_diversity(groups, "mean_distance") == pytest.approx(np.mean([mean_pairwise_distance(g)
                                                                                for g in groups]))
    same = [np.ones((8, 5))] * 2
    assert measure_diversity(same, "vendi") == pytest.approx(1.0)


@pytest.mark.parametrize(("options", "field", "words"), [
    ({"fraction": 0.9, "target": 0.3}, "methods.diversity_target.fraction", "exactly one"),
    ({}, "methods.diversity_target.fraction", "exactly one"),
    ({"fraction": 0.9, "adapt": ["beta", "beta"]}, "methods.diversity_target.adapt", "once each"),
    ({"fraction": 0.9, "beta_range": [2.0, 1.0]}, "methods.diversity_target.beta_range", "min <= max"),
])
def test_bad_options_name_the_field(options, field, words):
    with pytest.raises(ConfigError, match=rf"{field}.*{words}"):
        small_config(**{**TARGET, "methods": {"diversity_target": options}})


def test_a_coefficient_needs_the_part_it_adapts():
    with pytest.raises(ConfigError, match=r"methods.diversity_target.adapt.*cluster.method"):
        small_config(**{**TARGET, "cluster.method": "passthrough"})
    with pytest.raises(ConfigError, match=r"methods.diversity_target.adapt.*train.regularizer"):
        small_config(**{**TARGET, "train.regularizer": "none"})
    small_config(**{**TARGET, "train.regularizer": "none",
                    "methods": {"diversity_target": {"fraction": 0.9, "adapt": ["beta"]}}})


@pytest.fixture(scope="module")
def rollout_round(tmp_path_factory):
    from dgrpo.store import LocalStore

    store = LocalStore(tmp_path_factory.mktemp("target") / "store")
    ctx = StageContext(small_config(**TARGET), store, "target")
    rollouts = run_rollout(ctx, 0).outputs["rollouts"]
    return ctx, rollouts, run_reward(ctx, 0, rollouts).outputs["rewards"]


def _state(ctx, **control) -> artifacts.ArtifactRef:
    """An optimizer-state artifact holding only the controller's state, as a previous round's update leaves it."""
    prov = Provenance(stage="update", run_id="target", config_sha256="-", round=0, inputs={}, seeds={})
    tensors = {f"control.{k}": torch.tensor(v, dtype=torch.float64) for k, v in control.items()}
    return artifacts.write_tensors(ctx.store, tensors, OPTIMIZER_KIND, prov)


def test_first_round_sets_the_target_from_the_base_models_diversity(rollout_round):
    ctx, rollouts, rewards = rollout_round
    result = run_cluster(ctx, 0, rollouts, rewards)
    s = artifacts.read_table(ctx.store, result.outputs["scores"], SCORES).to_pydict()
    measured = result.metrics["diversity_measured"]
    assert measured == pytest.approx(result.metrics["diversity_mean"])  # the stage's own in-group diversity
    assert s["diversity_target"] == pytest.approx([0.95 * measured] * 16)
    grows = math.exp(2.0 * (0.05 / 0.95))  # the target is 0.95 d: e = (0.95 d - d) / (0.95 d) = -0.05 / 0.95
    assert s["beta"] == pytest.approx([2.0 / grows] * 16) and s["sa_lambda"] == pytest.approx([1.0 / grows] * 16)


def test_the_controller_continues_from_the_state_the_round_trains_from(rollout_round):
    ctx, rollouts, rewards = rollout_round
    measured = run_cluster(ctx, 1, rollouts, rewards).metrics["diversity_measured"]
    below = run_cluster(ctx, 1, rollouts, rewards, optimizer_state=_state(
        ctx, beta=3.0, sa_lambda=0.5, diversity_target=measured * 1.1))
    above = run_cluster(ctx, 1, rollouts, rewards, optimizer_state=_state(
        ctx, beta=3.0, sa_lambda=0.5, diversity_target=measured * 0.9))
    assert below.metrics["beta"] > 3.0 and below.metrics["sa_lambda"] > 0.5
    assert above.metrics["beta"] < 3.0 and above.metrics["sa_lambda"] < 0.5
    for result in (below, above):
        s = artifacts.read_table(ctx.store, result.outputs["scores"], SCORES).to_pydict()
        assert set(s["beta"]) == {result.metrics["beta"]}
    # the bonus is paid at the adapted beta: the same clusters, the bonus scaled by beta's ratio
    b, a = (np.asarray(artifacts.read_table(ctx.store, r.outputs["scores"], SCORES).column("bonus"))
            for r in (below, above))
    np.testing.assert_allclose(b * above.metrics["beta"], a * below.metrics["beta"], rtol=1e-12)
