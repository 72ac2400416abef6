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

from dgrpo.prompt_files import PromptFileError, read_prompts
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
    resolution: int | None = None
    """Image height and width in pixels; None means the model's default (512 in both Flow-GRPO recipes)."""
    max_sequence_length: int | None = None
    """T5 prompt tokens; None means the pipeline's default (SD3 256, FLUX 512)."""

    def validate(self, path: str) -> None:
        _check(self.dtype in ("float32", "bfloat16", "float16"), f"{path}.dtype",
               f"must be float32, bfloat16 or float16, got {self.dtype!r}")
        _check(self.resolution is None or self.resolution > 0, f"{path}.resolution", "must be > 0")
        _check(self.max_sequence_length is None or self.max_sequence_length > 0, f"{path}.max_sequence_length",
               "must be > 0")


@dataclass
class LoraConfig:
    """The trained LoRA adapter (peft)."""

    rank: int = 8
    """LoRA rank r."""
    alpha: int = 8
    """LoRA alpha; the update is scaled by alpha / rank."""
    target_modules: list[str] | None = None
    """Module names (peft patterns) that receive adapters; None means the backbone's default attention
    projections (SD3: to_q/k/v, to_out.0, add_q/k/v_proj, to_add_out; FLUX: those and the feed-forward)."""

    def validate(self, path: str) -> None:
        _check(self.rank > 0, f"{path}.rank", f"must be > 0, got {self.rank}")
        _check(self.alpha > 0, f"{path}.alpha", f"must be > 0, got {self.alpha}")
        _check(self.target_modules is None or len(self.target_modules) > 0, f"{path}.target_modules",
               "must name at least one module (or be null for the backbone's default)")


def _check_prompt_source(prompts_file: str | None, sha256: str | None, path: str) -> None:
    _check((prompts_file is None) == (sha256 is None), f"{path}.prompts_sha256",
           "is written by the loader when it reads prompts_file: load YAML files with load_config")


