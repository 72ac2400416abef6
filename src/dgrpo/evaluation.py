"""Evaluation metrics: quality, mode coverage and pairwise diversity, plus the image grid."""

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from dgrpo.rewards import uint8_to_unit
from dgrpo.toyworld.data import N_MODES, classify_mode

ModeClassifier = Callable[[np.ndarray], np.ndarray]

MODE_CLASSIFIERS: dict[str, tuple[ModeClassifier, int]] = {
    "toy": (lambda images: classify_mode(uint8_to_unit(images)), N_MODES),
}
"""name -> (classifier of uint8 images [B, H, W, 3] into mode ids, -1 for none; number of modes)."""

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


def image_grid(rows: list[np.ndarray], scale: int = 4, pad: int = 2) -> bytes:
    """PNG of one row per prompt (uint8 images [N, H, W, 3]), upscaled for viewing."""
    h, w = rows[0].shape[1:3]
    cols = max(len(r) for r in rows)
    cell_h, cell_w = h * scale + pad, w * scale + pad
    canvas = np.full((len(rows) * cell_h + pad, cols * cell_w + pad, 3), 64, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            big = img.repeat(scale, 0).repeat(scale, 1)
            canvas[pad + i * cell_h: pad + i * cell_h + h * scale, pad + j * cell_w: pad + j * cell_w + w * scale] = big
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
