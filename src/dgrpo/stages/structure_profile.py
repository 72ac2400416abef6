"""Which denoising steps decide a group's diversity: the measured profile behind `train.structure_steps: auto`.

Why: DiverseGRPO's SA-Reg acts on the first K steps, "where the structure is drawn", and the detail baseline on the
rest; the paper fixes K by hand and names tying it to "the actual diversity sensitivity of the denoising
trajectory" as future work. The profile measures that sensitivity: for each SDE step j, how much a prompt group's
final diversity falls when step j's noise is shared by every member of the group (all other noise their own). A
step that decides layout or colour loses much diversity when shared; a step that only refines detail, little.

Measured cumulatively, so that later steps' noise does not mask an earlier step's: condition j shares the noise of
steps j..T-1 across the group (the initial noise and the steps before j stay each sample's own), and step j's
sensitivity is the diversity its own noise adds, d(j + 1) - d(j). The conditions sample the same seeds (common
random numbers), so a difference is the effect of the sharing, not of new draws. Diversity is the cluster stage's:
the mean in-group cosine distance on cluster.embedder. K is the smallest number of first steps whose sensitivities
hold `train.structure_share` of their total.

The profile of the base model is measured once per fine-tune, by the first update that needs it, on the
conditioning the round's rollouts stored (the update's policy has no text encoders) of the round's first groups by
id, so the same groups however many processes train. It is stored as an artifact (kind "structure_profile", with
lineage) named by the run's record `structure_profile.json`; every later round, a resumed one included, reads K
from there.
"""

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from dgrpo import artifacts
from dgrpo.config import RunConfig
from dgrpo.diversity import mean_pairwise_distance
from dgrpo.embedders import load_embedder
from dgrpo.models import FlowPolicy
from dgrpo.models.trajectories import SamplerSpec, expand_conditioning, sample_sde
from dgrpo.rng import Stream, derive_seed
from dgrpo.runs.profiles import record_structure_profile, structure_profile_ref
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import ArtifactRef, ArtifactStore, StoreError

KIND = "structure_profile"
PROFILE_ROUND = 1_000_000
"""The SAMPLE stream's round index of the profile's noise: no training round draws from it."""


@dataclass(frozen=True)
class StructureProfile:
    """The group diversity as the SDE steps' noise is made each sample's own, step by step, and the K chosen."""

    diversity: list[float]
    """diversity[j] (j = 0..T): the mean in-group diversity when steps j..T-1 share their noise across the group and
    the steps before j (and the initial noise) do not; diversity[T] has every noise the sample's own."""
    share: float
    """train.structure_share: the part of the total sensitivity the first K steps must hold."""
    prompts: list[str]
    group_size: int

    @property
    def sensitivity(self) -> list[float]:
        """Per SDE step j, the diversity its own noise adds given the earlier steps' (0 where it happened to remove
        some): diversity[j + 1] - diversity[j]."""
        d = self.diversity
        return [max(d[j + 1] - d[j], 0.0) for j in range(len(d) - 1)]

    @property
    def structure_steps(self) -> int:
        """The smallest K whose first K steps hold `share` of the total sensitivity (1 when no step matters)."""
        s = np.asarray(self.sensitivity)
        if s.sum() <= 0:
            return 1
        return int(np.searchsorted(np.cumsum(s) / s.sum(), self.share - 1e-12) + 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"sensitivity": self.sensitivity, "structure_steps": self.structure_steps},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StructureProfile":
        d = json.loads(text)
        return cls(diversity=d["diversity"], share=d["share"], prompts=d["prompts"], group_size=d["group_size"])


Condition = tuple[str, dict[str, torch.Tensor]]
"""One profile group's prompt and its conditioning (as the rollouts table stores it: no batch dimension)."""


