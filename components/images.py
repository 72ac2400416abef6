"""Container image of each stage, fixed when the components are defined (KFP bakes base_image in).

DGRPO_IMAGES_FILE names the JSON map stage -> image reference that `make images` writes (build/images.json,
references pinned by digest after a push); without it, DGRPO_IMAGE_REGISTRY and DGRPO_IMAGE_TAG select them.
"""

import json
import os
from pathlib import Path

from dgrpo import __version__
from dgrpo.contracts.stages import stage_spec


def image_for(stage: str) -> str:
    stage_spec(stage)  # an unknown stage is an error naming the known ones
    refs_file = os.environ.get("DGRPO_IMAGES_FILE")
    if refs_file:
        try:
            refs = json.loads(Path(refs_file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"DGRPO_IMAGES_FILE {refs_file}: cannot read the image references ({exc})") from exc
        if not isinstance(refs, dict) or not isinstance(refs.get(stage), str) or not refs[stage]:
            raise ValueError(f"DGRPO_IMAGES_FILE {refs_file}: no image reference for stage '{stage}'")
        return refs[stage]
    registry = os.environ.get("DGRPO_IMAGE_REGISTRY", "ghcr.io/dgrpo")
    tag = os.environ.get("DGRPO_IMAGE_TAG", __version__)
    return f"{registry}/dgrpo-{stage}:{tag}"
