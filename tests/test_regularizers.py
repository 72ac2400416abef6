"""SA-Reg and KL in the update: where they act, what they cost, and where their gradients go."""

import pytest
import torch
from conftest import small_config

from dgrpo.config import ConfigError
from dgrpo.models import load_policy
from dgrpo.models.trajectories import sample_sde
from dgrpo.objectives import clipped_policy_loss, sa_regularizer
from dgrpo.sampling import step_with_logprob
from dgrpo.stages.update.train import regularizer_terms


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
                          "train.sa_steps": 3})
    policy = load_policy(cfg.model)
    policy.add_lora(cfg.lora, seed=0)
    cond = policy.encode_prompts(["a red square", "a blue cross"])
    traj = sample_sde(policy, cond, [1, 2], cfg.sampling.num_steps, cfg.sampling.shift, cfg.sampling.noise_level,
                      cfg.sampling.guidance_scale)
    return cfg, policy, cond, traj


def _terms(cfg, policy, cond, traj, j):
    s = cfg.sampling
    x, x_next = traj.latents[:, j], traj.latents[:, j + 1]
    v = policy.velocity(x, traj.sigmas[j].expand(len(x)), cond, s.guidance_scale)
    step = step_with_logprob(s.method, v, x, traj.sigmas[j].item(), traj.sigmas[j + 1].item(),
                             traj.sigmas[1].item(), s.noise_level, prev_sample=x_next)
    return regularizer_terms(policy, cfg, j, j, x, x_next, traj.sigmas, cond, step)


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
        step = step_with_logprob(s.method, v, x, traj.sigmas[j].item(), traj.sigmas[j + 1].item(),
                                 traj.sigmas[1].item(), s.noise_level, prev_sample=x_next)
        loss, _, _ = clipped_policy_loss(step.log_prob, traj.log_probs[:, j], torch.tensor([1.0, -1.0]), 1e-3)
        loss.backward()
    opt.step()
    for j in range(3):
        kl, sa = _terms(cfg, policy, cond, traj, j)
        assert float(sa.detach()) > 0 and float(kl.detach()) > 0


def test_steps_at_or_beyond_k_contribute_nothing_and_skip_the_reference(setup, monkeypatch):
    cfg, policy, cond, traj = setup
    _perturb(policy, 0.01)
    only_sa = small_config(**{"train.regularizer": "sa", "train.sa_lambda": 1.0, "train.sa_steps": 3})
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
    ({"train.regularizer": "sa", "train.sa_steps": 10}, "train.sa_steps"),  # only 9 of 10 steps are trained
])
def test_regularizer_config_is_validated(overrides, field):
    with pytest.raises(ConfigError, match=rf"'{field}'"):
        small_config(**overrides)
