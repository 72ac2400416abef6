"""Image embedders by name: the semantic space the creativity bonus clusters in and diversity is measured in.

An embedder factory takes `cluster.embedder_options` as keyword arguments and returns a callable mapping uint8
images [B, H, W, 3] to float32 embeddings [B, D]; distances are 1 - cosine, in [0, 2]. Built-ins: "dreamsim"
(DreamSim, the paper's choice: `dgrpo.embedders.dreamsim`) and "toy" (the toy world's layout descriptor, its row in
`TOY_WORLD`); a team's embedder is a `package.module:factory` path in `cluster.embedder`.
"""

import json
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from dgrpo.config.recipe import TOY_WORLD
from dgrpo.registry import Registry


class Embedder(Protocol):
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [B, H, W, 3] -> float32 embeddings [B, D]."""
        ...


EMBEDDERS: Registry[Callable[..., Embedder]] = Registry("embedder", "cluster.embedder", {
    "dreamsim": "dgrpo.embedders.dreamsim:DreamSimEmbedder",
}, contributors=(TOY_WORLD,))
_LOADED: dict[str, Embedder] = {}


def load_embedder(name: str, options: dict[str, Any] | None = None, cache: bool = True) -> Embedder:
    """The embedder `name` built with `options`; kept per process, so in-process runs load weights once."""
    key = json.dumps([name, options or {}], sort_keys=True, default=str)
    if cache and key in _LOADED:
        return _LOADED[key]
    factory = EMBEDDERS.get(name)
    try:
        embedder = factory(**(options or {}))
    except TypeError as exc:
        raise ValueError(f"config field 'cluster.embedder_options': {exc}") from exc
    if cache:
        _LOADED[key] = embedder
    return embedder


def check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"embedder input must be non-empty uint8 images [B, H, W, 3], got {images.dtype} "
                         f"{images.shape}")
    return images
