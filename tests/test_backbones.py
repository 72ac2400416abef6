"""SD3 and FLUX policies on tiny random-weight pipelines saved with save_pretrained and loaded by the registry."""

import numpy as np
import pytest
import torch
from support import small_config

from dgrpo import artifacts
from dgrpo.config import LoraConfig, ModelConfig
from dgrpo.contracts import ROLLOUTS, UPDATE_METRICS
from dgrpo.models import load_policy
from dgrpo.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline
from dgrpo.models.trajectories import SamplerSpec, sample_ode, sample_sde
from dgrpo.sampling import Schedule, flow_sigmas, step_with_logprob
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.policy_io import ADAPTER_KIND
from dgrpo.stages.update import run_update
from dgrpo.store import LocalStore

PROMPTS = ["a red square", "a blue cross"]


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sd3")
    tiny_sd3_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-flux")
    tiny_flux_pipeline().save_pretrained(path)
    return path


def _model(kind, path, **kw):
    return ModelConfig(kind=kind, pretrained=str(path), resolution=32, max_sequence_length=8, **kw)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_ode_sampler_equals_the_diffusers_pipeline(kind, sd3_dir, flux_dir):
    policy = load_policy(_model(kind, sd3_dir if kind == "sd3" else flux_dir))
    g = 4.5 if kind == "sd3" else 3.5
    ours = sample_ode(policy, policy.encode_prompts(PROMPTS), [3, 4], 4, None, g)
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    out = policy.pipe(prompt=PROMPTS, num_inference_steps=4, guidance_scale=g, generator=gens, height=32, width=32,
                      max_sequence_length=8, output_type="latent").images
    if kind == "flux":
        out = policy.pipe._unpack_latents(out, 32, 32, policy.pipe.vae_scale_factor)
    torch.testing.assert_close(ours, out, rtol=0, atol=0)
    images = policy.decode(ours)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8


def test_sd3_schedule_is_the_published_shift_3_schedule(sd3_dir):
    policy = load_policy(_model("sd3", sd3_dir))
    expected = [1, 0.960129, 0.913349, 0.857692, 0.790368, 0.707278, 0.602151, 0.464876, 0.278049, 0.008929, 0]
    assert policy.sigmas(10).tolist() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(policy.sigmas(10, shift=1.0), flow_sigmas(10, 1.0))


def test_flux_schedule_uses_resolution_dependent_shift(flux_dir):
    small = load_policy(_model("flux", flux_dir))
    large = load_policy(ModelConfig(kind="flux", pretrained=str(flux_dir), resolution=128, max_sequence_length=8))
    # mu grows with the number of image tokens, so larger images stay noisier for longer
    assert large.sigmas(6)[1] > small.sigmas(6)[1]
    assert small.sigmas(6)[0] == 1 and small.sigmas(6)[-1] == 0 and len(small.sigmas(6)) == 7


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_recomputed_logprob_is_on_policy(kind, sd3_dir, flux_dir):
    policy = load_policy(_model(kind, sd3_dir if kind == "sd3" else flux_dir))
    policy.add_lora(LoraConfig(rank=4, alpha=8), seed=0)
    cond = policy.encode_prompts(PROMPTS)
    traj = sample_sde(policy, cond, [5, 6], spec=SamplerSpec(num_steps=3, shift=None, noise_level=0.7,
                                                             guidance_scale=4.5))
    s = traj.sigmas
    for j in range(3):
        with torch.no_grad():
            v = policy.velocity(traj.latents[:, j], s[j].expand(2), cond, 4.5)
        step = step_with_logprob(v, traj.latents[:, j], Schedule(s).step(j), method="sde", noise_level=0.7,
                                 prev_sample=traj.latents[:, j + 1])
        assert torch.equal(torch.exp(step.log_prob - traj.log_probs[:, j]), torch.ones(2))


