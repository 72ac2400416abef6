"""Recipe presets load and carry Flow-GRPO's published numbers; training-step controls (SDE window) behave."""

from pathlib import Path

import pytest
import torch
from support import small_config

from dgrpo.config import ConfigError, load_config
from dgrpo.models import load_policy
from dgrpo.models.trajectories import SamplerSpec, sample_sde
from dgrpo.sampling import euler_step
from dgrpo.stages.shared.rounds import sde_steps, trained_steps

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_sd35m_pickscore_preset():
    cfg = load_config(CONFIGS / "sd35m-pickscore.yaml")
    assert (cfg.model.kind, cfg.model.pretrained, cfg.model.resolution) == (
        "sd3", "stabilityai/stable-diffusion-3.5-medium", 512)
    assert (cfg.sampling.num_steps, cfg.eval.num_steps, cfg.sampling.guidance_scale) == (10, 40, 4.5)
    assert (cfg.sampling.noise_level, cfg.sampling.group_size, cfg.sampling.prompts_per_round) == (0.7, 24, 48)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.train.learning_rate, cfg.train.clip_range) == (32, 64, 3e-4, 1e-4)
    assert (cfg.train.beta_kl, cfg.train.adv_clip_max, cfg.train.global_std) == (0.01, 5.0, True)
    assert trained_steps(cfg, 0) == list(range(9))
    assert cfg.reward.name == "pickscore"
    _assert_prompt_files(cfg)


def _assert_prompt_files(cfg):
    assert (cfg.sampling.prompts_file, cfg.eval.prompts_file) == ("prompts/pickscore-train.txt",
                                                                  "prompts/pickscore-eval.txt")
    assert len(set(cfg.sampling.prompts)) == 64 and len(set(cfg.eval.prompts)) == 16
    assert len(set(cfg.eval.prompts) - set(cfg.sampling.prompts)) == 12  # held out
    assert cfg.sampling.prompts_sha256 and cfg.eval.prompts_sha256


def test_flux1dev_pickscore_preset():
    cfg = load_config(CONFIGS / "flux1dev-pickscore.yaml")
    assert (cfg.model.kind, cfg.model.pretrained, cfg.model.dtype) == ("flux", "black-forest-labs/FLUX.1-dev",
                                                                      "bfloat16")
    assert (cfg.sampling.num_steps, cfg.eval.num_steps, cfg.sampling.guidance_scale) == (6, 28, 3.5)
    assert (cfg.sampling.noise_level, cfg.train.beta_kl, cfg.lora.rank, cfg.lora.alpha) == (0.9, 0.0, 32, 64)
    assert trained_steps(cfg, 0) == list(range(5))
    assert cfg.sampling.prompts_per_round * cfg.sampling.group_size == 2 * cfg.train.batch_size
    _assert_prompt_files(cfg)


def test_sde_window_is_seeded_inside_its_range_and_is_what_trains():
    cfg = small_config(**{"sampling.sde_window_size": 2, "sampling.sde_window_range": [1, 5]})
    windows = {tuple(sde_steps(cfg, r)) for r in range(20)}
    assert len(windows) > 1 and all(w[0] >= 1 and w[-1] < 5 and len(w) == 2 for w in windows)
    assert sde_steps(cfg, 3) == sde_steps(cfg, 3)
    assert trained_steps(cfg, 3) == list(sde_steps(cfg, 3))
    with pytest.raises(ConfigError, match="sampling.sde_window_range"):
        small_config(**{"sampling.sde_window_size": 3, "sampling.sde_window_range": [0, 2]})


def test_steps_outside_the_sde_window_are_euler_steps():
    cfg = small_config()
    policy = load_policy(cfg.model)
    cond = policy.encode_prompts(["a red square", "a blue cross"])
    spec = SamplerSpec(num_steps=4, shift=None, noise_level=0.7, guidance_scale=4.5, sde_steps=range(1, 3))
    traj = sample_sde(policy, cond, [1, 2], spec=spec)
    assert torch.isnan(traj.log_probs[:, [0, 3]]).all() and torch.isfinite(traj.log_probs[:, 1:3]).all()
    s = traj.sigmas
    with torch.no_grad():
        v = policy.velocity(traj.latents[:, 3], s[3].expand(2), cond, 4.5)
    torch.testing.assert_close(traj.latents[:, 4], euler_step(v, traj.latents[:, 3], s[3].item(), s[4].item()))