@dataclass
class SamplingConfig:
    """Rollout sampling (SPEC section 1)."""

    num_steps: int = 10
    """Denoising steps T of the training rollouts."""
    noise_level: float = 0.7
    """SDE noise level a (0.7 in the SD3.5 recipe)."""
    method: str = "sde"
    """Stochastic step: "sde" (Flow-GRPO) or "cps" (coefficients-preserving)."""
    shift: float | None = None
    """Flow-matching schedule shift; None means the model's own (toy 1.0, SD3.5 3.0 from its scheduler config,
    FLUX the resolution-dependent dynamic shift)."""
    guidance_scale: float = 4.5
    """Classifier-free guidance scale, in sampling and training."""
    group_size: int = 16
    """Images per prompt, G."""
    prompts_per_round: int = 6
    """Prompts drawn per round from `prompts`."""
    prompts: list[str] = field(default_factory=lambda: list(CAPTIONS[:6]))
    """Training prompts; leave unset with `prompts_file`."""
    prompts_file: str | None = None
    """A .txt, .jsonl or .parquet file of training prompts (`dgrpo.prompt_files`), relative to the config file that
    names it; read into `prompts` when the config is loaded, so a run never depends on the file afterwards."""
    prompts_sha256: str | None = None
    """sha256 of `prompts_file`, written by the loader: the config hash, hence lineage, names the exact file."""
    batch_size: int | None = None
    """Trajectories per sampling forward pass; None samples the whole round at once. Results do not depend on
    it: every sample draws its noise from its own seed."""
    sde_window_size: int = 0
    """Flow-GRPO-Fast: 0 makes every step an SDE step; n > 0 makes only a window of n consecutive steps
    stochastic (ODE steps outside it), placed at a seeded random start each round, and trains exactly those."""
    sde_window_range: list[int] | None = None
    """[first, end) steps the SDE window may cover; None means all steps."""

    def validate(self, path: str) -> None:
        _check(self.num_steps >= 2, f"{path}.num_steps", f"must be >= 2, got {self.num_steps}")
        _check(self.noise_level > 0, f"{path}.noise_level", f"must be > 0 for training, got {self.noise_level}")
        _check(self.method in ("sde", "cps"), f"{path}.method", f"must be 'sde' or 'cps', got {self.method!r}")
        _check(self.shift is None or self.shift > 0, f"{path}.shift", f"must be > 0, got {self.shift}")
        _check(self.batch_size is None or self.batch_size > 0, f"{path}.batch_size", "must be > 0")
        _check(0 <= self.sde_window_size <= self.num_steps, f"{path}.sde_window_size",
               f"must be in 0..{self.num_steps} (num_steps), got {self.sde_window_size}")
        if self.sde_window_range is not None:
            lo, hi = (self.sde_window_range + [-1, -1])[:2]
            _check(len(self.sde_window_range) == 2 and 0 <= lo < hi <= self.num_steps
                   and hi - lo >= self.sde_window_size, f"{path}.sde_window_range",
                   f"must be [first, end) with 0 <= first < end <= num_steps and room for the window, "
                   f"got {self.sde_window_range}")
        _check(self.group_size >= 2, f"{path}.group_size", f"must be >= 2, got {self.group_size}")
        _check(len(self.prompts) > 0, f"{path}.prompts", "must not be empty")
        _check_prompt_source(self.prompts_file, self.prompts_sha256, path)
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
MIXED_PRECISION = ("no", "bf16", "fp16")


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
    """Share of the sampling steps that are trained, counted from the first step (rounded; the recipe's 0.99 of
    10 steps trains 9). Ignored with an SDE window, which trains the window's steps."""
    batch_size: int = 48
    """Trajectories per optimizer step over all processes (gradients accumulate over micro-batches and trained
    steps, and are averaged across processes)."""
    micro_batch_size: int = 48
    """Trajectories per forward pass in one process."""
    inner_epochs: int = 1
    """Passes over one round's trajectories."""
    num_processes: int = 1
    """Data-parallel processes of the update (one per GPU, launched with torchrun in the update's pod). Each takes
    every num_processes-th trajectory; advantages come from the whole round's scores first, so a prompt group
    spanning processes is normalised over all its members."""
    mixed_precision: str = "no"
    """Autocast of the transformer in the update through accelerate: no, bf16 or fp16 (fp16 needs a GPU and
    scales the loss). LoRA weights and the optimizer stay float32; the SDE step runs in float32."""
    ema_decay: float = 0.0
    """EMA of the LoRA weights (diffusers' EMAModel, decay min(ema_decay, (1+n)/(10+n)) at EMA update n); 0 turns
    it off. The recipe uses 0.9. Rollouts always use the trained weights; evaluation uses the EMA (eval.use_ema)."""
    ema_every: int = 8
    """Optimizer steps between EMA updates (the recipe's 8)."""

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
        _check(self.num_processes >= 1, f"{path}.num_processes", f"must be >= 1, got {self.num_processes}")
        _check(self.batch_size % (self.num_processes * self.micro_batch_size) == 0, f"{path}.batch_size",
               f"must be a multiple of num_processes x micro_batch_size ({self.num_processes} x "
               f"{self.micro_batch_size}), got {self.batch_size}")
        _check(self.mixed_precision in MIXED_PRECISION, f"{path}.mixed_precision",
               f"must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        _check(0 <= self.ema_decay < 1, f"{path}.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        _check(self.ema_every >= 1, f"{path}.ema_every", f"must be >= 1, got {self.ema_every}")


@dataclass
class EvalConfig:
    """Deterministic evaluation on held-out prompts and seeds."""

    every: int = 5
    """Evaluate every this many rounds (and always before the first and after the last)."""
    prompts: list[str] = field(default_factory=lambda: list(CAPTIONS))
    """Evaluation prompts; those not in sampling.prompts are held out from training. Leave unset with
    `prompts_file`."""
    prompts_file: str | None = None
    """A .txt, .jsonl or .parquet file of evaluation prompts, as `sampling.prompts_file`."""
    prompts_sha256: str | None = None
    """sha256 of `prompts_file`, written by the loader."""
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
    use_ema: bool = True
    """Evaluate the EMA of the LoRA weights when train.ema_decay > 0 (as Flow-GRPO does), else the trained ones."""

    def validate(self, path: str) -> None:
        _check(self.every >= 1, f"{path}.every", f"must be >= 1, got {self.every}")
        _check(len(self.prompts) > 0, f"{path}.prompts", "must not be empty")
        _check_prompt_source(self.prompts_file, self.prompts_sha256, path)
        _check(self.samples_per_prompt >= 2, f"{path}.samples_per_prompt", "must be >= 2")
        _check(self.num_steps >= 1, f"{path}.num_steps", "must be >= 1")


STAGE_NAMES = ("rollout", "reward", "cluster", "update", "evaluate")
STOCHASTIC_STAGES = ("rollout", "update")
SWAPPABLE_STAGES = ("reward", "cluster")


@dataclass
class CustomStage:
    """A team's own component in place of one of ours: a component YAML, or an image and a command."""

    component: str | None = None
    """Path of a KFP component YAML whose inputs and outputs are named as in `dgrpo contract show <stage>`."""
    image: str | None = None
    """Container image, used with `command` when no component YAML is given."""
    command: list[str] = field(default_factory=list)
    """Command run in `image`; `--<input> PATH --<output> PATH` (and `--round_index N`...) are appended."""

    def validate(self, path: str) -> None:
        _check((self.component is None) != (self.image is None), path,
               "set exactly one of 'component' (a component YAML) or 'image' (with 'command')")
        _check(self.image is None or len(self.command) > 0, f"{path}.command", "must not be empty with 'image'")


@dataclass
class StageSwaps:
    """Stages replaced by external components; only table-in, table-out stages can be swapped."""

    reward: CustomStage | None = None
    """The reward stage: reads 'rollouts' Parquet, writes 'rewards' Parquet."""
    cluster: CustomStage | None = None
    """The cluster stage: reads 'rollouts' and 'rewards' Parquet, writes 'scores' Parquet."""

    def validate(self, path: str) -> None:
        for name in SWAPPABLE_STAGES:
            if getattr(self, name) is not None:
                getattr(self, name).validate(f"{path}.{name}")


@dataclass
class PipelineConfig:
    """How the training plan becomes a Kubeflow pipeline."""

    shards: int = 1
    """Prompt shards the rollout and reward stages fan out over (dsl.ParallelFor); a group never spans shards."""
    parallelism: int = 0
    """Shards running at once (0: all); bounds the GPUs one round asks for."""
    stages: StageSwaps = field(default_factory=StageSwaps)
    """External components replacing our stages."""

    def validate(self, path: str) -> None:
        _check(self.shards >= 1, f"{path}.shards", f"must be >= 1, got {self.shards}")
        _check(self.parallelism >= 0, f"{path}.parallelism", f"must be >= 0, got {self.parallelism}")
        self.stages.validate(f"{path}.stages")


@dataclass
class Toleration:
    """A Kubernetes toleration, e.g. for a tainted GPU node pool."""

    key: str = ""
    """Taint key, e.g. nvidia.com/gpu."""
    operator: str = "Exists"
    """Equal or Exists."""
    value: str | None = None
    """Taint value (with Equal)."""
    effect: str | None = None
    """NoSchedule, PreferNoSchedule or NoExecute; None tolerates every effect."""

    def validate(self, path: str) -> None:
        _check(self.operator in ("Equal", "Exists"), f"{path}.operator", f"must be Equal or Exists, got "
               f"{self.operator!r}")
        _check(self.effect in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"), f"{path}.effect",
               f"must be NoSchedule, PreferNoSchedule or NoExecute, got {self.effect!r}")


@dataclass
class SecretEnv:
    """Keys of a Kubernetes Secret exposed as environment variables (e.g. S3 or hub credentials)."""

    secret: str = ""
    """Secret name in the run's namespace."""
    env: dict[str, str] = field(default_factory=dict)
    """Secret key -> environment variable name."""

    def validate(self, path: str) -> None:
        _check(bool(self.secret), f"{path}.secret", "must name a Secret")
        _check(len(self.env) > 0, f"{path}.env", "must map at least one key to an environment variable")


@dataclass
class StageResources:
    """Pod settings of one stage; a field left unset (null) takes `kubernetes.defaults`, then the built-in."""

    gpus: int | None = None
    """Accelerators per pod (accelerator limit); built-in 0."""
    gpu_resource: str | None = None
    """Accelerator resource name (accelerator type); built-in nvidia.com/gpu."""
    gpu_product: str | None = None
    """GPU model as the node label nvidia.com/gpu.product (GPU feature discovery), e.g. NVIDIA-H100-80GB-HBM3."""
    cpu_request: str | None = None
    """CPU request, e.g. "4"."""
    cpu_limit: str | None = None
    """CPU limit."""
    memory_request: str | None = None
    """Memory request, e.g. 32Gi."""
    memory_limit: str | None = None
    """Memory limit."""
    node_selector: dict[str, str] | None = None
    """Node labels the pod must match."""
    tolerations: list[Toleration] | None = None
    """Taints the pod tolerates."""
    shm_size: str | None = None
    """Size of a memory-backed /dev/shm (PyTorch data loading and NCCL need more than the 64M default)."""
    secrets: list[SecretEnv] | None = None
    """Secrets exposed as environment variables."""
    env: dict[str, str] | None = None
    """Plain environment variables."""
    retries: int | None = None
    """Retries of a failed pod (preemption, node loss); built-in 0."""
    caching: bool | None = None
    """KFP result caching; built-in off for the stochastic stages (rollout, update), on for the others."""

    def validate(self, path: str) -> None:
        _check(self.gpus is None or self.gpus >= 0, f"{path}.gpus", f"must be >= 0, got {self.gpus}")
        _check(self.retries is None or self.retries >= 0, f"{path}.retries", f"must be >= 0, got {self.retries}")
        for i, t in enumerate(self.tolerations or []):
            t.validate(f"{path}.tolerations[{i}]")
        for i, s in enumerate(self.secrets or []):
            s.validate(f"{path}.secrets[{i}]")


@dataclass
class StageResourceTable:
    """Per-stage pod settings, over `kubernetes.defaults`."""

    rollout: StageResources = field(default_factory=StageResources)
    reward: StageResources = field(default_factory=StageResources)
    cluster: StageResources = field(default_factory=StageResources)
    update: StageResources = field(default_factory=StageResources)
    evaluate: StageResources = field(default_factory=StageResources)


@dataclass
class ModelCacheConfig:
    """A PersistentVolumeClaim holding base weights and DreamSim weights, so no round downloads them again."""

    pvc: str = ""
    """Claim name (manifests/ creates one); empty: no cache volume, stages download into the pod."""
    mount_path: str = "/models"
    """Where the claim is mounted; HF_HOME and TORCH_HOME point inside it."""
    offline: bool = False
    """Set HF_HUB_OFFLINE=1: read the cache only, fail instead of downloading (for a pre-filled cache)."""

    def validate(self, path: str) -> None:
        _check(self.mount_path.startswith("/"), f"{path}.mount_path", f"must be absolute, got {self.mount_path!r}")


@dataclass
class KubernetesConfig:
    """Cluster settings of the compiled pipeline (kfp-kubernetes); ignored by kfp.local and the in-process engine."""

    defaults: StageResources = field(default_factory=StageResources)
    """Settings of every stage unless the stage sets its own."""
    stages: StageResourceTable = field(default_factory=StageResourceTable)
    """Per-stage settings."""
    model_cache: ModelCacheConfig = field(default_factory=ModelCacheConfig)
    """The model-cache volume, mounted in every stage."""

    BUILTIN = {"gpus": 0, "gpu_resource": "nvidia.com/gpu", "retries": 0, "node_selector": {}, "tolerations": [],
               "secrets": [], "env": {}}

    def validate(self, path: str) -> None:
        self.defaults.validate(f"{path}.defaults")
        for name in STAGE_NAMES:
            getattr(self.stages, name).validate(f"{path}.stages.{name}")
        self.model_cache.validate(f"{path}.model_cache")

    def resolve_defaults(self) -> StageResources:
        """`defaults` over the built-in, for tasks that are not a stage; caching off."""
        values = {f.name: getattr(self.defaults, f.name) for f in dataclasses.fields(StageResources)}
        values = {k: self.BUILTIN.get(k) if v is None else v for k, v in values.items()}
        return StageResources(**values | {"caching": False})

    def resolve(self, stage: str) -> StageResources:
        """The effective settings of `stage`: its own, else the defaults, else the built-in."""
        own, default = getattr(self.stages, stage), self.defaults
        values = {}
        for f in dataclasses.fields(StageResources):
            value = getattr(own, f.name)
            value = getattr(default, f.name) if value is None else value
            values[f.name] = self.BUILTIN.get(f.name) if value is None else value
        if values["caching"] is None:
            values["caching"] = stage not in STOCHASTIC_STAGES
        return StageResources(**values)


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
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)

    def validate(self) -> "RunConfig":
        _check(self.rounds >= 1, "rounds", f"must be >= 1, got {self.rounds}")
        _check(bool(self.name), "name", "must not be empty")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate(f.name)
        _check(self.pipeline.shards <= self.sampling.prompts_per_round, "pipeline.shards",
               f"must be <= sampling.prompts_per_round ({self.sampling.prompts_per_round}): a shard holds whole "
               f"prompt groups, got {self.pipeline.shards}")
        _check(self.cluster.k is None or self.cluster.k <= self.sampling.group_size, "cluster.k",
               f"must be <= sampling.group_size ({self.sampling.group_size}), got {self.cluster.k}")
        n = self.sampling.prompts_per_round * self.sampling.group_size
        _check(n % self.train.num_processes == 0, "train.num_processes",
               f"must divide the {n} trajectories of a round (sampling.prompts_per_round x group_size), got "
               f"{self.train.num_processes}")
        gpus = self.kubernetes.resolve("update").gpus
        _check(not gpus or self.train.num_processes <= gpus, "train.num_processes",
               f"is {self.train.num_processes} but the update pod gets {gpus} GPUs (kubernetes): one process per GPU")
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


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) replaces the base's."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a mapping, with `base: other.yaml` (relative to the file) merged underneath it.

    Presets that differ in a few fields (toy-sareg from toy-flowgrpo) state only those fields, so a change to the
    shared recipe cannot leave one arm of a comparison behind.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config file '{path}': 'base' chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"config file '{path}': cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}': invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': expected a mapping at the top level")
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"config file '{path}': field 'base' must be a file name, got {base!r}")
    below = read_yaml(path.parent / base, (*_seen, path)) if base is not None else {}
    _read_prompt_files(below, data, path.parent, f"config file '{path}'")
    return _merge(below, data)


