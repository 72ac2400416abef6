"""A team's reward package with bugs, outside dgrpo (`reward.name: broken_rewards:<factory>`): what a team's
failing plug-in looks like to dgrpo, for tests/test_team_errors.py."""

import numpy as np


def _brightness(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0


def index_error(up_to: int = 2):
    """Scores batches of up to `up_to` images (the evaluation's), then indexes past the end of a list on a larger
    one (the reward stage's): a bug that every retry repeats."""

    def score(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        weights = [1.0] * up_to
        return {"reward": np.array([weights[i] for i in range(len(images))]) * _brightness(images)}

    return score


def leaks_token(token: str):
    """Fails quoting the credential it was given, as a client library's error often does."""

    def score(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        raise KeyError(f"scoring service refused Authorization: Bearer {token}\nno score for api_key={token}")

    return score


def bad_factory():
    """A TypeError raised inside the factory: the factory's bug, not a misspelled option."""
    return len(None)  # type: ignore[arg-type]


def embedder():
    """An embedder plug-in (`cluster.embedder: broken_rewards:embedder`) that cannot handle the images it gets."""

    def embed(images: np.ndarray) -> np.ndarray:
        raise ValueError(f"expected 224 px images, got {images.shape[1]} px")

    return embed
