"""The trained adapter, as the update stage stores it, loads into a fresh diffusers pipeline with
`pipe.load_lora_weights` and changes its output exactly as it changed the trained policy's."""

import pytest
import torch

from dgrpo import artifacts
from dgrpo.config import LoraConfig, ModelConfig
from dgrpo.models import load_policy
from dgrpo.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline
from dgrpo.models.trajectories import sample_ode
from dgrpo.runs.lineage import Provenance
from dgrpo.stages.shared.policy_io import ADAPTER_KIND
from dgrpo.store import LocalStore

PROMPTS = ["a red square", "a blue cross"]


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_saved_adapter_round_trips_through_load_lora_weights(kind, tmp_path):
    build = tiny_sd3_pipeline if kind == "sd3" else tiny_flux_pipeline
    build().save_pretrained(tmp_path / "base")
    cfg = ModelConfig(kind=kind, pretrained=str(tmp_path / "base"), resolution=32, max_sequence_length=8)
    g = 4.5 if kind == "sd3" else 3.5
    policy = load_policy(cfg)
    cond = policy.encode_prompts(PROMPTS)
    base = sample_ode(policy, cond, [1, 2], 3, None, g)
    policy.add_lora(LoraConfig(rank=4, alpha=8), seed=0)  # alpha != rank: the scale must survive the round trip
    with torch.no_grad():
        for name, p in policy.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    trained = sample_ode(policy, cond, [1, 2], 3, None, g)
    assert (trained - base).abs().max() > 1e-3

    store = LocalStore(tmp_path / "store")
    ref = artifacts.write_tensors(store, policy.lora_state_dict(), ADAPTER_KIND,
                                  Provenance(stage="update", run_id="t", config_sha256="0", round=0, inputs={},
                                             seeds={}), policy.lora_adapter_metadata())
    path = store.local_path(ref)

    pipe = type(policy.pipe).from_pretrained(tmp_path / "base")
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    out = pipe(prompt=PROMPTS, num_inference_steps=3, guidance_scale=g, generator=gens, height=32, width=32,
               max_sequence_length=8, output_type="latent").images
    if kind == "flux":
        out = pipe._unpack_latents(out, 32, 32, pipe.vae_scale_factor)
    torch.testing.assert_close(out, trained, rtol=0, atol=0)
