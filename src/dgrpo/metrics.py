"""Evaluation metrics: mode coverage (with a domain's mode classifier) and pairwise pixel diversity."""

from collections.abc import Callable
from typing import Protocol

import numpy as np

from dgrpo.config.recipe import TOY_WORLD
from dgrpo.registry import Registry


class ModeClassifier(Protocol):
    """Maps uint8 images [B, H, W, 3] to mode ids in 0..n_modes-1, -1 for an image in no mode."""

    n_modes: int

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


MODE_CLASSIFIERS: Registry[Callable[[], ModeClassifier]] = Registry(
    "mode classifier", "eval.mode_classifier", {}, contributors=(TOY_WORLD,))
"""Factories of mode classifiers by name (`eval.mode_classifier`); a domain with known modes adds one (the toy
world's row is in `TOY_WORLD`)."""


def load_mode_classifier(name: str) -> ModeClassifier:
    return MODE_CLASSIFIERS.get(name)()

MODE_SHARE_THRESHOLD = 0.10


def mode_coverage(modes: np.ndarray, n_modes: int) -> tuple[float, int]:
    """(mode entropy / log M, number of modes holding >= 10%) of one prompt's samples; 'none' counts as no mode."""
    counts = np.bincount(modes[modes >= 0], minlength=n_modes).astype(np.float64)
    shares = counts / max(len(modes), 1)
    nonzero = shares[shares > 0] / max(shares.sum(), 1e-12)
    entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(n_modes)) if nonzero.size else 0.0
    return entropy, int((shares >= MODE_SHARE_THRESHOLD).sum())


def pairwise_diversity(images: np.ndarray) -> float:
    """Mean pairwise RMS pixel distance (in [0, 1]) between one prompt's images."""
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    sq = (flat**2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0) / flat.shape[1]
    n = len(images)
    return float(np.sqrt(d2)[~np.eye(n, dtype=bool)].mean()) if n > 1 else 0.0


DARK_LEVEL = 10
"""A pixel at or below this in every channel (uint8) is near-black."""
CLIPPED_LEVEL = 250
"""A pixel at or above this in some channel is blown out (saturated)."""
COLOUR_BINS = 4
"""Bins per channel of the colour histogram (4^3 = 64 colours)."""
IMAGE_MONITORS = ("dark_pixel_share", "clipped_pixel_share", "colour_entropy")


def image_monitors(images: np.ndarray) -> dict[str, float]:
    """Cheap statistics of uint8 images [B, H, W, 3] that catch what a reward may not see: the share of near-black
    and of blown-out pixels (a policy hacking a reward with dark or saturated images), and the mean colour-histogram
    entropy of an image, normalised to [0, 1] (a policy painting flat images drives it to 0)."""
    pixels = images.reshape(len(images), -1, images.shape[-1])
    dark = float((pixels <= DARK_LEVEL).all(axis=-1).mean())
    clipped = float((pixels >= CLIPPED_LEVEL).any(axis=-1).mean())
    codes = (pixels.astype(np.int64) * COLOUR_BINS // 256) @ (COLOUR_BINS ** np.arange(pixels.shape[-1]))
    entropies = []
    for row in codes:
        p = np.bincount(row, minlength=COLOUR_BINS ** pixels.shape[-1]) / len(row)
        p = p[p > 0]
        entropies.append(float(-(p * np.log(p)).sum() / np.log(COLOUR_BINS ** pixels.shape[-1])))
    return {"dark_pixel_share": dark, "clipped_pixel_share": clipped, "colour_entropy": float(np.mean(entropies))}

