"""Policies by name: a backbone is one registry entry, added in one file without editing the stages."""

from collections.abc import Callable

from dgrpo.config import ModelConfig
from dgrpo.models.policy import BaseModelId, FlowPolicy

POLICIES: dict[str, Callable[[ModelConfig], FlowPolicy]] = {}


def register_policy(name: str) -> Callable:
    def wrap(factory: Callable[[ModelConfig], FlowPolicy]) -> Callable[[ModelConfig], FlowPolicy]:
        POLICIES[name] = factory
        return factory

    return wrap


def load_policy(cfg: ModelConfig) -> FlowPolicy:
    if cfg.kind not in POLICIES:
        raise ValueError(f"config field 'model.kind': unknown policy {cfg.kind!r} (known: {', '.join(POLICIES)})")
    return POLICIES[cfg.kind](cfg)


from dgrpo.models import flux, sd3, toy  # noqa: E402,F401  (register "flux", "sd3", "toy")

__all__ = ["POLICIES", "BaseModelId", "FlowPolicy", "load_policy", "register_policy"]
