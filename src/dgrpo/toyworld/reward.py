"""The toy reward: a quality score every mode can max out, times a bonus factor for one favoured mode.

Quality is translation invariant (the shape template is matched at its best position), so it never prefers
a quadrant; the explicit `mode_preference` is the only pull towards one mode, which is exactly the setting where
plain GRPO collapses the policy's diversity onto the favoured quadrant. The bonus multiplies the quality
(reward = quality x (1 + preference[mode])): an added bonus paid a top-left image whatever its quality, so a
policy could trade quality for the quadrant (scattered pixels mostly top-left earned it), and quality fell while
the policy collapsed. Multiplied, the bonus pays only for a good image, and the mode and the quality pull the
same way (docs/experiment.md).
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dgrpo.images import uint8_to_unit
from dgrpo.toyworld.data import (
    COLORS,
    MIN_FOREGROUND,
    N_MODES,
    PALETTE,
    SHAPE_SIZE,
    SHAPES,
    classify_mode,
    foreground_mask,
    parse_caption,
    shape_template,
)

MODE_PREFERENCE = (2.0, 0.0, 0.0, 0.0)
"""Relative reward bonus per quadrant: a top-left image's quality counts (1 + 2.0) times. At 1.0, 30 rounds of
Flow-GRPO collapsed the mode entropy to 0.32 in one seed of three and left it at 0.65 and 0.83 in the others; the
earlier additive 0.1 left it at 0.68, and additive 0.25 and 0.5 collapsed it while quality fell
(docs/experiment.md)."""
COLOR_TOLERANCE = 0.0
"""Per-channel colour error that costs nothing. 0: the quality asks for the palette colour itself. The earlier 0.15
(the data's own colour jitter, data.COLOR_JITTER) saturated colour fidelity at 0.96-0.98, which left shape IoU, the
factor the tiny model cannot improve, as the only room in the quality: its in-group spread was noise the policy
could not follow, and no arm learned reliably (docs/experiment.md). With 0 the base model's jitter leaves ~0.3 of
fidelity to gain, in the same direction for every caption and quadrant."""
COLOR_FALLOFF = 0.35
"""Extra per-channel error over which colour fidelity falls linearly from 1 to 0."""
BACKGROUND_LEVEL = (0.15, 0.3)
"""Brightness ([0, 1]) below which a pixel is clearly background, and above which it is not at all."""
FOREGROUND_LEVEL = (0.5, 0.8)
"""Brightness ([0, 1]) below which a pixel is not foreground at all, and above which it clearly is."""


def color_fidelity(images: np.ndarray, color_idx: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean closeness of foreground pixels to the target colour, in [0, 1]; float64 [n]."""
    rgb01 = (images.astype(np.float64) + 1.0) / 2.0
    target = PALETTE[color_idx].astype(np.float64)[:, :, None, None]
    error = np.abs(rgb01 - target).max(axis=1)
    score = np.clip(1.0 - np.maximum(error - COLOR_TOLERANCE, 0.0) / COLOR_FALLOFF, 0.0, 1.0)
    count = mask.sum(axis=(1, 2))
    return (score * mask).sum(axis=(1, 2)) / np.maximum(count, 1)


def shape_iou(mask: np.ndarray, shape_idx: np.ndarray) -> np.ndarray:
    """IoU of each foreground mask with its shape template at the best-aligned position; float64 [n]."""
    templates = np.stack([shape_template(s) for s in SHAPES]).astype(np.float64)[shape_idx]
    windows = sliding_window_view(mask.astype(np.float64), (SHAPE_SIZE, SHAPE_SIZE), axis=(1, 2))
    inter = np.einsum("nyxhw,nhw->nyx", windows, templates).reshape(len(mask), -1)
    union = mask.sum(axis=(1, 2))[:, None] + templates.sum(axis=(1, 2))[:, None] - inter
    return (inter / np.maximum(union, 1.0)).max(axis=1)


def crispness(images: np.ndarray) -> np.ndarray:
    """Share of pixels that are clearly background or clearly foreground (soft edges); float64 [n]."""
    brightness = (images.astype(np.float64).max(axis=1) + 1.0) / 2.0
    (bg_full, bg_zero), (fg_zero, fg_full) = BACKGROUND_LEVEL, FOREGROUND_LEVEL
    background = np.clip((bg_zero - brightness) / (bg_zero - bg_full), 0.0, 1.0)
    foreground = np.clip((brightness - fg_zero) / (fg_full - fg_zero), 0.0, 1.0)
    return np.maximum(background, foreground).mean(axis=(1, 2))


def _caption_indices(captions: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    if len(captions) != n:
        raise ValueError(f"got {n} images but {len(captions)} captions")
    parsed = [parse_caption(c) for c in captions]
    colors = np.array([COLORS.index(c) for c, _ in parsed], dtype=np.int64)
    shapes = np.array([SHAPES.index(s) for _, s in parsed], dtype=np.int64)
    return colors, shapes


def toy_quality(images: np.ndarray, captions: list[str]) -> np.ndarray:
    """Colour fidelity x shape IoU x crispness, in [0, 1]; 0 without foreground; float64 [n]."""
    images = np.asarray(images, dtype=np.float32)
    mask = foreground_mask(images)
    colors, shapes = _caption_indices(captions, len(images))
    quality = color_fidelity(images, colors, mask) * shape_iou(mask, shapes) * crispness(images)
    quality[mask.sum(axis=(1, 2)) < MIN_FOREGROUND] = 0.0
    return quality


def toy_reward(images: np.ndarray, captions: list[str], *,
               mode_preference: tuple[float, ...] = MODE_PREFERENCE) -> dict[str, np.ndarray]:
    """Score images [n,3,16,16] in [-1,1]: quality, mode_bonus (quality x preference of the image's mode), reward
    (quality + mode_bonus) (float64) and mode (int64)."""
    if len(mode_preference) != N_MODES:
        raise ValueError(f"mode_preference needs {N_MODES} entries, got {len(mode_preference)}")
    images = np.asarray(images, dtype=np.float32)
    quality = toy_quality(images, captions)
    modes = classify_mode(images)
    bonus_table = np.append(np.asarray(mode_preference, dtype=np.float64), 0.0)
    bonus = quality * bonus_table[modes]
    return {"quality": quality, "mode_bonus": bonus, "reward": quality + bonus, "mode": modes}


def toy_reward_model(mode_preference: tuple[float, ...] | list[float] = MODE_PREFERENCE):
    """The `dgrpo.rewards.REWARDS` entry "toy": quality (colour x shape x crispness, in [0, 1]) times
    (1 + preference) of the image's quadrant, on uint8 images [B, H, W, 3]."""
    preference = tuple(float(p) for p in mode_preference)

    def score(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        out = toy_reward(uint8_to_unit(images), list(prompts), mode_preference=preference)
        return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}

    return score
