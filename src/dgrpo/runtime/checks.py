"""Checks of a whole run config against what is installed, before anything runs: the plug-in names and paths.

The config layer sits below the registries (`dgrpo.rewards.REWARDS`, `dgrpo.models.POLICIES`...), so it cannot
resolve a plug-in name; this function can, and the CLI calls it when it loads a config and the pipeline compiler
when it compiles one. Without it an unknown reward or a mistyped `package.module:factory` path surfaced only inside
the first stage's pod on a cluster.
"""

import inspect

from dgrpo.config import ConfigError, RunConfig
from dgrpo.embedders import EMBEDDERS
from dgrpo.metrics import MODE_CLASSIFIERS
from dgrpo.models import POLICIES
from dgrpo.registry import Registry, RegistryError
from dgrpo.rewards import REWARDS


def check_plugins(config: RunConfig, require_import: bool = True) -> list[str]:
    """Raise ConfigError naming the field of the first plug-in that cannot resolve; return warnings.

    `require_import` False is for compiling: a `package.module:factory` path whose package is not installed on
    this machine (only in the stage images) is a warning, not an error. The options of a path plug-in are checked
    against its factory's signature (built-ins are not imported here, to keep the CLI fast)."""
    plugins: list[tuple[Registry, str | None, dict | None, str]] = [
        (POLICIES, config.model.kind, None, ""),
        (REWARDS, config.reward.name, config.reward.options, "reward.options"),
        (EMBEDDERS, config.cluster.embedder, config.cluster.embedder_options, "cluster.embedder_options"),
        (MODE_CLASSIFIERS, config.eval.mode_classifier, None, ""),
    ]
    warnings = []
    for registry, name, options, options_field in plugins:
        if name is None:
            continue
        try:
            warning = registry.check(name, require_import)
        except RegistryError as exc:
            raise ConfigError(str(exc)) from exc
        if warning is not None:
            warnings.append(warning)
        elif options is not None and ":" in name:
            _check_options(registry.get(name), options, options_field)
    return warnings


def _check_options(factory: object, options: dict, field: str) -> None:
    try:
        signature = inspect.signature(factory)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return  # a builtin or C callable without a readable signature: its call will say
    try:
        signature.bind(**options)
    except TypeError as exc:
        raise ConfigError(f"config field '{field}': {exc} (the factory takes {signature})") from exc
