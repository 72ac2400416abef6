"""The toy world: procedural captioned 16x16 images with known hidden modes, a tiny SD3 model and a reward.

Small enough to pre-train and GRPO fine-tune on a laptop CPU, yet it shows GRPO's mode collapse: the
quadrant a shape sits in is a visual mode the captions never mention, so diversity is measurable exactly.
The model lives in `dgrpo.toyworld.model` (imported on its own: it pulls in diffusers).
"""

from dgrpo.toyworld.data import (
    CAPTIONS,
    COLORS,
    N_MODES,
    SHAPES,
    classify_color,
    classify_mode,
    parse_caption,
    render,
    sample_batch,
)
from dgrpo.toyworld.reward import MODE_PREFERENCE, toy_quality, toy_reward

__all__ = [
    "CAPTIONS",
    "COLORS",
    "MODE_PREFERENCE",
    "N_MODES",
    "SHAPES",
    "classify_color",
    "classify_mode",
    "parse_caption",
    "render",
    "sample_batch",
    "toy_quality",
    "toy_reward",
]