PROMPT_SECTIONS = {"sampling": SamplingConfig, "eval": EvalConfig}
PROMPT_KEYS = ("prompts", "prompts_file", "prompts_sha256")


def _read_prompt_files(below: dict[str, Any], layer: dict[str, Any], base_dir: Path, source: str) -> None:
    """Read the `prompts_file` each section of `layer` (a config file or the overrides, to be merged over `below`)
    names, relative to `base_dir`, into its `prompts` and `prompts_sha256`."""
    for section, cls in PROMPT_SECTIONS.items():
        own, under = layer.get(section), below.get(section)
        if not isinstance(own, dict):
            continue
        if "prompts_sha256" in own:  # a resolved config (a run's config.json): its recorded prompts stand
            resolved = "prompts" in own and (own["prompts_sha256"] is None) == (own.get("prompts_file") is None)
            if not resolved:
                raise ConfigError(f"config field '{section}.prompts_sha256' (in {source}): written by the loader "
                                  f"from prompts_file, do not set it")
            continue
        file = own.get("prompts_file")
        if file is not None:
            if not isinstance(file, str):
                raise ConfigError(f"config field '{section}.prompts_file' (in {source}): expected a file name, got "
                                  f"{file!r}")
            if "prompts" in own:
                raise ConfigError(f"config field '{section}.prompts' (in {source}): set either prompts or "
                                  f"prompts_file ({file}), not both")
            try:
                own["prompts"], own["prompts_sha256"] = read_prompts(base_dir / Path(file).expanduser())
            except PromptFileError as exc:
                raise ConfigError(f"config field '{section}.prompts_file' (in {source}): {exc}") from exc
        elif "prompts_file" in own:  # an explicit null: back to inline (or default) prompts
            own["prompts_sha256"] = None
            if isinstance(under, dict) and under.get("prompts_file") is not None:
                own.setdefault("prompts", cls().prompts)
        elif "prompts" in own and isinstance(under, dict) and under.get("prompts_file") is not None:
            raise ConfigError(f"config field '{section}.prompts' (in {source}): the base config reads them from "
                              f"prompts_file ({under['prompts_file']}); set {section}.prompts_file to null as well")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML config (None: the toy defaults) and apply dotted-key overrides such as {"rounds": 2}.

    A `prompts_file` is read here, relative to the file naming it (to the working directory for an override)."""
    data = read_yaml(path) if path is not None else {}
    overrides = dict(overrides or {})
    layer: dict[str, Any] = {}
    for key in list(overrides):
        section, _, leaf = key.partition(".")
        if section in PROMPT_SECTIONS and leaf in PROMPT_KEYS:
            layer.setdefault(section, {})[leaf] = overrides.pop(key)
    _read_prompt_files(data, layer, Path.cwd(), "overrides")
    overrides |= {f"{section}.{k}": v for section, values in layer.items() for k, v in values.items()}
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(data)


def config_from_json(text: str) -> RunConfig:
    return config_from_dict(json.loads(text))
