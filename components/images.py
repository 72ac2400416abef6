"""Container image of each task, fixed when the components are defined (KFP bakes base_image in); the config's
`kubernetes.images` replaces it at compile time (dgrpo_pipelines.kubernetes.configure).

Image keys are the stage names and `control`, the small CPU image of the bookkeeping tasks. DGRPO_IMAGES_FILE
names the JSON map key -> image reference that `make images` writes (build/images.json, references pinned by digest
after a push); without it, DGRPO_IMAGE_REGISTRY and DGRPO_IMAGE_TAG select them. The default registry,
ghcr.io/dgrpo, is a placeholder: nothing is published there, and `dgrpo submit` refuses it.
"""

import json
import os
from pathlib import Path

from dgrpo import __version__
from dgrpo.config.deployment import IMAGE_KEYS

PLACEHOLDER_REGISTRY = "ghcr.io/dgrpo"
_DEFINED: dict[str, str] = {}
"""Every reference image_for gave, and its key: how configure() tells a stage's or the control image's task from
a team's own image, whatever the environment at compile time."""


def image_for(key: str) -> str:
    """The reference a component is defined with for image `key` (a stage name or `control`)."""
    if key not in IMAGE_KEYS:
        raise ValueError(f"unknown stage {key!r} (image keys: {', '.join(IMAGE_KEYS)})")
    refs_file = os.environ.get("DGRPO_IMAGES_FILE")
    if refs_file:
        try:
            refs = json.loads(Path(refs_file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"DGRPO_IMAGES_FILE {refs_file}: cannot read the image references ({exc})") from exc
        if not isinstance(refs, dict) or not isinstance(refs.get(key), str) or not refs[key]:
            raise ValueError(f"DGRPO_IMAGES_FILE {refs_file}: no image reference for stage '{key}'")
        ref = refs[key]
    else:
        registry = os.environ.get("DGRPO_IMAGE_REGISTRY", PLACEHOLDER_REGISTRY)
        ref = f"{registry}/dgrpo-{key}:{os.environ.get('DGRPO_IMAGE_TAG', __version__)}"
    _DEFINED.setdefault(ref, key)
    return ref


def key_of(ref: str) -> str | None:
    """The image key a component defined with `ref` belongs to (None: not one of ours)."""
    return _DEFINED.get(ref)


def is_placeholder(ref: str) -> bool:
    """True for a reference under the placeholder registry, which no cluster can pull."""
    return ref.startswith(PLACEHOLDER_REGISTRY + "/")
