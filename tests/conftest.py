"""Shared fixtures: a small run config on the shipped toy checkpoint, and a temporary store."""

import pytest
import torch

from dgrpo.config import load_config
from dgrpo.stages.common import StageContext
from dgrpo.store import LocalStore

torch.set_num_threads(2)


def small_config(**overrides):
    """Two rounds on 2 prompts x 8 images: seconds per stage on a CPU, yet every code path runs."""
    base = {"rounds": 2, "sampling.prompts_per_round": 2, "sampling.group_size": 8, "train.batch_size": 16,
            "train.micro_batch_size": 8, "eval.samples_per_prompt": 4, "eval.num_steps": 6, "eval.every": 2,
            "eval.prompts": ["a red square", "a yellow cross"], "train.learning_rate": 3e-3}
    return load_config(None, base | overrides)


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture
def ctx(store):
    return StageContext(small_config(), store, "test-run")
