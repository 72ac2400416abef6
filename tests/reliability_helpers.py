"""What the reliability tests share: a config small enough that a round takes about a second on a CPU, and a
snapshot of every file under a directory (to prove a refused input changed nothing)."""

import hashlib
from pathlib import Path

from support import small_config

TINY = {"sampling.num_steps": 3, "sampling.group_size": 4, "train.batch_size": 8, "train.micro_batch_size": 8,
        "eval.samples_per_prompt": 2, "eval.num_steps": 2, "eval.every": 10, "eval.prompts": ["a red square"]}
"""Every stage and code path of `small_config`, with 2 prompts x 4 images x 3 steps per round."""


def tiny_config(**overrides):
    return small_config(**TINY | overrides)


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots`, by path."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for root in roots if root.exists()
            for p in sorted(root.rglob("*")) if p.is_file()}
