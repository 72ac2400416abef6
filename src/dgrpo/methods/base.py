"""The hooks a training method implements, and the methods of a run.

A method (DiverseGRPO, DRIFT, Pro-GRPO, GARDO, GRPO-Guard, a team's own) is one module with a `Method` subclass;
the stages call the hooks of every method of the run (`methods_of`) and name none of them. Each hook's default does
nothing, so a method overrides only the hooks it needs, and a hook reads its own config section to decide whether it
acts. Hooks take keyword arguments so that a new argument does not break a plug-in.

Methods are listed by import path in `dgrpo.config.methods.METHODS` (imported on first use, as rewards and
embedders are): the built-ins, consulted by every run, and the optional ones a run names in its `methods` section;
a team's method is a `package.module:Class` path there. A method's options (`methods.<name>.*`) are its `Options`
dataclass, checked when the config loads and given to the method as `self.options`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dgrpo.config import RunConfig
from dgrpo.config.methods import BUILTINS, METHODS, method_options


@dataclass(frozen=True)
class RoundSignals:
    """One round's per-sample inputs of the advantage and the KL, in the rollouts' row order: the scores table's
    final rewards, clusters and the optional columns (kept, novelty, kl_gate; None where the column is null)."""

    rewards: np.ndarray
    groups: list[str]
    kept: np.ndarray | None
    cluster_ids: np.ndarray
    novelty: np.ndarray | None
    kl_gate: np.ndarray | None


@dataclass(frozen=True)
class PolicyStep:
    """What the update knows of one trained denoising step j of a micro-batch, for `Method.log_ratio`.

    `old_mean` computes, on first call, the step mean under the round's input weights (the policy that sampled the
    rollout): one more forward pass, paid only by a method that asks for it."""

    j: int
    log_prob: torch.Tensor
    old_log_prob: torch.Tensor
    mean: torch.Tensor
    std_dev_t: torch.Tensor
    sigma: float
    sigma_next: float
    old_mean: Callable[[], torch.Tensor]


@dataclass(frozen=True)
class Coefficients:
    """A round's regulariser strengths set by a controller in the cluster stage (`Method.round_coefficients`):
    DiverseGRPO's bonus weight, SA-Reg's lambda for the round's update, the diversity they aim at, and the
    controller's metrics. The scores table records all but the metrics (`COEFFICIENT_COLUMNS`): they are the
    controller's state, which the update carries to the next round."""

    beta: float
    sa_lambda: float
    diversity_target: float
    diversity_smoothed: float
    """The smoothed rollout diversity the controller acted on."""
    metrics: dict[str, float]


COEFFICIENT_COLUMNS = ("beta", "sa_lambda", "diversity_target", "diversity_smoothed")
"""Scores columns a diversity controller sets for the round, one value each (`Coefficients`)."""


@dataclass(frozen=True)
class GroupClusters:
    """One prompt group's clusters and what a method pays on them (`Method.cluster_group`), in the group's order:
    they replace the pass-through's cluster 0, bonus 0 and final reward = quality."""

    cluster_id: np.ndarray
    bonus: np.ndarray
    final_reward: np.ndarray
    kernel_width: float


@dataclass(frozen=True)
class DiversityProbe:
    """A fixed-noise sample of the round's policy that a method asks the rollout stage for (`Method.diversity_probe`):
    `images` per prompt of `prompts`, sampled as the rollouts are but with the same noise every round (stream PROBE),
    embedded by cluster.embedder and handed to the cluster stage's controller. Common random numbers: from round to
    round its measurement moves with the policy, not with a new draw of noise."""

    prompts: list[str]
    images: int


