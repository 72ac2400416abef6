"""Typed, validated run configuration: the recipe (`recipe`), the deployment (`deployment`), the loader (`loader`).

`RunConfig.recipe_sha256()` identifies what is trained; `RunConfig.sha256()` covers the deployment too.
"""

from dgrpo.config.deployment import (
    ConfigMapEnv,
    CustomStage,
    GuardRails,
    KubernetesConfig,
    ModelCacheConfig,
    PipelineConfig,
    SecretEnv,
    StageResources,
    Toleration,
)
from dgrpo.config.fields import ConfigError, Range
from dgrpo.config.loader import config_from_dict, config_from_json, load_config, read_yaml
from dgrpo.config.recipe import (
    ClusterConfig,
    EvalConfig,
    LoraConfig,
    ModelConfig,
    RewardConfig,
    SamplingConfig,
    TrainConfig,
)
from dgrpo.config.run import RECIPE_FIELDS, RunConfig

__all__ = ["RECIPE_FIELDS", "ClusterConfig", "ConfigError", "ConfigMapEnv", "CustomStage", "EvalConfig",
           "GuardRails", "KubernetesConfig", "LoraConfig", "ModelCacheConfig", "ModelConfig",
           "PipelineConfig", "Range", "RewardConfig", "RunConfig",
           "SamplingConfig", "SecretEnv", "StageResources", "Toleration", "TrainConfig", "config_from_dict",
           "config_from_json", "load_config", "read_yaml"]
