"""A whole run: the recipe sections, the deployment sections, and the checks that span sections."""

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Annotated, Any

from dgrpo.config.deployment import KubernetesConfig, PipelineConfig, RetentionConfig, TrackingConfig
from dgrpo.config.fields import NON_NEGATIVE, POSITIVE, check, validate_fields
from dgrpo.config.methods import BUILTINS, check_builtins, method_options
from dgrpo.config.recipe import (
    ClusterConfig,
    DriftConfig,
    EvalConfig,
    GardoConfig,
    LoraConfig,
    ModelConfig,
    ProGRPOConfig,
    RewardConfig,
    SamplingConfig,
    TrainConfig,
)
from dgrpo.config.secrets import check_no_secrets
from dgrpo.config.variables import check_variable_names

RECIPE_FIELDS = ("seed", "model", "lora", "sampling", "reward", "cluster", "train", "eval", "drift", "progrpo", "gardo")
"""What is trained: a result's identity. `name`, `rounds` (how long, not what each round does), `pipeline` and
`kubernetes` (where and how it runs) are deployment."""


@dataclass
class RunConfig:
    """A whole fine-tuning run."""

    name: str = "toy-flowgrpo"
    """Run name; also the KFP pipeline name."""
    seed: Annotated[int, NON_NEGATIVE] = 0
    """Root seed; every random stream derives from it (`dgrpo.rng`)."""
    rounds: Annotated[int, POSITIVE] = 10
    """Training rounds (rollout, reward, cluster, update)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    progrpo: ProGRPOConfig = field(default_factory=ProGRPOConfig)
    gardo: GardoConfig = field(default_factory=GardoConfig)
    methods: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    """Methods turned on beyond the built-in ones (`dgrpo.config.methods`): a name (grpo_guard) or a team's
    `package.module:Class` path, each with its options (`methods.<name>.<option>`; null for the defaults)."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    """What `dgrpo gc` may delete from the store (default: nothing)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment trackers the fine-tune logs to (MLflow: `tracking.mlflow`, off by default)."""

    def validate(self) -> "RunConfig":
        check(bool(self.name), "name", "must not be empty")
        validate_fields(self)
        check_no_secrets(self)
        check_variable_names(self.kubernetes)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate(f.name)
        check(self.pipeline.shards <= self.sampling.prompts_per_round, "pipeline.shards",
              f"must be <= sampling.prompts_per_round ({self.sampling.prompts_per_round}): a shard holds whole "
              f"prompt groups, got {self.pipeline.shards}")
        n = self.sampling.prompts_per_round * self.sampling.group_size
        check(n % self.train.num_processes == 0, "train.num_processes",
              f"must divide the {n} trajectories of a round (sampling.prompts_per_round x group_size), got "
              f"{self.train.num_processes}")
        fused = self.pipeline.execution == "fused"
        gpus = (self.kubernetes.resolve_fused() if fused else self.kubernetes.resolve("update")).gpus
        check(not gpus or self.train.num_processes <= gpus, "train.num_processes",
              f"is {self.train.num_processes} but the {'fused' if fused else 'update'} pod gets {gpus} GPUs "
              f"(kubernetes.{'fused' if fused else 'stages.update'}): one process per GPU")
        check_builtins(self)  # DiverseGRPO's (dgrpo.methods.diversegrpo) and any other built-in's
        check_methods(self)
        for name, options in self.methods.items():
            check(name not in BUILTINS, f"methods.{name}", f"is a built-in method, set its own section '{name}'")
            method_options(name, options, self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every field; `methods` only when it names one, so configs recorded before it existed stay byte-equal."""
        out = dataclasses.asdict(self)
        if not out["methods"]:
            del out["methods"]
        return out

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, so equal configs hash equally."""
        return _canonical(self.to_dict())

    def sha256(self) -> str:
        """Hash of the whole config, deployment included."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def recipe_dict(self) -> dict[str, Any]:
        """The recipe sections without their execution-only fields (`dgrpo.config.recipe.EXECUTION`)."""
        out = {}
        for name in RECIPE_FIELDS:
            value = getattr(self, name)
            out[name] = _without_execution(value) if dataclasses.is_dataclass(value) else value
        if self.methods:  # absent when empty: the recipes written before the field keep their hash
            out["methods"] = self.methods
        return out

    def recipe_sha256(self) -> str:
        """Hash of what is trained: equal for runs that differ only in pods, shards, parallelism or the store."""
        return hashlib.sha256(_canonical(self.recipe_dict()).encode()).hexdigest()

    def deployment_dict(self) -> dict[str, Any]:
        """Everything the recipe hash leaves out: how long and where the run executes, and the execution-only
        fields of the recipe sections (recorded in lineage beside the recipe hash)."""
        out = {name: value for name, value in self.to_dict().items() if name not in (*RECIPE_FIELDS, "methods")}
        execution = {}
        for name in RECIPE_FIELDS:
            section = getattr(self, name)
            if dataclasses.is_dataclass(section):
                execution |= {f"{name}.{f.name}": getattr(section, f.name) for f in dataclasses.fields(section)
                              if f.metadata.get("execution")}
        return out | {"execution": execution}

    def recipe_differences(self, other: "RunConfig") -> list[str]:
        """Dotted paths of the recipe fields whose values differ between the two configs."""
        return sorted(_diff(self.recipe_dict(), other.recipe_dict(), ""))

    def eval_rounds(self) -> list[int]:
        """Rounds after which evaluation runs; 0 is the base model before training."""
        return sorted(set(range(0, self.rounds + 1, self.eval.every)) | {self.rounds})

    @property
    def num_train_steps(self) -> int:
        return max(1, round(self.train.train_fraction * self.sampling.num_steps))


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _diff(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in _diff(a.get(key), b.get(key),
                                                                    f"{path}.{key}" if path else key)]
    return [] if a == b else [path]


