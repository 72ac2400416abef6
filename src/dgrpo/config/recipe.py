"""The training recipe: what is trained and how (TRL style: one dataclass per concern, each field documented).

Defaults describe the embedded toy world, so an empty YAML file is a complete run; the toy's own values (its
captions, its registry names) live in the one toy module `TOY_WORLD` names, read on first use. Choices are `Literal`
types and numbers carry a `Range`; `dgrpo.config.fields.validate_fields` checks both. A field marked `EXECUTION`
changes how a result is computed (batching, processes) but not what it is, so it stays out of the recipe hash.
"""

import importlib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from dgrpo.config.fields import NON_NEGATIVE, POSITIVE, Range, check

EXECUTION = {"execution": True}
"""Field metadata: the value changes how, not what, is computed (excluded from `RunConfig.recipe_sha256`)."""

TOY_WORLD = "dgrpo.toyworld.defaults"
"""The one place the core names the toy world, the embedded default: the module holding its config defaults
(`CONFIG_DEFAULTS`) and the registry rows (`REGISTRY_ROWS`) that `dgrpo.models`, `dgrpo.rewards`, `dgrpo.embedders`
and `dgrpo.metrics` read. Named by path and read on first use, never imported: the core imports no toy code."""


def toy_default(dotted: str) -> Any:
    """A dataclass field whose default is the toy world's for `dotted` (e.g. "model.kind"), a fresh copy per
    instance; the toy module is imported when a default is first built, not when the config is."""

    def default() -> Any:
        value = importlib.import_module(TOY_WORLD).CONFIG_DEFAULTS[dotted]
        return list(value) if isinstance(value, list) else value

    return field(default_factory=default)

Dtype = Literal["float32", "bfloat16", "float16"]
StepMethod = Literal["sde", "cps"]
Normalization = Literal["none", "zscore", "minmax"]
WidthHeuristic = Literal["fixed", "knn", "median"]
Regularizer = Literal["none", "kl", "sa", "both"]
DetailBaseline = Literal["group", "cluster"]
MixedPrecision = Literal["no", "bf16", "fp16"]


@dataclass
class ModelConfig:
    """Which policy to fine-tune."""

    kind: str = toy_default("model.kind")
    """Policy registry name (`dgrpo.models.POLICIES`: toy, sd3, flux) or a `package.module:factory` path."""
    pretrained: str = ""
    """Hub id or local path of the base weights; empty means the toy checkpoint shipped in the package."""
    revision: str | None = None
    """Hub revision of `pretrained`, pinned for reproducibility."""
    dtype: Dtype = "float32"
    """Dtype of the frozen parts. The SDE step always runs in float32."""
    resolution: Annotated[int, POSITIVE] | None = None
    """Image height and width in pixels; None means the model's default (512 in both Flow-GRPO recipes)."""
    max_sequence_length: Annotated[int, POSITIVE] | None = None
    """T5 prompt tokens; None means the pipeline's default (SD3 256, FLUX 512)."""


@dataclass
class LoraConfig:
    """The trained LoRA adapter (peft)."""

    rank: Annotated[int, POSITIVE] = 8
    """LoRA rank r."""
    alpha: Annotated[int, POSITIVE] = 8
    """LoRA alpha; the update is scaled by alpha / rank."""
    target_modules: list[str] | None = None
    """Module names (peft patterns) that receive adapters; None means the backbone's default attention
    projections (SD3: to_q/k/v, to_out.0, add_q/k/v_proj, to_add_out; FLUX: those and the feed-forward)."""

    def validate(self, path: str) -> None:
        check(self.target_modules is None or len(self.target_modules) > 0, f"{path}.target_modules",
              "must name at least one module (or be null for the backbone's default)")


def check_prompt_source(prompts_file: str | None, sha256: str | None, path: str) -> None:
    check((prompts_file is None) == (sha256 is None), f"{path}.prompts_sha256",
          "is written by the loader when it reads prompts_file: load YAML files with load_config")


