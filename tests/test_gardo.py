"""GARDO as a baseline: novelty-scaled advantages, the uncertainty-gated KL, reference resets carried between
rounds, and the "multi" reward that supplies the auxiliary rewards; hand-computed cases and the stages."""

import numpy as np
import pytest
import torch
from support import small_config

from dgrpo import artifacts
from dgrpo.config import ConfigError
from dgrpo.contracts import REWARDS, SCORES, UPDATE_METRICS
from dgrpo.methods import gardo
from dgrpo.methods.gardo import LAST_RESET, REFERENCE_PREFIX
from dgrpo.models import load_policy
from dgrpo.models.trajectories import SamplerSpec, sample_sde
from dgrpo.rewards import load_reward
from dgrpo.sampling import Schedule, step_with_logprob
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.policy_io import ADAPTER_KIND, OPTIMIZER_KIND
from dgrpo.stages.update import run_update
from dgrpo.stages.update.replay import Replay
from dgrpo.stages.update.train import regularizer_terms

TWO_REWARDS = {"reward.name": "multi", "reward.options": {
    "main": {"name": "toy"}, "auxiliary": {"plain": {"name": "toy", "options": {"mode_preference": [0, 0, 0, 0]}}}}}
"""The toy reward with its favoured-quadrant bonus as the main reward, the same reward without the bonus beside it."""
GATED = {**TWO_REWARDS, "gardo.kl_gate": True, "gardo.aux_components": ["plain"], "gardo.kl_gate_share": 0.5,
         "train.regularizer": "kl", "train.beta_kl": 0.04, "sampling.num_steps": 4}


def test_novelty_by_hand():
    emb = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    # cosines: e0.e1 = 0.6, e0.e2 = 0, e1.e2 = 0.8, e3 = e0; nearest distances: 0, 0.2, 0.2, 0
    np.testing.assert_allclose(gardo.novelty(emb), [0.0, 0.2, 0.2, 0.0], atol=1e-12)


def test_novelty_advantages_by_hand():
    """Upstream's formula: (r - mean) x novelty / mean(novelty) at or above the mean, r - mean below, no std."""
    r = np.array([1.0, 2.0, 3.0, 6.0, 0.0, 1.0])
    nov = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.5])
    adv = gardo.novelty_advantages(r, ["a"] * 4 + ["b"] * 2, nov, clip=4.0)
    # group a: mean 3, mean novelty 0.25: [-2, -1, 0 x 1.2, 3 x 1.6 = 4.8 -> clipped 4]; b: mean 0.5, scale 1
    np.testing.assert_allclose(adv, [-2.0, -1.0, 0.0, 4.0, -0.5, 0.5], atol=1e-12)
    kept = np.array([True, True, True, False, True, True])
    adv = gardo.novelty_advantages(r, ["a"] * 4 + ["b"] * 2, nov, clip=10.0, kept=kept)
    np.testing.assert_allclose(adv[:4], [-1.0, 0.0, 1.0 * 0.3 / 0.2, 0.0], atol=1e-12)  # mean 2, mean novelty 0.2
    same = gardo.novelty_advantages(np.array([1.0, 3.0]), ["a", "a"], np.zeros(2), clip=5.0)
    np.testing.assert_allclose(same, [-1.0, 1.0])  # identical images: no novelty signal, scale 1


def test_uncertainty_and_gate_by_hand():
    main = np.array([0.9, 0.8, 0.7, 0.6, 0.5])     # ranks 1 2 3 4 5
    aux = np.array([0.1, 0.9, 0.8, 0.7, 0.95])     # ranks 5 2 3 4 1
    u = gardo.uncertainty(main, [aux])
    np.testing.assert_array_equal(u, [-4.0, 0.0, 0.0, 0.0, 4.0])
    # non-negative values [0, 0, 0, 4]: the 50th percentile is 0, so only u > 0 is gated
    assert gardo.kl_gate(u, 0.5).tolist() == [False, False, False, False, True]
    assert not gardo.kl_gate(np.array([-1.0, -2.0]), 0.5).any()
    # ties at the maximum: upstream's strict percentile rule gates nothing, "top_share" gates the share
    tied = np.array([-3.0, 0.0, 1.0, 2.0, 2.0, 2.0])
    assert not gardo.kl_gate(tied, 0.5).any()  # the 50th percentile of [0, 1, 2, 2, 2] is 2
    assert gardo.kl_gate(tied, 0.5, "top_share").tolist() == [False, False, False, True, True, True]
    assert gardo.kl_gate(tied, 0.2, "top_share").tolist() == [False, False, False, True, False, False]
    assert gardo.descending_ranks(np.array([1.0, 1.0, 2.0])).tolist() == [2.0, 3.0, 1.0]  # stable ties


