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


def test_sde_mean_and_std_at_nonzero_noise_by_hand():
    """x = 0.3, v = -1.2, sigma 0.7 -> 0.6, noise level 0.7, worked by hand:
    std_t^2 = 0.49 x 0.7 / 0.3 = 1.1433333; x coefficient 1 + std_t^2 dt / (2 sigma) = 1 - 0.1143333 / 1.4 = 0.9183333;
    v coefficient (1 + std_t^2 (1 - sigma) / (2 sigma)) dt = (1 + 0.343 / 1.4) x -0.1 = -0.1245;
    mean = 0.3 x 0.9183333 + (-1.2)(-0.1245) = 0.2755 + 0.1494 = 0.4249; noise std sqrt(1.1433333 x 0.1) = 0.3381321."""
    x, v = torch.full((1, 1, 2, 2), 0.3), torch.full((1, 1, 2, 2), -1.2)
    step = sde_step_with_logprob(v, x, 0.7, 0.6, 0.95, 0.7, prev_sample=torch.full((1, 1, 2, 2), 0.5))
    torch.testing.assert_close(step.prev_sample_mean, torch.full((1, 1, 2, 2), 0.4249), rtol=0, atol=1e-6)
    assert float(step.std_t) == pytest.approx(math.sqrt(1.1433333), rel=1e-6)
    assert float(step.std_dev_t) == pytest.approx(0.3381321, rel=1e-6)
    z = (0.5 - 0.4249) / 0.3381321
    assert float(step.log_prob) == pytest.approx(-z * z / 2 - math.log(0.3381321) - 0.5 * math.log(2 * math.pi),
                                                 rel=1e-5)


def test_sde_keeps_the_flow_marginal():
    """x0 ~ N(0, c^2) makes x_sigma = (1 - sigma) x0 + sigma eps Gaussian with variance V(sigma) = (1 - sigma)^2 c^2
    + sigma^2 and the exact velocity E[eps - x0 | x] = V'(sigma) / (2 V(sigma)) x. Started from that marginal at
    sigma 0.8, 50 SDE steps at noise level 0.7 down to 0.4 must end at V(0.4).

    Tolerance: the sample variance of n Gaussian draws has relative std sqrt(2 / n) (5 of them), plus the
    Euler-Maruyama error of 50 steps, 2.7e-3 relative by the exact variance recursion (allowed 4x). A flipped
    sign of the std_t^2 term in the mean's x coefficient ends 125% off, a dropped 1/2 in its v coefficient 15%."""
    c, n, steps = 0.5, 2**16, 50
    var = lambda s: (1 - s) ** 2 * c * c + s * s  # noqa: E731
    sigmas = torch.linspace(0.8, 0.4, steps + 1, dtype=torch.float64).tolist()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g) * math.sqrt(var(sigmas[0]))
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        velocity = (s - (1 - s) * c * c) / var(s) * x
        x = sde_step_with_logprob(velocity, x, s, s_next, 0.95, 0.7, generator=g).prev_sample
    relative = float(x.double().var()) / var(sigmas[-1]) - 1
    assert abs(relative) < 5 * math.sqrt(2 / n) + 4 * 2.7e-3
    assert abs(float(x.double().mean())) < 5 * math.sqrt(var(sigmas[-1]) / n)
