"""Typed, validated run configuration.

One dataclass per concern, each field documented where it is declared (TRL style). Defaults describe the
embedded toy world, so an empty YAML file is a complete run. `RunConfig.sha256()` is the config hash that
every lineage record carries.
"""

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dgrpo.toyworld.data import CAPTIONS


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the dotted field path."""


def _check(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config field '{path}': {message}")


@dataclass
class ModelConfig:
    """Which policy to fine-tune."""

    kind: str = "toy"
    """Policy registry name (`dgrpo.models.POLICIES`)."""
    pretrained: str = ""
    """Hub id or local path of the base weights; empty means the toy checkpoint shipped in the package."""
    revision: str | None = None
    """Hub revision of `pretrained`, pinned for reproducibility."""
    dtype: str = "float32"
    """Dtype of the frozen parts: float32, bfloat16 or float16. The SDE step always runs in float32."""

    def validate(self, path: str) -> None:
        _check(self.dtype in ("float32", "bfloat16", "float16"), f"{path}.dtype",
               f"must be float32, bfloat16 or float16, got {self.dtype!r}")


@dataclass
class LoraConfig:
    """The trained LoRA adapter (peft)."""

    rank: int = 8
    """LoRA rank r."""
    alpha: int = 8
    """LoRA alpha; the update is scaled by alpha / rank."""
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    """Module names (peft patterns) that receive adapters."""

    def validate(self, path: str) -> None:
        _check(self.rank > 0, f"{path}.rank", f"must be > 0, got {self.rank}")
        _check(self.alpha > 0, f"{path}.alpha", f"must be > 0, got {self.alpha}")
        _check(len(self.target_modules) > 0, f"{path}.target_modules", "must name at least one module")


@dataclass
class SamplingConfig:
    """Rollout sampling (SPEC section 1)."""

    num_steps: int = 10
    """Denoising steps T of the training rollouts."""
    noise_level: float = 0.7
    """SDE noise level a (0.7 in the SD3.5 recipe)."""
    method: str = "sde"
    """Stochastic step: "sde" (Flow-GRPO) or "cps" (coefficients-preserving)."""
    shift: float = 1.0
    """Flow-matching schedule shift (3.0 for SD3.5)."""
    guidance_scale: float = 4.5
    """Classifier-free guidance scale, in sampling and training."""
    group_size: int = 16
    """Images per prompt, G."""
    prompts_per_round: int = 6
    """Prompts drawn per round from `prompts`."""
    prompts: list[str] = field(default_factory=lambda: list(CAPTIONS[:6]))
    """Training prompts."""

    def validate(self, path: str) -> None:
        _check(self.num_steps >= 2, f"{path}.num_steps", f"must be >= 2, got {self.num_steps}")
        _check(self.noise_level > 0, f"{path}.noise_level", f"must be > 0 for training, got {self.noise_level}")
        _check(self.method in ("sde", "cps"), f"{path}.method", f"must be 'sde' or 'cps', got {self.method!r}")
        _check(self.shift > 0, f"{path}.shift", f"must be > 0, got {self.shift}")
        _check(self.group_size >= 2, f"{path}.group_size", f"must be >= 2, got {self.group_size}")
        _check(len(self.prompts) > 0, f"{path}.prompts", "must not be empty")
        _check(0 < self.prompts_per_round <= len(self.prompts), f"{path}.prompts_per_round",
               f"must be in 1..{len(self.prompts)} (the number of prompts), got {self.prompts_per_round}")


@dataclass
class RewardConfig:
    """The quality reward."""

    name: str = "toy"
    """Reward registry name (`dgrpo.rewards.REWARDS`)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the reward's constructor."""


