"""Image helpers every layer shares: PNG bytes, the evaluation grid, and the pixel convention of the toy world."""

import io

import numpy as np
from PIL import Image


def uint8_to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] to float32 [B, 3, H, W] in [-1, 1], the toy world's pixel convention."""
    return images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0


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
