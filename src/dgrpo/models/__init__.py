"""Policies by name: a backbone is one registry entry (`dgrpo.registry`), added without editing the stages.

A policy factory takes (model config, device or None for the backbone's default, transformer_only) and returns a
`FlowPolicy`. Built-ins: sd3 and flux (diffusers pipelines) and toy (the toy world's model); a team's backbone is a
`package.module:factory` path in `model.kind`. Importing this package does not import torch: the CLI and the
pipeline compiler check `model.kind` against the registry without loading model code.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dgrpo.config import ModelConfig
from dgrpo.registry import Registry

if TYPE_CHECKING:
    import torch

    from dgrpo.models.policy import FlowPolicy

PolicyFactory = Callable[[ModelConfig, "torch.device | None", bool], "FlowPolicy"]
POLICIES: Registry[PolicyFactory] = Registry("policy", "model.kind", {
    "toy": "dgrpo.toyworld.policy:load_toy_policy",
    "sd3": "dgrpo.models.sd3:load_sd3_policy",
    "flux": "dgrpo.models.flux:load_flux_policy",
})


def load_policy(cfg: ModelConfig, device: "torch.device | None" = None, transformer_only: bool = False
                ) -> "FlowPolicy":
    """The policy of `model.kind`. `transformer_only` skips the text encoders where the backbone can (the update
    replays stored conditioning, and FLUX's T5 alone is 9 GB per process); `encode_prompts` then fails."""
    return POLICIES.get(cfg.kind)(cfg, device, transformer_only)


def __getattr__(name: str) -> Any:
    """`FlowPolicy` and `BaseModelId` from `dgrpo.models.policy`, imported on first use (they need torch)."""
    if name in ("FlowPolicy", "BaseModelId"):
        from dgrpo.models import policy

        return getattr(policy, name)
    raise AttributeError(f"module 'dgrpo.models' has no attribute {name!r}")


__all__ = ["POLICIES", "BaseModelId", "FlowPolicy", "load_policy"]