@dataclass
class ClusterConfig:
    """The DiverseGRPO slot between reward and update: the creativity bonus (SPEC section 3)."""

    method: str = "passthrough"
    """"passthrough": final reward = quality (Flow-GRPO); "diverse": quality + beta x creativity bonus."""
    embedder: str | None = "toy"
    """Embedder registry name (`dgrpo.embedders.EMBEDDERS`: "toy", "dreamsim"); its embeddings are stored in the
    scores table. None skips embedding, allowed in pass-through only (no diversity is logged then)."""
    embedder_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the embedder, e.g. for dreamsim: cache_dir, dreamsim_type, device, batch_size."""
    beta: float = 3.0
    """Weight of the creativity bonus (the paper sweeps 1, 3, 5; 3 is its sweet spot)."""
    normalization: str = "zscore"
    """Normalisation of E = sqrt(N / n_k) within the group: none, zscore or minmax. Raw E (1 to 4.9 for N = 24)
    swamps a quality spread of ~0.01; the paper's choice is not public."""
    quality_normalization: str = "none"
    """"zscore" replaces Q by its z-score within the group before adding the bonus, so beta is the bonus' weight
    relative to the quality signal whatever the reward's scale (beta = 0 is then Flow-GRPO); "none" adds to Q."""
    quality_gate: bool = False
    """Pay the bonus only to images at or above their group's mean quality, so rarity alone cannot pay."""
    k: int | None = None
    """Clusters per group; None chooses k by the eigengap, capped at k_max (the paper gives no k)."""
    k_max: int = 8
    """Largest k the eigengap may choose."""
    kernel_width: float | None = None
    """Fixed Gaussian kernel width s on DreamSim distances; None uses `width_heuristic` per group."""
    width_heuristic: str = "knn"
    """Automatic width: "knn" (median over images of the geometric mean of their n_neighbors nearest distances;
    finds modes) or "median" (median of all pairwise distances, the textbook default that makes separated modes
    look connected when most pairs are cross-mode)."""
    n_neighbors: int = 7
    """Neighbours of the "knn" width heuristic."""

    def validate(self, path: str) -> None:
        from dgrpo.diversity import NORMALIZATIONS, WIDTH_HEURISTICS

        _check(self.method in ("passthrough", "diverse"), f"{path}.method",
               f"must be 'passthrough' or 'diverse', got {self.method!r}")
        _check(self.method == "passthrough" or self.embedder is not None, f"{path}.embedder",
               "must name an embedder when method is 'diverse'")
        _check(self.beta >= 0, f"{path}.beta", f"must be >= 0, got {self.beta}")
        _check(self.normalization in NORMALIZATIONS, f"{path}.normalization",
               f"must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}")
        _check(self.quality_normalization in ("none", "zscore"), f"{path}.quality_normalization",
               f"must be 'none' or 'zscore', got {self.quality_normalization!r}")
        _check(self.k is None or self.k >= 1, f"{path}.k", f"must be None or >= 1, got {self.k}")
        _check(self.k_max >= 1, f"{path}.k_max", f"must be >= 1, got {self.k_max}")
        _check(self.kernel_width is None or self.kernel_width > 0, f"{path}.kernel_width",
               f"must be None or > 0, got {self.kernel_width}")
        _check(self.width_heuristic in WIDTH_HEURISTICS, f"{path}.width_heuristic",
               f"must be one of {', '.join(WIDTH_HEURISTICS)}, got {self.width_heuristic!r}")
        _check(self.n_neighbors >= 1, f"{path}.n_neighbors", f"must be >= 1, got {self.n_neighbors}")


REGULARIZERS = ("none", "kl", "sa", "both")


@dataclass
class TrainConfig:
    """The GRPO update (SPEC section 2)."""

    learning_rate: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    clip_range: float = 1e-3
    """PPO ratio clip eps. The recipe's 1e-4 fits 65k-element log-prob means; the toy's 768 need 1e-3."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to [-adv_clip_max, adv_clip_max]."""
    global_std: bool = True
    """Normalise advantages by the whole batch's std (recipe default) instead of the group's."""
    regularizer: str = "none"
    """Pull towards the base model (adapter disabled): none, kl (Flow-GRPO), sa (DiverseGRPO's structure-aware
    regularisation) or both. The reference forward pass runs only on the steps a chosen regulariser needs."""
    beta_kl: float = 0.0
    """KL weight (regularizer kl or both): mean((mu - mu_ref)^2) / (2 std^2) on every trained step."""
    sa_lambda: float = 1.0
    """SA-Reg weight lambda_reg (regularizer sa or both): mean((mu - mu_ref)^2), the squared W2 distance of the
    step distributions, no std denominator. The paper gives no value."""
    sa_steps: int = 3
    """SA-Reg acts on the first K trained steps only (~T_train / 3: the early steps decide the layout)."""
    train_fraction: float = 0.9
    """Share of the sampling steps that are trained, counted from the first step."""
    batch_size: int = 48
    """Trajectories per optimizer step (gradients accumulate over micro-batches and trained steps)."""
    micro_batch_size: int = 48
    """Trajectories per forward pass."""
    inner_epochs: int = 1
    """Passes over one round's trajectories."""

    def validate(self, path: str) -> None:
        _check(self.learning_rate > 0, f"{path}.learning_rate", f"must be > 0, got {self.learning_rate}")
        _check(self.clip_range > 0, f"{path}.clip_range", f"must be > 0, got {self.clip_range}")
        _check(self.regularizer in REGULARIZERS, f"{path}.regularizer",
               f"must be one of {', '.join(REGULARIZERS)}, got {self.regularizer!r}")
        _check(self.beta_kl >= 0, f"{path}.beta_kl", f"must be >= 0, got {self.beta_kl}")
        _check(self.regularizer in ("kl", "both") or self.beta_kl == 0, f"{path}.beta_kl",
               f"is {self.beta_kl} but train.regularizer is {self.regularizer!r}: set regularizer to kl or both")
        _check(self.regularizer not in ("kl", "both") or self.beta_kl > 0, f"{path}.beta_kl",
               f"must be > 0 with regularizer {self.regularizer!r}")
        _check(self.sa_lambda >= 0, f"{path}.sa_lambda", f"must be >= 0, got {self.sa_lambda}")
        _check(self.regularizer not in ("sa", "both") or self.sa_lambda > 0, f"{path}.sa_lambda",
               f"must be > 0 with regularizer {self.regularizer!r}")
        _check(self.sa_steps >= 1, f"{path}.sa_steps", f"must be >= 1, got {self.sa_steps}")
        _check(0 < self.train_fraction <= 1, f"{path}.train_fraction",
               f"must be in (0, 1], got {self.train_fraction}")
        _check(len(self.adam_betas) == 2, f"{path}.adam_betas", "must hold two numbers")
        _check(self.micro_batch_size > 0, f"{path}.micro_batch_size", "must be > 0")
        _check(self.batch_size % self.micro_batch_size == 0, f"{path}.batch_size",
               f"must be a multiple of micro_batch_size ({self.micro_batch_size}), got {self.batch_size}")
        _check(self.inner_epochs >= 1, f"{path}.inner_epochs", "must be >= 1")


