"""What a training round is: its prompts, its stochastic steps and the steps the update trains."""

import numpy as np

from dgrpo.config import RunConfig
from dgrpo.rng import Stream, derive_seed


def sde_steps(config: RunConfig, round_index: int) -> range:
    """The round's stochastic steps: all of them, or the SDE window at a seeded random start (Flow-GRPO-Fast)."""
    s = config.sampling
    if s.sde_window_size == 0:
        return range(s.num_steps)
    lo, hi = s.sde_window_range or [0, s.num_steps]
    rng = np.random.default_rng(derive_seed(config.seed, Stream.SDE_WINDOW, round_index))
    start = int(rng.integers(lo, hi - s.sde_window_size + 1))
    return range(start, start + s.sde_window_size)


def trained_steps(config: RunConfig, round_index: int) -> list[int]:
    """Steps the update trains: the SDE window, or the first `train_fraction` of the steps."""
    if config.sampling.sde_window_size:
        return list(sde_steps(config, round_index))
    return list(range(config.num_train_steps))


def round_prompts(config: RunConfig, round_index: int) -> list[str]:
    """The prompts of a training round: a seeded draw without replacement."""
    rng = np.random.default_rng(derive_seed(config.seed, Stream.PROMPTS, round_index))
    picks = rng.choice(len(config.sampling.prompts), size=config.sampling.prompts_per_round, replace=False)
    return [config.sampling.prompts[i] for i in sorted(picks)]