@dataclass(frozen=True)
class StepRegularizer:
    """A method's regulariser of one trained step (`Method.step_regularizer`): `weight` x the batch mean of
    `term(mean, ref_mean)`, a per-sample pull of the policy's step mean towards the reference's, joins the loss; the
    update logs the unweighted mean (the metrics' `sa_reg`). The reference's forward pass runs only where a
    regulariser (this or the KL) acts."""

    weight: float
    term: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Method:
    """A training method: the hooks the stages call, all no-ops here. `cfg` is the whole run config, `options` the
    method's `Options` (None where it declares none)."""

    name = "method"
    Options: type | None = None

    def __init__(self, cfg: RunConfig, options: Any = None):
        self.cfg, self.options = cfg, options

    @classmethod
    def check_run(cls, cfg: RunConfig) -> None:
        """A built-in method's checks that span config sections, run when the config loads (through
        `dgrpo.config.methods.check_builtins`, by name); an optional method checks in its `Options.check_run`."""

    # rollout
    def rollout_reward(self) -> bool:
        """Whether the rollout must load the reward model (to score previews while sampling)."""
        return False

    def started_group_size(self) -> int | None:
        """Trajectories to start per prompt when more than sampling.group_size survive to the group."""
        return None

    def diversity_probe(self) -> DiversityProbe | None:
        """A fixed-noise probe the rollout stage samples and embeds each round beside the rollouts, or None."""
        return None

    def prompt_noise(self, *, sigmas: torch.Tensor, round_index: int, prompt_index: int, n: int) -> Any:
        """A group's conditioning perturbation: an object with `hook(cond)` (the sampler's ConditioningAt) and
        `columns(k)` (the rollouts columns that let the update replay it), or None."""
        return None

    def pruner(self, *, policy: Any, reward: Any, prompt: str, seeds: list[int]) -> Any:
        """A group's pruner (`steps`, `__call__(step, previews, positions)`, `columns(k, first)`, `records`), or
        None."""
        return None

    def rollout_record(self) -> dict | None:
        """The schedule stored with the pruner's decisions (the prune_decisions artifact), or None."""
        return None

    def rollout_metrics(self, *, policy: Any, rows: list[dict]) -> dict[str, float]:
        return {}

    # cluster
    def cluster_group(self, *, quality: np.ndarray, embeddings: np.ndarray | None, seed: int,
                      coefficients: Coefficients | None) -> GroupClusters | None:
        """One prompt group's clusters, bonus and final rewards (before `keep` and `group_columns`), or None (pass
        through). `seed`: the group's seed of stream CLUSTER; `coefficients`: the round's controller coefficients
        (None without a controller), whose beta replaces the config's bonus weight."""
        return None

    def keep(self, *, quality: np.ndarray, final: np.ndarray) -> np.ndarray | None:
        """One group's kept flags (a subset the advantages use), or None."""
        return None

    def group_columns(self, *, quality: np.ndarray, final: np.ndarray, embeddings: np.ndarray | None,
                      keep: np.ndarray) -> dict[str, np.ndarray]:
        """One group's scores columns (a `final_reward` key replaces the final rewards)."""
        return {}

    def round_columns(self, *, scored: pa.Table) -> dict[str, np.ndarray]:
        """Scores columns computed over the whole round (the rewards table `scored`)."""
        return {}

    def round_coefficients(self, *, round_index: int, group_embeddings: list[np.ndarray],
                           probe_embeddings: list[np.ndarray] | None,
                           previous: Callable[[], dict[str, torch.Tensor] | None]) -> Coefficients | None:
        """The round's bonus weight and SA-Reg lambda, replacing cluster.beta and train.sa_lambda, or None.
        `group_embeddings`: each prompt group's embeddings; `probe_embeddings`: each probe prompt's (None without a
        probe, `diversity_probe`); `previous()`: the tensors of the optimizer state the round trains from (None in
        the first round), read on first call."""
        return None

    def cluster_metrics(self, *, columns: dict[str, np.ndarray], metrics: dict[str, float]) -> dict[str, float]:
        return {}

    # update
    def needed_columns(self) -> dict[str, str]:
        """Scores columns the update must find set, with the option that needs them (for the error)."""
        return {}

    def advantages(self, *, signals: RoundSignals) -> np.ndarray | None:
        """Advantages replacing the group-normalised ones, or None."""
        return None

    def detail_advantages(self, *, signals: RoundSignals, advantages: np.ndarray) -> np.ndarray | None:
        """Advantages of the detail steps (denoising steps from train.structure_steps on), replacing there the
        round's `advantages` (which the structure steps keep), or None."""
        return None

    def kl_weights(self, *, signals: RoundSignals) -> np.ndarray | None:
        """Per-sample KL weights, or None."""
        return None

    def conditioning_replay(self, *, rollouts: pa.Table) -> Any:
        """What rebuilds the sampled conditioning from the rollouts (`conditioning(cond, rows, step)`), or None."""
        return None

    def reference(self, *, policy: Any, tensors: dict[str, torch.Tensor] | None) -> Any:
        """A regulariser reference replacing the base model (see `dgrpo.stages.update.options.Reference`), or
        None."""
        return None

    def log_ratio(self, *, step: PolicyStep) -> torch.Tensor | None:
        """The log importance ratio the clipped loss uses at this step, replacing log_prob - old_log_prob, or
        None."""
        return None

    def step_regularizer(self, *, j: int, cfg: RunConfig) -> StepRegularizer | None:
        """The regulariser this method adds at denoising step j, or None. `cfg`: the config the round trains with
        (`dgrpo.stages.update.options.round_config`: a controller's coefficients and the resolved
        train.structure_steps in place), which may differ from `self.cfg`."""
        return None

    def step_weight(self, *, j: int, sigma: float, sigma_next: float) -> float | None:
        """A weight of denoising step j's loss, or None (1)."""
        return None

    def carry(self, *, coefficients: dict[str, float]) -> dict[str, torch.Tensor]:
        """Tensors the update stores in the optimizer-state artifact for the next round (`previous()` above);
        `coefficients`: the round's recorded `COEFFICIENT_COLUMNS` (empty when none was set)."""
        return {}

    def update_metrics(self, *, ratio_by_step: dict[int, dict[str, float]]) -> dict[str, float]:
        """Round metrics of the update; `ratio_by_step`: the ratio's mean and std at each trained step."""
        return {}


def methods_of(cfg: RunConfig) -> list[Method]:
    """The run's methods: every built-in, then each of cfg.methods (names or `package.module:Class` paths)."""
    out = []
    for name in [*BUILTINS, *cfg.methods]:
        cls = METHODS.get(name)
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"config field 'methods': {name!r} is not a dgrpo.methods.base.Method subclass")
        out.append(cls(cfg, method_options(name, cfg.methods.get(name)) if name in cfg.methods else None))
    return out


def kept_metrics(columns: dict[str, np.ndarray]) -> dict[str, float]:
    """Kept and dropped counts of a filter's `kept` column (DRIFT's or Pro-GRPO's)."""
    if "kept" not in columns:
        return {}
    return {"kept": float(columns["kept"].sum()), "dropped": float((~columns["kept"]).sum())}


def first(values: list[Any]) -> Any:
    """The first value that is not None (the hook of the first method that acts), else None."""
    return next((v for v in values if v is not None), None)