@dataclass
class EvalConfig:
    """Deterministic evaluation on held-out prompts and seeds."""

    every: int = 5
    """Evaluate every this many rounds (and always before the first and after the last)."""
    prompts: list[str] = field(default_factory=lambda: list(CAPTIONS))
    """Evaluation prompts; those not in sampling.prompts are held out from training."""
    samples_per_prompt: int = 32
    """Images per prompt; mode entropy from fewer than 32 is noisy."""
    num_steps: int = 20
    """ODE steps of the deterministic sampler."""
    guidance_scale: float = 4.5
    """Classifier-free guidance scale in evaluation."""
    seed: int = 1_000_003
    """Seed of the evaluation noise, disjoint from training seeds."""
    mode_classifier: str | None = "toy"
    """Mode classifier registry name for mode coverage; None where the domain has no known modes."""
    grid_columns: int = 8
    """Images per prompt shown in the grid."""

    def validate(self, path: str) -> None:
        _check(self.every >= 1, f"{path}.every", f"must be >= 1, got {self.every}")
        _check(len(self.prompts) > 0, f"{path}.prompts", "must not be empty")
        _check(self.samples_per_prompt >= 2, f"{path}.samples_per_prompt", "must be >= 2")
        _check(self.num_steps >= 1, f"{path}.num_steps", "must be >= 1")


@dataclass
class RunConfig:
    """A whole fine-tuning run."""

    name: str = "toy-flowgrpo"
    """Run name; also the KFP pipeline name."""
    seed: int = 0
    """Root seed; every stage derives its seeds from it and the round number."""
    rounds: int = 10
    """Training rounds (rollout, reward, cluster, update)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "RunConfig":
        _check(self.rounds >= 1, "rounds", f"must be >= 1, got {self.rounds}")
        _check(bool(self.name), "name", "must not be empty")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate(f.name)
        _check(self.cluster.k is None or self.cluster.k <= self.sampling.group_size, "cluster.k",
               f"must be <= sampling.group_size ({self.sampling.group_size}), got {self.cluster.k}")
        _check(self.train.regularizer not in ("sa", "both") or self.train.sa_steps <= self.num_train_steps,
               "train.sa_steps", f"must be <= the {self.num_train_steps} trained steps "
               f"(train_fraction x sampling.num_steps), got {self.train.sa_steps}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, so equal configs hash equally."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def eval_rounds(self) -> list[int]:
        """Rounds after which evaluation runs; 0 is the base model before training."""
        rounds = set(range(0, self.rounds + 1, self.eval.every)) | {self.rounds}
        return sorted(rounds)

    @property
    def num_train_steps(self) -> int:
        return max(1, round(self.train.train_fraction * self.sampling.num_steps))


def _build(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by field path."""
    if not isinstance(data, dict):
        raise ConfigError(f"config field '{path or '<root>'}': expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"config field '{where}{unknown[0]}': unknown field (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        field_path = f"{path}.{name}" if path else name
        kwargs[name] = _coerce(hints[name], value, field_path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value or {}, path)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config field '{path}': expected a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config field '{path}': expected a mapping, got {type(value).__name__}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Any or isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config field '{path}': expected {hint.__name__}, got {type(value).__name__} {value!r}")


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, data, "").validate()


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML config (None: the toy defaults) and apply dotted-key overrides such as {"rounds": 2}."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}': invalid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}': expected a mapping at the top level")
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(data)


def config_from_json(text: str) -> RunConfig:
    return config_from_dict(json.loads(text))