def _without_execution(section: Any) -> dict[str, Any]:
    return {f.name: dataclasses.asdict(v) if dataclasses.is_dataclass(v := getattr(section, f.name)) else v
            for f in dataclasses.fields(section) if not f.metadata.get("execution")}


def check_methods(cfg: RunConfig) -> None:
    """The checks of the DRIFT, Pro-GRPO and GARDO options that span sections."""
    d, p, g, s, t = cfg.drift, cfg.progrpo, cfg.gardo, cfg.sampling, cfg.train
    check(not (d.outlier_filter and p.mode != "off"), "drift.outlier_filter",
          f"cannot be combined with progrpo.mode {p.mode!r}: both choose a subset of each group (DRIFT keeps the "
          "reward-concentrated middle, Pro-GRPO the high-variance extremes); turn one of them off")
    for name, on in (("drift.shaping_weight", d.shaping_weight > 0), ("gardo.novelty_advantage", g.novelty_advantage)):
        check(not on or cfg.cluster.embedder is not None, "cluster.embedder",
              f"must name an embedder: {name} uses the distances between a group's embeddings")
    check(not g.kl_gate or t.uses_kl, "gardo.kl_gate",
          f"gates the KL, but train.regularizer is {t.regularizer!r}: set it to kl or both")
    check(not g.reference_reset or t.regularizer != "none", "gardo.reference_reset",
          "resets the regulariser's reference, but train.regularizer is 'none'")
    if p.mode == "filter":
        check(p.filter_keep < s.group_size, "progrpo.filter_keep",
              f"must be < sampling.group_size ({s.group_size}), got {p.filter_keep}")
    if p.mode == "expand_prune":
        steps, sizes = p.prune_steps, p.prune_sizes
        check(p.expand_group_size > s.group_size, "progrpo.expand_group_size",
              f"must be > sampling.group_size ({s.group_size}), got {p.expand_group_size}")
        check(len(steps) == len(sizes) > 0, "progrpo.prune_sizes",
              f"needs one size per prune step ({len(steps)} steps), got {len(sizes)}")
        check(all(a < b for a, b in zip(steps, steps[1:], strict=False)) and steps[-1] < s.num_steps,
              "progrpo.prune_steps", f"must increase and stay below sampling.num_steps ({s.num_steps}), got {steps}")
        check(all(a > b for a, b in zip([p.expand_group_size, *sizes], sizes, strict=False))
              and sizes[-1] == s.group_size, "progrpo.prune_sizes",
              f"must decrease from progrpo.expand_group_size ({p.expand_group_size}) and end at sampling.group_size "
              f"({s.group_size}), got {sizes}")