def measure_profile(policy: FlowPolicy, cfg: RunConfig, conditions: list[Condition]) -> StructureProfile:
    """The sensitivity profile of `policy`: one group of sampling.group_size images per condition, sampled as the
    rollouts are (sampling.*, every step stochastic), the same seeds in every condition j; diversity on
    cluster.embedder, as the cluster stage and the diversity target measure it."""
    s = cfg.sampling
    embed = load_embedder(cfg.cluster.embedder, cfg.cluster.embedder_options)
    expanded = [{k: v.unsqueeze(0).to(policy.device) for k, v in cond.items()} for _, cond in conditions]

    def diversity(first_shared: int) -> float:
        spec = SamplerSpec.from_config(s, sde_steps=None, shared_noise_steps=tuple(range(first_shared, s.num_steps)))
        values = []
        for g, cond in enumerate(expanded):
            seeds = [derive_seed(cfg.seed, Stream.SAMPLE, PROFILE_ROUND, g, k) for k in range(s.group_size)]
            latents = sample_sde(policy, expand_conditioning(cond, torch.zeros(s.group_size, dtype=torch.long)), seeds,
                                 spec=spec).latents[:, -1]
            values.append(mean_pairwise_distance(np.asarray(embed(policy.decode(latents)), dtype=np.float32)))
        return float(np.mean(values))

    with torch.no_grad():
        return StructureProfile(diversity=[diversity(j) for j in range(s.num_steps + 1)],
                                share=cfg.train.structure_share, prompts=[p for p, _ in conditions],
                                group_size=s.group_size)


def profile_conditions(rollouts: pa.Table, groups: list[str], count: int,
                       gather: Callable[[list], list]) -> list[Condition]:
    """The conditioning of `count` of the round's groups (`groups`: all of them, wherever they train), the first by
    group id and in turn when there are fewer: the same groups however many processes the update runs. Each process
    holds its own rollouts' conditioning (`rollouts`); `gather` collects every process's (accelerate's
    gather_object)."""
    ordered = sorted(set(groups))
    wanted = [ordered[g % len(ordered)] for g in range(count)]
    stored = rollouts.filter(pc.is_valid(rollouts.column("conditioning")))
    held = {g: (p, c) for g, p, c in zip(stored.column("group_id").to_pylist(), stored.column("prompt").to_pylist(),
                                          stored.column("conditioning").to_pylist(), strict=True) if g in wanted}
    everyone = {g: pc_ for part in gather([held]) for g, pc_ in part.items()}
    return [(everyone[g][0], artifacts.tensors_from_bytes(everyone[g][1])) for g in wanted]


@dataclass(frozen=True)
class Resolved:
    """The K a round uses under structure_steps auto, and the profile artifact it came from."""

    structure_steps: int
    ref: ArtifactRef


def resolve(ctx: StageContext, policy: FlowPolicy, round_index: int, *, rollouts: pa.Table, groups: list[str],
            main: bool = True, wait: Callable[[], None] = lambda: None,
            gather: Callable[[list], list] = lambda parts: parts) -> Resolved | None:
    """None unless train.structure_steps is "auto"; then the K of the fine-tune's profile, read from its record, or
    measured now on the base model (`policy` with its adapter off) on the round's conditioning (`rollouts`, this
    process's; `groups`, the round's) by the `main` process and recorded, so every round and process uses the same
    K. `wait`: the processes' barrier; `gather`: their gather. K is at most the trained steps."""
    cfg = ctx.config
    if cfg.train.structure_steps != "auto":
        return None
    missing = structure_profile_ref(ctx.store, ctx.run_id) is None
    if missing:  # every process takes part in gathering the conditioning; the main one measures
        conditions = profile_conditions(rollouts, groups, cfg.train.profile_groups, gather)
    if main and missing:
        with policy.adapter_disabled():
            profile = measure_profile(policy, cfg, conditions)
        prov = ctx.provenance("update", round_index, {"base_model": ctx.base_model_ref(policy)},
                              seeds={"seed": cfg.seed, "stream": int(Stream.SAMPLE), "round": PROFILE_ROUND})
        ref = artifacts.write_blob(ctx.store, profile.to_json().encode(), KIND, ".json", prov)
        record_structure_profile(ctx.store, ctx.run_id, ref)
    wait()
    ref = structure_profile_ref(ctx.store, ctx.run_id)
    if ref is None:
        raise StoreError(f"run {ctx.run_id}: no structure profile recorded after the main process measured it")
    return Resolved(min(read_profile(ctx.store, ref).structure_steps, cfg.num_train_steps), ref)


def read_profile(store: ArtifactStore, ref: ArtifactRef) -> StructureProfile:
    if ref.kind != KIND:
        raise StoreError(f"artifact {ref.uri}: is a '{ref.kind}' artifact, expected '{KIND}'")
    return StructureProfile.from_json(store.get(ref).decode())
