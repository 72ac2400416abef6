"""SA-Reg and KL in the update: where they act, what they cost, and where their gradients go."""

import math

import pytest
import torch
from support import small_config

from dgrpo.config import ConfigError
from dgrpo.methods.base import methods_of
from dgrpo.models import load_policy
from dgrpo.models.trajectories import SamplerSpec, sample_sde
from dgrpo.objectives import clipped_policy_loss, sa_regularizer, step_kl
from dgrpo.sampling import Schedule, flow_sigmas, sde_step_with_logprob, step_with_logprob
from dgrpo.stages.update.replay import Replay
from dgrpo.stages.update.train import regularizer_terms, step_regularizer


def test_sa_regularizer_formula_and_detached_reference():
    mean = torch.tensor([[1.0, 3.0], [0.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    value = sa_regularizer(mean, ref)
    torch.testing.assert_close(value, torch.tensor([2.5, 0.0]))  # mean of squares, no std denominator
    value.sum().backward()
    torch.testing.assert_close(mean.grad, torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    assert ref.grad is None


@pytest.fixture
def setup():
    cfg = small_config(**{"train.regularizer": "both", "train.beta_kl": 0.04, "train.sa_lambda": 1.0,
                          "train.structure_steps": 3})
    policy = load_policy(cfg.model)
    policy.add_lora(cfg.lora, seed=0)
    cond = policy.encode_prompts(["a red square", "a blue cross"])
    traj = sample_sde(policy, cond, [1, 2], spec=SamplerSpec.from_config(cfg.sampling))
    return cfg, policy, cond, traj


def _terms(cfg, policy, cond, traj, j):
    s = cfg.sampling
    batch = Replay(latents=traj.latents, cond=cond, old_log_probs=traj.log_probs,
                   schedule=Schedule(traj.sigmas)).batch(torch.arange(len(traj.latents)), j, policy.device)
    v = policy.velocity(batch.x, batch.timesteps, cond, s.guidance_scale)
    step = step_with_logprob(v, batch.x, batch.step, method=s.method, noise_level=s.noise_level,
                             prev_sample=batch.x_next)
    return regularizer_terms(policy, cfg, batch=batch, step=step,
                             regularizer=step_regularizer(methods_of(cfg), cfg=cfg, j=j))


def _perturb(policy, amount):
    with torch.no_grad():
        for name, p in policy.transformer.named_parameters():
            if "lora_B" in name:
                p.add_(amount)


def test_zero_at_the_initial_adapter_positive_after_an_update(setup):
    cfg, policy, cond, traj = setup
    kl, sa = _terms(cfg, policy, cond, traj, 0)
    assert float(sa.detach()) == 0.0 and float(kl.detach()) == 0.0  # B = 0: the policy is the reference
    # one GRPO step on the policy loss alone moves the adapter away from the reference
    opt = torch.optim.Adam(policy.lora_parameters(), lr=1e-2)
    s = cfg.sampling
    for j in range(3):
        x, x_next = traj.latents[:, j], traj.latents[:, j + 1]
        v = policy.velocity(x, traj.sigmas[j].expand(2), cond, s.guidance_scale)
        step = step_with_logprob(v, x, Schedule(traj.sigmas).step(j), method=s.method, noise_level=s.noise_level,
                                 prev_sample=x_next)
        loss, _, _ = clipped_policy_loss(step.log_prob, traj.log_probs[:, j], torch.tensor([1.0, -1.0]), 1e-3)
        loss.backward()
    opt.step()
    for j in range(3):
        kl, sa = _terms(cfg, policy, cond, traj, j)
        assert float(sa.detach()) > 0 and float(kl.detach()) > 0


def test_steps_at_or_beyond_k_contribute_nothing_and_skip_the_reference(setup, monkeypatch):
    cfg, policy, cond, traj = setup
    _perturb(policy, 0.01)
    only_sa = small_config(**{"train.regularizer": "sa", "train.sa_lambda": 1.0, "train.structure_steps": 3})
    calls = []
    original = policy.adapter_disabled
    monkeypatch.setattr(policy, "adapter_disabled", lambda: (calls.append(1), original())[1])
    for j in range(only_sa.num_train_steps):
        kl, sa = _terms(only_sa, policy, cond, traj, j)
        assert float(kl.detach()) == 0.0
        assert (float(sa.detach()) > 0) == (j < 3)
    assert len(calls) == 3  # the reference forward ran on steps 0, 1, 2 only
    calls.clear()
    _terms(small_config(), policy, cond, traj, 0)  # regularizer none: no reference pass at all
    assert calls == []


def test_gradients_flow_only_through_the_policy(setup):
    cfg, policy, cond, traj = setup
    _perturb(policy, 0.01)
    for p in policy.transformer.parameters():
        p.grad = None
    _, sa = _terms(cfg, policy, cond, traj, 0)
    sa.backward()
    lora = {id(p) for p in policy.lora_parameters()}
    with_grad = [n for n, p in policy.transformer.named_parameters() if p.grad is not None]
    assert with_grad and all("lora_" in n for n in with_grad)
    assert all(p.grad is None for p in policy.transformer.parameters() if id(p) not in lora)
    assert any(float(p.grad.abs().sum()) > 0 for p in policy.lora_parameters())


@pytest.mark.parametrize(("overrides", "field"), [
    ({"train.regularizer": "l2"}, "train.regularizer"),
    ({"train.beta_kl": 0.04}, "train.beta_kl"),  # a KL weight without the KL regulariser is a silent no-op
    ({"train.regularizer": "kl"}, "train.beta_kl"),
    ({"train.regularizer": "sa", "train.sa_lambda": 0.0}, "train.sa_lambda"),
    ({"train.regularizer": "sa", "train.structure_steps": 10}, "train.structure_steps"),  # 9 of 10 steps train
])
def test_regularizer_config_is_validated(overrides, field):
    with pytest.raises(ConfigError, match=rf"'{field}'"):
        small_config(**overrides)


def _upstream_kl(x, v, v_ref, sigma, sigma_next, sigma_max, noise_level):
    """yifan123/flow_grpo's KL, written out from its formulas: sde_step_with_logprob's prev_sample_mean and std_dev_t
    (no sqrt(-dt) since July 2025), then train_sd3.py's ((mean - mean_ref)^2).mean() / (2 std_dev_t^2)."""
    dt = sigma_next - sigma
    std_dev_t = math.sqrt(sigma / (1 - (sigma_max if sigma == 1 else sigma))) * noise_level

    def mean(velocity):
        return (x * (1 + std_dev_t**2 / (2 * sigma) * dt)
                + velocity * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt)
    return ((mean(v) - mean(v_ref)) ** 2).mean(dim=(1, 2, 3)) / (2 * std_dev_t**2)


def test_kl_is_upstreams_on_the_sd35_schedule():
    """SD3.5's schedule (shift 3, 10 steps, noise level 0.7), its 9 trained steps: kl_form "flow_grpo" is upstream's
    value; the exact Gaussian KL ("gaussian", the old form) is 1 / |dt| larger, 25.1x on the first step to 3.7x on
    the ninth, so a recipe's beta would weigh it that much harder."""
    sigmas = flow_sigmas(10, shift=3.0)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    v_ref = v + 0.05 * torch.randn(2, 4, 8, 8, generator=g)
    ratios = []
    for j in range(9):
        s, s_next, s_max = sigmas[j].item(), sigmas[j + 1].item(), sigmas[1].item()
        step = sde_step_with_logprob(v, x, s, s_next, s_max, 0.7, generator=g)
        ref = sde_step_with_logprob(v_ref, x, s, s_next, s_max, 0.7, prev_sample=step.prev_sample)
        upstream = _upstream_kl(x.double(), v.double(), v_ref.double(), s, s_next, s_max, 0.7).float()
        torch.testing.assert_close(step_kl(step, ref.prev_sample_mean, "flow_grpo"), upstream, rtol=1e-4, atol=0)
        ratios.append(float((step_kl(step, ref.prev_sample_mean, "gaussian") / upstream).mean()))
    assert ratios == pytest.approx([25.1, 21.4, 18.0, 14.9, 12.0, 9.5, 7.3, 5.4, 3.7], abs=0.06)


@pytest.mark.parametrize("j", [0, 2])
def test_the_update_uses_the_configured_kl_form(setup, j):
    """regularizer_terms's KL: kl_form "gaussian" is 1 / |dt_j| times the default "flow_grpo" on the same step."""
    cfg, policy, cond, traj = setup
    _perturb(policy, 0.01)
    gaussian = small_config(**{"train.regularizer": "kl", "train.beta_kl": 0.04, "train.kl_form": "gaussian"})
    flow_grpo = small_config(**{"train.regularizer": "kl", "train.beta_kl": 0.04})
    assert flow_grpo.train.kl_form == "flow_grpo"
    exact, upstream = (float(_terms(c, policy, cond, traj, j)[0].detach()) for c in (gaussian, flow_grpo))
    assert upstream > 0
    dt = float(traj.sigmas[j] - traj.sigmas[j + 1])
    assert exact / upstream == pytest.approx(1 / dt, rel=1e-4)


def test_sa_reg_acts_on_the_trajectorys_first_steps_under_an_sde_window(setup):
    """With an SDE window the structure steps are still the trajectory's first structure_steps: step 1 of a window
    starting there is regularised, step 3 is not."""
    _, policy, cond, traj = setup
    _perturb(policy, 0.01)
    windowed = small_config(**{"train.regularizer": "sa", "train.structure_steps": 2, "sampling.sde_window_size": 2,
                               "sampling.sde_window_range": [1, 5]})
    assert float(_terms(windowed, policy, cond, traj, 1)[1].detach()) > 0
    assert float(_terms(windowed, policy, cond, traj, 3)[1].detach()) == 0.0


def test_sa_reg_with_a_window_that_never_reaches_its_steps_is_refused():
    with pytest.raises(ConfigError, match="'sampling.sde_window_range'.*train.structure_steps"):
        small_config(**{"train.regularizer": "sa", "train.structure_steps": 2, "sampling.sde_window_size": 2,
                        "sampling.sde_window_range": [2, 6]})
