"""A whole run: the recipe sections, the deployment sections, and the checks that span sections."""

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Annotated, Any

from dgrpo.config.deployment import KubernetesConfig, PipelineConfig, RetentionConfig, TrackingConfig
from dgrpo.config.fields import NON_NEGATIVE, POSITIVE, check, validate_fields
from dgrpo.config.methods import (
    BUILTIN_OPTIONS,
    BUILTINS,
    builtin_defaults,
    builtin_options,
    check_builtins,
    method_options,
)
from dgrpo.config.recipe import (
    ClusterConfig,
    EvalConfig,
    LoraConfig,
    ModelConfig,
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
    drift: builtin_options("drift") = builtin_defaults("drift")
    """DRIFT's options (`dgrpo.methods.drift.DriftOptions`)."""
    progrpo: builtin_options("progrpo") = builtin_defaults("progrpo")
    """Pro-GRPO's options (`dgrpo.methods.progrpo.ProGRPOOptions`)."""
    gardo: builtin_options("gardo") = builtin_defaults("gardo")
    """GARDO's options (`dgrpo.methods.gardo.GardoOptions`)."""
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
        check_builtins(self)  # each built-in method's check_run (dgrpo.methods.diversegrpo, drift, ...)
        for name, options in self.methods.items():
            check(name not in BUILTINS, f"methods.{name}",
                  f"{name} is built in (every run consults it): remove it from methods and set its options in "
                  f"{BUILTIN_OPTIONS.get(name, 'its own section')}")
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