def test_policy_parts_are_frozen_and_lora_targets_the_backbone(sd3_dir, flux_dir):
    sd3 = load_policy(_model("sd3", sd3_dir))
    sd3.add_lora(LoraConfig(), seed=0)
    names = {n.split(".lora_")[0].split("attn.")[-1] for n, _ in sd3.transformer.named_parameters() if "lora_A" in n}
    assert names == {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
    assert all(not p.requires_grad for m in (sd3.pipe.text_encoder, sd3.pipe.text_encoder_3, sd3.vae)
               for p in m.parameters())
    flux = load_policy(_model("flux", flux_dir))
    flux.add_lora(LoraConfig(), seed=0)
    lora = [n for n, _ in flux.transformer.named_parameters() if "lora_A" in n]
    assert any("ff.net.2" in n for n in lora) and any("ff_context.net.0.proj" in n for n in lora)
    assert any(n.startswith("single_transformer_blocks.0.attn.to_q") for n in lora)


def test_bfloat16_keeps_frozen_parts_in_dtype_and_the_step_in_float32(sd3_dir):
    policy = load_policy(_model("sd3", sd3_dir, dtype="bfloat16"))
    assert policy.transformer.dtype == torch.bfloat16 and policy.pipe.text_encoder_3.dtype == torch.bfloat16
    assert policy.vae.dtype == torch.float32
    policy.add_lora(LoraConfig(rank=4, alpha=4), seed=0)
    assert all(p.dtype == torch.float32 for p in policy.lora_parameters())
    spec = SamplerSpec(num_steps=2, shift=None, noise_level=0.7, guidance_scale=4.5)
    traj = sample_sde(policy, policy.encode_prompts(PROMPTS), [1, 2], spec=spec)
    assert traj.latents.dtype == torch.float32 and torch.isfinite(traj.log_probs).all()


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_one_round_through_the_stages(kind, sd3_dir, flux_dir, tmp_path):
    path = sd3_dir if kind == "sd3" else flux_dir
    cfg = small_config(**{
        "model.kind": kind, "model.pretrained": str(path), "model.resolution": 32, "model.max_sequence_length": 8,
        "sampling.num_steps": 3, "sampling.group_size": 2, "sampling.prompts_per_round": 2,
        "sampling.batch_size": 3, "train.batch_size": 4, "train.micro_batch_size": 2,
        "cluster.embedder": None, "train.regularizer": "kl", "train.beta_kl": 0.01,
        "train.learning_rate": 1e-2, "lora.rank": 4, "lora.alpha": 8})
    ctx = StageContext(cfg, LocalStore(tmp_path / "store"), f"{kind}-run")
    rollouts = run_rollout(ctx, 0).outputs["rollouts"]
    table = artifacts.read_table(ctx.store, rollouts, ROLLOUTS)
    assert table.num_rows == 4 and len(table.column("log_probs")[0]) == 3
    rewards = run_reward(ctx, 0, rollouts).outputs["rewards"]
    scores = run_cluster(ctx, 0, rollouts, rewards).outputs["scores"]
    out = run_update(ctx, 0, rollouts, scores).outputs
    metrics = artifacts.read_table(ctx.store, out["metrics"], UPDATE_METRICS).to_pylist()
    assert metrics[0]["clip_fraction"] == 0 and metrics[0]["approx_kl"] < 1e-8  # first step is on-policy
    adapter = artifacts.read_tensors(ctx.store, out["adapter"], ADAPTER_KIND)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())
    # the next round samples with the trained adapter
    again = run_rollout(ctx, 1, out["adapter"]).outputs["rollouts"]
    assert artifacts.read_table(ctx.store, again, ROLLOUTS).num_rows == 4


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_transformer_only_policy_skips_the_text_encoders_and_predicts_the_same_velocity(kind, sd3_dir, flux_dir):
    path = sd3_dir if kind == "sd3" else flux_dir
    full, bare = load_policy(_model(kind, path)), load_policy(_model(kind, path), transformer_only=True)
    assert full.pipe.text_encoder is not None and bare.pipe.text_encoder is None and bare.pipe.text_encoder_2 is None
    cond = full.encode_prompts(PROMPTS)
    x = full.initial_latents([1, 2])
    sigma = torch.full((2,), 0.5)
    torch.testing.assert_close(bare.velocity(x, sigma, cond, 4.5), full.velocity(x, sigma, cond, 4.5), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="without text encoders"):
        bare.encode_prompts(PROMPTS)
