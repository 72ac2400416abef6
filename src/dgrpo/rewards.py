"""Reward models by name. A reward scores decoded images against their prompts.

Each entry takes uint8 images [B, H, W, 3] and the prompts and returns named float arrays; "reward" is the
score the pipeline optimises, the other entries are kept in the rewards table for audit.
"""

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from dgrpo.toyworld.reward import MODE_PREFERENCE, toy_reward


class RewardModel(Protocol):
    def __call__(self, images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]: ...


REWARDS: dict[str, Callable[..., RewardModel]] = {}


def register_reward(name: str) -> Callable:
    def wrap(factory: Callable[..., RewardModel]) -> Callable[..., RewardModel]:
        REWARDS[name] = factory
        return factory

    return wrap


def load_reward(name: str, options: dict[str, Any] | None = None) -> RewardModel:
    if name not in REWARDS:
        raise ValueError(f"config field 'reward.name': unknown reward {name!r} (known: {', '.join(REWARDS)})")
    try:
        return REWARDS[name](**(options or {}))
    except TypeError as exc:
        raise ValueError(f"config field 'reward.options': {exc}") from exc


def uint8_to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] to float32 [B, 3, H, W] in [-1, 1], the toy world's pixel convention."""
    return images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0


@register_reward("toy")
def toy(mode_preference: tuple[float, ...] | list[float] = MODE_PREFERENCE) -> RewardModel:
    """Toy quality (colour x shape x crispness, in [0, 1]) plus a small bonus for favoured quadrants."""
    preference = tuple(float(p) for p in mode_preference)

    def score(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        out = toy_reward(uint8_to_unit(images), list(prompts), mode_preference=preference)
        return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}

    return score


from dgrpo import reward_models  # noqa: E402,F401  (registers pickscore, clipscore, aesthetic, hpsv2.1, imagereward)
