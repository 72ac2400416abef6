"""Container image of each stage, fixed when the components are defined (KFP bakes base_image in).

DGRPO_IMAGE_REGISTRY and DGRPO_IMAGE_TAG select them; `make images` writes both for the compiler.
"""

import os

from dgrpo import __version__

STAGES = ("rollout", "reward", "cluster", "update", "evaluate")


def image_for(stage: str) -> str:
    registry = os.environ.get("DGRPO_IMAGE_REGISTRY", "ghcr.io/dgrpo")
    tag = os.environ.get("DGRPO_IMAGE_TAG", __version__)
    return f"{registry}/dgrpo-{stage}:{tag}"