@dataclass
class SamplingConfig:
    """Rollout sampling (docs/algorithms.md, "The SDE step")."""

    num_steps: Annotated[int, Range(ge=2)] = 10
    """Denoising steps T of the training rollouts."""
    noise_level: Annotated[float, POSITIVE] = 0.7
    """SDE noise level a (0.7 in the SD3.5 recipe)."""
    method: StepMethod = "sde"
    """Stochastic step: "sde" (Flow-GRPO) or "cps" (coefficients-preserving)."""
    shift: Annotated[float, POSITIVE] | None = None
    """Flow-matching schedule shift; None means the model's own (toy 1.0, SD3.5 3.0 from its scheduler config,
    FLUX the resolution-dependent dynamic shift)."""
    guidance_scale: Annotated[float, NON_NEGATIVE] = 4.5
    """Classifier-free guidance scale, in sampling and training."""
    group_size: Annotated[int, Range(ge=2)] = 16
    """Images per prompt, G."""
    prompts_per_round: Annotated[int, POSITIVE] = 6
    """Prompts drawn per round from `prompts`."""
    prompts: list[str] = toy_default("sampling.prompts")
    """Training prompts (default: six of the toy's eight captions); leave unset with `prompts_file`."""
    prompts_file: str | None = None
    """A .txt, .jsonl or .parquet file of training prompts (`dgrpo.config.prompt_files`), relative to the config
    file that names it; read into `prompts` when the config is loaded, so a run never depends on the file."""
    prompts_sha256: str | None = None
    """sha256 of `prompts_file`, written by the loader: the config hash, hence lineage, names the exact file."""
    batch_size: Annotated[int, POSITIVE] | None = field(default=None, metadata=EXECUTION)
    """Trajectories per sampling forward pass; None samples a whole prompt group at once. Results do not depend
    on it: every sample draws its noise from its own seed."""
    sde_window_size: Annotated[int, NON_NEGATIVE] = 0
    """Flow-GRPO-Fast: 0 makes every step an SDE step; n > 0 makes only a window of n consecutive steps
    stochastic (ODE steps outside it), placed at a seeded random start each round, and trains exactly those."""
    sde_window_range: list[Annotated[int, NON_NEGATIVE]] | None = None
    """[first, end) steps the SDE window may cover; None means all steps."""

    def validate(self, path: str) -> None:
        check(self.sde_window_size <= self.num_steps, f"{path}.sde_window_size",
              f"must be in 0..{self.num_steps} (num_steps), got {self.sde_window_size}")
        if self.sde_window_range is not None:
            lo, hi = (self.sde_window_range + [-1, -1])[:2]
            check(len(self.sde_window_range) == 2 and 0 <= lo < hi <= self.num_steps
                  and hi - lo >= self.sde_window_size, f"{path}.sde_window_range",
                  f"must be [first, end) with 0 <= first < end <= num_steps and room for the window, "
                  f"got {self.sde_window_range}")
        check(len(self.prompts) > 0, f"{path}.prompts", "must not be empty")
        check_prompt_source(self.prompts_file, self.prompts_sha256, path)
        check(self.prompts_per_round <= len(self.prompts), f"{path}.prompts_per_round",
              f"must be in 1..{len(self.prompts)} (the number of prompts), got {self.prompts_per_round}")


@dataclass
class RewardConfig:
    """The quality reward."""

    name: str = toy_default("reward.name")
    """Reward registry name (`dgrpo.rewards.REWARDS`) or a `package.module:factory` path."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the reward's factory."""


