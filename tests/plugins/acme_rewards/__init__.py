"""A team's reward package, outside dgrpo: plugged in by `reward.name: acme_rewards:brightness` in a config."""

import numpy as np


def brightness(scale: float = 1.0):
    """Mean brightness of each image in [0, 1] times `scale`; the prompt is ignored."""

    def score(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        value = images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
        return {"reward": scale * value, "brightness": value}

    return score
