"""Named random streams: distinct by construction, stable, and checked for their index length."""

import numpy as np
import pytest

from dgrpo.rng import ARITY, Stream, derive_seed


def test_every_stream_has_an_arity_and_a_distinct_tag():
    assert set(ARITY) == set(Stream)
    assert len({int(s) for s in Stream}) == len(Stream)


def test_streams_and_indices_never_share_a_seed():
    keys = {(s, (i,) * ARITY[s]) for s in Stream for i in range(50)}
    keys |= {(Stream.SAMPLE, (r, p, k)) for r in range(3) for p in range(4) for k in range(16)}
    keys |= {(Stream.CLUSTER, (r, g)) for r in range(3) for g in range(8)}
    seeds = {derive_seed(0, s, *index) for s, index in keys}
    assert len(seeds) == len(keys)
    # the old numbered scheme's collision: the SDE window of a round and sample (prompt 0, index 1) of that round
    assert derive_seed(5, Stream.SDE_WINDOW, 2) != derive_seed(5, Stream.SAMPLE, 2, 0, 1)
    # an evaluation root equal to the training root still gives other seeds
    assert derive_seed(7, Stream.EVAL_NOISE, 0) != derive_seed(7, Stream.PROMPTS, 0)


def test_seeds_are_63_bit_and_stable():
    seed = derive_seed(0, Stream.SAMPLE, 0, 0, 0)
    assert 0 <= seed < 2**63 and seed == derive_seed(0, Stream.SAMPLE, 0, 0, 0)
    assert np.random.default_rng(seed).integers(1 << 30) == np.random.default_rng(seed).integers(1 << 30)


def test_a_wrong_index_length_is_an_error():
    with pytest.raises(ValueError, match="stream SAMPLE takes 3 index values, got 2"):
        derive_seed(0, Stream.SAMPLE, 1, 2)
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1, Stream.PROMPTS, 0)