def test_reset_rule():
    assert gardo.reset_due([1e-4, 5e-4], 3e-4, 1, 15) and not gardo.reset_due([1e-4, 2e-4], 3e-4, 14, 15)
    assert gardo.reset_due([0.0], 3e-4, 15, 15)


def test_multi_reward_keeps_the_auxiliary_scores_as_components():
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    images[0, 2:8, 2:8] = [255, 0, 0]
    score = load_reward("multi", TWO_REWARDS["reward.options"])
    out = score(images, ["a red square"] * 2)
    main = load_reward("toy")(images, ["a red square"] * 2)
    np.testing.assert_array_equal(out["reward"], main["reward"])
    np.testing.assert_array_equal(out["plain"], main["quality"])
    with pytest.raises(ValueError, match="reward.options.main"):
        load_reward("multi", {"main": "toy", "auxiliary": {}})


def test_cluster_writes_novelty_and_the_gate(store):
    ctx = StageContext(small_config(**GATED, **{"gardo.novelty_advantage": True}), store, "gardo")
    rollouts = run_rollout(ctx, 0).outputs["rollouts"]
    rewards = run_reward(ctx, 0, rollouts).outputs["rewards"]
    result = run_cluster(ctx, 0, rollouts, rewards)
    rows = artifacts.read_table(store, result.outputs["scores"], SCORES).to_pylist()
    reward_rows = artifacts.read_table(store, rewards, REWARDS).to_pylist()
    main = np.array([r["reward"] for r in reward_rows])
    plain = np.array([dict(r["components"])["plain"] for r in reward_rows])
    expected = gardo.kl_gate(gardo.uncertainty(main, [plain]), 0.5)
    assert [r["kl_gate"] for r in rows] == expected.tolist()
    assert result.metrics["kl_gated_share"] == expected.mean()
    for group in {r["group_id"] for r in rows}:
        g = [r for r in rows if r["group_id"] == group]
        np.testing.assert_allclose([r["novelty"] for r in g],
                                   gardo.novelty(np.array([r["embedding"] for r in g], dtype=np.float64)), atol=1e-12)
    missing = StageContext(small_config(**{**GATED, "gardo.aux_components": ["aesthetic"]}), store, "missing")
    with pytest.raises(ValueError, match="gardo.aux_components.*no component 'aesthetic'"):
        run_cluster(missing, 0, rollouts, rewards)


def test_gated_kl_applies_to_gated_samples_only():
    """regularizer_terms with per-sample KL weights (gate / gated share): the KL of the gated samples only."""
    cfg = small_config(**{"train.regularizer": "kl", "train.beta_kl": 0.04})
    policy = load_policy(cfg.model)
    policy.add_lora(cfg.lora, seed=0)
    with torch.no_grad():
        for name, p in policy.transformer.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)  # away from the reference (B = 0 is the base model)
    s = cfg.sampling
    cond = policy.encode_prompts(["a red square", "a blue cross"])
    traj = sample_sde(policy, cond, [1, 2], spec=SamplerSpec(num_steps=2, shift=s.shift, noise_level=s.noise_level,
                                                             guidance_scale=s.guidance_scale))

    def kl(weight):
        batch = Replay(latents=traj.latents, cond=cond, old_log_probs=traj.log_probs, schedule=Schedule(traj.sigmas),
                       kl_weight=weight).batch(torch.arange(2), 0, policy.device)
        v = policy.velocity(batch.x, batch.timesteps, cond, s.guidance_scale)
        step = step_with_logprob(v, batch.x, batch.step, method=s.method, noise_level=s.noise_level,
                                 prev_sample=batch.x_next)
        return float(regularizer_terms(policy, cfg, batch=batch, step=step)[0].detach())

    each = [kl(torch.tensor([1.0, 0.0])), kl(torch.tensor([0.0, 1.0]))]
    assert min(each) > 0 and kl(torch.zeros(2)) == 0.0
    assert kl(torch.tensor([2.0, 0.0])) == pytest.approx(2 * each[0], rel=1e-6)  # the first sample, gated share 1/2
    assert kl(None) == pytest.approx((each[0] + each[1]), rel=1e-6)  # unweighted: the batch mean


