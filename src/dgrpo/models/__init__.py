"""Policies by name: a backbone is one registry entry, added in one file without editing the stages."""

from collections.abc import Callable

import torch

from dgrpo.config import ModelConfig
from dgrpo.models.policy import BaseModelId, FlowPolicy

POLICIES: dict[str, Callable[[ModelConfig, torch.device | None, bool], FlowPolicy]] = {}
"""Factories by `model.kind`: (config, device or None for the backbone's default, transformer_only) -> policy."""


def register_policy(name: str) -> Callable:
    def wrap(factory: Callable[[ModelConfig, torch.device | None, bool], FlowPolicy]) -> Callable:
        POLICIES[name] = factory
        return factory

    return wrap


def load_policy(cfg: ModelConfig, device: torch.device | None = None, transformer_only: bool = False) -> FlowPolicy:
    """The policy of `model.kind`. `transformer_only` skips the text encoders where the backbone can (the update
    replays stored conditioning, and FLUX's T5 alone is 9 GB per process); `encode_prompts` then fails."""
    if cfg.kind not in POLICIES:
        raise ValueError(f"config field 'model.kind': unknown policy {cfg.kind!r} (known: {', '.join(POLICIES)})")
    return POLICIES[cfg.kind](cfg, device, transformer_only)


from dgrpo.models import flux, sd3, toy  # noqa: E402,F401  (register "flux", "sd3", "toy")

__all__ = ["POLICIES", "BaseModelId", "FlowPolicy", "load_policy", "register_policy"]
