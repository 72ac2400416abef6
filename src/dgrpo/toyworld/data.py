"""Procedural 16x16 captioned images whose hidden mode (the quadrant) is known exactly.

Captions say colour and shape but never where the shape is: the quadrant is a hidden visual mode, uniform
in the data, so a model's mode histogram measures its diversity without any learned classifier.
"""

from dataclasses import dataclass

import numpy as np

from dgrpo.images import uint8_to_unit

IMAGE_SIZE = 16
SHAPE_SIZE = 6
MAX_JITTER = 2
COLOR_JITTER = 0.15
N_MODES = 4
FOREGROUND_THRESHOLD = 0.0
"""A pixel is foreground when its brightest channel exceeds this value ([-1, 1] scale)."""
MIN_FOREGROUND = 4
"""Fewer foreground pixels than this means "no shape" (mode -1)."""

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("square", "cross")
CAPTIONS = [f"a {color} {shape}" for color in COLORS for shape in SHAPES]
PALETTE = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=np.float32)
"""Target RGB in [0, 1] of each entry of COLORS."""


def parse_caption(caption: str) -> tuple[str, str]:
    """Split a caption of the grammar "a {colour} {shape}" into (colour, shape)."""
    words = caption.split()
    if len(words) != 3 or words[0] != "a" or words[1] not in COLORS or words[2] not in SHAPES:
        raise ValueError(f"caption {caption!r} is not in the toy grammar 'a {{{'|'.join(COLORS)}}} "
                         f"{{{'|'.join(SHAPES)}}}'")
    return words[1], words[2]


def shape_template(shape: str) -> np.ndarray:
    """Boolean [SHAPE_SIZE, SHAPE_SIZE] mask of a shape, shared by rendering and the reward."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if shape == "square":
        return np.ones((SHAPE_SIZE, SHAPE_SIZE), dtype=bool)
    mask = np.zeros((SHAPE_SIZE, SHAPE_SIZE), dtype=bool)
    mid = SHAPE_SIZE // 2
    mask[mid - 1:mid + 1, :] = True
    mask[:, mid - 1:mid + 1] = True
    return mask


def _check_mode(mode: int) -> None:
    if not 0 <= mode < N_MODES:
        raise ValueError(f"mode must be in [0, {N_MODES}), got {mode}")


def render(caption: str, mode: int, rng: np.random.Generator) -> np.ndarray:
    """Draw the caption's shape in quadrant `mode`; float32 [3, 16, 16] in [-1, 1], black background."""
    color, shape = parse_caption(caption)
    _check_mode(mode)
    half = IMAGE_SIZE // 2
    dy, dx = rng.integers(0, MAX_JITTER + 1, size=2)
    jitter = rng.uniform(-COLOR_JITTER, COLOR_JITTER, size=3)
    rgb = np.clip(PALETTE[COLORS.index(color)] + jitter, 0.0, 1.0).astype(np.float32)
    top, left = (mode // 2) * half + dy, (mode % 2) * half + dx
    image = np.full((3, IMAGE_SIZE, IMAGE_SIZE), -1.0, dtype=np.float32)
    window = image[:, top:top + SHAPE_SIZE, left:left + SHAPE_SIZE]
    window[:, shape_template(shape)] = (2.0 * rgb - 1.0)[:, None]
    return image


def sample_batch(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw n images with captions and modes uniform: (images [n,3,16,16], caption indices, modes)."""
    caption_idx = rng.integers(0, len(CAPTIONS), size=n).astype(np.int64)
    modes = rng.integers(0, N_MODES, size=n).astype(np.int64)
    images = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i in range(n):
        images[i] = render(CAPTIONS[caption_idx[i]], int(modes[i]), rng)
    return images, caption_idx, modes


def foreground_mask(images: np.ndarray) -> np.ndarray:
    """Boolean [n, 16, 16]: pixels whose brightest channel is above FOREGROUND_THRESHOLD."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape [n, 3, H, W], got {images.shape}")
    return images.max(axis=1) > FOREGROUND_THRESHOLD


def classify_mode(images: np.ndarray) -> np.ndarray:
    """Quadrant holding most foreground pixels, or -1 when there is (almost) no foreground; int64 [n]."""
    mask = foreground_mask(images)
    n, h, w = mask.shape
    quads = mask.reshape(n, 2, h // 2, 2, w // 2).sum(axis=(2, 4)).reshape(n, N_MODES)
    modes = quads.argmax(axis=1).astype(np.int64)
    modes[mask.sum(axis=(1, 2)) < MIN_FOREGROUND] = -1
    return modes


def classify_color(images: np.ndarray) -> np.ndarray:
    """Index into COLORS nearest to the mean foreground colour, or -1 without foreground; int64 [n]."""
    images = np.asarray(images, dtype=np.float32)
    mask = foreground_mask(images)
    counts = mask.sum(axis=(1, 2))
    rgb01 = (images + 1.0) / 2.0
    mean = (rgb01 * mask[:, None]).sum(axis=(2, 3)) / np.maximum(counts, 1)[:, None]
    dist = ((mean[:, None, :] - PALETTE[None]) ** 2).sum(axis=2)
    colors = dist.argmin(axis=1).astype(np.int64)
    colors[counts < MIN_FOREGROUND] = -1
    return colors


@dataclass(frozen=True)
class QuadrantClassifier:
    """The toy world's mode classifier on uint8 images, as `dgrpo.metrics.MODE_CLASSIFIERS` entry "toy"."""

    n_modes: int = N_MODES

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return classify_mode(uint8_to_unit(images))


def mode_classifier() -> QuadrantClassifier:
    return QuadrantClassifier()