def test_reference_reset_is_carried_between_rounds(store):
    """A KL threshold every step passes: the reference is reset after round 0 to the adapter round 0 wrote, and kept
    in the optimizer state; round 1 then starts exactly at its reference (KL 0 on its first step), where without
    the reset it starts away from the base model."""
    overrides = {"train.regularizer": "kl", "train.beta_kl": 0.04, "gardo.reference_reset": True,
                 "gardo.reset_kl_threshold": 1e-12, "sampling.num_steps": 3, "sampling.group_size": 4,
                 "train.batch_size": 4, "train.micro_batch_size": 4, "train.train_fraction": 0.34}  # 2 steps, 1 trained
    ctx = StageContext(small_config(**overrides), store, "reset")
    first_kls = {}
    adapter = state = None
    for r in range(2):
        rollouts = run_rollout(ctx, r, adapter).outputs["rollouts"]
        scores = run_cluster(ctx, r, rollouts, run_reward(ctx, r, rollouts).outputs["rewards"]).outputs["scores"]
        out = run_update(ctx, r, rollouts, scores, adapter, state)
        metrics_table = artifacts.read_table(store, out.outputs["metrics"],
                                             UPDATE_METRICS).to_pylist()
        first_kls[r] = metrics_table[0]["kl"]
        assert out.metrics["reference_resets"] == 1 and out.metrics["reference_age"] == 0
        adapter, state = out.outputs["adapter"], out.outputs["optimizer_state"]
        tensors = artifacts.read_tensors(store, state, OPTIMIZER_KIND)
        assert int(tensors[LAST_RESET]) == r + 1
        weights = artifacts.read_tensors(store, adapter, ADAPTER_KIND)
        assert sorted(torch.cat([w.flatten() for w in weights.values()]).tolist()) == sorted(torch.cat(
            [tensors[k].flatten() for k in tensors if k.startswith(REFERENCE_PREFIX + "lora.")]).tolist())
    assert first_kls[0] == 0.0 and first_kls[1] == 0.0  # round 0: the base model; round 1: the reset reference

    no_reset = StageContext(small_config(**{**overrides, "gardo.reference_reset": False}), store, "no-reset")
    adapter = state = None
    for r in range(2):  # round 1 trains from round 0's commit of its own fine-tune
        rollouts = run_rollout(no_reset, r, adapter).outputs["rollouts"]
        scores = run_cluster(no_reset, r, rollouts, run_reward(no_reset, r, rollouts).outputs["rewards"]
                             ).outputs["scores"]
        out = run_update(no_reset, r, rollouts, scores, adapter, state)
        adapter, state = out.outputs["adapter"], out.outputs["optimizer_state"]
    metrics_table = artifacts.read_table(store, out.outputs["metrics"],
                                         UPDATE_METRICS).to_pylist()
    assert metrics_table[0]["kl"] > 0 and "reference_resets" not in out.metrics


@pytest.mark.parametrize(("overrides", "field"), [
    ({"gardo.kl_gate": True, "gardo.aux_components": ["x"]}, "gardo.kl_gate"),
    ({"gardo.kl_gate": True, "train.regularizer": "kl", "train.beta_kl": 0.1}, "gardo.aux_components"),
    ({"gardo.reference_reset": True}, "gardo.reference_reset"),
    ({"gardo.novelty_advantage": True, "cluster.embedder": None}, "cluster.embedder"),
    ({"gardo.kl_gate_share": 0.0}, "gardo.kl_gate_share"),
])
def test_config_refusals_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        small_config(**overrides)
