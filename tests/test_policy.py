"""The toy policy's LoRA handling: fresh adapters start at the base model, the reference is the adapter off."""

import torch

from dgrpo.config import LoraConfig, ModelConfig
from dgrpo.models import load_policy


def _velocity(policy, x, cond):
    with torch.no_grad():
        return policy.velocity(x, torch.full((x.shape[0],), 0.7), cond, 4.5)


def test_lora_starts_at_base_and_reference_is_adapter_off():
    policy = load_policy(ModelConfig())
    cond = policy.encode_prompts(["a red square", "a blue cross"])
    x = torch.randn(2, *policy.latent_shape(), generator=torch.Generator().manual_seed(0))
    base = _velocity(policy, x, cond)
    policy.add_lora(LoraConfig(), seed=0)
    torch.testing.assert_close(_velocity(policy, x, cond), base)
    with torch.no_grad():
        for name, p in policy.transformer.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    trained = _velocity(policy, x, cond)
    assert not torch.allclose(trained, base)
    with policy.adapter_disabled():
        torch.testing.assert_close(_velocity(policy, x, cond), base)
    torch.testing.assert_close(_velocity(policy, x, cond), trained)

    state = policy.lora_state_dict()
    assert state and all(k.startswith("transformer.") and "lora_" in k for k in state)
    fresh = load_policy(ModelConfig())
    fresh.add_lora(LoraConfig(), seed=123)
    fresh.load_lora_state_dict(state)
    torch.testing.assert_close(_velocity(fresh, x, cond), trained)


def test_only_lora_parameters_train():
    policy = load_policy(ModelConfig())
    policy.add_lora(LoraConfig(), seed=0)
    trainable = [n for n, p in policy.transformer.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(p.requires_grad for p in policy.text_encoder.parameters())
