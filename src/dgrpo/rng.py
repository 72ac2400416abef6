"""Named random streams: every random draw of a run comes from one stream, seeded by (root, stream, index...).

A seed is derived from the root seed (`seed`, or `eval.seed` for evaluation), the stream's tag and the stream's
index, through numpy's SeedSequence. Tags are distinct and each stream has a fixed index length, so two streams, or
two indices of one stream, never share a seed by construction (the old numbered scheme let the SDE-window stream
equal the noise seed of prompt 0, sample 1). Seeds are 63-bit, so a long fine-tune's hundreds of thousands of
samples do not collide by chance either. The round counter is part of every training index, which makes it the
run's whole random state: a resumed run draws what an uninterrupted one would.
"""

import enum

import numpy as np


class Stream(enum.IntEnum):
    """A named stream; the value is its tag. Its index is documented beside it and checked by `derive_seed`."""

    PROMPTS = 1
    """(round,): the round's draw of training prompts."""
    SAMPLE = 2
    """(round, prompt index, sample index): a rollout sample's initial noise and SDE noise."""
    SDE_WINDOW = 3
    """(round,): where the round's SDE window starts (Flow-GRPO-Fast)."""
    LORA_INIT = 4
    """(): the LoRA adapter's initial A matrices."""
    UPDATE_ORDER = 5
    """(round,): the shuffle of a round's trajectories into optimizer steps."""
    CLUSTER = 6
    """(round, group index): k-means initialisation of one prompt group's spectral clustering."""
    EVAL_NOISE = 7
    """(sample index,) under the root eval.seed: the evaluation's fixed noise, the same every round."""
    PROMPT_NOISE = 8
    """(round, prompt index, sample index, step): DRIFT's prompt-embedding noise of one sample at one step."""
    PROBE = 9
    """(probe prompt index, sample index): the diversity probe's initial and SDE noise, the same every round."""


ARITY = {Stream.PROMPTS: 1, Stream.SAMPLE: 3, Stream.SDE_WINDOW: 1, Stream.LORA_INIT: 0, Stream.UPDATE_ORDER: 1,
         Stream.CLUSTER: 2, Stream.EVAL_NOISE: 1, Stream.PROMPT_NOISE: 4,
         Stream.PROBE: 2}

SEED_BITS = 63


def derive_seed(root: int, stream: Stream, *index: int) -> int:
    """A 63-bit seed for `index` of `stream` under `root`, stable across machines and processes."""
    if len(index) != ARITY[stream]:
        raise ValueError(f"stream {stream.name} takes {ARITY[stream]} index values, got {len(index)}: {index}")
    if root < 0 or any(i < 0 for i in index):
        raise ValueError(f"stream {stream.name}: root and index must be non-negative, got {root}, {index}")
    words = np.random.SeedSequence([int(root), int(stream), *map(int, index)]).generate_state(1, np.uint64)
    return int(words[0]) >> (64 - SEED_BITS)
