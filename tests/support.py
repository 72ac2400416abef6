"""What test modules import (not fixtures): the small run config and the S3 test bucket's name.

A plain module, so tests import it by name (`from support import small_config`) rather than importing
conftest.py, which pytest loads itself and which keeps the fixtures.
"""

from dgrpo.config import load_config
from dgrpo.store import ArtifactRef, ArtifactStore

S3_BUCKET = "dgrpo-test"


def small_config(**overrides):
    """Two rounds on 2 prompts x 8 images: seconds per stage on a CPU, yet every code path runs."""
    base = {"rounds": 2, "sampling.prompts_per_round": 2, "sampling.group_size": 8, "train.batch_size": 16,
            "train.micro_batch_size": 8, "eval.samples_per_prompt": 4, "eval.num_steps": 6, "eval.every": 2,
            "eval.prompts": ["a red square", "a yellow cross"], "train.learning_rate": 3e-3}
    return load_config(None, base | overrides)


def event_output(store: ArtifactStore, event: str, output: str, run_id: str = "ft") -> ArtifactRef:
    """The reference to `output` in the event record `event` (e.g. "r0001-update") of `run_id`."""
    return ArtifactRef(**store.get_json(f"runs/{run_id}/events/{event}.json")["outputs"][output])
