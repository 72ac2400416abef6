"""Methods as plug-ins (dgrpo.methods.base): GRPO-Guard against an independent implementation of upstream's
formula, its preset and metrics, a team's method registered by path, and the `methods` section's config rules."""

import dataclasses
import math
from pathlib import Path
from typing import Annotated, Any

import pytest
import torch
from support import small_config

from dgrpo.config import ConfigError, RunConfig, load_config
from dgrpo.config.methods import BUILTIN_OPTIONS, BUILTINS
from dgrpo.methods.base import PolicyStep, methods_of
from dgrpo.methods.grpo_guard import GRPOGuard
from dgrpo.sampling import ScheduleStep, step_with_logprob
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.update import run_update
from dgrpo.store import LocalStore
from dgrpo.toyworld.presets import toy_preset

PLUGINS = Path(__file__).parent / "plugins"


def upstream_guard_ratio(x, v, v_old, x_next, sigma, sigma_next, a):
    """GRPO-Guard's ratio as upstream trainers compute it, from the Flow-GRPO SDE step written out here:
    exp((log_prob - old_log_prob) scale + mse(mu, mu_old) / (2 scale)), scale = std_dev_t sqrt(-dt)."""
    dt = sigma_next - sigma
    std_t = a * math.sqrt(sigma / (1 - sigma))
    scale = std_t * math.sqrt(-dt)

    def mean_of(vel):
        return x * (1 + std_t**2 * dt / (2 * sigma)) + vel * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt

    def log_prob(mu):
        lp = -((x_next - mu) ** 2) / (2 * scale**2) - math.log(scale) - math.log(math.sqrt(2 * math.pi))
        return lp.mean(dim=(1, 2, 3))

    mu, mu_old = mean_of(v), mean_of(v_old)
    mse = ((mu - mu_old) ** 2).mean(dim=(1, 2, 3))
    return torch.exp((log_prob(mu) - log_prob(mu_old)) * scale + mse / (2 * scale))


def test_guard_ratio_matches_upstreams_formula():
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(4, 2, 8, 8, generator=gen), torch.randn(4, 2, 8, 8, generator=gen)
    v_old = v + 0.05 * torch.randn(4, 2, 8, 8, generator=gen)
    sigma, sigma_next, first, a = 0.8, 0.7, 0.9, 0.7
    at = ScheduleStep(sigma, sigma_next, first)
    old = step_with_logprob(v_old, x, at, method="sde", noise_level=a)
    new = step_with_logprob(v, x, at, method="sde", noise_level=a, prev_sample=old.prev_sample)
    guard = GRPOGuard(small_config(), GRPOGuard.Options())
    step = PolicyStep(j=2, log_prob=new.log_prob, old_log_prob=old.log_prob, mean=new.prev_sample_mean,
                      std_dev_t=new.std_dev_t, sigma=sigma, sigma_next=sigma_next,
                      old_mean=lambda: old.prev_sample_mean)
    ours = torch.exp(guard.log_ratio(step=step))
    theirs = upstream_guard_ratio(x, v, v_old, old.prev_sample, sigma, sigma_next, a)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert guard.step_weight(j=2, sigma=sigma, sigma_next=sigma_next) == pytest.approx(1 / 0.1)  # Eq. 12: 1 / dt
    off = GRPOGuard(small_config(), GRPOGuard.Options(ratio_norm=False, step_reweight=False))
    assert off.log_ratio(step=step) is None and off.step_weight(j=2, sigma=sigma, sigma_next=sigma_next) is None


def _round(tmp_path, cfg):
    ctx = StageContext(cfg, LocalStore(tmp_path / "store"), "m")
    rollouts = run_rollout(ctx, 0).outputs["rollouts"]
    rewards = run_reward(ctx, 0, rollouts).outputs["rewards"]
    scores = run_cluster(ctx, 0, rollouts, rewards).outputs["scores"]
    return run_update(ctx, 0, rollouts, scores)


