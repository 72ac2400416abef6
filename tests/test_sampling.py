import math

import pytest
import torch

from dgrpo.sampling import cps_step_with_logprob, euler_step, flow_sigmas, sde_step_with_logprob

SD35_SIGMAS = [1, 0.960129, 0.913349, 0.857692, 0.790368, 0.707278, 0.602151, 0.464876, 0.278049, 0.008929, 0]


def test_sd35_schedule_matches_published_values():
    sigmas = flow_sigmas(10, shift=3.0)
    assert sigmas.tolist() == pytest.approx(SD35_SIGMAS, abs=1e-6)


def test_first_step_noise_std_is_noise_level():
    sigmas = flow_sigmas(10, shift=3.0)
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    step = sde_step_with_logprob(v, x, sigmas[0].item(), sigmas[1].item(), sigmas[1].item(), 0.7)
    assert float(step.std_dev_t) == pytest.approx(0.7, abs=1e-6)


def test_zero_noise_is_the_euler_step():
    x, v = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    step = sde_step_with_logprob(v, x, 0.8, 0.6, 0.9, noise_level=0.0, prev_sample=x)
    torch.testing.assert_close(step.prev_sample_mean, euler_step(v, x, 0.8, 0.6))
    torch.testing.assert_close(euler_step(v, x, 0.8, 0.6), x - 0.2 * v)


def test_logprob_of_own_sample_is_reproduced_exactly():
    x, v = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    g = torch.Generator().manual_seed(0)
    first = sde_step_with_logprob(v, x, 0.9, 0.7, 0.95, 0.7, generator=g)
    again = sde_step_with_logprob(v, x, 0.9, 0.7, 0.95, 0.7, prev_sample=first.prev_sample)
    assert torch.equal(first.log_prob, again.log_prob)
    assert torch.exp(again.log_prob - first.log_prob).eq(1).all()


def test_logprob_is_the_gaussian_density_mean():
    x, v = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    step = sde_step_with_logprob(v, x, 0.5, 0.25, 0.9, 0.5, prev_sample=torch.zeros(1, 1, 2, 2))
    s = 0.5 * math.sqrt(0.5 / 0.5) * math.sqrt(0.25)
    assert float(step.log_prob) == pytest.approx(-math.log(s) - 0.5 * math.log(2 * math.pi), rel=1e-6)


def test_per_sample_sigmas_match_scalar_calls():
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    prev = torch.randn(2, 3, 4, 4)
    batched = sde_step_with_logprob(v, x, torch.tensor([0.9, 0.5]), torch.tensor([0.7, 0.3]), 0.95, 0.7,
                                    prev_sample=prev)
    for i, (s, s_next) in enumerate([(0.9, 0.7), (0.5, 0.3)]):
        single = sde_step_with_logprob(v[i:i + 1], x[i:i + 1], s, s_next, 0.95, 0.7, prev_sample=prev[i:i + 1])
        torch.testing.assert_close(batched.log_prob[i:i + 1], single.log_prob)


def test_sigma_one_uses_second_sigma():
    x, v = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    step = sde_step_with_logprob(v, x, 1.0, 0.9, 0.9, 0.7)
    assert torch.isfinite(step.prev_sample).all() and torch.isfinite(step.log_prob).all()


def test_cps_mean_and_logprob():
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    step = cps_step_with_logprob(v, x, 0.8, 0.6, 0.7, prev_sample=x)
    std = 0.6 * math.sin(0.7 * math.pi / 2)
    expected = (x - 0.8 * v) * 0.4 + (x + 0.2 * v) * math.sqrt(0.36 - std**2)
    torch.testing.assert_close(step.prev_sample_mean, expected)
    torch.testing.assert_close(step.log_prob, -((x - expected) ** 2).mean(dim=(1, 2, 3)))


def test_per_sample_generators_make_samples_independent_of_batch():
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    both = sde_step_with_logprob(v, x, 0.9, 0.7, 0.95, 0.7, generator=[torch.Generator().manual_seed(s)
                                                                       for s in (1, 2)])
    second = sde_step_with_logprob(v[1:], x[1:], 0.9, 0.7, 0.95, 0.7, generator=[torch.Generator().manual_seed(2)])
    torch.testing.assert_close(both.prev_sample[1:], second.prev_sample)


@pytest.mark.parametrize("shape", [(3, 16, 16), (4, 16, 16), (16, 8, 8), (3, 5, 7)])
def test_trajectory_noise_equals_successive_draws(shape):
    from dgrpo.sampling import trajectory_noise

    drawn = trajectory_noise([torch.Generator().manual_seed(s) for s in (1, 2)], 4, shape)
    for b, s in enumerate((1, 2)):
        g = torch.Generator().manual_seed(s)
        assert torch.equal(drawn[b], torch.stack([torch.randn(shape, generator=g) for _ in range(4)]))
