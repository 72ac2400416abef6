"""The diversity probe (`Method.diversity_probe`, the diversity target's): sampled and embedded by the rollout stage,
read by the cluster stage's controller.

Each rollout shard samples its share of the probe prompts (`shards.contiguous_part`) and stores their embeddings
in its rollouts table (column `diversity_probe`, on the first row), so the probe travels with the rollouts it was
sampled beside: no port of its own between the stages, and rollouts with and without a probe are different objects
of the store.
"""

import numpy as np
import pyarrow as pa
import torch

from dgrpo import artifacts
from dgrpo.config import RunConfig
from dgrpo.embedders import load_embedder
from dgrpo.methods.base import DiversityProbe
from dgrpo.models import FlowPolicy
from dgrpo.models.trajectories import SamplerSpec, expand_conditioning, sample_sde
from dgrpo.rng import Stream, derive_seed
from dgrpo.stages.shared.rounds import sde_steps

COLUMN = "diversity_probe"

ProbeEmbeddings = dict[int, np.ndarray]
"""Each probe prompt's embeddings [images, D] by its index in the probe."""


def sample_probe(cfg: RunConfig, policy: FlowPolicy, probe: DiversityProbe, *, round_index: int,
                 indices: list[int]) -> bytes:
    """The probe prompts `indices` embedded, as the rollouts column's safetensors ("embeddings" [len(indices),
    images, D], "prompt_index"). They are sampled as the round's rollouts are (same sampler and stochastic steps, no
    method's hooks), from noise that depends only on the run's seed, the probe prompt and the image (stream PROBE):
    every round draws the same."""
    embed = load_embedder(cfg.cluster.embedder, cfg.cluster.embedder_options)
    spec = SamplerSpec.from_config(cfg.sampling, sde_steps=sde_steps(cfg, round_index))
    out = []
    for j in indices:
        seeds = [derive_seed(cfg.seed, Stream.PROBE, j, k) for k in range(probe.images)]
        cond = expand_conditioning(policy.encode_prompts([probe.prompts[j]]),
                                   torch.zeros(probe.images, dtype=torch.long))
        images = policy.decode_batches(sample_sde(policy, cond, seeds, spec=spec).latents[:, -1],
                                       cfg.sampling.batch_size)
        out.append(torch.as_tensor(np.asarray(embed(images), dtype=np.float32)))
    return artifacts.tensors_to_bytes({"embeddings": torch.stack(out),
                                       "prompt_index": torch.tensor(indices, dtype=torch.int64)})


def read_probe(table: pa.Table) -> ProbeEmbeddings:
    """The probe embeddings a rollouts table (one shard, or several merged) carries; empty where it has none."""
    out: ProbeEmbeddings = {}
    if COLUMN not in table.column_names:
        return out
    for data in table.column(COLUMN).drop_null().to_pylist():
        tensors = artifacts.tensors_from_bytes(data)
        out |= dict(zip(tensors["prompt_index"].tolist(), tensors["embeddings"].numpy(), strict=True))
    return out
