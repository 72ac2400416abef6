"""Reward models by name. A reward scores decoded images against their prompts.

A reward factory takes the config's `reward.options` as keyword arguments and returns a callable that maps uint8
images [B, H, W, 3] and their prompts to named float arrays: "reward" is the score the pipeline optimises, the other
entries are kept in the rewards table for audit. Built-ins: toy (the toy world's, its row in `TOY_WORLD`),
pickscore, clipscore, aesthetic, hpsv2.1 (`dgrpo.rewards.models`), imagereward (`dgrpo.rewards.imagereward`) and
multi (a main reward with auxiliary ones as components, `dgrpo.rewards.multi`); a team's reward is a
`package.module:factory` path in `reward.name`.
"""

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from dgrpo.config.recipe import TOY_WORLD
from dgrpo.registry import Registry, build


class RewardModel(Protocol):
    def __call__(self, images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]: ...


REWARDS: Registry[Callable[..., RewardModel]] = Registry("reward", "reward.name", {
    "pickscore": "dgrpo.rewards.models:pickscore",
    "clipscore": "dgrpo.rewards.models:clipscore",
    "aesthetic": "dgrpo.rewards.models:aesthetic",
    "hpsv2.1": "dgrpo.rewards.models:hpsv21",
    "imagereward": "dgrpo.rewards.imagereward:imagereward",
    "multi": "dgrpo.rewards.multi:multi_reward",
}, contributors=(TOY_WORLD,))


def load_reward(name: str, options: dict[str, Any] | None = None) -> RewardModel:
    """The reward `name` built with `options`; an option its factory does not take names 'reward.options', an error
    inside the factory stays the factory's (a team's plug-in is then named by `dgrpo.registry.plugin_of`)."""
    return build(REWARDS.get(name), options, "reward.options")
