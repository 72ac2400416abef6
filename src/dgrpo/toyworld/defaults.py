"""The toy world's contribution to the core, in one place: the config defaults and the registry rows.

The core names this module once, by import path (`dgrpo.config.recipe.TOY_WORLD`), and reads it on first use: the
config's defaults (an empty YAML is a complete toy run) and the built-in rows of the policy, reward, embedder and
mode-classifier registries. So the core imports no toy code, and what the toy world is lives beside it. Importing this
module is cheap (captions and names); the rows name the heavier modules (torch, scipy) by path.
"""

from dgrpo.toyworld.data import CAPTIONS

NAME = "toy"
"""The toy world's name in each registry it joins: its policy, reward, embedder and mode classifier."""
TRAIN_CAPTIONS = CAPTIONS[:6]
"""The default training prompts."""
HELD_OUT_CAPTIONS = CAPTIONS[6:]
"""Evaluated but never trained on: the default evaluation prompts are all eight captions."""

CONFIG_DEFAULTS: dict[str, object] = {
    "model.kind": NAME,
    "sampling.prompts": TRAIN_CAPTIONS,
    "reward.name": NAME,
    "cluster.embedder": NAME,
    "eval.prompts": TRAIN_CAPTIONS + HELD_OUT_CAPTIONS,
    "eval.mode_classifier": NAME,
}
"""The recipe fields whose defaults are the toy world's, by dotted field (`dgrpo.config.recipe.toy_default`)."""

REGISTRY_ROWS: dict[str, dict[str, str]] = {
    "model.kind": {NAME: "dgrpo.toyworld.policy:load_toy_policy"},
    "reward.name": {NAME: "dgrpo.toyworld.reward:toy_reward_model"},
    "cluster.embedder": {NAME: "dgrpo.toyworld.embed:toy_embedder"},
    "eval.mode_classifier": {NAME: "dgrpo.toyworld.data:mode_classifier"},
}
"""The built-in rows the toy world adds, by the config field of the registry they join (`Registry.config_field`):
name -> `package.module:factory`."""