def test_the_preset_trains_a_round_with_guard_metrics_per_step(tmp_path):
    preset = load_config(toy_preset("toy-grpo-guard"))
    base = load_config(toy_preset("toy-flowgrpo"))
    assert preset.methods == {"grpo_guard": {"ratio_norm": True, "step_reweight": True}}
    assert preset.recipe_differences(base) == ["methods"]
    cfg = small_config(**{"methods": preset.methods, "sampling.num_steps": 4, "train.batch_size": 16})
    metrics = _round(tmp_path, cfg).metrics
    steps = sorted(int(k.removeprefix("guard_ratio_mean_step")) for k in metrics if k.startswith("guard_ratio_mean"))
    assert steps == list(range(cfg.num_train_steps))
    for j in steps:  # one optimizer step on the rollout policy: on-policy, the normalised ratio is 1
        assert metrics[f"guard_ratio_mean_step{j}"] == pytest.approx(1.0, abs=1e-5)
        assert metrics[f"guard_ratio_std_step{j}"] < 1e-5


def test_a_method_from_a_team_package_plugs_in_by_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    import acme_methods

    cfg = small_config(**{"methods": {"acme_methods:HalfLoss": None}, "sampling.num_steps": 4,
                          "train.batch_size": 16})
    assert [type(m).__name__ for m in methods_of(cfg)] == ["DiverseGRPO", "Drift", "ProGRPO", "Gardo", "HalfLoss"]
    acme_methods.CALLS.clear()
    metrics = _round(tmp_path, cfg).metrics
    assert sorted(set(acme_methods.CALLS)) == list(range(cfg.num_train_steps))
    assert metrics["acme_steps"] == cfg.num_train_steps


def test_the_methods_section_names_its_errors_and_keeps_old_hashes():
    with pytest.raises(ConfigError, match="methods.grpo_guard.ratio_normalisation"):
        small_config(methods={"grpo_guard": {"ratio_normalisation": True}})
    with pytest.raises(ConfigError, match="methods.drift.*top-level section 'drift'"):
        small_config(methods={"drift": None})
    with pytest.raises(ConfigError, match=r"methods.diversegrpo.*built in.*the cluster section"):
        small_config(methods={"diversegrpo": {"beta": 1.0}})
    assert set(BUILTIN_OPTIONS) == set(BUILTINS)  # every built-in says where its options are
    with pytest.raises(Exception, match="unknown method 'guard'"):
        small_config(methods={"guard": None})
    plain = small_config()
    assert "methods" not in plain.to_dict() and "methods" not in plain.recipe_dict()


def test_a_builtin_methods_section_is_its_modules_options_dataclass_loaded_and_checked_by_field():
    """drift, progrpo and gardo are typed by the method modules' Options (the config imports no method): the loader
    builds them, an unknown or out-of-range field is an error naming it, and every numeric field has its Range."""
    from dgrpo.config.fields import SectionOf, numeric_fields_without_range
    from dgrpo.methods.drift import DriftOptions
    from dgrpo.methods.gardo import GardoOptions
    from dgrpo.methods.progrpo import ProGRPOOptions

    cfg = small_config(**{"drift.outlier_filter": True, "progrpo.filter_keep": 4})
    assert (type(cfg.drift), type(cfg.progrpo), type(cfg.gardo)) == (DriftOptions, ProGRPOOptions, GardoOptions)
    assert cfg.drift.outlier_filter and cfg.progrpo.filter_keep == 4
    with pytest.raises(ConfigError, match="'drift.bogus': unknown field"):
        small_config(**{"drift.bogus": 1})
    with pytest.raises(ConfigError, match="'gardo.reset_every': must be > 0"):
        small_config(**{"gardo.reset_every": 0})
    with pytest.raises(ConfigError, match="'progrpo.mode': must be one of"):
        small_config(**{"progrpo.mode": "sometimes"})
    assert numeric_fields_without_range(RunConfig) == []

    @dataclasses.dataclass
    class Loose:  # a section's numeric field without a Range is found through the section's marker
        weight: float = 1.0

    @dataclasses.dataclass
    class WithSection:
        loose: Annotated[Any, SectionOf(lambda: Loose)] = dataclasses.field(default_factory=Loose)

    assert numeric_fields_without_range(WithSection) == ["loose.weight"]
