"""The toy world's image embedder: a layout descriptor standing in for DreamSim on 16x16 images.

DreamSim on a photo sees what is where; on the toy's black-background shapes the semantic difference between
two images of one caption is where the shape sits. The descriptor is the share of soft foreground in each cell
of a blurred coarse grid, so cosine distances are large (> 0.67) between images whose shapes sit in different
quadrants and small (< 0.3) between jittered copies. It knows nothing of quadrants or of the mode classifier:
clustering still has to find them.
"""

import numpy as np
from scipy.ndimage import gaussian_filter

from dgrpo.embedders import check_images
from dgrpo.images import uint8_to_unit
from dgrpo.toyworld.data import IMAGE_SIZE

GRID = 4
"""Cells per side; 16 / 4 = 4 px cells, finer than the 8 px quadrants so jitter moves mass between cells."""
BLUR = 2.0
"""Gaussian blur (px) of the foreground before pooling: a 2 px shift of a shape is a small change, not a new one
(on rendered data it halves the largest within-quadrant distance, 0.8 -> 0.3, cross-quadrant stays > 0.67)."""
EMPTY_LEVEL = 0.02
"""A constant extra coordinate, so a blank image has a direction (and blanks are alike) instead of a zero norm."""


def toy_embedding(images: np.ndarray) -> np.ndarray:
    """Images float [n, 3, 16, 16] in [-1, 1] -> float32 [n, GRID * GRID + 1] layout embeddings."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"expected images of shape [n, 3, {IMAGE_SIZE}, {IMAGE_SIZE}], got {images.shape}")
    brightness = (images.max(axis=1) + 1.0) / 2.0  # [n, 16, 16] in [0, 1]
    foreground = np.clip((brightness - 0.25) / 0.5, 0.0, 1.0)  # soft: blurry samples keep partial mass
    foreground = gaussian_filter(foreground, sigma=(0.0, BLUR, BLUR), mode="constant")
    cell = IMAGE_SIZE // GRID
    n = len(images)
    pooled = foreground.reshape(n, GRID, cell, GRID, cell).mean(axis=(2, 4)).reshape(n, GRID * GRID)
    return np.concatenate([pooled, np.full((n, 1), EMPTY_LEVEL, np.float32)], axis=1).astype(np.float32)


def toy_embedder():
    """The `dgrpo.embedders.EMBEDDERS` entry "toy": `toy_embedding` on uint8 images [B, H, W, 3]."""

    def embed(images: np.ndarray) -> np.ndarray:
        return toy_embedding(uint8_to_unit(check_images(images)))

    return embed
