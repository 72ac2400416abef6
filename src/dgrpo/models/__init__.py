"""Policies by name: a backbone is one registry entry (`dgrpo.registry`), added without editing the stages.

A policy factory takes (model config, device or None for the backbone's default, transformer_only) and returns a
`FlowPolicy`. Built-ins: sd3 and flux (diffusers pipelines) and toy (the toy world's model, its row in `TOY_WORLD`); a
team's backbone is a `package.module:factory` path in `model.kind`. Importing this package does not import torch: the
CLI and the pipeline compiler check `model.kind` against the registry without loading model code.
"""

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from dgrpo.config import ModelConfig
from dgrpo.config.recipe import TOY_WORLD
from dgrpo.registry import Registry

if TYPE_CHECKING:
    import torch

    from dgrpo.models.policy import FlowPolicy

PolicyFactory = Callable[[ModelConfig, "torch.device | None", bool], "FlowPolicy"]
POLICIES: Registry[PolicyFactory] = Registry("policy", "model.kind", {
    "sd3": "dgrpo.models.sd3:load_sd3_policy",
    "flux": "dgrpo.models.flux:load_flux_policy",
}, contributors=(TOY_WORLD,))


_resident: dict[str, "FlowPolicy"] | None = None
"""Base policies kept loaded while `resident_models()` is active, by (model config, device, transformer_only)."""


@contextlib.contextmanager
def resident_models() -> Iterator[None]:
    """Keep every base policy `load_policy` builds loaded until the block ends, and hand out copies of it.

    A fused segment (`dgrpo.runtime.fused`) loads the same base weights for every stage of every round; a copy of
    the resident policy costs a memory copy instead of a read of the weights, and is the same policy bit for bit
    (stages add and train their LoRA on their own copy). The price is the resident weights' memory."""
    global _resident
    outer, _resident = _resident, {} if _resident is None else _resident
    try:
        yield
    finally:
        _resident = outer


def load_policy(cfg: ModelConfig, device: "torch.device | None" = None, transformer_only: bool = False
                ) -> "FlowPolicy":
    """The policy of `model.kind`. `transformer_only` skips the text encoders where the backbone can (the update
    replays stored conditioning, and FLUX's T5 alone is 9 GB per process); `encode_prompts` then fails."""
    if _resident is None:
        return POLICIES.get(cfg.kind)(cfg, device, transformer_only)
    key = f"{cfg!r}|{device}|{transformer_only}"
    if key not in _resident:
        _resident[key] = POLICIES.get(cfg.kind)(cfg, device, transformer_only)
    return copy.deepcopy(_resident[key])


def __getattr__(name: str) -> Any:
    """`FlowPolicy` and `BaseModelId` from `dgrpo.models.policy`, imported on first use (they need torch)."""
    if name in ("FlowPolicy", "BaseModelId"):
        from dgrpo.models import policy

        return getattr(policy, name)
    raise AttributeError(f"module 'dgrpo.models' has no attribute {name!r}")


__all__ = ["POLICIES", "BaseModelId", "FlowPolicy", "load_policy", "resident_models"]
