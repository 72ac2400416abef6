"""A team's reward package, outside dgrpo: plugged in by `reward.name: acme_rewards:brightness` in a config."""

import numpy as np


def brightness(scale: float = 1.0):
    """Mean brightness of each image in [0, 1] times `scale`; the prompt is ignored."""

    def score(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        value = images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
        return {"reward": scale * value, "brightness": value}

    return score


def flaky(nan_at: int = 3, value: float = float("nan"), batch: int | None = None):
    """Brightness, but image `nan_at` of every batch (of `batch` images, if given) scores `value` (NaN by
    default): a reward model that breaks on one input, as a real one does on an empty caption or a black image."""
    inner = brightness()

    def score(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        out = inner(images, prompts)
        out["reward"] = out["reward"].copy()
        if batch is None or len(images) == batch:
            out["reward"][nan_at % len(images)] = value
        return out

    return score