@dataclass
class ClusterConfig:
    """The DiverseGRPO slot between reward and update: the creativity bonus (docs/algorithms.md, "DiverseGRPO")."""

    method: Literal["passthrough", "diverse"] = "passthrough"
    """"passthrough": final reward = quality (Flow-GRPO); "diverse": quality + beta x creativity bonus."""
    embedder: str | None = toy_default("cluster.embedder")
    """Embedder registry name (`dgrpo.embedders.EMBEDDERS`: toy, dreamsim) or a `package.module:factory` path; its
    embeddings are stored in the scores table. None skips embedding, allowed in pass-through only."""
    embedder_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the embedder, e.g. for dreamsim: cache_dir, dreamsim_type, device, batch_size."""
    beta: Annotated[float, NON_NEGATIVE] = 3.0
    """Weight of the creativity bonus (the paper sweeps 1, 3, 5; 3 is its sweet spot)."""
    normalization: Normalization = "none"
    """Normalisation of E = sqrt(N / n_k) within the group: none (the paper's R = Q + beta sqrt(N / n_k)), or this
    project's zscore or minmax. Raw E (1 to 4.9 for N = 24) swamps a quality spread of ~0.01."""
    quality_normalization: Literal["none", "zscore"] = "none"
    """"none" (the paper's, and Flow-GRPO's at beta 0): R = Q + bonus. "zscore", this project's addition, replaces Q
    by its z-score within the group first, so beta weighs the bonus against a unit quality spread whatever the
    reward's scale; it gives every group unit variance, so even at beta 0 it is not Flow-GRPO (a nearly collapsed
    group gets advantages as large as a spread one)."""
    quality_gate: bool = False
    """This project's addition (the paper pays every image): pay the bonus only to images at or above their group's
    mean quality, so rarity alone cannot pay."""
    k_selection: Literal["fixed", "eigengap"] = "fixed"
    """"fixed": k clusters in every group (the paper: k is a hyper-parameter, no adaptive scheme); "eigengap" (this
    project's addition): the largest gap of the normalised affinity's spectrum chooses k per group, up to k_max."""
    k: Annotated[int, Range(ge=2)] = 4
    """Clusters per group with k_selection "fixed". The paper gives no value; 4 is this project's (the toy's four
    layouts); at most sampling.group_size."""
    k_max: Annotated[int, POSITIVE] = 8
    """Largest k the eigengap may choose (k_selection "eigengap")."""
    width_heuristic: WidthHeuristic = "fixed"
    """Gaussian kernel width s: "fixed" uses kernel_width (the paper: s is a hyper-parameter); this project's
    automatic widths, per group: "knn" (median over images of the geometric mean of their n_neighbors nearest
    distances; finds modes) or "median" (median of all pairwise distances, the textbook default that makes separated
    modes look connected when most pairs are cross-mode)."""
    kernel_width: Annotated[float, POSITIVE] = 0.25
    """s on the embedder's cosine distances with width_heuristic "fixed" (ignored otherwise). The paper gives no
    value; 0.25 is this project's: about twice the in-group DreamSim diversity the paper reports (0.10-0.16)."""
    n_neighbors: Annotated[int, POSITIVE] = 7
    """Neighbours of the "knn" width heuristic."""

    @staticmethod
    def upgrade_recorded(section: dict[str, Any]) -> dict[str, Any]:
        """A cluster section recorded before k_selection existed (a run's config.json), with its meaning kept: k None
        meant the eigengap, kernel_width None the width heuristic, a number a fixed width."""
        if "k_selection" in section or "k" not in section:
            return section
        out = {key: v for key, v in section.items() if not (key in ("k", "kernel_width") and v is None)}
        out["k_selection"] = "eigengap" if section["k"] is None else "fixed"
        if section.get("kernel_width") is not None:
            out["width_heuristic"] = "fixed"
        return out

    def validate(self, path: str) -> None:
        check(self.method == "passthrough" or self.embedder is not None, f"{path}.embedder",
              "must name an embedder when method is 'diverse'")


@dataclass
class TrainConfig:
    """The GRPO update (docs/algorithms.md, "The GRPO objective")."""

    learning_rate: Annotated[float, Range(gt=0, le=1)] = 1e-3
    """AdamW learning rate (AdamW moves each weight by about this much per step, so above 1 it only diverges)."""
    weight_decay: Annotated[float, NON_NEGATIVE] = 1e-4
    """AdamW weight decay."""
    adam_betas: list[Annotated[float, Range(ge=0, lt=1)]] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    max_grad_norm: Annotated[float, POSITIVE] = 1.0
    """Gradient clipping norm."""
    clip_range: Annotated[float, Range(gt=0, lt=1)] = 1e-3
    """PPO ratio clip eps. The recipe's 1e-4 fits 65k-element log-prob means; the toy's 768 need 1e-3."""
    adv_clip_max: Annotated[float, POSITIVE] = 5.0
    """Advantages are clipped to [-adv_clip_max, adv_clip_max]."""
    global_std: bool = True
    """Normalise advantages by the whole batch's std (recipe default) instead of the group's."""
    regularizer: Regularizer = "none"
    """Pull towards the base model (adapter disabled): none, kl (Flow-GRPO), sa (DiverseGRPO's structure-aware
    regularisation) or both. The reference forward pass runs only on the steps a chosen regulariser needs."""
    beta_kl: Annotated[float, NON_NEGATIVE] = 0.0
    """KL weight (regularizer kl or both) on every trained step, of the KL in kl_form's form."""
    kl_form: Literal["flow_grpo", "gaussian"] = "flow_grpo"
    """"flow_grpo": mean((mu - mu_ref)^2) / (2 std_t^2), std_t = noise_level sqrt(sigma / (1 - sigma)) the SDE's std
    per unit time, as upstream's train_sd3.py computes it, so the recipes' beta values mean what they mean there.
    "gaussian": divided by the step's noise variance std_t^2 |dt| instead, the exact KL of the two Gaussian steps
    (1 / |dt| larger: 25x to 3.7x over SD3.5's trained steps)."""
    sa_lambda: Annotated[float, NON_NEGATIVE] = 1.0
    """SA-Reg weight lambda_reg (regularizer sa or both): mean((mu - mu_ref)^2), the squared W2 distance of the
    step distributions, no std denominator. The paper gives no value."""
    structure_steps: Annotated[int, POSITIVE] | Literal["auto"] = 3
    """K: the trajectory's first K denoising steps (0..K-1) are the structure steps, the rest the detail steps: SA-Reg
    acts on the structure steps (~T_train / 3: the early steps decide the layout), the cluster baseline
    (detail_baseline) on the detail steps. With an SDE window SA-Reg acts on the window's steps among them, none when
    the window starts at step K or later. "auto": K from the base model's measured diversity sensitivity (the
    smallest K whose first steps hold structure_share of it; dgrpo.stages.structure_profile)."""
    structure_share: Annotated[float, Range(gt=0, le=1)] = 0.8
    """Under structure_steps auto: the share of the steps' total diversity sensitivity the first K steps hold."""
    profile_groups: Annotated[int, POSITIVE] = 12
    """Under structure_steps auto: prompt groups the profile samples (the training prompts in turn, sampling.group_size
    images each), once per SDE step plus once unshared: (num_steps + 1) x profile_groups groups, once per fine-tune."""
    detail_baseline: DetailBaseline = "group"
    """Baseline of the advantage on the trained steps from denoising step structure_steps on (the detail steps): "group"
    (Flow-GRPO: every step gets the image's group-normalised advantage) or "cluster" (the mean of the image's
    cluster in its group, from the cluster stage: by then the structure is drawn, so what the clusters explain of
    the reward is noise to these steps). Needs cluster.method "diverse"."""
    train_fraction: Annotated[float, Range(gt=0, le=1)] = 0.9
    """Share of the sampling steps that are trained, counted from the first step (rounded; the recipe's 0.99 of
    10 steps trains 9). Ignored with an SDE window, which trains the window's steps."""
    batch_size: Annotated[int, POSITIVE] = 48
    """Trajectories per optimizer step over all processes (gradients accumulate over micro-batches and trained
    steps, and are averaged across processes)."""
    micro_batch_size: Annotated[int, POSITIVE] = field(default=48, metadata=EXECUTION)
    """Trajectories per forward pass in one process."""
    inner_epochs: Annotated[int, POSITIVE] = 1
    """Passes over one round's trajectories."""
    num_processes: Annotated[int, POSITIVE] = field(default=1, metadata=EXECUTION)
    """Data-parallel processes of the update (one per GPU, launched with torchrun in the update's pod). Each trains
    on its own prompt shards when pipeline.shards splits evenly over the processes (in a fused pod, the shards
    its own rollout step wrote), else on every num_processes-th trajectory; advantages come from the whole
    round's scores first, so a prompt group is normalised over all its members wherever they train."""
    mixed_precision: MixedPrecision = "no"
    """Autocast of the transformer in the update through accelerate: no, bf16 or fp16 (fp16 needs a GPU and
    scales the loss). LoRA weights and the optimizer stay float32; the SDE step runs in float32."""
    ema_decay: Annotated[float, Range(ge=0, lt=1)] = 0.0
    """EMA of the LoRA weights (diffusers' EMAModel, decay min(ema_decay, (1+n)/(10+n)) at EMA update n); 0 turns
    it off. The recipe uses 0.9. Rollouts always use the trained weights; evaluation uses the EMA (eval.use_ema)."""
    ema_every: Annotated[int, POSITIVE] = 8
    """Optimizer steps between EMA updates (the recipe's 8)."""

    @staticmethod
    def upgrade_recorded(section: dict[str, Any]) -> dict[str, Any]:
        """A train section recorded earlier (a run's config.json), with its meaning kept: before kl_form existed its
        KL was divided by the step's noise variance, kl_form "gaussian"; sa_steps is now structure_steps."""
        if "sa_steps" in section:
            section = {("structure_steps" if k == "sa_steps" else k): v for k, v in section.items()}
        if "kl_form" in section or "beta_kl" not in section:
            return section
        return {**section, "kl_form": "gaussian"}

    @property
    def uses_kl(self) -> bool:
        """Whether the update adds Flow-GRPO's KL term (regularizer kl or both)."""
        return self.regularizer in ("kl", "both")

    @property
    def uses_sa(self) -> bool:
        """Whether the update adds SA-Reg on the structure steps (regularizer sa or both)."""
        return self.regularizer in ("sa", "both")

    def validate(self, path: str) -> None:
        check(self.uses_kl or self.beta_kl == 0, f"{path}.beta_kl",
              f"is {self.beta_kl} but train.regularizer is {self.regularizer!r}: set regularizer to kl or both")
        check(not self.uses_kl or self.beta_kl > 0, f"{path}.beta_kl",
              f"must be > 0 with regularizer {self.regularizer!r}")
        check(not self.uses_sa or self.sa_lambda > 0, f"{path}.sa_lambda",
              f"must be > 0 with regularizer {self.regularizer!r}")
        check(len(self.adam_betas) == 2, f"{path}.adam_betas", "must hold two numbers")
        check(self.batch_size % self.micro_batch_size == 0, f"{path}.batch_size",
              f"must be a multiple of micro_batch_size ({self.micro_batch_size}), got {self.batch_size}")
        check(self.batch_size % (self.num_processes * self.micro_batch_size) == 0, f"{path}.batch_size",
              f"must be a multiple of num_processes x micro_batch_size ({self.num_processes} x "
              f"{self.micro_batch_size}), got {self.batch_size}")


@dataclass
class EvalConfig:
    """Deterministic evaluation on held-out prompts and seeds."""

    every: Annotated[int, POSITIVE] = 5
    """Evaluate every this many rounds (and always before the first and after the last)."""
    prompts: list[str] = toy_default("eval.prompts")
    """Evaluation prompts (default: the toy's eight captions); those not in sampling.prompts are held out from
    training. Leave unset with `prompts_file`."""
    prompts_file: str | None = None
    """A .txt, .jsonl or .parquet file of evaluation prompts, as `sampling.prompts_file`."""
    prompts_sha256: str | None = None
    """sha256 of `prompts_file`, written by the loader."""
    samples_per_prompt: Annotated[int, Range(ge=2)] = 32
    """Images per prompt; mode entropy from fewer than 32 is noisy."""
    num_steps: Annotated[int, POSITIVE] = 20
    """ODE steps of the deterministic sampler."""
    guidance_scale: Annotated[float, NON_NEGATIVE] = 4.5
    """Classifier-free guidance scale in evaluation."""
    seed: Annotated[int, NON_NEGATIVE] = 1_000_003
    """Root seed of the evaluation noise (stream EVAL_NOISE, disjoint from every training stream)."""
    mode_classifier: str | None = toy_default("eval.mode_classifier")
    """Mode classifier registry name (`dgrpo.metrics.MODE_CLASSIFIERS`) or `package.module:factory` path, for
    mode coverage; None where the domain has no known modes."""
    grid_columns: Annotated[int, POSITIVE] = 8
    """Images per prompt shown in the grid."""
    use_ema: bool = True
    """Evaluate the EMA of the LoRA weights when train.ema_decay > 0 (as Flow-GRPO does), else the trained ones."""

    def validate(self, path: str) -> None:
        check(len(self.prompts) > 0, f"{path}.prompts", "must not be empty")
        check_prompt_source(self.prompts_file, self.prompts_sha256, path)
